"""Which adapter is in the denoiser, atomically; the LRU of resident adapters; purity; swap timings.

Nothing here chooses devices or knows about Streamlit. The text encoders are never touched: files are read with
safetensors, converted with diffusers' own converters, and only the denoiser's keys are loaded, into the denoiser.

How a swap works (and why it is both atomic and residue-free):
1. *Prepare* (touches no model): read the file with safetensors (never a pickle), convert keys with diffusers,
   keep the denoiser's keys, check every key names a layer of this denoiser with the right shape and every value
   is finite, cast to the model's dtype/device. Any failure raises ``LoraLoadError`` and nothing has changed.
2. *Install*: the first file of a given layout (same keys, shapes and alphas) is loaded through diffusers'
   ``load_lora_adapter`` into a new peft adapter slot; the previous slot is deleted only once the new one loaded.
   Later files of the same layout - every epoch of one run - are installed by re-pointing the slot's parameters at
   the prepared tensors (no copy, no peft call): hand-written because it is the one step that makes a swap cost
   what reading the file costs (see ``python -m lora_spectrum bench``). It cannot fail halfway: every shape was
   checked in step 1.
3. *Strength* is peft's per-layer ``set_scale``; strength 0 and ``use_base()`` disable the adapter layers, whose
   forward then is exactly the base layer's. Base weights are never fused or modified, so nothing drifts.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lora_spectrum.errors import LoraLoadError

TE_KEY_PREFIXES = ("text_encoder", "lora_te")


@dataclass
class PreparedAdapter:
    """A LoRA file read, converted and checked against this denoiser; ready to install."""

    path: str
    name: str
    identity: tuple[int, int]  # (size, mtime_ns) of the file it was read from
    tensors: dict[str, torch.Tensor]  # peft layout without prefix: "<module>.lora_A.weight" -> tensor
    network_alphas: dict[str, float] | None
    signature: tuple
    dropped_text_encoder_keys: int
    nbytes: int


@dataclass
class SwapRecord:
    name: str
    kind: str  # cold | warm | rebuild | base | strength
    seconds: float
    strength: float = 1.0


@dataclass
class _Slot:
    adapter_name: str
    signature: tuple
    params: dict[str, torch.nn.Parameter] | None  # key -> slot parameter; None when the fast path cannot map
    layers: list = field(default_factory=list)  # peft LoRA layers holding this slot


def _file_identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise LoraLoadError(path, "file not found (removed or renamed after the last scan)") from exc
    return st.st_size, st.st_mtime_ns


class HotSwapper:
    """Owns the adapter slot in one denoiser. Not thread-safe by itself: the engine's lock serialises callers."""

    def __init__(self, pipe, family, resident: int = 4, empty_cache: bool = False):
        self.pipe = pipe
        self.family = family
        self.denoiser = family.denoiser(pipe)
        self.resident = max(1, int(resident))
        self.empty_cache = empty_cache
        self._lru: OrderedDict[str, PreparedAdapter] = OrderedDict()
        self._slot: _Slot | None = None
        self._slot_counter = 0
        self._lock = threading.RLock()
        # Shapes of every Linear/Conv layer of the untouched denoiser, to validate files before touching it.
        self._layers: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, module in self.denoiser.named_modules():
            if isinstance(module, torch.nn.Linear):
                self._layers[name] = ("linear", (module.out_features, module.in_features))
            elif isinstance(module, torch.nn.Conv2d):
                self._layers[name] = ("conv", (module.out_channels, module.in_channels, *module.kernel_size))
        self.active: str | None = None  # path of the active file, None for the base
        self._installed: PreparedAdapter | None = None  # what the slot's parameters hold now
        self.strength: float = 0.0
        self.generation = 0  # changes on every swap: stale state is detectable
        self.history: list[SwapRecord] = []

    # ------------------------------------------------------------------ reading
    @property
    def _param(self) -> torch.Tensor:
        return next(self.denoiser.parameters())

    def prepare(self, path: str | Path) -> PreparedAdapter:
        """Read, convert and check one file against this denoiser. Touches no model; raises ``LoraLoadError``."""
        path = str(path)
        name = Path(path).name
        # 1. Read with safetensors only (never pickle), then convert with diffusers' converters.
        identity = _file_identity(path)
        try:
            raw = load_file(path)
        except FileNotFoundError as exc:
            raise LoraLoadError(path, "file not found (removed or renamed after the last scan)") from exc
        except SafetensorError as exc:
            raise LoraLoadError(path, f"not a valid safetensors file, or truncated ({exc})") from exc
        except OSError as exc:
            raise LoraLoadError(path, f"cannot read the file ({exc})") from exc
        if not raw:
            raise LoraLoadError(path, "the file holds no tensors")
        try:
            converted, alphas = self.family.convert_lora(raw, self.pipe)
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for unknown layouts; translated
            raise LoraLoadError(path, f"diffusers could not read its keys as a LoRA ({type(exc).__name__}: "
                                      f"{exc})") from exc
        # 2. Keep the denoiser's keys; count what belongs to the text encoders (dropped, never loaded).
        prefix = self.family.lora_prefix + "."
        dropped = sum(1 for k in converted if k.startswith(TE_KEY_PREFIXES))
        mine = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
        unknown = [k for k in converted if not k.startswith(prefix) and not k.startswith(TE_KEY_PREFIXES)]
        if not mine:
            what = "only text-encoder keys" if dropped else "no keys diffusers recognises for this model"
            raise LoraLoadError(path, f"no {self.family.denoiser_attr} keys: it has {what}; "
                                      f"is it a LoRA for another model family than {self.family.name}?")
        if unknown:
            raise LoraLoadError(path, f"{len(unknown)} key(s) fit no part of a {self.family.name} pipeline, "
                                      f"e.g. {unknown[0]!r}; a LoRA for another architecture?")
        if "lora_A" not in next(iter(mine)):
            from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

            mine = convert_unet_state_dict_to_peft(mine)
        # 3. Every key must name a layer of this denoiser, with matching shapes; every value must be finite.
        self._check_layers(path, mine)
        self._check_finite(path, mine)
        if alphas:
            alphas = {k: float(v) for k, v in alphas.items() if k.startswith(prefix)}
        # 4. Cast once to the model's dtype and device.
        ref = self._param
        mine = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in mine.items()}
        signature = (tuple(sorted((k, tuple(v.shape)) for k, v in mine.items())),
                     tuple(sorted((alphas or {}).items())))
        nbytes = sum(v.numel() * v.element_size() for v in mine.values())
        return PreparedAdapter(path, name, identity, mine, alphas or None, signature, dropped, nbytes)

    def _check_layers(self, path: str, sd: dict[str, torch.Tensor]) -> None:
        for key, value in sd.items():
            module = key.split(".lora_")[0]
            if module not in self._layers:
                raise LoraLoadError(path, f"targets layer {module!r}, which this {self.family.name} "
                                          f"{self.family.denoiser_attr} does not have; a LoRA for another "
                                          f"architecture (for example SD1.5 on SDXL)?")
            kind, shape = self._layers[module]
            out_f, in_f = shape[0], shape[1]
            if key.endswith("lora_A.weight") and value.shape[1] != in_f:
                raise LoraLoadError(path, f"shape mismatch at {module}: lora_A is {tuple(value.shape)} but the "
                                          f"layer takes {in_f} inputs; a LoRA for another architecture?")
            if key.endswith("lora_B.weight") and value.shape[0] != out_f:
                raise LoraLoadError(path, f"shape mismatch at {module}: lora_B is {tuple(value.shape)} but the "
                                          f"layer has {out_f} outputs; a LoRA for another architecture?")

    @staticmethod
    def _check_finite(path: str, sd: dict[str, torch.Tensor]) -> None:
        tensors = [t for t in sd.values() if t.is_floating_point()]
        # One grouped norm over all tensors; a NaN/Inf anywhere makes its norm non-finite.
        norms = torch._foreach_norm([t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                                     for t in tensors]) if tensors else []
        if tensors and not bool(torch.isfinite(torch.stack(norms)).all()):
            for key, t in sd.items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise LoraLoadError(path, f"holds NaN or Inf values (in {key}); renders would be black. "
                                              f"The training likely diverged at this epoch")

    # ------------------------------------------------------------------ state changes
    def get_active_adapter(self) -> tuple[str | None, float]:
        return self.active, self.strength

    def load_adapter(self, path: str | Path) -> tuple[PreparedAdapter, bool]:
        """The prepared adapter for ``path`` from the LRU (warm) or the file (cold). Touches no model."""
        path = str(path)
        identity = _file_identity(path)
        hit = self._lru.get(path)
        if hit is not None and hit.identity == identity:
            self._lru.move_to_end(path)
            return hit, True
        prepared = self.prepare(path)
        self._lru[path] = prepared
        self._lru.move_to_end(path)
        while len(self._lru) > self.resident:
            self._lru.popitem(last=False)
        return prepared, False

    def activate(self, path: str | Path, strength: float = 1.0) -> SwapRecord:
        """Make ``path`` the active adapter at ``strength``. On any error the previous state stays exactly."""
        with self._lock:
            t0 = time.perf_counter()
            strength = float(strength)
            if not math.isfinite(strength):
                raise LoraLoadError(path, f"strength must be a finite number, not {strength}")
            # 1. Prepare (or take from the LRU); raises before anything changed.
            prepared, warm = self.load_adapter(path)
            # 2. Install into the slot.
            kind = "warm" if warm else "cold"
            if prepared is not self._installed or self._slot is None:
                if self._slot is not None and self._slot.signature == prepared.signature and self._slot.params:
                    self._rebind(prepared)
                else:
                    self._rebuild(prepared)
                    kind = "rebuild"
                self._installed = prepared
            else:
                kind = "strength"
            # 3. Strength (0 means the adapter layers are bypassed).
            self._set_strength(strength)
            self.active, self.strength = str(path), strength
            self.generation += 1
            if self.empty_cache and torch.cuda.is_available():
                torch.cuda.empty_cache()
            record = SwapRecord(prepared.name, kind, time.perf_counter() - t0, strength)
            self.history.append(record)
            del self.history[:-1000]
            return record

    def use_base(self) -> SwapRecord:
        """Render with the bare base: every adapter layer is bypassed (its forward is the base layer's)."""
        with self._lock:
            t0 = time.perf_counter()
            if self._slot is not None:
                for layer in self._slot.layers:
                    layer.enable_adapters(False)
            self.active, self.strength = None, 0.0
            self.generation += 1
            record = SwapRecord("base", "base", time.perf_counter() - t0, 0.0)
            self.history.append(record)
            return record

    def unload(self) -> None:
        """Remove the adapter slot and the peft wrappers entirely, giving back the original modules."""
        with self._lock:
            if self._slot is not None:
                self.denoiser.unload_lora()
                self._slot = None
            self._lru.clear()
            self._installed = None
            self.active, self.strength = None, 0.0
            self.generation += 1

    # ------------------------------------------------------------------ internals
    def _set_strength(self, strength: float) -> None:
        slot = self._slot
        for layer in slot.layers:
            if strength == 0.0:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_scale(slot.adapter_name, strength)

    def _rebind(self, prepared: PreparedAdapter) -> None:
        params = self._slot.params
        device = next(iter(params.values())).device
        for key, tensor in prepared.tensors.items():
            if tensor.device != device:  # offload modes move the denoiser between devices
                tensor = tensor.to(device)
            params[key].data = tensor

    def _rebuild(self, prepared: PreparedAdapter) -> None:
        """Load a new slot through diffusers; the old slot is deleted only after the new one loaded."""
        from peft.tuners.lora import LoraLayer

        self._slot_counter += 1
        new_name = f"lora_spectrum_slot{self._slot_counter}"
        prefix = self.family.lora_prefix
        sd = {f"{prefix}.{k}": v for k, v in prepared.tensors.items()}
        alphas = {k: v for k, v in (prepared.network_alphas or {}).items()}
        old = self._slot
        try:
            self.denoiser.load_lora_adapter(sd, prefix=prefix, network_alphas=alphas or None, adapter_name=new_name,
                                            low_cpu_mem_usage=True)
            if new_name not in getattr(self.denoiser, "peft_config", {}):
                raise LoraLoadError(prepared.path, "diffusers matched none of its keys to the model")
        except LoraLoadError:
            self._drop_adapter(new_name)
            raise
        except Exception as exc:  # noqa: BLE001 - peft/diffusers errors are translated here
            self._drop_adapter(new_name)
            raise LoraLoadError(prepared.path, f"could not be loaded into the {self.family.denoiser_attr} "
                                               f"({type(exc).__name__}: {exc})") from exc
        if old is not None:
            self._drop_adapter(old.adapter_name)
        layers = [m for m in self.denoiser.modules() if isinstance(m, LoraLayer) and new_name in m.lora_A]
        for layer in layers:
            layer.set_adapter(new_name)
        named = dict(self.denoiser.named_parameters())
        params: dict[str, torch.nn.Parameter] | None = {}
        for key in prepared.tensors:
            stem, leaf = key.rsplit(".", 1)
            pname = f"{stem}.{new_name}.{leaf}"
            if pname not in named:
                params = None  # an unusual layout: later swaps go through diffusers again
                break
            params[key] = named[pname]
        self._slot = _Slot(new_name, prepared.signature, params, layers)
        if params:
            self._rebind(prepared)

    def _drop_adapter(self, adapter_name: str) -> None:
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            self.denoiser.delete_adapters(adapter_name)

    def resident_names(self) -> list[str]:
        return [p.name for p in self._lru.values()]

    def resident_bytes(self) -> int:
        return sum(p.nbytes for p in self._lru.values())
