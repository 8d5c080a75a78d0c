"""Retrains the three latent digit models in order: the VAE, then the text-to-image and DiT pipelines on its
latents, each written as a folder that plain diffusers loads.

Run with ``python -m autoaccel train-latent-models [--out DIR] [--seed N] [--only vae|t2i|dit]`` (or
``python -m autoaccel.targets.digits.latent.train``); the default ``--out`` is the package's own weights folder,
``autoaccel/targets/digits/weights/{vae,t2i,dit}``. Each model trains in well under 15 minutes on two CPU cores
and is deterministic for its seed on one machine; ``--only t2i`` or ``--only dit`` reuse the VAE in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autoaccel.config.values import check_folder, check_seed_flag

MODELS = ("vae", "t2i", "dit")


def default_out_root() -> Path:
    from autoaccel.targets.digits.weights import WEIGHTS_DIR

    return WEIGHTS_DIR


def train_latent_models(out_root: Path, seed: int = 0, only: tuple[str, ...] = MODELS) -> dict:
    """Trains the models named in ``only`` into ``out_root/<name>``; returns each one's info dict."""
    from autoaccel.targets.digits.latent.dit import train_dit
    from autoaccel.targets.digits.latent.t2i import train_t2i
    from autoaccel.targets.digits.latent.vae import train_vae

    unknown = sorted(set(only) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    out_root = Path(out_root)
    vae_dir = out_root / "vae"
    infos = {}
    if "vae" in only:
        infos["vae"] = train_vae(vae_dir, seed=seed)
    if "t2i" in only:
        infos["t2i"] = train_t2i(out_root / "t2i", seed=seed, vae_dir=vae_dir)
    if "dit" in only:
        infos["dit"] = train_dit(out_root / "dit", seed=seed, vae_dir=vae_dir)
    return infos


def run_cli(args: list[str]) -> int:
    """``train-latent-models`` command line: prints each model's info dict as JSON."""
    parser = argparse.ArgumentParser(prog="autoaccel train-latent-models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for vae/, t2i/ and dit/ (default: package)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=MODELS, action="append", help="train only this model (repeatable)")
    options = parser.parse_args(args)
    out_root = options.out or default_out_root()
    check_seed_flag(options.seed)
    check_folder("--out", out_root, writable=True)
    if options.only and "vae" not in options.only and not (out_root / "vae" / "config.json").exists():
        parser.error(f"{out_root / 'vae'} holds no VAE; train it first (--only vae)")
    infos = train_latent_models(out_root, seed=options.seed, only=tuple(options.only or MODELS))
    print(json.dumps(infos, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(sys.argv[1:]))
