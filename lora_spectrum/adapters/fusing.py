"""Fused mode: an adapter merged into the base weights of the layers it targets, out of place. Each targeted layer
keeps its base weight *by reference* (never copied, never written) and gets one merge buffer, reused by every later
merge; the layer's parameter points at the buffer while an adapter is merged and back at the base weight after.
Knows peft's LoRA layers and weight tensors, not the slot.

In the spirit of ComfyUI's ``ModelPatcher``, whose backup holds the original weights by reference so that undoing a
patch is a pointer swap; here the merged weights also go into reused buffers, so a swap allocates nothing. See
``docs/adapters.md`` (fused mode).
"""

from __future__ import annotations

import math
import time

import torch

from lora_spectrum.errors import LoraLoadError, LoraSpectrumError, translated


def peft_scaling(layer, adapter: str) -> float:
    """A peft LoRA layer's scaling at strength 1, as its ``set_scale`` computes it: alpha / r (or / sqrt(r))."""
    r = layer.r[adapter]
    return layer.lora_alpha[adapter] / (math.sqrt(r) if layer.use_rslora.get(adapter) else r)


def native_merge(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``W0 + s·(B @ A)`` is merged with one ``addmm`` in the weights' own dtype. CUDA's half-precision
    GEMMs accumulate in float32 and round once, so they are exact enough and fastest. CPUs without native bf16/fp16
    kernels emulate them: measured on this project's AVX2 machine, a bf16 ``addmm`` took 4-7x as long as converting
    to a float32 scratch, ``addmm_`` there and converting back, which rounds once too."""
    return dtype == torch.float32 or device.type == "cuda"


def _merged(layer, adapter: str, w0: torch.Tensor, out: torch.Tensor, strength: float, scratch) -> None:
    """Write ``W0 + strength * scaling * (B @ A)`` into ``out`` (``w0``'s shape and dtype), computed with float32
    accumulation and rounded once. A Conv2d's 1x1 up-projection makes its delta one matmul."""
    scaling = strength * peft_scaling(layer, adapter)
    native = native_merge(out.device, out.dtype)
    dtype = out.dtype if native else torch.float32
    down = layer.lora_A[adapter].weight.to(device=out.device, dtype=dtype).flatten(1)
    up = layer.lora_B[adapter].weight.to(device=out.device, dtype=dtype).flatten(1)
    rows = out.shape[0]
    if native:
        torch.addmm(w0.reshape(rows, -1), up, down, alpha=scaling, out=out.view(rows, -1))
        return
    acc = scratch(w0)  # float32, w0's shape, shared by every layer of that shape
    acc.copy_(w0)
    acc.view(rows, -1).addmm_(up, down, alpha=scaling)
    out.copy_(acc)


def unfusable(adapter: str, named_layers: list[tuple[str, object]]) -> str:
    """Why adapter ``adapter`` of these (name, peft LoRA layer) cannot be merged exactly by ``_merged`` ("" when
    it can)."""
    for name, layer in named_layers:
        base = layer.get_base_layer()
        if layer.use_dora.get(adapter) or adapter in getattr(layer, "lora_variant", {}):
            return f"{name} is a DoRA (or other variant) layer"
        if getattr(layer, "lora_bias", {}).get(adapter):
            return f"{name}'s up-projection carries a bias"
        if getattr(layer, "fan_in_fan_out", False):
            return f"{name} stores its weight transposed (fan_in_fan_out)"
        if isinstance(base, torch.nn.Conv2d):
            down, up = layer.lora_A[adapter], layer.lora_B[adapter]
            same = all(getattr(down, k) == getattr(base, k)
                       for k in ("kernel_size", "stride", "padding", "dilation", "padding_mode"))
            if base.groups != 1 or not same or up.kernel_size != (1, 1) or up.stride != (1, 1) \
                    or up.padding != (0, 0) or base.dilation != (1, 1):
                return f"{name} is a convolution whose LoRA is not down: the layer's kernel, up: 1x1"
        elif not isinstance(base, torch.nn.Linear):
            return f"{name} is a {type(base).__name__} layer"
    return ""


class Fuser:
    """The base weight of every layer merged so far (by reference), its merge buffer, and which layers point at
    their buffer now. A layer never merged holds its base weight as loaded.

    One buffer a layer, not two: merges are computed from the base weight, never from the buffer, and renders
    never overlap a swap (the engine lock), so a buffer can be rewritten while its layer points at it; a merge
    that fails part-way points every layer back at its base weight.
    """

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.pristine: dict[str, torch.Tensor] = {}  # module name -> its base weight as loaded (the same tensor)
        self.buffers: dict[str, torch.Tensor] = {}  # module name -> where merges of that layer are written
        self._scratch: dict[tuple, torch.Tensor] = {}  # (shape, device) -> float32 accumulator (CPU, bf16/fp16)
        self._fused_names: set[str] = set()  # layers whose parameter points at its merge buffer now
        self._fused_key: tuple | None = None  # what is merged now (the caller's key), None when unknown
        self.last_merge_s = 0.0  # how long the last merge took (0 when it had nothing to do)

    def extra_bytes(self) -> int:
        """What fused mode costs in memory: the merge buffers plus the float32 scratch (the base weights are
        kept by reference and cost nothing)."""
        return sum(t.numel() * t.element_size() for t in [*self.buffers.values(), *self._scratch.values()])

    def is_fused(self) -> bool:
        """Whether an adapter is merged into the base weights now."""
        return bool(self._fused_names)

    def merge(self, path: str, adapter: str, named_layers: list[tuple[str, object]], strength: float,
              key: tuple) -> None:
        """Merge ``W0 + strength * scaling * (B @ A)`` of peft adapter ``adapter`` into every layer of
        ``named_layers`` (``merge_weights``)."""
        scratch = self._scratch_for
        self.merge_weights(path, {name: (lambda w0, out, layer=layer: _merged(layer, adapter, w0, out, strength,
                                                                              scratch))
                                  for name, layer in named_layers}, key)

    def merge_deltas(self, path: str, deltas: dict, strength: float, key: tuple) -> None:
        """Merge LyCORIS/DoRA ``weight_deltas.LayerDelta`` layers at ``strength`` (0: the base)."""
        if strength == 0.0:
            self.restore_all()
            return
        self.merge_weights(path, {name: (lambda w0, out, d=d: out.copy_(d.merged(w0, strength)))
                                  for name, d in deltas.items()}, key)

    def merge_weights(self, path: str, weights: dict, key: tuple) -> None:
        """Merge each named layer: ``weights[name](W0, out)`` writes its merged weight into ``out`` (a buffer of
        W0's shape and dtype), from the base weight ``W0``; nothing to do when ``key`` (what the caller merges: its
        install serial and strength) is merged already. On any failure every layer points at its base weight again
        and ``LoraLoadError`` is raised: the base is then active."""
        if key == self._fused_key and self._fused_names:
            self.last_merge_s = 0.0
            return
        t0 = time.perf_counter()
        try:
            # Out of memory or anything else: the base comes back (below), translated.
            with torch.no_grad(), translated(lambda exc: LoraLoadError(
                    path, f"could not be merged into the base weights (fused mode; {type(exc).__name__}: {exc}); "
                          f"the base weights were restored and the base is active")):
                # 1. Layers the previous merge wrote that this adapter leaves alone: back to the base.
                for name in self._fused_names - set(weights):
                    self._restore(name)
                # 2. Merge, layer by layer, into the layer's buffer (made the first time), then point the layer at
                #    it. A layer counts as merged before it is, so a failure restores it too.
                self._fused_key = None
                for name, make in weights.items():
                    param = self._parameter(name)
                    if name not in self.pristine:
                        self.pristine[name] = param.data
                    elif name not in self._fused_names and param.data.device != self.pristine[name].device:
                        # Model offload moved this layer since it was first merged: its weight as it is now is
                        # the base weight (never written), and the old buffer is on the wrong device.
                        self.pristine[name] = param.data
                        self.buffers.pop(name, None)
                    w0 = self.pristine[name]
                    if name not in self.buffers:
                        # Contiguous even when the weight is channels_last, so the merge can write it flat.
                        self.buffers[name] = torch.empty_like(w0, memory_format=torch.contiguous_format)
                    self._fused_names.add(name)
                    make(w0, self.buffers[name])
                    param.data = self.buffers[name]
        except LoraSpectrumError:
            self.restore_all()
            raise
        self._fused_key = key
        if any(b.is_cuda for b in self.buffers.values()):
            torch.cuda.synchronize()  # the kernels were only queued: time them, not their launches
        self.last_merge_s = time.perf_counter() - t0

    def base_weight(self, name: str) -> torch.Tensor:
        """Layer ``name``'s base weight as loaded, whether or not an adapter is merged into it now."""
        return self.pristine.get(name, self._parameter(name).data)

    def _parameter(self, name: str) -> torch.nn.Parameter:
        module = self.denoiser.get_submodule(name)
        if hasattr(module, "get_base_layer"):
            module = module.get_base_layer()
        return module.weight

    def _scratch_for(self, w0: torch.Tensor) -> torch.Tensor:
        key = (tuple(w0.shape), w0.device)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(w0.shape, dtype=torch.float32, device=w0.device)
        return self._scratch[key]

    def _restore(self, name: str) -> None:
        """Point one layer back at its base weight: bit-exact, since that tensor was never written."""
        self._parameter(name).data = self.pristine[name]
        self._fused_names.discard(name)

    def restore_all(self) -> None:
        """Every merged layer back at its base weight (the buffers stay, for the next merge)."""
        for name in sorted(self._fused_names):
            self._restore(name)
        self._fused_key = None

    def clear(self) -> None:
        """Restore, then free the buffers and the scratch (a later merge makes new ones)."""
        self.restore_all()
        self.pristine.clear()
        self.buffers.clear()
        self._scratch.clear()
