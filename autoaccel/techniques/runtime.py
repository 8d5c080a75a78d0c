"""Technique ``runtime``: how the plan's model runs when deployed: its precision, torch.compile, the attention
kernels, fused QKV projections and channels-last memory.

It applies last, to the model every other technique produced. The denoiser (with the VAE and text encoders where
there are) is copied and cast to ``runtime.dtype``; the sampling loop keeps the latents and the scheduler's
arithmetic in float32 and casts the denoiser's input and output (``autoaccel.pipeline.sampling``). A compiled model
compiles on its first calls (the search's untimed sampling and the latency warm-up: search cost, recorded per
trial as ``compile_seconds``); a compile during timed calls fails the trial (``autoaccel.measure.latency``). The
attention backend is torch's SDPA selection (``torch.nn.attention.sdpa_kernel``) around every denoiser call: every
diffusers attention processor of the supported classes ends in ``F.scaled_dot_product_attention``, whereas
diffusers' attention dispatcher reaches only the processors written for it. A recipe records the torch and diffusers
versions and whether the graph compiled whole; applying it compiles again (no compiled artifact is shipped).
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import diffusers
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from autoaccel.errors import ConfigError, TechniqueError
from autoaccel.pipeline.call_control import call_controller, rebuilt_around
from autoaccel.pipeline.prescribed import replace_carried_decoder
from autoaccel.targets.layouts import layout_of
from autoaccel.targets.precision import encoded_again, target_dtype
from autoaccel.techniques.base import COMPILE_SECONDS, ParamSpec, Technique, register, require_types
from autoaccel.util.precision import DTYPES, cast_module, dtype_name, module_dtype

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
CUDA_ONLY_MODES = ("reduce-overhead",)  # CUDA graphs
ATTENTION_BACKENDS = {
    "default": None,  # torch chooses per call
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
RUNTIME = "autoaccel_runtime"  # the attribute a runtime model carries its call (``RuntimeCall``) under


@dataclass(frozen=True)
class RuntimeConfig:
    """The deployment's runtime; the defaults are the model as loaded (in its loaded precision, ``target.dtype``,
    eager, torch's SDPA choice)."""

    dtype: str | None = None  # None: the precision the target was loaded in
    compile: str = "none"
    attention: str = "default"
    fuse_qkv: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        require_types(self, "runtime", {"fuse_qkv": bool, "channels_last": bool})
        for name, valid in (("dtype", DTYPES), ("compile", COMPILE_MODES), ("attention", ATTENTION_BACKENDS)):
            if getattr(self, name) not in valid and not (name == "dtype" and self.dtype is None):
                raise ConfigError(f"runtime.{name}={getattr(self, name)!r} is not valid; valid: {', '.join(valid)}")

    @property
    def active(self) -> bool:
        return self != RuntimeConfig()

    def dtype_for(self, model: torch.nn.Module) -> torch.dtype:
        """The precision the plan runs ``model`` in: ``dtype``, or the model's own where it is None (the precision
        its target was loaded in: the techniques that train in float32 deploy in that)."""
        return DTYPES[self.dtype] if self.dtype is not None else module_dtype(model)

    def runs_as_loaded(self, model: torch.nn.Module) -> bool:
        """Whether ``model`` runs as it is: no setting beyond a ``dtype`` that is already the model's."""
        return replace(self, dtype=None) == RuntimeConfig() and self.dtype_for(model) == module_dtype(model)

    def changes_weights(self, model: torch.nn.Module) -> bool:
        """Whether the model's tensors change (cast, fused, re-laid out): the model is copied, not shared."""
        return self.dtype_for(model) != module_dtype(model) or self.fuse_qkv or self.channels_last


RUNTIME_PARAMS = {
    "dtype": ParamSpec("choice", choices=tuple(DTYPES)),
    "compile": ParamSpec("choice", choices=COMPILE_MODES),
    "attention": ParamSpec("choice", choices=tuple(ATTENTION_BACKENDS)),
    "fuse_qkv": ParamSpec("bool"),
    "channels_last": ParamSpec("bool"),
}


class _CompileClock:
    """Seconds torch.compile spent compiling in each thread, from dynamo's compile start/end callbacks (dynamo
    compiles in the calling thread, so a model's calls see their own compiles, not another trial's)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()

    def register(self) -> None:
        """Registers the callbacks, again where ``torch._dynamo.reset()`` cleared them since."""
        with self._lock:
            # torch._dynamo takes 1.7 s to import: only a plan that compiles pays for it
            from torch._dynamo.callback import callback_handler

            if self._start not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(self._start)
            if self._end not in callback_handler.end_callbacks:
                callback_handler.register_end_callback(self._end)

    def _start(self, args: Any) -> None:
        self._local.started = getattr(self._local, "started", {})
        self._local.started[str(args.compile_id)] = time.perf_counter()

    def _end(self, args: Any) -> None:
        started = getattr(self._local, "started", {}).pop(str(args.compile_id), None)
        if started is not None:
            self._local.seconds = self.seconds() + time.perf_counter() - started

    def seconds(self) -> float:
        return getattr(self._local, "seconds", 0.0)


_CLOCK = _CompileClock()
RECOMPILE_LIMIT = 256  # compiled variants of one forward a process keeps (dynamo's accumulated limit by default)


def _keep_compiled_variants() -> None:
    """Dynamo keeps 8 compiled variants of a forward by default; past that it refuses a whole-graph compile and
    runs a partial one eagerly, unannounced. A search compiles a variant per plan structure (pruned widths,
    precisions, memory layouts, batch shapes), so the process keeps up to ``RECOMPILE_LIMIT``."""
    import torch._dynamo.config  # loaded by torch.compile already

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


class RuntimeCall:
    """The denoiser's forward as deployed: under the plan's SDPA backend and, where the plan compiles, through
    torch.compile (whole graph where it holds, else with graph breaks: ``fullgraph`` says which). The seconds its
    calls spent compiling are the model's ``compile_seconds``."""

    def __init__(self, model: torch.nn.Module, config: RuntimeConfig) -> None:
        self.model = model
        self.eager = model.forward  # the class's forward, or the one another technique installed
        self.config = config
        self.fullgraph: bool | None = None  # unknown until the first compile
        self._compiled = None
        if config.compile != "none":
            _CLOCK.register()
            _keep_compiled_variants()
            object.__setattr__(model, COMPILE_SECONDS, 0.0)

    def _attention(self):
        backend = ATTENTION_BACKENDS[self.config.attention]
        return sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()

    def _compile(self, fullgraph: bool):
        mode = None if self.config.compile == "default" else self.config.compile
        return torch.compile(self.eager, fullgraph=fullgraph, mode=mode)

    def __call__(self, *args, **kwargs):
        with self._attention():
            if self.config.compile == "none":
                return self.eager(*args, **kwargs)
            started = _CLOCK.seconds()
            try:
                return self._compiled_call(args, kwargs)
            finally:
                spent = _CLOCK.seconds() - started
                object.__setattr__(self.model, COMPILE_SECONDS, getattr(self.model, COMPILE_SECONDS) + spent)

    def _compiled_call(self, args: tuple, kwargs: dict):
        if self._compiled is None:
            import torch._dynamo.exc  # loaded by torch.compile already; named here for its exception

            try:
                compiled = self._compile(fullgraph=True)
                result = compiled(*args, **kwargs)
                self._compiled, self.fullgraph = compiled, True
                return result
            except torch._dynamo.exc.Unsupported:  # a graph break: compiled in pieces instead
                self._compiled, self.fullgraph = self._compile(fullgraph=False), False
        return self._compiled(*args, **kwargs)


def runtime_call(model: torch.nn.Module) -> RuntimeCall | None:
    return getattr(model, RUNTIME, None)


def _refusal(config: RuntimeConfig, model: torch.nn.Module, device: torch.device) -> str | None:
    """Why ``config`` cannot run ``model`` on ``device``, or None."""
    cuda = device.type == "cuda"
    if config.compile in CUDA_ONLY_MODES and not cuda:
        return f"runtime.compile={config.compile!r} records CUDA graphs: CUDA only, and the model runs on {device}"
    if config.compile != "none" and call_controller(model) is not None:
        return (
            f"runtime.compile={config.compile!r} does not apply to a cached model: its per-call controller changes "
            "Python state every step, which would recompile the graph; use runtime.compile none with caching"
        )
    if config.fuse_qkv and not hasattr(model, "fuse_qkv_projections"):
        return f"runtime.fuse_qkv: {type(model).__name__} has no fuse_qkv_projections()"
    if config.fuse_qkv and not layout_of(model).fuses_qkv:
        return (
            f"runtime.fuse_qkv: {type(model).__name__}'s attention processors read the separate query, key and value "
            "projections, so fusing them saves nothing"
        )
    if config.channels_last and layout_of(model).sequence:
        return (
            f"runtime.channels_last is for UNets (4-D convolution activations); {type(model).__name__} is a transformer"
        )
    backend = ATTENTION_BACKENDS[config.attention]
    if backend is not None:
        probe = torch.zeros(1, 1, 8, 64, device=device, dtype=config.dtype_for(model))
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
            precision = dtype_name(config.dtype_for(model))
            kernel = f"runtime.attention={config.attention!r}: torch has no such kernel for {precision} on {device}"
            return f"{kernel}: {reason}"
    return None


def apply_runtime(pipeline, config: RuntimeConfig, target) -> None:
    """Runs the plan's model (and its VAE and text encoders) the way ``config`` deploys it; the target's own
    modules are copied, never changed, since the reference and the other plans run them."""
    model = pipeline.denoiser
    if config.runs_as_loaded(model):
        return
    reason = _refusal(config, model, model.device)
    if reason is not None:
        raise TechniqueError(reason)
    if runtime_call(model) is not None:
        raise TechniqueError("runtime applies once per plan")
    dtype = config.dtype_for(model)
    if config.changes_weights(model):

        def changed(source: torch.nn.Module) -> torch.nn.Module:
            return _changed_copy(source, config, dtype)

        # a cached model is built again around the changed model (its cache calibrated on it when it runs)
        model = rebuilt_around(model, changed) if call_controller(model) is not None else changed(model)
    else:
        model = copy.copy(model)  # its own forward; weights shared
    call = RuntimeCall(model, config)
    model.forward = call
    object.__setattr__(model, RUNTIME, call)
    pipeline.denoiser = model
    if pipeline.vae is not None and module_dtype(pipeline.vae) != dtype:
        pipeline.vae = cast_module(copy.deepcopy(pipeline.vae), dtype)
        replace_carried_decoder(model, pipeline.vae)  # a decoder the model brings (a tiny one) is cast too
    if encoder_dtype(pipeline.conditions) not in (None, dtype):
        pipeline.conditions = _cast_conditions(pipeline.conditions, dtype)


def _changed_copy(model: torch.nn.Module, config: RuntimeConfig, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` with its QKV projections fused, cast to ``dtype`` and in channels-last memory, as
    ``config`` says; ``model`` stays as it was."""
    model = copy.deepcopy(model)
    if config.fuse_qkv:
        try:
            model.fuse_qkv_projections()
        except ValueError as error:  # diffusers refuses models with added KV projections (joint attention)
            raise TechniqueError(f"runtime.fuse_qkv: {type(model).__name__}: {error}") from None
    cast_module(model, dtype)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def encoder_dtype(conditions) -> torch.dtype | None:
    """The precision of the text encoders that encode ``conditions`` (None: no encoder a plan can cast)."""
    return getattr(conditions.encoder, "dtype", None) if getattr(conditions.encoder, "cast", None) else None


def _cast_conditions(conditions, dtype: torch.dtype):
    """Prompt conditions encoded by text encoders cast to ``dtype``: the cached embeddings the quality images use
    and the encoder latency times both come from the cast encoders, as a deployment's would."""
    cast = getattr(conditions.encoder, "cast", None)
    return conditions if cast is None else encoded_again(conditions, cast(dtype))


def runtime_cost(config: RuntimeConfig) -> dict[str, Any]:
    """Every setting changes what a call costs; the model as loaded costs what it costs without the technique."""
    return asdict(config) if config.active else {}


def runtime_record(pipeline, config: RuntimeConfig) -> dict[str, Any] | None:
    """What a recipe records beside a compiled or cast plan: the versions it ran on and whether the graph compiled
    whole (applying the recipe compiles again on the machine it runs on)."""
    if not config.active:
        return None
    record: dict[str, Any] = {"torch": str(torch.__version__), "diffusers": str(diffusers.__version__)}
    call = runtime_call(pipeline.denoiser)
    if call is not None and config.compile != "none" and call.fullgraph is not None:
        record["fullgraph"] = call.fullgraph
    return record


def runtime_label(candidate: dict[str, Any]) -> str | None:
    """A few words: ``bfloat16 compiled``; None for the model as loaded."""
    own = {key.removeprefix("runtime."): value for key, value in candidate.items() if key.startswith("runtime.")}
    settings = {**asdict(RuntimeConfig()), **own}
    words = [str(settings["dtype"])] if settings["dtype"] not in (None, "float32") else []
    words += ["compiled"] if settings["compile"] != "none" else []
    words += [f"{settings['attention']} attention"] if settings["attention"] != "default" else []
    words += ["fused qkv"] if settings["fuse_qkv"] else []
    words += ["channels-last"] if settings["channels_last"] else []
    return " ".join(words) or None


RUNTIME_TECHNIQUE = register(
    Technique(
        name="runtime",
        order=30,  # last: on the model every other technique produced, with the sampler already set
        config_cls=RuntimeConfig,
        apply=apply_runtime,
        # a new model (cast, compiled): plan identity and the evaluator's kept models must see it
        modifies_model=True,
        runtime_only=True,  # the report splits a plan's speed-up into this part and the algorithmic rest
        runs_as_loaded=lambda config, target: config.runs_as_loaded(target.denoiser),
        loaded_params=lambda target: {"dtype": "float32" if target is None else target_dtype(target)},
        unchanged_params=asdict(RuntimeConfig()),  # the baselines run the model as loaded, eager
        params=RUNTIME_PARAMS,
        cost_key=runtime_cost,
        recipe_record=runtime_record,
        label=runtime_label,
    )
)
