"""``bench --compile``: the denoiser's forward through ``torch.compile`` (inductor) against eager, with an
adapter active, the compile time, and recompiles across swaps; the verdict is recorded for ``compile: auto``."""

from __future__ import annotations

import time

from lora_spectrum.bench.timing import median, sync, timed


def measure_compiled(pipe, family, paths, device, forward, repeats: int, eager_active_s: float, say,
                     backend="inductor") -> dict:
    """Compile the bench's denoiser in place, with ``paths[0]`` active as the swapper's compiled mode holds it;
    time the first forward (the compile), then forwards, then forwards after swaps to the other epochs. The
    denoiser is uncompiled and the adapter unloaded again on return."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from lora_spectrum.adapters import HotSwapper
    from lora_spectrum.render.compilation import (
        compile_denoiser,
        denoiser_size,
        record_verdict,
        uncompile,
        verdicts_path,
    )

    denoiser = family.denoiser(pipe)
    size_m = denoiser_size(denoiser)
    swapper = HotSwapper(pipe, family, resident=2, compiled=True)
    torch._dynamo.reset()
    try:
        swapper.activate(paths[0], 1.0)
        say(f"compile: torch.compile ({backend}) of the denoiser, first forward ...")
        compile_denoiser(denoiser, backend)
        sync(device)
        t0 = time.perf_counter()
        forward()
        sync(device)
        compile_s = time.perf_counter() - t0
        say("compile: compiled forwards, then after swaps ...")
        compiled = [timed(forward, device) for _ in range(repeats)]
        graphs = counters["stats"]["unique_graphs"]
        after_swaps = []
        for path in paths[1:4]:
            swapper.activate(path, 0.8)
            after_swaps.append(timed(forward, device))
        swapper.use_base()
        after_swaps.append(timed(forward, device))
        recompiles = counters["stats"]["unique_graphs"] - graphs
    finally:
        uncompile(denoiser)
        swapper.unload()
        torch._dynamo.reset()
    compiled_s = median(compiled)
    verdict = record_verdict(device, family.name, size_m, eager_active_s, compiled_s, compile_s)
    return {"compile_s": compile_s, "forward_compiled_s": compiled_s, "forward_eager_s": eager_active_s,
            "speedup": eager_active_s / compiled_s, "forward_after_swaps_s": median(after_swaps),
            "recompiles_across_swaps": recompiles, "swaps": len(after_swaps), "pays": verdict["pays"],
            "verdict_file": str(verdicts_path()), "denoiser_m": size_m, "backend": str(backend)}
