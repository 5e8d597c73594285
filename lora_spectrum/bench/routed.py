"""Several epochs in one batch (``HotSwapper.routed``) against epoch by epoch: one denoising step of a grid."""

from __future__ import annotations

import time

import torch

from lora_spectrum.bench.models import forward_inputs
from lora_spectrum.bench.timing import sync, timed


def measure_routed(pipe, family, paths, device, dtype, latent: int, repeats: int, base_out) -> dict:
    """Issue 6's stretch: ``k`` epochs, one image each, through the denoiser. Epoch by epoch is a warm swap and
    a batch-1 forward per epoch; routed is one forward of ``k`` samples, each through its own adapter
    (``HotSwapper.routed``, both ways), after a set-up paid once per grid."""
    from lora_spectrum.adapters import HotSwapper

    k = min(4, len(paths))
    chosen = paths[-k:]
    one = forward_inputs(family.name, family.denoiser(pipe), device, dtype, latent)
    batched = forward_inputs(family.name, family.denoiser(pipe), device, dtype, latent, batch=k)
    swapper = HotSwapper(pipe, family, resident=k)
    for path in chosen:  # every file resident and the slot installed: epoch by epoch at its best
        swapper.activate(path, 1.0)

    def epoch_by_epoch():
        outs = []
        for path in chosen:
            swapper.activate(path, 1.0)
            outs.append(one())
        return outs

    # 1. Epoch by epoch (warm swaps), then the same forward of k samples on the bare base, for reference.
    epoch_by_epoch()
    sequential = [timed(epoch_by_epoch, device) for _ in range(repeats)]
    singles = epoch_by_epoch()
    swapper.use_base()
    base_k = [timed(batched, device) for _ in range(repeats)]
    # 2. Routed, both ways: set-up timed on its own, then forwards of k samples inside one routing block.
    figures = {}
    for way in ("auto", "peft"):
        setups, times, out = [], [], None
        for _ in range(2):
            t0 = time.perf_counter()
            with swapper.routed([(p, 1.0) for p in chosen], 1, way=way):
                sync(device)
                setups.append(time.perf_counter() - t0)
                out = batched()
                times += [timed(batched, device) for _ in range(max(1, repeats // 2))]
        figures[way] = (setups, times, out, swapper.history[-1].kind)
    setups, routed, out, kind = figures["auto"]
    # 3. Each routed sample must be its own epoch's (close to its epoch-by-epoch forward, not a neighbour's),
    #    and nothing may stay behind.
    own = max(float((out[i].float() - singles[i].float()).abs().max()) for i in range(k))
    neighbour = min(float((out[i].float() - singles[(i + 1) % k].float()).abs().max()) for i in range(k))
    swapper.unload()
    exact = bool(torch.equal(one(), base_out))
    peft_own = max(float((figures["peft"][2][i].float() - singles[i].float()).abs().max()) for i in range(k))
    return {"epochs": k, "sequential": sequential, "base_k": base_k, "setup": setups, "routed": routed,
            "kind": kind, "peft_setup": figures["peft"][0], "peft_routed": figures["peft"][1],
            "own_max_abs": max(own, peft_own), "neighbour_max_abs": neighbour, "base_exact": exact}
