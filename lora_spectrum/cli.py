"""``python -m lora_spectrum`` / ``lora-spectrum``: argument parsing and printing, nothing else.

Every command calls the same core functions the Streamlit app uses. Exit codes: 0 success, 1 some work failed
(reported, the rest done), 2 bad arguments or an unusable input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_spectrum.errors import LoraSpectrumError


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from exc


def _csv_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lora-spectrum", description="Compare the epochs of a LoRA training run.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("inspect", help="list the LoRA files of a folder with their epochs, states and metadata")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    s = sub.add_parser("demo", help="write the offline demo base and its epoch LoRAs")
    s.add_argument("--out", required=True)
    s.add_argument("--family", choices=["sdxl", "z-image"], default="sdxl")
    s.add_argument("--random", action="store_true", help="the random-weight demo instead of the trained one")

    s = sub.add_parser("grid", help="render epochs x seeds x strengths side by side into a labelled grid")
    s.add_argument("--base", help="repo id, diffusers folder or single-file checkpoint; 'demo' for the demo base")
    s.add_argument("--loras", help="the loras folder (default: the config's, or the demo's with --base demo)")
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--family", choices=["sdxl", "z-image", "auto"])
    s.add_argument("--series")
    s.add_argument("--epochs", default="all", help="all, or comma-separated epoch numbers")
    s.add_argument("--include-base", action="store_true")
    s.add_argument("--seeds", type=_csv_ints, default=[1])
    s.add_argument("--strengths", type=_csv_floats, default=[1.0])
    s.add_argument("--prompt")
    s.add_argument("--negative")
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg", type=float)
    s.add_argument("--sampler")
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--cache-dir")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--mix", type=int, metavar="N",
                   help="render up to N epochs (or strengths) in one batched call, each sample through its own "
                        "adapter; memory grows with N x seeds (default: the config's batch_epochs)")

    s = sub.add_parser("bench", help="measure swap speed and memory against diffusers' ways, side by side")
    s.add_argument("--model", choices=["tiny", "sdxl-size", "z-image-size"], default="tiny")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument("--rank", type=int, default=32)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--swaps", type=int, default=200, help="swaps for the memory-growth figure")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("insight", help="weight-space curves, loss curve and a suggested epoch, without rendering")
    s.add_argument("--loras", required=True)
    s.add_argument("--series")
    s.add_argument("--logs", help="a training log folder with TensorBoard event files")
    s.add_argument("--grid", help="a grid output folder whose manifest.json adds image measures")
    s.add_argument("--clip-model", help="CLIP model id or folder for the image measures (default: "
                                        "$LORA_SPECTRUM_CLIP_MODEL or openai/clip-vit-base-patch32)")
    s.add_argument("--clip-download", action="store_true",
                   help="let the CLIP model download once if it is not on this machine (default: local files only)")
    s.add_argument("--json", action="store_true")
    return p


def _cmd_inspect(args) -> int:
    from lora_spectrum.catalog import Catalog

    folder = Path(args.loras)
    if not folder.is_dir():
        print(f"lora-spectrum: {folder}: loras folder does not exist", file=sys.stderr)
        return 2
    entries = Catalog(folder).scan()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        return 0
    rows = [("file", "series", "epoch", "state", "format", "rank", "alpha", "unet/dit", "te", "reason")]
    for e in entries:
        rows.append((e.name, e.series, "" if e.epoch is None else str(e.epoch), e.state, e.format,
                     "" if e.rank is None else str(e.rank), "" if e.alpha is None else f"{e.alpha:g}",
                     str(e.denoiser_keys), str(e.text_encoder_keys), e.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if not entries:
        print(f"(no LoRA files in {folder})")
    return 0


def _cmd_demo(args) -> int:
    from lora_spectrum.demo import copy_trained_demo, write_demo

    if args.random or args.family != "sdxl":
        base, loras = write_demo(args.out, args.family)
        print(f"demo base: {base}\ndemo loras: {loras}")
    else:
        base, loras, logs = copy_trained_demo(args.out)
        print(f"demo base: {base}\ndemo loras: {loras}\ntraining log: {logs}")
    return 0


def _cmd_grid(args) -> int:
    from lora_spectrum.runs import grid_command

    return grid_command(args, out=sys.stdout, err=sys.stderr)


def _cmd_bench(args) -> int:
    from lora_spectrum.bench import format_table, run_benchmark

    result = run_benchmark(model=args.model, device=args.device, rank=args.rank, epochs=args.epochs,
                           swaps=args.swaps, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _cmd_insight(args) -> int:
    from lora_spectrum.catalog import Catalog
    from lora_spectrum.measures import format_insight, series_insight

    catalog = Catalog(args.loras)
    catalog.scan()
    # The log folder as the app picks it (EngineChoice.logs_folder), less what only the app has (a config, the
    # demo): --logs as typed, else <loras>/logs when there is one.
    beside = Path(args.loras) / "logs"
    logs = args.logs or (beside if beside.is_dir() else None)
    result = series_insight(catalog, series=args.series, logs=logs, grid=args.grid,
                            clip_model=args.clip_model, allow_download=args.clip_download)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_insight(result))
    return 0


COMMANDS = {"inspect": _cmd_inspect, "demo": _cmd_demo, "grid": _cmd_grid, "bench": _cmd_bench,
            "insight": _cmd_insight}


def _quiet_libraries() -> None:
    """Our own progress lines are the only ones printed; the libraries' loading bars would bury them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("grid", "bench", "demo"):
        _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except LoraSpectrumError as exc:
        print(f"lora-spectrum {args.command}: {exc}", file=sys.stderr)
        return 2
