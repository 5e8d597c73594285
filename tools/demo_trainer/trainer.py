"""``python -m tools.demo_trainer.trainer``: train the demo that learns and write the shipped folders.

Runs the stages of ``training_steps.py`` in order (the data from ``shapes.py``) and writes the folders that
``assets.py`` names, the training report and the README. The manual: ``docs/demo.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from lora_spectrum.demo.assets import (
    ASSETS_DIR,
    BASE_DIRNAME,
    CLIP_DIRNAME,
    LOGS_DIRNAME,
    LORAS_DIRNAME,
    RECOMMENDED,
    SERIES,
    STYLE_DIRNAME,
)
from tools.demo_trainer import oracle
from tools.demo_trainer.clip_training import train_clip
from tools.demo_trainer.shapes import (
    BACKGROUNDS,
    COLOURS,
    FAVOURITES,
    SHAPES,
    SIZE,
    TRIGGER,
    biased_combos,
    make_dataset,
)
from tools.demo_trainer.training_steps import (
    FULL,
    QUICK,
    Budget,
    build_pipeline,
    encode_latents,
    log,
    refine_decoder,
    train_base,
    train_lora,
    train_vae,
)


def save_base(pipe, folder: Path, fp16: bool = True) -> Path:
    """Write the base (without any adapter) as a diffusers folder, fp16 safetensors, tokenizers included."""
    folder.mkdir(parents=True, exist_ok=True)
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    if fp16:
        pipe.to(torch.float32)
    return folder


def write_style_set(folder: Path, seed: int = 7) -> list[Path]:
    """One drawing in the LoRA's ink style per (colour, shape), backgrounds in turn: the references the probe's style
    measure compares renders with (the style a person would show as "this is what I trained for")."""
    import numpy as np
    from PIL import Image

    from tools.demo_trainer.shapes import draw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    backgrounds = list(BACKGROUNDS)
    written = []
    for k, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        background = backgrounds[k % len(backgrounds)]
        pixels = draw(colour, shape, background, rng, ink=True)
        path = folder / f"{colour}_{shape}_{background}.png"
        Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8)).save(path)
        written.append(path)
    return written


def write_readme(out: Path, report: dict) -> None:
    text = (
        "# LoRA Spectrum demo assets\n\n"
        "Made by `python -m tools.demo_trainer.trainer --out lora_spectrum/demo/assets_data` (seeded; CPU).\n\n"
        f"- `{BASE_DIRNAME}/`: a tiny StableDiffusionXLPipeline trained on procedural shapes. Prompt "
        "\"a <colour> <shape> on a <background> background\" with colours "
        f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; backgrounds {', '.join(BACKGROUNDS)}.\n"
        f"- `{LORAS_DIRNAME}/`: `{SERIES}_<epoch>.safetensors`, a style LoRA (thick dark ink outlines, trigger "
        f"\"{TRIGGER}\") in kohya format with kohya metadata, one file per saved epoch.\n"
        f"- `{CLIP_DIRNAME}/`: a tiny CLIPModel trained on the same shapes (captions with and without the trigger), "
        "so the CLIP measures run offline (`python -m tools.demo_trainer.clip_training --out clip`).\n"
        f"- `{STYLE_DIRNAME}/`: one drawing in the ink style per colour and shape, the style references of the "
        "probe's style measure (`trainer.write_style_set`).\n"
        f"- `{LOGS_DIRNAME}/{SERIES}/network_train/`: its TensorBoard log (loss/current, loss/average, loss/epoch, loss/validation/epoch_average).\n\n"
        f"Render at {SIZE}x{SIZE}, {RECOMMENDED['steps']} steps, guidance {RECOMMENDED['guidance']}, "
        f"sampler {RECOMMENDED['sampler']}.\n\n"
        "Training report:\n\n```json\n" + json.dumps(report, indent=2) + "\n```\n"
    )
    (out / "README.md").write_text(text, encoding="utf-8")


def run(out: str | Path, budget: Budget = FULL, seed: int = 0, lora_only: bool = False,
        base_from: str | Path | None = None) -> dict:
    """Train everything and write ``out/base-sdxl``, ``out/loras``, ``out/logs``, ``out/training_report.json`` and
    ``out/README.md``. ``lora_only`` keeps the base already in ``out`` and retrains only the LoRA run.
    ``base_from``: train only the LoRA run, on the base in that assets folder (``out`` then holds just the run:
    ``loras``, ``logs`` and the training report; how the held-out demo runs are made, see docs/demo.md)."""
    import shutil
    import tempfile

    from diffusers import StableDiffusionXLPipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report_path = out / "training_report.json"
    if base_from is not None:
        lora_only = True
    base_dir = Path(base_from) / BASE_DIRNAME if base_from is not None else out / BASE_DIRNAME
    report: dict = (json.loads(report_path.read_text(encoding="utf-8"))
                    if lora_only and base_from is None else {})
    if base_from is not None:
        report["base_from"] = Path(base_from).name
    report.update({"seed": seed, "budget": budget.__dict__})
    report.setdefault("minutes", {})
    torch.manual_seed(seed)
    # 1. Data: the base set (plain shapes), the style set (ink outlines, leaning to the favourite subjects) and
    #    held-out styled images for the validation loss, all procedural and seeded.
    base_x, base_captions = make_dataset(budget.base_images, seed=seed + 1)
    style_x, style_captions = make_dataset(budget.style_images, seed=seed + 2, ink=True,
                                           combos=biased_combos(budget.style_images, budget.style_share, seed + 2))
    val_x, val_captions = make_dataset(budget.validation_images, seed=seed + 5, ink=True)
    if not lora_only:
        with tempfile.TemporaryDirectory(prefix="lora_spectrum_tok_") as tok_dir:
            # 2. The untrained pipeline.
            pipe = build_pipeline(seed, tok_dir)
            report["parameters"] = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                                    for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
            # 3. VAE on both sets, one third outlined (it is a codec: it must reproduce the dark outlines it will
            #    be asked to decode).
            t0 = time.perf_counter()
            vae_x = torch.cat([base_x[: 2 * budget.base_images // 3], make_dataset(budget.base_images // 3,
                                                                                    seed=seed + 3, ink=True)[0]])
            report["vae_l1"] = train_vae(pipe.vae, vae_x, budget, seed)
            pipe.vae.requires_grad_(False)
            report["minutes"]["vae"] = round((time.perf_counter() - t0) / 60, 2)
            # 4. UNet + text encoders on the base set.
            t0 = time.perf_counter()
            means, stds = encode_latents(pipe.vae, base_x)
            report["unet_loss"] = train_base(pipe, means, stds, base_captions, budget, seed)
            report["minutes"]["unet"] = round((time.perf_counter() - t0) / 60, 2)
            # 5. Refine the VAE decoder (the encoder, hence every latent, stays as the UNet learned it).
            t0 = time.perf_counter()
            report["vae_decoder_l1"] = refine_decoder(pipe.vae, vae_x, budget.vae_decoder_steps, seed)
            report["minutes"]["vae_decoder"] = round((time.perf_counter() - t0) / 60, 2)
            # 6. Save the base before any adapter is added, then the demo's own CLIP (it reads the base's
            #    tokenizer and VAE), for the CLIP measures offline.
            save_base(pipe, out / BASE_DIRNAME)
            write_style_set(out / STYLE_DIRNAME)
            t0 = time.perf_counter()
            report["clip"] = train_clip(out / CLIP_DIRNAME, seed=seed, quick=budget is QUICK, base=out / BASE_DIRNAME)
            report["minutes"]["clip"] = round((time.perf_counter() - t0) / 60, 2)
    # 7. The style LoRA, from the saved (fp16-rounded) base so the epochs fit the shipped weights exactly; old
    #    epoch files and logs of this series are removed first, so nothing stale is left beside the new run.
    for old in (out / LORAS_DIRNAME).glob(f"{SERIES}_*.safetensors"):
        old.unlink()
    shutil.rmtree(out / LOGS_DIRNAME / SERIES, ignore_errors=True)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base_dir), torch_dtype=torch.float32,
                                                     local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
    t0 = time.perf_counter()
    s_means, s_stds = encode_latents(pipe.vae, style_x)
    v_means, v_stds = encode_latents(pipe.vae, val_x)
    # 8. The oracle scores the base and every saved epoch on held-out prompts (quick runs: one seed, few steps).
    seeds = oracle.SEEDS[:budget.oracle_seeds]
    base_scores = oracle.measure(pipe, seeds=seeds, steps=budget.oracle_steps)
    table: list[dict] = []

    def on_save(epoch: int, path: Path) -> None:
        scores = oracle.measure(pipe, seeds=seeds, steps=budget.oracle_steps)
        table.append({"epoch": epoch, "file": path.name, **scores})
        log(f"oracle epoch {epoch}: {table[-1]}")

    saved = train_lora(pipe, s_means, s_stds, style_captions, budget, seed, out / LORAS_DIRNAME, out / LOGS_DIRNAME,
                       validation=(v_means, v_stds, val_captions), on_save=on_save)
    report["minutes"]["lora"] = round((time.perf_counter() - t0) / 60, 2)
    report["epochs"] = [p.name for p in saved]
    for row, value in zip(table, oracle.score(table, base_scores), strict=True):
        row["score"] = value
    report["oracle"] = {
        "what": "held-out prompts with the trigger, rendered per saved epoch: share drawn in the asked colour, "
                "shape and both ('correct'), mean ink fraction (the style); score = harmonic mean of the style "
                "gained (share of the run's most ink above the base) and the correctness kept (over the base's)",
        "prompts": [f"{c} {s} on {b}" for c, s, b in oracle.HELD_OUT], "seeds": list(seeds),
        "style_set_favourites": [f"{c} {s}" for c, s in FAVOURITES], "style_share": budget.style_share,
        "base": base_scores, "epochs": table, "best_epoch": oracle.best_epoch(table, base_scores),
    }
    report["minutes"]["total"] = round(sum(v for k, v in report["minutes"].items() if k != "total"), 2)
    report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if base_from is None:
        write_readme(out, report)
    log(f"done in {(time.perf_counter() - t_start) / 60:.2f} min: {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_trainer.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ASSETS_DIR), help="output folder (default: the shipped assets_data)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-steps", type=int, default=None, help="override the UNet step count")
    parser.add_argument("--lora-only", action="store_true", help="keep the base in --out; retrain only the LoRA")
    parser.add_argument("--base-from", default=None,
                        help="train only the LoRA, on the base of this assets folder; --out gets just the run")
    parser.add_argument("--style-share", type=float, default=None,
                        help="share of the style set drawn from the favourite subjects (the bias; default 0.6)")
    parser.add_argument("--lora-lr", type=float, default=None, help="the LoRA's learning rate (default 4e-4)")
    parser.add_argument("--lora-epochs", type=int, default=None, help="epochs of the LoRA run (default 24)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is often fastest on a busy, shared CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    if args.unet_steps is not None:
        budget = replace(budget, unet_steps=args.unet_steps)
    for name, value in (("style_share", args.style_share), ("lora_lr", args.lora_lr),
                        ("lora_epochs", args.lora_epochs)):
        if value is not None:
            budget = replace(budget, **{name: value})
    run(args.out, budget, args.seed, lora_only=args.lora_only, base_from=args.base_from)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
