"""Fused mode: a peft adapter merged into the base weights of the layers it targets, from a pristine copy, and the
base put back by copying that copy (never by subtracting the delta). Knows peft's LoRA layers, not the slot.

In the spirit of ComfyUI's ``ModelPatcher.backup`` / ``unpatch_model``: patch and undo share one small object. See
``docs/adapters.md`` (fused mode).
"""

from __future__ import annotations

import math

import torch

from lora_spectrum.errors import LoraLoadError, LoraSpectrumError, translated


def peft_scaling(layer, adapter: str) -> float:
    """A peft LoRA layer's scaling at strength 1, as its ``set_scale`` computes it: alpha / r (or / sqrt(r))."""
    r = layer.r[adapter]
    return layer.lora_alpha[adapter] / (math.sqrt(r) if layer.use_rslora.get(adapter) else r)


def _merged(layer, adapter: str, w0: torch.Tensor, w: torch.Tensor, strength: float) -> torch.Tensor:
    """``W0 + strength * scaling * (B @ A)`` in float32 on ``w``'s device (the caller casts into ``w``).
    A Conv2d's 1x1 up-projection makes its delta one matmul."""
    scaling = strength * peft_scaling(layer, adapter)
    down = layer.lora_A[adapter].weight.to(device=w.device, dtype=torch.float32)
    up = layer.lora_B[adapter].weight.to(device=w.device, dtype=torch.float32)
    delta = (up.flatten(1) @ down.flatten(1)).view(w.shape)
    return torch.add(w0.to(device=w.device, dtype=torch.float32), delta, alpha=scaling)


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
    """The pristine copy of every base weight merged so far, and which of them hold a merge now.

    ``pristine_device`` None keeps the copy on the weights' own device. A weight not in the copy has never been
    written, so it is the base as loaded.
    """

    def __init__(self, denoiser, pristine_device: str | torch.device | None = None):
        self.denoiser = denoiser
        self.pristine_device = pristine_device
        self.pristine: dict[str, torch.Tensor] = {}  # module name -> its base weight as loaded, bit for bit
        self._fused_names: set[str] = set()  # layers whose base weight holds a merged adapter now
        self._fused_key: tuple | None = None  # what is merged now (the caller's key), None when unknown

    def pristine_bytes(self) -> int:
        """What fused mode costs in memory: the pristine copy of every base weight merged so far."""
        return sum(t.numel() * t.element_size() for t in self.pristine.values())

    def is_fused(self) -> bool:
        """Whether an adapter is merged into the base weights now."""
        return bool(self._fused_names)

    def merge(self, path: str, adapter: str, named_layers: list[tuple[str, object]], strength: float,
              key: tuple) -> None:
        """Write ``W0 + strength * scaling * (B @ A)`` of peft adapter ``adapter`` into every layer of
        ``named_layers`` (``merge_weights``)."""
        self.merge_weights(path, {name: (lambda w0, w, layer=layer: _merged(layer, adapter, w0, w, strength))
                                  for name, layer in named_layers}, key)

    def merge_deltas(self, path: str, deltas: dict, strength: float, key: tuple) -> None:
        """Merge LyCORIS/DoRA ``weight_deltas.LayerDelta`` layers at ``strength`` (0: the base)."""
        if strength == 0.0:
            self.restore_all()
            return
        self.merge_weights(path, {name: (lambda w0, w, d=d: d.merged(w0, strength)) for name, d in deltas.items()},
                           key)

    def merge_weights(self, path: str, weights: dict, key: tuple) -> None:
        """Write ``weights[name](W0, W)`` (the merged weight, any dtype) into each named layer, from the pristine
        ``W0``; nothing to do when ``key`` (what the caller merges: its install serial and strength) is merged
        already. On any failure every merged weight is copied back from the pristine copy and ``LoraLoadError``
        is raised: the base is then active."""
        if key == self._fused_key and self._fused_names:
            return
        try:
            # Out of memory or anything else: the base comes back (below), translated.
            with torch.no_grad(), translated(lambda exc: LoraLoadError(
                    path, f"could not be merged into the base weights (fused mode; {type(exc).__name__}: {exc}); "
                          f"the base weights were restored and the base is active")):
                # 1. The pristine copy of every layer this adapter targets, taken the first time it is merged.
                for name in weights:
                    if name not in self.pristine:
                        w = self.base_weight(name)
                        self.pristine[name] = w.detach().to(self.pristine_device or w.device, copy=True)
                # 2. Layers the previous merge wrote that this adapter leaves alone: back to the base.
                for name in self._fused_names - set(weights):
                    self._restore(name)
                # 3. Merge, layer by layer; a layer counts as written before it is, so a failure restores it too.
                self._fused_key = None
                for name, make in weights.items():
                    w = self.base_weight(name)
                    self._fused_names.add(name)
                    w.copy_(make(self.pristine[name].to(w.device), w))
        except LoraSpectrumError:
            self.restore_all()
            raise
        self._fused_key = key

    def base_weight(self, name: str) -> torch.Tensor:
        module = self.denoiser.get_submodule(name)
        if hasattr(module, "get_base_layer"):
            module = module.get_base_layer()
        return module.weight

    def _restore(self, name: str) -> None:
        """Copy one base weight back from the pristine copy: bit-exact, never by subtracting the delta."""
        with torch.no_grad():
            self.base_weight(name).copy_(self.pristine[name])
        self._fused_names.discard(name)

    def restore_all(self) -> None:
        """Every merged weight copied back from the pristine copy (which stays, for the next merge)."""
        for name in sorted(self._fused_names):
            self._restore(name)
        self._fused_key = None

    def clear(self) -> None:
        """Restore, then free the pristine copy (a later merge takes a new one)."""
        self.restore_all()
        self.pristine.clear()
