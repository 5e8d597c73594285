"""Long-session soak: many swaps across the epochs of one run, with renders in between, on the tiny model.

    python scripts/soak.py                      # 1,000 swaps across 10 epochs, a render after every 5th
                                                # (about two minutes on 2 busy CPU cores)
    python scripts/soak.py --swaps 200 --json   # shorter, machine-readable

What a workbench left open for hours must keep, checked after the last swap:
1. The base stays bit-identical: every base weight of the denoiser equals a snapshot taken before the first
   swap, and a base render at the end equals the base render at the start, pixel for pixel.
2. Memory comes back: the process RSS at the end is within one adapter (the size of one prepared epoch) of the
   RSS after the warm-up round, when the resident-adapter LRU was first full. The LRU stays bounded.
3. Swaps do not creep up: the median swap time of the last 100 swaps is at most ``--creep`` times that of the
   first 100 (plus 1 ms, below which timer noise on a shared machine dominates). The swap sequence repeats every
   100 swaps, so both windows do the same mix of cold, warm, strength-only and base swaps.

Prints a summary and exits 1 when a check fails. ``tests/render/test_engine.py`` runs a short variant (no timing
check: timings are measured here, never asserted in tests).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from lora_spectrum import demo  # noqa: E402
from lora_spectrum.bases.families import get_family  # noqa: E402
from lora_spectrum.render.engine import Engine, RenderRequest  # noqa: E402
from lora_spectrum.render.sampling import Sampling  # noqa: E402

WINDOW = 100  # swaps per repeat of the pattern, and per timing window
CREEP_SLACK_S = 0.001


@dataclass
class SoakReport:
    family: str
    swaps: int
    epochs: int
    renders: int
    seconds: float
    base_weights_identical: bool
    base_render_identical: bool
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    adapter_mb: float
    rss_ok: bool
    resident_adapters: int
    resident_limit: int
    swap_kinds: dict[str, int]
    swap_median_first_ms: float | None
    swap_median_last_ms: float | None
    creep_ratio: float | None
    timing_ok: bool | None  # None: too few swaps to compare two windows
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _rss() -> int:
    """The process RSS after a full collection, with freed heap handed back to the OS where glibc allows."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return psutil.Process().memory_info().rss


def _base_weights(denoiser) -> dict[str, torch.Tensor]:
    """The base parameters, with peft's wrapping undone in the names (``x.base_layer.weight`` -> ``x.weight``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in denoiser.state_dict().items()
            if "lora_" not in k}


def _pattern(files: list[str], seed: int) -> list[tuple[str | None, float]]:
    """One window of swaps: mostly epochs at a few strengths, sometimes the base; repeated for the whole soak."""
    rng = random.Random(seed)
    out: list[tuple[str | None, float]] = []
    for _ in range(WINDOW):
        if rng.random() < 0.1:
            out.append((None, 0.0))
        else:
            out.append((rng.choice(files), rng.choice((0.5, 1.0, 1.0, 1.3))))
    return out


def soak(swaps: int = 1000, epochs: int = 10, family: str = "sdxl", render_every: int = 5, rank: int = 64,
         resident: int = 4, creep: float = 1.5, seed: int = 0, workdir: str | Path | None = None,
         check_timing: bool = True, threads: int | None = 1, progress=None) -> SoakReport:
    """Run the soak and return its report (see the module docstring). ``render_every`` renders after every n-th
    swap; ``rank`` sets the size of one adapter, the unit of the memory check; ``threads`` sets torch's intra-op
    threads for the run (None: leave them), one by default: the tiny model's work is too small to share, and
    on a busy machine more threads mostly add noise to the timings."""
    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _soak(swaps, epochs, family, render_every, rank, resident, creep, seed, workdir, check_timing,
                     progress, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _soak(swaps, epochs, family, render_every, rank, resident, creep, seed, workdir, check_timing, progress,
          t_start) -> SoakReport:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lora_spectrum_soak_"))
    # 1. A tiny engine and ``epochs`` epoch files of one run (one direction growing with the epoch).
    pipe = demo.build_tiny(family, seed=0, workdir=workdir / "tok")
    engine = Engine(pipe, get_family(family), f"tiny-{family}", resident_adapters=resident, max_sequence_length=32)
    denoiser = engine.hotswap.denoiser
    numbers = [10 * (i + 1) for i in range(epochs)]
    files = [str(p) for p in demo.write_demo_loras(denoiser, workdir / "loras", family, epochs=numbers, rank=rank)]
    size = 32
    sampler = "Euler" if family == "sdxl" else "Euler (flow)"
    req = RenderRequest("a red circle", (1,), Sampling("", 1, 0.0, size, size, sampler))

    # 2. Before any swap: the base weights and a base render.
    weights0 = _base_weights(denoiser)
    base0 = np.asarray(engine.render(req).images[0])

    # 3. Warm-up round: every epoch once (the LRU fills, the slot is built, layouts are learned), one render with
    #    an adapter active and one without (the allocator has seen both).
    with engine.lock:
        for path in files[:-1]:
            engine.set_lora(path, 1.0)
    engine.render(req, files[-1], 1.0)
    engine.render(req)
    adapter_bytes = engine.hotswap.store.nbytes() // max(1, len(engine.hotswap.store.names()))
    rss_start = rss_peak = _rss()

    # 4. The soak: the same window of swaps over and over, a render after every ``render_every``-th swap.
    pattern = _pattern(files, seed)
    times: list[float] = []
    kinds: dict[str, int] = {}
    renders = 0
    for i in range(swaps):
        path, strength = pattern[i % WINDOW]
        if render_every and (i + 1) % render_every == 0:
            record = engine.render(req, path, strength).swap
            renders += 1
        else:
            with engine.lock:
                record = engine.set_lora(path, strength)
        times.append(record.seconds)
        kinds[record.kind] = kinds.get(record.kind, 0) + 1
        if (i + 1) % WINDOW == 0:
            rss_peak = max(rss_peak, psutil.Process().memory_info().rss)
            if progress:
                progress(i + 1, swaps)

    # 5. The checks.
    failures: list[str] = []
    engine.render(req)  # back to the base, as at the start
    weights = _base_weights(denoiser)
    identical = weights.keys() == weights0.keys() and all(torch.equal(v, weights0[k]) for k, v in weights.items())
    del weights
    if not identical:
        failures.append("base weights changed")
    base_end = np.asarray(engine.render(req).images[0])
    render_identical = bool(np.array_equal(base0, base_end))
    if not render_identical:
        failures.append("a base render at the end differs from the one at the start")
    rss_end = _rss()
    rss_ok = rss_end - rss_start <= adapter_bytes
    if not rss_ok:
        failures.append(f"RSS grew by {(rss_end - rss_start) / 2**20:.2f} MB, more than one adapter "
                        f"({adapter_bytes / 2**20:.2f} MB)")
    n_resident = len(engine.hotswap.store.names())
    if n_resident > resident:
        failures.append(f"{n_resident} adapters resident, limit {resident}")
    first = last = ratio = None
    timing_ok = None
    if len(times) >= 2 * WINDOW:
        first, last = statistics.median(times[:WINDOW]), statistics.median(times[-WINDOW:])
        ratio = last / first if first > 0 else None
        timing_ok = last <= creep * first + CREEP_SLACK_S
        if check_timing and not timing_ok:
            failures.append(f"swap times crept up: median {first * 1e3:.2f} ms in the first {WINDOW} swaps, "
                            f"{last * 1e3:.2f} ms in the last {WINDOW} (limit x{creep})")
    return SoakReport(
        family=family, swaps=swaps, epochs=epochs, renders=renders, seconds=time.perf_counter() - t_start,
        base_weights_identical=identical, base_render_identical=render_identical,
        rss_start_mb=rss_start / 2**20, rss_end_mb=rss_end / 2**20, rss_peak_mb=rss_peak / 2**20,
        adapter_mb=adapter_bytes / 2**20, rss_ok=rss_ok, resident_adapters=n_resident, resident_limit=resident,
        swap_kinds=kinds, swap_median_first_ms=None if first is None else first * 1e3,
        swap_median_last_ms=None if last is None else last * 1e3, creep_ratio=ratio, timing_ok=timing_ok,
        failures=failures)


def summary(r: SoakReport) -> str:
    lines = [
        f"soak ({r.family}): {r.swaps} swaps across {r.epochs} epochs, {r.renders} renders, {r.seconds:.1f} s",
        f"  swap kinds: {', '.join(f'{k} {n}' for k, n in sorted(r.swap_kinds.items()))}",
        f"  base weights bit-identical: {'yes' if r.base_weights_identical else 'NO'}; "
        f"base render identical: {'yes' if r.base_render_identical else 'NO'}",
        f"  RSS after warm-up {r.rss_start_mb:.1f} MB, at the end {r.rss_end_mb:.1f} MB "
        f"({r.rss_end_mb - r.rss_start_mb:+.2f} MB; one adapter {r.adapter_mb:.2f} MB), peak {r.rss_peak_mb:.1f} MB"
        f": {'ok' if r.rss_ok else 'FAIL'}",
        f"  resident adapters {r.resident_adapters} (limit {r.resident_limit})",
    ]
    if r.timing_ok is not None:
        lines.append(f"  median swap: first {WINDOW} {r.swap_median_first_ms:.2f} ms, last {WINDOW} "
                     f"{r.swap_median_last_ms:.2f} ms (x{r.creep_ratio:.2f}): {'ok' if r.timing_ok else 'FAIL'}")
    lines.append("PASS" if r.ok else "FAIL: " + "; ".join(r.failures))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--swaps", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--family", choices=("sdxl", "z-image"), default="sdxl")
    ap.add_argument("--render-every", type=int, default=5, help="render after every n-th swap (0: never)")
    ap.add_argument("--rank", type=int, default=64, help="LoRA rank: the size of one adapter")
    ap.add_argument("--resident", type=int, default=4, help="adapters kept prepared in memory (LRU)")
    ap.add_argument("--creep", type=float, default=1.5, help="largest allowed last/first median swap time")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if args.swaps < 1 or args.epochs < 2:
        ap.error("--swaps must be at least 1 and --epochs at least 2")

    def progress(done, total):
        print(f"  {done}/{total} swaps", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lora_spectrum_soak_") as tmp:
        report = soak(args.swaps, args.epochs, args.family, args.render_every, args.rank, args.resident, args.creep,
                      workdir=tmp, threads=args.threads or None, progress=progress)
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=2) if args.json else summary(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
