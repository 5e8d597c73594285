"""Which adapter is in the denoiser, atomically: the one peft adapter slot, the LRU of prepared adapters, strength,
swap history and the generation counter. Reading, fused mode and routed batches live in their own modules; the
steps are explained in ``docs/adapters.md``. Nothing here chooses devices or knows about Streamlit.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_spectrum.adapters.fusing import Fuser, peft_scaling, unfusable
from lora_spectrum.adapters.reading import PreparedAdapter
from lora_spectrum.adapters.routing import route, unroutable
from lora_spectrum.adapters.store import AdapterStore
from lora_spectrum.errors import LoraLoadError, LoraSpectrumError, translated


@dataclass
class SwapRecord:
    name: str
    kind: str  # cold | prefetched | warm | rebuild | base | strength | routed | routed-peft
    seconds: float
    strength: float = 1.0
    fused: bool = False  # the adapter is merged into the base weights (fused mode) rather than added by peft


@dataclass
class _Slot:
    adapter_name: str
    signature: tuple
    params: dict[str, torch.nn.Parameter] | None  # key -> slot parameter; None when the fast path cannot map
    layers: list = field(default_factory=list)  # peft LoRA layers holding this slot
    layer_names: list[str] = field(default_factory=list)  # their module names in the denoiser, same order
    unfusable: str | None = None  # why fused mode cannot merge this slot ("" when it can); None: not checked yet


class HotSwapper:
    """Owns the adapter slot in one denoiser. Not thread-safe by itself: the engine's lock serialises callers."""

    def __init__(self, pipe, family, resident: int = 4, empty_cache: bool = False, fuse: bool = False,
                 compiled: bool = False):
        self.pipe = pipe
        self.family = family
        self.denoiser = family.denoiser(pipe)
        self.empty_cache = empty_cache
        # Files read, kept (LRU) and read ahead (store.py); converted for this pipe, which it only reads.
        self.store = AdapterStore(self.denoiser, family, functools.partial(family.convert_lora, pipe=pipe), resident)
        self.reader = self.store.reader
        self._slot: _Slot | None = None
        self._slot_counter = 0
        self._lock = threading.RLock()
        self.active: str | None = None  # path of the active file, None for the base
        self._installed: PreparedAdapter | None = None  # what the slot's parameters hold now
        self.strength: float = 0.0
        self.generation = 0  # changes on every swap: stale state is detectable
        self.history: list[SwapRecord] = []
        self._layer_state: tuple[bool, float] | None = None  # (enabled, strength) the slot's layers hold now
        # Fused mode (docs/adapters.md): merged into reused buffers, the base weights kept by reference.
        self.fuse = bool(fuse)
        self.fuser = Fuser(self.denoiser)
        self._install_serial = 0  # changes whenever the slot's parameters change (rebind or rebuild)
        self.fuse_note = ""  # why the last file in fused mode rendered unfused ("" when it was merged)
        # For a compiled denoiser (compilation.py): the slot's layers stay enabled and each holds its strength
        # in a 0-dim tensor, written in place, so that no swap, strength or base changes what the graph guards.
        self.compiled = bool(compiled)

    # ------------------------------------------------------------------ reading (store.py)
    def load_adapter(self, path: str | Path) -> tuple[PreparedAdapter, bool]:
        """The prepared adapter for ``path`` (``AdapterStore.load``: warm, prefetched or cold). Touches no model."""
        return self.store.load(path)

    # ------------------------------------------------------------------ state changes
    def get_active_adapter(self) -> tuple[str | None, float]:
        return self.active, self.strength

    def activate(self, path: str | Path, strength: float = 1.0, prepared: PreparedAdapter | None = None
                 ) -> SwapRecord:
        """Make ``path`` the active adapter at ``strength``. On any error the previous state stays exactly.
        ``prepared``: the adapter for ``path`` the caller read just now (it is then not read again)."""
        with self._lock:
            t0 = time.perf_counter()
            strength = float(strength)
            if not math.isfinite(strength):
                raise LoraLoadError(path, f"strength must be a finite number, not {strength}")
            # 1. Prepare (or take from the LRU); raises before anything changed.
            kind = "warm" if prepared is not None and self.store.is_resident(path, prepared) else "cold"
            if prepared is None:
                prepared, _ = self.store.load(path)
                kind = self.store.last_source
            # 2. Install into the slot.
            if prepared is not self._installed or self._slot is None:
                if self._install(prepared):
                    kind = "rebuild"
            else:
                kind = "strength"
            # 3. Strength (0 means the adapter layers are bypassed); in fused mode, merged into the base weights.
            try:
                self._apply_strength(prepared, strength)
            except LoraLoadError:  # a failed merge: the base weights were restored, so the base is what renders
                self.active, self.strength = None, 0.0
                self.generation += 1
                raise
            self.active, self.strength = str(path), strength
            if self.empty_cache and torch.cuda.is_available():
                torch.cuda.empty_cache()
            return self._record(prepared.name, kind, t0, strength, self.fuser.is_fused())

    def use_base(self) -> SwapRecord:
        """Render with the bare base: every adapter layer is bypassed (its forward is the base layer's) and, in
        fused mode, every merged layer points at its base weight again."""
        with self._lock:
            t0 = time.perf_counter()
            self.fuser.restore_all()
            if self._slot is not None:
                self._set_strength(0.0)
            self.active, self.strength = None, 0.0
            return self._record("base", "base", t0, 0.0)

    def unload(self) -> None:
        """Remove the adapter slot and the peft wrappers entirely, giving back the original modules."""
        with self._lock:
            self.fuser.clear()  # the weights are the base again; the merge buffers are freed
            if self._slot is not None:
                self.denoiser.unload_lora()
                self._slot = None
            self._layer_state = None
            self.store.clear()
            self._installed = None
            self.active, self.strength = None, 0.0
            self.generation += 1

    def set_fuse(self, enabled: bool) -> None:
        """Switch fused mode (docs/adapters.md) on or off; the active adapter and strength stay what they are.
        Off: the base weights come back, the merge buffers are freed and the adapter layers are enabled again;
        on: the active adapter is merged now. Renders change slightly (other arithmetic): the generation moves."""
        with self._lock:
            enabled = bool(enabled)
            if enabled == self.fuse:
                return
            if enabled and self.compiled:
                raise LoraSpectrumError("fused mode cannot be switched on for a compiled denoiser (every switch "
                                        "between merged and added layers would recompile it)")
            self.fuse = enabled
            self.generation += 1
            if not enabled:
                self.fuser.clear()
            if (self.active is None or self._installed is None) and self._slot is not None:
                self._set_strength(0.0)
            if self.active is None or self._installed is None:
                return
            try:
                self._apply_strength(self._installed, self.strength)
            except LoraLoadError:
                self.active, self.strength = None, 0.0
                raise

    def fused_extra_bytes(self) -> int:  # what fused mode costs in memory: the merge buffers (0 unfused)
        return self.fuser.extra_bytes()

    def is_fused(self) -> bool:  # whether an adapter is merged into the base weights now
        return self.fuser.is_fused()

    # ------------------------------------------------------------------ routed batches (routing.py)
    def unroutable(self, prepared: PreparedAdapter) -> str:
        """Why this adapter cannot share a routed batch ("" when it can); see ``routing.unroutable``."""
        return unroutable(prepared, self.family)

    @contextmanager
    def routed(self, blocks: list[tuple[str | None, float]], samples: int, way: str = "auto",
               prepared: dict[str, PreparedAdapter] | None = None):
        """Several adapters in one denoiser batch: each block (file or ``None``, strength) is ``samples``
        consecutive samples of it; on leaving, the slot is exactly as it was (``routing.route`` says how)."""
        with self._lock, route(self, blocks, samples, way, prepared) as record:
            yield record

    # ------------------------------------------------------------------ for routing.py (not for callers)
    def _record(self, name: str, kind: str, t0: float, strength: float = 1.0, fused: bool = False) -> SwapRecord:
        """A state change done: the generation moves and the history keeps its record (the last 1000)."""
        self.generation += 1
        record = SwapRecord(name, kind, time.perf_counter() - t0, strength, fused)
        self.history.append(record)
        del self.history[:-1000]
        return record

    def _lend_slot(self) -> PreparedAdapter | None:
        """Before a routed batch: the base weights the base (routed deltas are added unfused); returns what the
        slot holds, for ``_put_back``."""
        self.fuser.restore_all()
        self._layer_state = None
        return self._installed

    def _slot_for(self, prepared: PreparedAdapter) -> _Slot:
        """The slot, installed for ``prepared``'s layout if it holds another (its layers tell their scaling)."""
        if self._slot is None or self._slot.signature != prepared.signature:
            self._install(prepared)
        return self._slot

    def _put_back(self, installed: PreparedAdapter | None, broken: bool) -> Exception | None:
        """After a routed batch: the slot holds ``installed`` again, active at its strength (merged again when
        fused) or bypassed; when ``broken`` (hooks may be left) or this fails, the base is active (returns why)."""
        self._layer_state = None
        self.generation += 1
        failure = None
        if not broken:
            try:
                if installed is not None and self._installed is not installed:
                    self._install(installed)
                for layer in self._slot.layers if self._slot is not None else ():
                    layer.set_adapter(self._slot.adapter_name)
                if self.active is not None and self._installed is not None:
                    self._apply_strength(self._installed, self.strength)
                elif self._slot is not None:
                    self._set_strength(0.0)
                return None
            except Exception as exc:  # noqa: BLE001 - a failed reinstall or merge: the base is what renders
                failure = exc
        self.active, self.strength = None, 0.0
        self.fuser.restore_all()
        if self._slot is not None:
            self._layer_state = None
            self._set_strength(0.0)
        return failure

    # ------------------------------------------------------------------ internals
    def _apply_strength(self, prepared: PreparedAdapter, strength: float) -> None:
        """Unfused: set the adapter layers' scale. Fused: merge the slot into the base weights at ``strength``
        and bypass the adapter layers; a slot that cannot be merged renders unfused (``fuse_note`` says why)."""
        if prepared.deltas is not None:  # LyCORIS/DoRA: always merged, whatever ``fuse`` says (weight_deltas.py)
            if self._slot is not None:
                self._set_strength(0.0)
            self.fuser.merge_deltas(prepared.path, prepared.deltas, strength, (self._install_serial, strength))
            return
        if not self.fuse or strength == 0.0:
            self.fuser.restore_all()
            self._set_strength(strength)
            return
        slot = self._slot
        named_layers = list(zip(slot.layer_names, slot.layers, strict=True))
        if slot.unfusable is None:  # checked once per slot
            slot.unfusable = unfusable(slot.adapter_name, named_layers)
        if slot.unfusable:
            self.fuse_note = f"{prepared.name} renders unfused: {slot.unfusable}"
            self.fuser.restore_all()
            self._set_strength(strength)
            return
        self.fuse_note = ""
        self._set_strength(0.0)  # bypassed first: the delta lives in the weights, never added twice
        self.fuser.merge(prepared.path, slot.adapter_name, named_layers, strength, (self._install_serial, strength))

    def _set_strength(self, strength: float) -> None:
        """Set every adapter layer's scale (0: bypassed). The layers are only touched when the state changes:
        peft's ``enable_adapters`` walks each layer's modules, the one cost left in a warm swap otherwise."""
        slot = self._slot
        state = (strength != 0.0, strength if strength != 0.0 else 0.0)
        if state == self._layer_state:
            return
        if self.compiled:
            _strength_in_place(slot, strength)
            self._layer_state = state
            return
        for layer in slot.layers:
            if strength == 0.0:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_scale(slot.adapter_name, strength)
        self._layer_state = state

    def _install(self, prepared: PreparedAdapter) -> bool:
        """Make the slot's parameters hold ``prepared``: re-pointed when the layout matches, else a new slot
        through diffusers (LyCORIS/DoRA: nothing to install). Returns whether the slot was rebuilt."""
        rebuilt = prepared.deltas is None and not (self._slot is not None and self._slot.signature == prepared.signature and self._slot.params)
        if rebuilt:
            self._rebuild(prepared)
        elif prepared.deltas is None:
            self._rebind(prepared)
        self._installed = prepared
        self._install_serial += 1
        return rebuilt

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
        old = self._slot
        self._load_named(prepared, new_name)
        if old is not None:
            self._drop_adapter(old.adapter_name)
        named_layers = [(n, m) for n, m in self.denoiser.named_modules()
                        if isinstance(m, LoraLayer) and new_name in m.lora_A]
        layers = [m for _, m in named_layers]
        for layer in layers:
            layer.set_adapter(new_name)
        self._layer_state = None  # new layers: their strength is set by the caller
        named = dict(self.denoiser.named_parameters())
        params: dict[str, torch.nn.Parameter] | None = {}
        for key in prepared.tensors:
            stem, leaf = key.rsplit(".", 1)
            pname = f"{stem}.{new_name}.{leaf}"
            if pname not in named:
                params = None  # an unusual layout: later swaps go through diffusers again
                break
            params[key] = named[pname]
        self._slot = _Slot(new_name, prepared.signature, params, layers, [n for n, _ in named_layers])
        if params:
            self._rebind(prepared)

    def _load_named(self, prepared: PreparedAdapter, name: str) -> None:
        """Load ``prepared`` through diffusers as peft adapter ``name``; on failure nothing of it stays."""
        prefix = self.family.lora_prefix
        sd = {f"{prefix}.{k}": v for k, v in prepared.tensors.items()}
        alphas = {k: v for k, v in (prepared.network_alphas or {}).items()}
        try:
            with translated(lambda exc: LoraLoadError(prepared.path, f"could not be loaded into the "
                                                                     f"{self.family.denoiser_attr} "
                                                                     f"({type(exc).__name__}: {exc})")):
                self.denoiser.load_lora_adapter(sd, prefix=prefix, network_alphas=alphas or None,
                                                adapter_name=name, low_cpu_mem_usage=True)
            if name not in getattr(self.denoiser, "peft_config", {}):
                raise LoraLoadError(prepared.path, "diffusers matched none of its keys to the model")
        except LoraSpectrumError:
            self._drop_adapter(name)
            raise

    def _drop_adapter(self, adapter_name: str) -> None:
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            with warnings.catch_warnings():  # peft names the adapter it falls back to; the caller sets its own
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                self.denoiser.delete_adapters(adapter_name)


def _strength_in_place(slot: _Slot, strength: float) -> None:
    """Compiled: every layer enabled, its scaling a 0-dim float32 tensor written in place (0: adds nothing,
    so the base renders exactly); peft's ``set_scale`` would store a float the graph specialises on."""
    name = slot.adapter_name
    for layer in slot.layers:
        if layer.disable_adapters:
            layer.enable_adapters(True)
        value = strength * peft_scaling(layer, name)
        held = layer.scaling.get(name)
        if isinstance(held, torch.Tensor):
            held.fill_(value)
        else:
            device = layer.get_base_layer().weight.device
            layer.scaling[name] = torch.tensor(value, dtype=torch.float32, device=device)
