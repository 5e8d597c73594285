"""The shipped trained demo in ``assets_data/``: its folder names, how to render it, and copying it out.

Nothing here trains or loads a model; ``trainer.py`` writes these folders, the workbench loads them.
"""

from __future__ import annotations

from pathlib import Path

from lora_spectrum.errors import BaseLoadError

ASSETS_DIR = Path(__file__).resolve().parent / "assets_data"
BASE_DIRNAME = "base-sdxl"
LORAS_DIRNAME = "loras"
LOGS_DIRNAME = "logs"
CLIP_DIRNAME = "clip"  # the demo's own tiny CLIP (``clip_training.py`` writes it)
STYLE_DIRNAME = "style"  # the ink style's reference drawings: what the probe's style measure compares with
SERIES = "jimeng"

# What the app's demo should render with (see the training report / README in ASSETS_DIR).
SIZE = 64  # the shipped demo's images, in pixels (its VAE downsamples by 4: 16x16 latents)
RECOMMENDED = {"steps": 20, "guidance": 4.0, "sampler": "Euler", "width": SIZE, "height": SIZE,
               "strength": 1.0,
               "prompts": ("a red circle on a white background, jimeng style",
                           "a blue square on a cream background, jimeng style",
                           "a green triangle on a gray background, jimeng style")}


def assets_available(folder: str | Path = ASSETS_DIR) -> bool:
    """True when the shipped base, at least one epoch LoRA and the training log are all in ``folder``."""
    folder = Path(folder)
    base = folder / BASE_DIRNAME
    return ((base / "model_index.json").is_file() and (base / "unet").is_dir()
            and any((folder / LORAS_DIRNAME).glob(f"{SERIES}_*.safetensors"))
            and any((folder / LOGS_DIRNAME).rglob("events.out.tfevents.*")))


def demo_clip_dir(folder: str | Path = ASSETS_DIR) -> Path | None:
    """The shipped tiny CLIP's folder (a ``CLIPModel`` + ``CLIPProcessor``) when ``folder`` holds it, else None."""
    clip = Path(folder) / CLIP_DIRNAME
    return clip if (clip / "config.json").is_file() and (clip / "model.safetensors").is_file() else None


def demo_style_dir(folder: str | Path = ASSETS_DIR) -> Path | None:
    """The shipped style references (PNG drawings in the LoRA's ink style) when ``folder`` holds them, else None."""
    style = Path(folder) / STYLE_DIRNAME
    return style if style.is_dir() and any(style.glob("*.png")) else None


def copy_trained_demo(out: str | Path) -> tuple[Path, Path, Path]:
    """Copy the shipped trained demo (base, epochs, training log) to ``out``; returns (base, loras, logs)."""
    import shutil

    if not assets_available():
        raise BaseLoadError(f"{ASSETS_DIR}: the trained demo is missing; rebuild it with "
                            f"python -m tools.demo_trainer.trainer --out {ASSETS_DIR}")
    out = Path(out)
    parts = (BASE_DIRNAME, LORAS_DIRNAME, LOGS_DIRNAME)
    for name in parts:
        shutil.copytree(ASSETS_DIR / name, out / name, dirs_exist_ok=True)
    return tuple(out / name for name in parts)
