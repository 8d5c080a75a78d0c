"""The two steps every training loop in autoaccel takes (the embedded models' scripts, distillation): a clipped
gradient step and an EMA update, written once so the loops stay deterministic in the same way."""

from __future__ import annotations

import torch


def clipped_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: torch.nn.Module) -> None:
    """Backpropagates ``loss`` and steps ``optimizer`` with ``module``'s gradient norm clipped to 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()


@torch.no_grad()
def ema_update(ema_module: torch.nn.Module, module: torch.nn.Module, decay: float, step: int | None = None) -> None:
    """Moves ``ema_module`` towards ``module`` by ``1 - decay``. With ``step``: diffusers' warm-up, decay
    min(decay, (1 + step) / (10 + step)): without it a copy started at the random init keeps decay**steps of it
    (22% after 1500 steps at 0.999), which visibly shrinks the noise prediction at high noise and makes sampling
    diverge. Without ``step`` (a copy of trained weights, as distillation starts from) the decay is used as is."""
    if step is not None:
        decay = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema_module.parameters(), module.parameters()):
        if ema_param is not param:  # a frozen base shared by a LoRA student and its copies stays as it is
            ema_param.lerp_(param, 1 - decay)
