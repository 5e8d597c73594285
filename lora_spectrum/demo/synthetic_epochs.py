"""The random demo: synthetic epoch LoRAs for a tiny random base, and the folder that holds both.

The demo epochs ``jimeng_20 ... jimeng_300`` move along one fixed direction whose length grows with the epoch
(quickly at first, then flattening), as a real training run tends to, so that "how far did the style move" has a
known answer. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora_spectrum.bases.families import DEMO_FAMILY, get_family

DEMO_EPOCHS = (20, 50, 80, 150, 220, 300)
DEMO_SERIES = "jimeng"
DEMO_TRIGGER = "jimeng style"
ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def attention_targets(denoiser) -> list[tuple[str, torch.nn.Linear]]:
    """The attention projections a kohya/musubi LoRA usually trains, in module order."""
    out = []
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTN_TARGETS):
            if ".attn" in name or ".attention." in name:
                out.append((name, module))
    return out


def growth(epoch: int, scale: float = 100.0) -> float:
    """How far demo epoch ``epoch`` has moved along its direction: fast at first, flattening later."""
    return 1.0 - math.exp(-epoch / scale)


def make_lora_state_dict(denoiser, family: str, rank: int = 4, magnitude: float = 1.0, seed: int = 0,
                         noise: float = 0.0, noise_seed: int = 0, alpha: float | None = None,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A LoRA on the attention projections of ``denoiser``, in the file format trainers write for ``family``
    (``Family.demo_lora_names``: kohya's ``lora_unet_*`` with ``.alpha``, musubi's ``diffusion_model.*``, ...).

    ``seed`` fixes the direction; ``magnitude`` scales it; ``noise`` adds a per-``noise_seed`` perturbation.
    """
    gen = torch.Generator().manual_seed(seed)
    ngen = torch.Generator().manual_seed(10_000 + noise_seed)
    alpha = float(rank if alpha is None else alpha)
    fam = get_family(family)
    sd: dict[str, torch.Tensor] = {}
    for name, module in attention_targets(denoiser):
        down = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=gen) / math.sqrt(rank)
        if noise:
            up = up + noise * torch.randn(module.out_features, rank, generator=ngen) / math.sqrt(rank)
        up = up * magnitude
        down_key, up_key, alpha_key = fam.demo_lora_names(name)
        if alpha_key is None:  # a format without alphas (peft's): alpha = rank, so the scale goes into up
            up = up * (alpha / rank)
        sd[down_key] = down.to(dtype).contiguous()
        sd[up_key] = up.to(dtype).contiguous()
        if alpha_key is not None:
            sd[alpha_key] = torch.tensor(alpha)
    return sd


def kohya_metadata(series: str, epoch: int, steps_per_epoch: int, rank: int, alpha: float, family: str,
                   num_epochs: int) -> dict[str, str]:
    """The kohya sd-scripts metadata a real epoch file carries (all values are strings)."""
    return {
        "ss_output_name": series,
        "ss_epoch": str(epoch),
        "ss_steps": str(epoch * steps_per_epoch),
        "ss_num_epochs": str(num_epochs),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_module": get_family(family).network_module,
        "ss_learning_rate": "0.0001",
        "ss_base_model_version": get_family(family).base_model_version,
        "ss_tag_frequency": json.dumps({"10_jimeng": {"jimeng style": 40, "ink": 22, "stripes": 17}}),
        "modelspec.trigger_phrase": DEMO_TRIGGER,
        "modelspec.title": f"{series} epoch {epoch}",
    }


def write_demo_loras(denoiser, folder: str | Path, family: str, epochs=DEMO_EPOCHS, series: str = DEMO_SERIES,
                     rank: int = 4, strength: float = 1.5, steps_per_epoch: int = 10) -> list[Path]:
    """Write ``<series>_<epoch>.safetensors`` for each epoch: one fixed direction, length ``growth(epoch)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch in epochs:
        sd = make_lora_state_dict(denoiser, family, rank=rank, magnitude=strength * growth(epoch), seed=1,
                                  noise=0.05, noise_seed=epoch)
        meta = kohya_metadata(series, epoch, steps_per_epoch, rank, float(rank), family, max(epochs))
        path = folder / f"{series}_{epoch}.safetensors"
        save_file(sd, str(path), metadata=meta)
        paths.append(path)
    return paths


def write_demo(out: str | Path, family: str = DEMO_FAMILY, seed: int = 0) -> tuple[Path, Path]:
    """Write a demo base (a diffusers folder) and its epoch LoRAs under ``out``. Returns (base_dir, loras_dir)."""
    out = Path(out)
    base_dir, loras_dir = out / f"base-{family}", out / "loras"
    fam = get_family(family)
    pipe = fam.build_tiny(seed, out / "tokenizer-src")
    pipe.save_pretrained(str(base_dir), safe_serialization=True)
    write_demo_loras(fam.denoiser(pipe), loras_dir, family)
    (out / "README.md").write_text(
        f"LoRA Spectrum demo ({family}): a tiny base with random weights and epochs "
        f"{', '.join(map(str, DEMO_EPOCHS))} whose effect grows with the epoch. Not a real model.\n",
        encoding="utf-8",
    )
    return base_dir, loras_dir


def ensure_demo(demo_dir: str | Path, family: str = DEMO_FAMILY) -> tuple[Path, Path]:
    """The random demo's base folder and loras folder, written on first use (seconds, no download)."""
    demo_dir = Path(demo_dir)
    base, loras = demo_dir / f"base-{family}", demo_dir / "loras"
    if not (base / "model_index.json").is_file() or not any(loras.glob("*.safetensors")):
        write_demo(demo_dir, family)
    return base, loras
