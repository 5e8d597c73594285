"""A stand-in trainer for the watcher's tests: writes the shipped demo's epoch files into a folder one by one, each
in several chunks with pauses (as a trainer's save or a slow copy does), leaves a ``.tmp`` file as some trainers do
while saving, and one epoch file cut short that never completes. Run as a script:

    python -m tests.stand_in_trainer OUT [--pause 0.15] [--chunks 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lora_spectrum.demo import assets

SOURCE = assets.ASSETS_DIR / assets.LORAS_DIRNAME
TRUNCATED = "jimeng_27.safetensors"  # never completes: its header promises more data than is written
TEMPORARY = "jimeng_30.safetensors.tmp"


def epoch_files() -> list[Path]:
    return sorted(SOURCE.glob("jimeng_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))


def write_in_chunks(source: Path, target: Path, chunks: int, pause: float) -> None:
    data = source.read_bytes()
    step = -(-len(data) // chunks)
    with target.open("wb") as f:
        for k in range(0, len(data), step):
            f.write(data[k:k + step])
            f.flush()
            time.sleep(pause)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--pause", type=float, default=0.15)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--between", type=float, default=0.5, help="seconds between two saves")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = epoch_files()
    for k, source in enumerate(files):
        write_in_chunks(source, out / source.name, args.chunks, args.pause)
        if k == 1:
            (out / TEMPORARY).write_bytes(files[0].read_bytes()[:1000])
        time.sleep(args.between)
    (out / TRUNCATED).write_bytes(files[-1].read_bytes()[: files[-1].stat().st_size // 2])
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
