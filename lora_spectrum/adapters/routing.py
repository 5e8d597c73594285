"""Routed batches: several adapters in one denoiser batch, each block of samples through its own (stacked forward
hooks, or peft's mixed-batch forward), set up on a ``HotSwapper``'s denoiser and taken back again.

Never writes a base weight; the slot is borrowed and given back through the swapper (``lend``, ``take_back``), and
only its public methods are used. See ``docs/adapters.md`` (routed batches).
"""

from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager

import torch

from lora_spectrum.adapters.fusing import peft_scaling
from lora_spectrum.errors import LoraLoadError, RenderError, translated

MIX_BASE = "__base__"  # peft's name for "no adapter" for a sample of a routed batch


def _add_stacked(stacks: list[torch.Tensor], samples: int, module, args, out):
    """Forward hook of stacked routing: add block ``b``'s ``x @ down_b.T @ up_b.T`` to its rows of ``out``.

    ``stacks`` = [downs (blocks, in, r), ups (blocks, r, out)]. The input holds ``copies`` x ``blocks`` x
    ``samples`` rows, block-major within each copy, so a view with the blocks as a batch dimension lets two
    broadcast matmuls do every block at once (no gather, no copy of x).
    """
    x = args[0]
    if stacks[0].device != x.device or stacks[0].dtype != x.dtype:  # offload modes move the layer between devices
        stacks[:] = [t.to(device=x.device, dtype=x.dtype) for t in stacks]
    down_t, up_t = stacks
    blocks = down_t.shape[0]
    copies, rest = divmod(int(x.shape[0]), blocks * samples)
    if rest or not copies:
        raise RenderError(f"a routed batch of {blocks} blocks reached a layer whose input has {x.shape[0]} rows")
    h = torch.matmul(x.reshape(copies, blocks, -1, x.shape[-1]), down_t)
    delta = torch.matmul(h, up_t)
    try:
        out.view(copies, blocks, -1, out.shape[-1]).add_(delta)
        return out
    except RuntimeError:  # a non-contiguous output: add out of place
        return out + delta.reshape(out.shape)


def _route(names: list[str], module, args, kwargs):
    """Forward pre-hook on a peft LoRA layer: which adapter each sample of its input goes through. A batch holds
    ``copies`` of the routed samples (two under classifier-free guidance: SDXL and Z-Image both concatenate the
    whole batch twice), so the names repeat."""
    x = args[0] if args else kwargs.get("x")
    copies, rest = divmod(int(x.shape[0]), len(names))
    if rest or not copies:
        raise RenderError(f"a routed batch of {len(names)} samples reached a layer whose input has "
                          f"{x.shape[0]} rows; this layer cannot route samples to different adapters")
    kwargs["adapter_names"] = names * copies
    return args, kwargs


def unroutable(prepared, family) -> str:
    """Why this adapter cannot share a routed batch ("" when it can): it targets a layer that embeds every
    sample's tokens in one call (``Family.unbatched_layers``), where samples cannot be told apart, or it is a
    DoRA adapter (peft's mixed-batch forward refuses those)."""
    if prepared.deltas is not None:
        return "it is a LyCORIS or DoRA file, merged into the base weights, which every sample would share"
    for key in prepared.tensors:
        if key.split(".", 1)[0] in family.unbatched_layers:
            return f"it adapts {key.rsplit('.', 2)[0]}, which embeds every sample's tokens in one call"
        if "lora_magnitude_vector" in key:
            return "it is a DoRA adapter, which peft cannot route per sample"
    return ""


@contextmanager
def route(swapper, blocks: list[tuple[str | None, float]], samples: int, way: str = "auto",
          prepared: dict | None = None):
    """``HotSwapper.routed`` (the caller holds ``Engine.lock``): each of ``blocks`` = (file or ``None`` for
    the base, strength) is ``samples`` consecutive samples of every denoiser call inside the block.

    Two ways, both unfused arithmetic that never writes a base weight: *stacked* (kind ``routed``) when every
    file shares one layout and every adapted layer is a Linear (``_stackable``), else *peft* (kind
    ``routed-peft``); ``way="peft"`` forces the second. Every file is read and checked before anything changes
    (``LoraLoadError`` names it); a file that ``unroutable`` refuses raises too: render it on its own.
    ``prepared`` passes adapters the caller read just now (by path), so that a batch wider than the LRU does not
    read its files twice. Yields the set-up's ``SwapRecord``.
    """
    t0 = time.perf_counter()
    if samples < 1 or not blocks:
        raise RenderError(f"a routed batch needs at least one block of at least one sample ({len(blocks)} "
                          f"block(s) of {samples} sample(s) asked for)")
    # 1. Read and check every file first (warm ones from the LRU); nothing has changed if one fails. Each
    #    block's key: (file, strength), or None for the base.
    keys = [None if p is None or float(s) == 0.0 else (str(p), float(s)) for p, s in blocks]
    distinct: dict[tuple[str, float], object] = {}
    for key in keys:
        if key is None or key in distinct:
            continue
        path, strength = key
        if not math.isfinite(strength):
            raise LoraLoadError(path, f"strength must be a finite number, not {strength}")
        adapter = (prepared or {}).get(path) or swapper.load_adapter(path)[0]
        why = unroutable(adapter, swapper.family)
        if why:
            raise LoraLoadError(path, f"cannot share a batch with other epochs: {why}")
        distinct[key] = adapter
    stacked = way == "auto" and _stackable(distinct, swapper.reader.layers)
    installed, undo, in_flight = swapper.lend(), [], False
    try:
        # 2. Set up the chosen way; ``undo`` collects what step 4 takes back. Torch errors (out of memory while
        #    stacking, say) are translated, so the caller can fail or fall back like for any other.
        with translated(lambda exc: RenderError(f"could not set up the routed batch ({type(exc).__name__}: "
                                                f"{exc})")):
            if stacked:
                kind = "routed"
                _route_stacked(swapper, keys, samples, distinct, undo)
            else:
                kind = "routed-peft"
                _route_peft(swapper, keys, samples, distinct, undo)
        record = swapper.record(f"{len(distinct)} adapter(s) routed", kind, t0, 1.0)
        # 3. The caller renders.
        try:
            yield record
        except BaseException:
            in_flight = True  # a failure in step 4 must not replace the caller's (a cancel, say)
            raise
    finally:
        # 4. Back to the single slot exactly as it was: hooks and temporary adapters gone, then the slot put back
        #    by the swapper. Every step is tried; if one fails, the base is active and the first failure is
        #    raised once all steps ran.
        failures = []
        for fn in reversed(undo):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the other steps must still run
                failures.append(exc)
        failure = swapper.take_back(installed, broken=bool(failures))
        if failure is not None:
            failures.append(failure)
        if failures and not in_flight:
            raise RenderError(f"could not restore the adapter after a routed batch ({failures[0]}); the "
                              f"base is active") from failures[0]


def _stackable(distinct: dict, layers: dict[str, tuple[str, tuple[int, ...]]]) -> bool:
    """Whether the stacked way applies: some file, every file of one layout, every adapted layer a Linear
    (``layers``: the denoiser's layer table)."""
    if not distinct:
        return False
    first = next(iter(distinct.values()))
    if any(p.signature != first.signature for p in distinct.values()):
        return False
    for key, tensor in first.tensors.items():
        stem, leaf = key.rsplit(".", 1)[0], key.rsplit(".", 2)[-2]
        module = stem.rsplit(".", 1)[0]
        if leaf not in ("lora_A", "lora_B") or tensor.dim() != 2 or layers.get(module, ("",))[0] != "linear":
            return False
    return True


def _route_stacked(swapper, keys, samples: int, distinct, undo: list) -> None:
    """Stacked routing: per adapted layer, (blocks, r, in) downs and (blocks, out, r) ups with each block's
    scaling folded in (the base's block: zeros), added after the layer's own forward."""
    from peft.tuners.lora import LoraLayer

    # 1. The slot installed for this layout, so that its peft layers tell each layer's scaling.
    first = next(iter(distinct.values()))
    slot = swapper.slot
    slot.fit(first)
    # 2. Every LoRA layer bypassed for the block: the hooks add the deltas instead.
    for layer in swapper.denoiser.modules():
        if isinstance(layer, LoraLayer):
            layer.enable_adapters(False)
    # 3. Stacks and hooks, layer by layer.
    for name, layer in zip(slot.layer_names, slot.layers, strict=True):
        scaling = peft_scaling(layer, slot.adapter_name)
        down_key, up_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        zeros = torch.zeros_like(first.tensors[up_key])  # the base's block adds nothing
        downs = [(first if key is None else distinct[key]).tensors[down_key] for key in keys]
        ups = [zeros if key is None else distinct[key].tensors[up_key] * (scaling * key[1]) for key in keys]
        device = layer.get_base_layer().weight.device
        down_t = torch.stack(downs).to(device).transpose(1, 2)  # (blocks, in, r)
        up_t = torch.stack(ups).to(device).transpose(1, 2)  # (blocks, r, out)
        hook = functools.partial(_add_stacked, [down_t, up_t], samples)
        undo.append(layer.register_forward_hook(hook).remove)


def _route_peft(swapper, keys, samples: int, distinct, undo: list) -> None:
    """peft's mixed-batch forward: one temporary adapter per distinct (file, strength), each block's name
    repeated for its samples."""
    from peft.tuners.lora import LoraLayer

    # 1. One temporary adapter per distinct (file, strength), dropped again on leaving the block.
    names_for: dict[tuple[str, float], str] = {}
    for i, (key, prepared) in enumerate(distinct.items()):
        names_for[key] = f"lora_spectrum_mix{i}"
        swapper.slot.load(prepared, names_for[key])
        undo.append(functools.partial(swapper.slot.drop, names_for[key]))
    names = [MIX_BASE if key is None else names_for[key] for key in keys for _ in range(samples)]
    # 2. Every LoRA layer enabled, each temporary adapter at its strength, told every sample's adapter.
    for layer in swapper.denoiser.modules():
        if not isinstance(layer, LoraLayer):
            continue
        layer.enable_adapters(True)
        for (_, strength), name in names_for.items():
            if name in layer.lora_A:
                layer.set_scale(name, strength)
        undo.append(layer.register_forward_pre_hook(functools.partial(_route, names), with_kwargs=True).remove)
