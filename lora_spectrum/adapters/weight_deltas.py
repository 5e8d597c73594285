"""LyCORIS (LoHa, LoKr, with or without Tucker factors) and DoRA files as per-layer weight deltas: a file's factors
read and checked against one denoiser's layers (touches no model), and one layer's merged weight at a strength.

The maths is lycoris-lora's own (``lycoris.functional``): peft's LoHa/LoKr layers cannot take kohya's or
ai-toolkit's keys, and diffusers loads none of these forms, so the deltas are merged from the base weights into
merge buffers (``fusing.Fuser``), which also keeps the base bit-exact. Manual: ``docs/adapters.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lora_spectrum.errors import LoraLoadError, translated
from lora_spectrum.loras.lora_keys import LOHA_MARKS, LOKR_MARKS, TE_PREFIXES, is_dora_key

# ``<module>.<factor>``: every factor name the trainers save for these forms (peft may add ``.default``).
_FACTOR_RE = re.compile(
    r"^(?P<module>.+?)\.(?P<factor>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2|alpha|dora_scale"
    r"|lora_magnitude_vector(?:\.default)?(?:\.weight)?|lora_(?:down|up)\.weight|lora_[AB](?:\.default)?\.weight)$"
)
_PEFT_PREFIXES = ("base_model.model.",)
# The rows of a stand-in up factor: divisible by every split a converter makes of a fused layer (FLUX.1's kohya
# converter splits qkv in three and a single block's linear1 into 3 x 3072 + 12288 rows).
_STAND_IN_ROWS = 21504
NO_SCALE_ALPHA = 1e9  # ai-toolkit writes alpha 1e10 on LoKr files to mean "no scale"


def needs_deltas(keys) -> bool:
    """Whether a file is one that only this module can load: LoHa, LoKr or DoRA factors."""
    return any(k.endswith(LOHA_MARKS + LOKR_MARKS) or is_dora_key(k) for k in keys)


@dataclass
class LayerDelta:
    """One layer's factors as the file saved them, and how they make a weight."""

    algorithm: str  # lora | loha | lokr
    factors: dict[str, torch.Tensor]
    alpha: float | None
    magnitude: torch.Tensor | None = None  # DoRA's m, shaped to broadcast against the weight
    wd_on_out: bool = True  # DoRA's norm per output row (else per input column), from m's shape

    @property
    def nbytes(self) -> int:
        parts = [*self.factors.values(), *([self.magnitude] if self.magnitude is not None else [])]
        return sum(t.numel() * t.element_size() for t in parts)

    def delta(self, shape: tuple[int, ...] | None, device) -> torch.Tensor:
        """ΔW in float32 on ``device``, shaped like the layer's weight (``shape``; None: as the factors make it),
        by lycoris.functional's formulas."""
        from lycoris.functional import locon, loha, lokr

        f = {k: v.to(device=device, dtype=torch.float32) for k, v in self.factors.items()}
        if self.algorithm == "loha":
            rank = f["hada_w1_b"].shape[0]
            gamma = (self.alpha if self.alpha is not None else rank) / rank
            out = loha.diff_weight(f["hada_w1_b"], f["hada_w1_a"], f["hada_w2_b"], f["hada_w2_a"],
                                   f.get("hada_t1"), f.get("hada_t2"), gamma=gamma, backend="torch")
        elif self.algorithm == "lokr":
            factored = "lokr_w1_a" in f or "lokr_w2_a" in f
            alpha = self.alpha if self.alpha is not None and self.alpha < NO_SCALE_ALPHA else None
            rank = (f["lokr_w1_a"] if "lokr_w1_a" in f else f["lokr_w2_a"]).shape[1] if factored else 1
            gamma = alpha if (alpha is not None and factored) else rank  # scale 1 when neither side is factored
            out = lokr.diff_weight(f.get("lokr_w1"), f.get("lokr_w1_a"), f.get("lokr_w1_b"), f.get("lokr_w2"),
                                   f.get("lokr_w2_a"), f.get("lokr_w2_b"), f.get("lokr_t2"), gamma=gamma,
                                   backend="torch")
        else:
            down, up = f["down"], f["up"]
            rank = down.shape[0]
            gamma = (self.alpha if self.alpha is not None else rank) / rank
            out = locon.diff_weight(down, up, None, gamma=gamma, backend="torch")
        return out if shape is None else out.reshape(shape)

    def merged(self, w0: torch.Tensor, strength: float) -> torch.Tensor:
        """The layer's weight at ``strength``, in float32: ``W0 + s·ΔW``; with DoRA, LyCORIS's weight decompose
        of ``W0 + ΔW`` at multiplier ``s`` (``m · (W0 + ΔW) / ‖W0 + ΔW‖`` at 1), the norm along m's axis."""
        w0 = w0.to(torch.float32)
        delta = self.delta(tuple(w0.shape), w0.device)
        if self.magnitude is None:
            return torch.add(w0, delta, alpha=strength)
        from lycoris.functional import weight_decompose

        m = self.magnitude.to(device=w0.device, dtype=torch.float32)
        return weight_decompose(w0 + delta, m, multiplier=strength, wd_on_out=self.wd_on_out, backend="torch")


def group_factors(raw: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], int, list[str]]:
    """Factors by module as the file names them; text-encoder modules counted and dropped; keys that fit no
    factor name."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    dropped, strays = 0, []
    for key, tensor in raw.items():
        m = _FACTOR_RE.match(key)
        if not m:
            strays.append(key)
            continue
        module = m["module"]
        if module.startswith(TE_PREFIXES):
            dropped += 1
            continue
        factor = m["factor"].split(".")[0]
        factor = {"lora_down": "down", "lora_A": "down", "lora_up": "up", "lora_B": "up",
                  "lora_magnitude_vector": "dora_scale"}.get(factor, factor)
        modules.setdefault(module, {})[factor] = tensor
    return modules, dropped, strays


def layer_delta(path: str, module: str, factors: dict[str, torch.Tensor], shape=None) -> LayerDelta:
    """One layer's factors checked for completeness; DoRA magnitudes checked against ``shape`` (None: left out,
    for measures that see no base weights)."""
    alpha = float(factors.pop("alpha").float().item()) if "alpha" in factors else None
    magnitude = factors.pop("dora_scale", None)
    if any(k.startswith("hada_") for k in factors):
        algorithm, need = "loha", ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    elif any(k.startswith("lokr_") for k in factors):
        algorithm, need = "lokr", ()
        if not ({"lokr_w1", "lokr_w1_a"} & set(factors) and {"lokr_w2", "lokr_w2_a"} & set(factors)):
            raise LoraLoadError(path, f"LoKr layer {module} lacks lokr_w1 or lokr_w2 (or their _a/_b factors)")
    else:
        algorithm, need = "lora", ("down", "up")
    missing = [k for k in need if k not in factors]
    if missing:
        raise LoraLoadError(path, f"{algorithm} layer {module} lacks {', '.join(missing)}")
    wd_on_out = True
    if shape is None:
        magnitude = None
    if magnitude is not None:
        # (out, 1, ...) or peft's (out,): one magnitude per output row; (1, in, ...): one per input column.
        per_input = magnitude.dim() >= 2 and magnitude.shape[0] == 1 and magnitude.numel() == shape[1] != shape[0]
        if not per_input and magnitude.numel() != shape[0]:
            raise LoraLoadError(path, f"DoRA magnitudes of {module} have {magnitude.numel()} values; the layer has "
                                      f"{shape[0]} outputs and {shape[1]} inputs")
        wd_on_out = not per_input
        view = [shape[0]] + [1] * (len(shape) - 1) if wd_on_out else [1, shape[1]] + [1] * (len(shape) - 2)
        magnitude = magnitude.reshape(view)
    return LayerDelta(algorithm, factors, alpha, magnitude, wd_on_out)


class NameMap:
    """What diffusers' converter makes of each module name of a file, learned by converting one-element stand-ins
    (each module's down factor holds its own number) and reading the numbers back: the converter stays the one
    authority on names (kohya's SGM names, musubi's, ai-toolkit's). Learned once per set of module names.
    ``convert(path, state_dict)``: the reader's conversion into peft's layout without prefix."""

    def __init__(self, convert, prefix: str):
        self.convert, self.prefix = convert, prefix
        self._known: dict[frozenset, dict[str, str]] = {}

    def __call__(self, path: str, modules: list[str]) -> dict[str, str]:
        key = frozenset(modules)
        if key not in self._known:
            self._known[key] = self._learn(path, sorted(modules))
        return self._known[key]

    def _learn(self, path: str, modules: list[str]) -> dict[str, str]:
        stand_in = {}
        for i, module in enumerate(modules):
            name = module
            for p in _PEFT_PREFIXES:
                name = name.removeprefix(p)
            kohya = name.startswith("lora_unet_") or name.startswith("lora_transformer_")
            if not kohya and not name.startswith(("diffusion_model.", "unet.", "transformer.")):
                name = f"{self.prefix}.{name}"  # DiffSynth saves module paths without any prefix
            down, up = ("lora_down.weight", "lora_up.weight") if kohya else ("lora_A.weight", "lora_B.weight")
            stand_in[f"{name}.{down}"] = torch.full((1, 1), float(i + 1))
            stand_in[f"{name}.{up}"] = torch.ones(_STAND_IN_ROWS, 1)
            if kohya:
                stand_in[f"{name}.alpha"] = torch.tensor(1.0)
        converted = self.convert(path, stand_in)  # peft layout without prefix, as the reader converts files
        found: dict[int, list[str]] = {}
        for key, value in converted.items():
            if key.endswith(".lora_A.weight"):
                found.setdefault(round(float(value.reshape(-1)[0])), []).append(key.removesuffix(".lora_A.weight"))
        names = {}
        for i, module in enumerate(modules):
            targets = found.get(i + 1, [])
            if len(targets) != 1:
                why = "names no layer" if not targets else f"is split into {len(targets)} layers by the converter"
                raise LoraLoadError(path, f"module {module} {why}; LyCORIS/DoRA layers must map to one layer each")
            names[module] = targets[0]
        return names


def read_deltas(path: str, raw: dict[str, torch.Tensor], names: NameMap, layers: dict, family) -> tuple[dict, int]:
    """Every denoiser layer's ``LayerDelta`` by module name in the denoiser, checked: each names a Linear or
    Conv2d layer of this denoiser, its delta has the layer's shape and is finite. Returns (deltas, dropped
    text-encoder tensors); raises ``LoraLoadError`` naming the file and at most one example module."""
    modules, dropped, strays = group_factors(raw)
    if strays:
        raise LoraLoadError(path, f"{len(strays)} key(s) are no LoRA/LyCORIS factor, e.g. {strays[0]!r}")
    if not modules:
        raise LoraLoadError(path, f"no {family.denoiser_attr} layers: it has only text-encoder keys")
    mapping = names(path, list(modules))
    deltas = {}
    for module, factors in modules.items():
        target = mapping[module]
        if target not in layers:
            raise LoraLoadError(path, f"targets layer {target!r}, which this {family.name} {family.denoiser_attr} "
                                      f"does not have; a LoRA for another architecture or model family?")
        shape = layers[target][1]
        delta = layer_delta(path, module, dict(factors), shape)
        with translated(lambda exc, m=module, want=tuple(shape): LoraLoadError(
                path, f"the factors of {m} do not make a {want} weight ({exc})")):
            value = delta.delta(tuple(shape), "cpu")
        if not bool(torch.isfinite(value).all()):
            raise LoraLoadError(path, f"holds NaN or Inf values (in {module}); renders would be black. The training "
                                      f"likely diverged at this epoch")
        deltas[target] = delta
    return deltas, dropped
