"""The one peft adapter slot of a denoiser: which prepared adapter its parameters hold (loaded through diffusers,
or re-pointed in place when the layout matches), the strength its layers add it at, and named adapters loaded
beside it for a routed batch. Never writes a base weight (fused mode is ``fusing.py``'s) and never locks: the
caller holds ``Engine.lock``, the one lock over adapter state (``hotswap.py`` says why).
"""

from __future__ import annotations

import warnings

import torch

from lora_spectrum.adapters.fusing import peft_scaling
from lora_spectrum.adapters.reading import PreparedAdapter
from lora_spectrum.errors import LoraLoadError, LoraSpectrumError, translated


class Slot:
    """The slot in one denoiser. Empty (``built`` false) until the first adapter is installed; afterwards a peft
    adapter named ``adapter_name`` whose ``layers`` (named ``layer_names`` in the denoiser) hold ``installed``.

    ``compiled``: the layers stay enabled and each holds its strength in a 0-dim tensor written in place, so that
    no swap, strength or base changes what a compiled graph guards (``compilation.py``).
    """

    def __init__(self, denoiser, family, compiled: bool = False):
        self.denoiser = denoiser
        self.family = family
        self.compiled = bool(compiled)
        self.adapter_name: str | None = None
        self.signature: tuple | None = None  # the layout the slot's parameters have
        self.params: dict[str, torch.nn.Parameter] | None = None  # key -> parameter; None: the fast path cannot map
        self.layers: list = []  # peft LoRA layers holding the slot
        self.layer_names: list[str] = []  # their module names in the denoiser, same order
        self.unfusable: str | None = None  # why fused mode cannot merge the slot ("" when it can); None: unchecked
        self.installed: PreparedAdapter | None = None  # what the parameters hold now
        self.serial = 0  # changes whenever the parameters change (rebind or rebuild): merges keyed by it go stale
        self._built = 0  # slots built so far, for fresh peft adapter names
        self._layer_state: tuple[bool, float] | None = None  # (enabled, strength) the layers hold now

    @property
    def built(self) -> bool:
        return self.adapter_name is not None

    # ------------------------------------------------------------------ what the parameters hold
    def install(self, prepared: PreparedAdapter) -> bool:
        """Make the parameters hold ``prepared``: re-pointed (``rebind``) when the layout matches, else a new slot
        through diffusers (LyCORIS/DoRA: nothing to install, they are merged). Returns whether it was rebuilt."""
        rebuilt = prepared.deltas is None and not (self.signature == prepared.signature and self.params)
        if rebuilt:
            self._rebuild(prepared)
        elif prepared.deltas is None:
            self.rebind(prepared)
        self.installed = prepared
        self.serial += 1
        return rebuilt

    def fit(self, prepared: PreparedAdapter) -> None:
        """Install ``prepared`` if the slot holds another layout (or nothing), so that its layers fit that layout
        and tell their scaling (routing stacks its adapters on them)."""
        if not self.built or self.signature != prepared.signature:
            self.install(prepared)

    def rebind(self, prepared: PreparedAdapter) -> None:
        """Re-point the parameters at ``prepared``'s tensors (same layout): no copy, nothing traced changes."""
        device = next(iter(self.params.values())).device
        for key, tensor in prepared.tensors.items():
            if tensor.device != device:  # offload modes move the denoiser between devices
                tensor = tensor.to(device)
            self.params[key].data = tensor

    def _rebuild(self, prepared: PreparedAdapter) -> None:
        """Load a new slot through diffusers; the old one is deleted only after the new one loaded."""
        from peft.tuners.lora import LoraLayer

        self._built += 1
        new_name = f"lora_spectrum_slot{self._built}"
        old = self.adapter_name
        self.load(prepared, new_name)
        if old is not None:
            self.drop(old)
        named_layers = [(n, m) for n, m in self.denoiser.named_modules()
                        if isinstance(m, LoraLayer) and new_name in m.lora_A]
        named = dict(self.denoiser.named_parameters())
        params: dict[str, torch.nn.Parameter] | None = {}
        for key in prepared.tensors:
            stem, leaf = key.rsplit(".", 1)
            pname = f"{stem}.{new_name}.{leaf}"
            if pname not in named:
                params = None  # an unusual layout: later swaps go through diffusers again
                break
            params[key] = named[pname]
        self.adapter_name, self.signature, self.params = new_name, prepared.signature, params
        self.layers, self.layer_names = [m for _, m in named_layers], [n for n, _ in named_layers]
        self.unfusable = None
        self.select()
        self.forget_strength()  # new layers: their strength is set by the caller
        if params:
            self.rebind(prepared)

    def select(self) -> None:
        """Every layer of the slot set to the slot's adapter (again, after adapters were loaded beside it)."""
        for layer in self.layers:
            layer.set_adapter(self.adapter_name)

    def remove(self) -> None:
        """Take the slot and every peft wrapper out of the denoiser: the original modules come back."""
        if self.built:
            self.denoiser.unload_lora()
        self.adapter_name = self.signature = self.params = self.installed = None
        self.layers, self.layer_names, self.unfusable = [], [], None
        self._layer_state = None

    # ------------------------------------------------------------------ strength
    def set_strength(self, strength: float) -> None:
        """Set every layer's scale (0: bypassed, the base renders exactly); nothing when the slot is empty. The
        layers are only touched when the state changes: peft's ``enable_adapters`` walks each layer's modules,
        the one cost left in a warm swap otherwise."""
        state = (strength != 0.0, strength if strength != 0.0 else 0.0)
        if not self.built or state == self._layer_state:
            return
        if self.compiled:
            self._strength_in_place(strength)
        else:
            for layer in self.layers:
                if strength == 0.0:
                    layer.enable_adapters(False)
                else:
                    layer.enable_adapters(True)
                    layer.set_scale(self.adapter_name, strength)
        self._layer_state = state

    def forget_strength(self) -> None:
        """The layers were changed behind the slot's back (a routed batch): the next ``set_strength`` writes."""
        self._layer_state = None

    def _strength_in_place(self, strength: float) -> None:
        """Compiled: every layer enabled, its scaling a 0-dim float32 tensor written in place (0: adds nothing);
        peft's ``set_scale`` would store a float the graph specialises on."""
        name = self.adapter_name
        for layer in self.layers:
            if layer.disable_adapters:
                layer.enable_adapters(True)
            value = strength * peft_scaling(layer, name)
            held = layer.scaling.get(name)
            if isinstance(held, torch.Tensor):
                held.fill_(value)
            else:
                device = layer.get_base_layer().weight.device
                layer.scaling[name] = torch.tensor(value, dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ named adapters (the slot's, routing's)
    def load(self, prepared: PreparedAdapter, name: str) -> None:
        """Load ``prepared`` through diffusers as peft adapter ``name``; on failure nothing of it stays."""
        prefix = self.family.lora_prefix
        sd = {f"{prefix}.{k}": v for k, v in prepared.tensors.items()}
        alphas = dict(prepared.network_alphas or {})
        try:
            with translated(lambda exc: LoraLoadError(prepared.path, f"could not be loaded into the "
                                                                     f"{self.family.denoiser_attr} "
                                                                     f"({type(exc).__name__}: {exc})")):
                self.denoiser.load_lora_adapter(sd, prefix=prefix, network_alphas=alphas or None,
                                                adapter_name=name, low_cpu_mem_usage=True)
            if name not in getattr(self.denoiser, "peft_config", {}):
                raise LoraLoadError(prepared.path, "diffusers matched none of its keys to the model")
        except LoraSpectrumError:
            self.drop(name)
            raise

    def drop(self, name: str) -> None:
        """Delete peft adapter ``name`` from the denoiser (nothing when it is not there)."""
        if name in getattr(self.denoiser, "peft_config", {}):
            with warnings.catch_warnings():  # peft names the adapter it falls back to; the caller sets its own
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                self.denoiser.delete_adapters(name)
