"""Train the demo's held-in runs and record what the verdict is checked against (tests/measures/test_demo_runs.py).

Each run is a LoRA trained with the demo trainer on the shipped base with other style bias, learning rate and seed;
its training report holds the trainer's oracle table (rendered on held-out prompts, scored by pixels that know the
demo's drawing). The probe is then rendered with ``insight --probe`` exactly as a person would, and its per-image
measures are written next to the oracle's table, so the test runs the verdict on real measures without rendering
for minutes. Run it from the project root (about 10 minutes a run on 2 CPU cores):

    python scripts/demo_runs.py --work /tmp/demo_runs            # every run
    python scripts/demo_runs.py --work /tmp/demo_runs --only early
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "lora_spectrum" / "demo" / "assets_data"
FIXTURES = ROOT / "tests" / "fixtures" / "demo_runs"
# name: (style share, learning rate, seed); "shipped" is the shipped demo itself (share 0.6, 4e-4, seed 0).
RUNS = {
    "shipped": None,
    "early": (0.85, 8e-4, 1),  # strong bias, twice the learning rate: overfits early
    "slow": (0.2, 6e-5, 5),  # very mild bias, a seventh of the learning rate: does not overfit in 24 epochs
    "seed": (0.6, 4e-4, 3),  # the shipped settings, another seed
    "mild": (0.45, 2e-4, 4),  # mild bias, half the learning rate
    "late": (0.3, 1e-4, 2),  # mild bias, a quarter of the learning rate: a flat optimum
}
KEEP = ("file", "epoch", "prompt", "kind", "seed", "style", "fidelity")


def _run(cmd: list[str], log: Path) -> None:
    with log.open("w", encoding="utf-8") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True)


def make(name: str, work: Path) -> Path:
    """Train (unless done), probe and write ``tests/fixtures/demo_runs/<name>.json``."""
    folder = ASSETS if RUNS[name] is None else work / name
    if RUNS[name] is not None and not (folder / "training_report.json").is_file():
        share, lr, seed = RUNS[name]
        _run([sys.executable, "-m", "tools.demo_trainer.trainer", "--base-from", str(ASSETS), "--out", str(folder),
              "--style-share", str(share), "--lora-lr", str(lr), "--seed", str(seed)], work / f"{name}-train.log")
    if not (work / f"probe-{name}" / "probe.json").is_file():
        _run([sys.executable, "-m", "lora_spectrum", "insight", "--base", "demo", "--loras", str(folder / "loras"),
              "--probe", "--probe-out", str(work / f"probe-{name}"), "--json"], work / f"{name}-probe.log")
    return _record(name, folder, work)


def _record(name: str, folder: Path, work: Path) -> Path:
    from lora_spectrum.demo import assets
    from lora_spectrum.measures.probe_measures import probe_measures

    report = json.loads((folder / "training_report.json").read_text(encoding="utf-8"))
    probe = probe_measures(work / f"probe-{name}", clip_model=str(assets.demo_clip_dir()),
                           references=assets.demo_style_dir())
    record = {
        "run": name, "settings": report["budget"] | {"seed": report["seed"]},
        "oracle": {k: report["oracle"][k] for k in ("base", "epochs", "best_epoch")},
        "probe": {"probe_set": probe["probe_set"], "measure": probe["measure"], "references": probe["references"],
                  "fidelity_kinds": probe["fidelity_kinds"], "base": probe["base"],
                  "epochs": [{"epoch": e["epoch"], "file": e["file"]} for e in probe["epochs"]],
                  "cells": [{k: c[k] for k in KEEP} for c in probe["cells"]]},
    }
    path = FIXTURES / f"{name}.json"
    path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="where the runs, renders and logs go")
    parser.add_argument("--only", action="append", choices=sorted(RUNS), help="just this run (repeatable)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in args.only or RUNS:
        print(f"{name}: {make(name, work)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
