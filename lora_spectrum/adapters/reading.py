"""A LoRA file read, converted and checked against one denoiser's layers into a ``PreparedAdapter``; and
``swap_refusal``, the same steps on a file's header alone: the catalog's one decision of *ready*.

Touches no model (like diffusers' ``lora_state_dict`` next to ``load_lora_into_unet``): it needs the denoiser's
layer table, the family and diffusers' converter, and it reads only files. Step 1 of ``docs/adapters.md``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lora_spectrum.adapters.fast_path import FastPath, Layout
from lora_spectrum.adapters.weight_deltas import NameMap, group_factors, layer_delta, needs_deltas, read_deltas
from lora_spectrum.errors import HeaderError, LoraLoadError, translated
from lora_spectrum.loras.lora_keys import (
    CONVERTED_TE_PREFIXES,
    is_alpha_key,
    peft_without_prefix,
    read_header,
    with_model_prefix,
)


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
    deltas: dict | None = None  # LyCORIS/DoRA: layer name -> ``weight_deltas.LayerDelta`` (``tensors`` is empty)


def layer_table(denoiser) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Kind and weight shape of every Linear/Conv2d layer of the untouched denoiser, to validate files with."""
    layers: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear):
            layers[name] = ("linear", (module.out_features, module.in_features))
        elif isinstance(module, torch.nn.Conv2d):
            layers[name] = ("conv", (module.out_channels, module.in_channels, *module.kernel_size))
    return layers


def file_identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise LoraLoadError(path, "file not found (removed or renamed after the last scan)") from exc
    return st.st_size, st.st_mtime_ns


def _load_raw(path: str) -> dict[str, torch.Tensor]:
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
    return raw


def _signature(tensors: dict[str, torch.Tensor], alphas: dict[str, float] | None) -> tuple:
    """Files with equal signatures fit the same adapter slot."""
    return (tuple(sorted((k, tuple(v.shape)) for k, v in tensors.items())), tuple(sorted((alphas or {}).items())))


def _exact_table(path: str, size: int) -> tuple[dict | None, int]:
    """The file's tensor table and where its data starts, when its data ends exactly at the end of the file;
    ``(None, 0)`` otherwise (truncated, padded or unreadable: safetensors then reads it and says what is wrong)."""
    try:
        header = read_header(path, size)
    except (HeaderError, OSError):
        return None, 0
    if header.data_start + header.data_end != size:
        return None, 0
    return header.table, header.data_start


def _not_a_lora(path: str):
    """What a converter's error becomes (for ``translated``)."""
    return lambda exc: LoraLoadError(path, f"diffusers could not read its keys as a LoRA ({type(exc).__name__}: "
                                           f"{exc})")


def check_finite(path: str, sd: dict[str, torch.Tensor]) -> None:
    tensors = [t for t in sd.values() if t.is_floating_point()]
    # One grouped norm over all tensors, in their own dtype (a float copy of each cost seconds on 2 cores); a
    # NaN/Inf anywhere makes its norm non-finite, and an overflowing norm is cleared by the exact check below.
    if tensors and not bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors)).float()).all()):
        for key, t in sd.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise LoraLoadError(path, f"holds NaN or Inf values (in {key}); renders would be black. "
                                          f"The training likely diverged at this epoch")


def convert_keys(path: str, family, convert, raw: dict[str, torch.Tensor]) -> tuple[dict, dict | None, int]:
    """diffusers' conversion of a file's tensors (``convert``: ``Family.convert_lora`` bound to a pipe): (denoiser
    tensors in peft layout without prefix, network alphas or None, number of text-encoder tensors dropped)."""
    # peft's names without a prefix (peft's own save of a bare UNet/transformer; DiffSynth-Studio): diffusers'
    # pipeline-level converters leave them unprefixed, so its loaders drop them all, while its model-level
    # ``load_lora_adapter(sd, prefix=None)`` takes them as the denoiser's. Named as that call takes them.
    if peft_without_prefix(raw):
        raw = {with_model_prefix(k, family.lora_prefix): v for k, v in raw.items()}
    with translated(_not_a_lora(path)):  # diffusers raises many types for unknown layouts
        converted, alphas = convert(raw)
    # Keep the denoiser's keys; count what belongs to the text encoders (dropped, never loaded).
    prefix = family.lora_prefix + "."
    dropped = sum(1 for k in converted if k.startswith(CONVERTED_TE_PREFIXES))
    mine = {k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)}
    unknown = [k for k in converted if not k.startswith(prefix) and not k.startswith(CONVERTED_TE_PREFIXES)]
    if not mine:
        what = "only text-encoder keys" if dropped else "no keys diffusers recognises for this model"
        raise LoraLoadError(path, f"no {family.denoiser_attr} keys: it has {what}; "
                                  f"is it a LoRA for another model family than {family.name}?")
    if unknown:
        raise LoraLoadError(path, f"{len(unknown)} key(s) fit no part of a {family.name} pipeline, "
                                  f"e.g. {unknown[0]!r}; a LoRA for another architecture?")
    if "lora_A" not in next(iter(mine)):
        from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

        with translated(_not_a_lora(path)):
            mine = convert_unet_state_dict_to_peft(mine)
    if alphas:
        alphas = {k: float(v) for k, v in alphas.items() if k.startswith(prefix)}
    return mine, alphas or None, dropped


def _missing_layer(path: str, family, module: str) -> LoraLoadError:
    return LoraLoadError(path, f"targets layer {module!r}, which this {family.name} {family.denoiser_attr} does not "
                               f"have; a LoRA for another architecture or model family?")


class Reader:
    """Reads files for one denoiser. ``convert``: diffusers' converter for its pipeline (``Family.convert_lora``
    bound to the pipe, which it only reads); ``layers``: ``layer_table(denoiser)``. Thread-safe."""

    def __init__(self, family, convert, layers: dict[str, tuple[str, tuple[int, ...]]]):
        self.family = family
        self.convert = convert
        self.layers = layers
        self.fast = FastPath()
        self.names = NameMap(lambda path, sd: self._convert(path, sd)[0], family.lora_prefix)

    def prepare(self, path: str | Path, device: torch.device, dtype: torch.dtype, background: bool = False
                ) -> PreparedAdapter:
        """Read, convert and check one file, cast for a denoiser on ``device`` in ``dtype``; raises
        ``LoraLoadError``. ``background``: a read ahead (it stages in its own pinned buffer)."""
        path = str(path)
        identity = file_identity(path)
        # 1. A file whose tensor table matches a learned layout: read straight into one buffer (docs/adapters.md).
        table, data_start = _exact_table(path, identity[0])
        candidates = self.fast.candidates(table)
        if candidates:
            with self.fast.locks[background]:  # the staging buffer is reused: held until copied out of it
                hit = self.fast.read(path, candidates, data_start, staged=device.type == "cuda",
                                     background=background)
                if hit is not None:
                    return self._finish_flat(path, identity, *hit, device, dtype)
        # 2. Otherwise read with safetensors only (never pickle), then convert with diffusers' converters.
        raw = _load_raw(path)
        if needs_deltas(raw):  # LoHa, LoKr, DoRA: diffusers loads none of them right (weight_deltas.py)
            deltas, dropped = read_deltas(path, raw, self.names, self.layers, self.family)
            nbytes = sum(d.nbytes for d in deltas.values())
            return PreparedAdapter(path, Path(path).name, identity, {}, None, ("deltas", path, identity), dropped,
                                   nbytes, deltas)
        mine, alphas, dropped = self._convert(path, raw)
        # 3. Every key must name a layer of this denoiser, with matching shapes.
        self._check_layers(path, mine)
        signature = _signature(mine, alphas)
        # 4. Learn this layout, so that the next epoch of the same run takes step 1.
        if table is not None:
            self.fast.learn(path, table, data_start, raw, mine, lambda sd: self._convert(path, sd)[0],
                            alphas, signature, dropped)
        # 5. Cast once to the model's dtype and device; then every value must be finite (a cast can overflow).
        mine = {k: v.to(device=device, dtype=dtype) for k, v in mine.items()}
        check_finite(path, mine)
        nbytes = sum(v.numel() * v.element_size() for v in mine.values())
        return PreparedAdapter(path, Path(path).name, identity, mine, alphas, signature, dropped, nbytes)

    def _convert(self, path: str, raw: dict[str, torch.Tensor]) -> tuple[dict, dict | None, int]:
        return convert_keys(path, self.family, self.convert, raw)

    def _finish_flat(self, path, identity, layout: Layout, flat: torch.Tensor, device, dtype) -> PreparedAdapter:
        # 4. Move and cast as one tensor (nothing to do for a bf16 file on a bf16 CPU model).
        if flat.device != device:
            flat = flat.to(device)  # synchronous: the staging buffer is free again after this line
        flat = flat.to(dtype)
        tensors = {k: part.view(shape) for k, part, shape
                   in zip(layout.keys, torch.split(flat, layout.numels), layout.shapes, strict=True)}
        # 5. Every value must be finite: one norm over all of them; NaN/Inf anywhere makes it non-finite (and a
        #    mere overflow of the norm is sorted out by the per-tensor check, which then finds nothing).
        if not bool(torch.isfinite(torch.linalg.vector_norm(flat))):
            check_finite(path, tensors)
        return PreparedAdapter(path, Path(path).name, identity, tensors, layout.network_alphas, layout.signature,
                               layout.dropped_text_encoder_keys, flat.numel() * flat.element_size())

    def _check_layers(self, path: str, sd: dict[str, torch.Tensor]) -> None:
        for key, value in sd.items():
            module = key.split(".lora_")[0]
            if module not in self.layers:
                raise _missing_layer(path, self.family, module)
            kind, shape = self.layers[module]
            out_f, in_f = shape[0], shape[1]
            if key.endswith("lora_A.weight") and value.shape[1] != in_f:
                raise LoraLoadError(path, f"shape mismatch at {module}: lora_A is {tuple(value.shape)} but the "
                                          f"layer takes {in_f} inputs; a LoRA for another architecture?")
            if key.endswith("lora_B.weight") and value.shape[0] != out_f:
                raise LoraLoadError(path, f"shape mismatch at {module}: lora_B is {tuple(value.shape)} but the "
                                          f"layer has {out_f} outputs; a LoRA for another architecture?")


# The catalog's *ready*, decided by the swap's own steps on what the header says: each tensor's name, shape and
# dtype (on the ``meta`` device; alpha scalars as ones, since the converters only fold their values in), diffusers'
# converter for the family and ``convert_keys`` (or, for LyCORIS/DoRA, the grouping, name mapping and completeness
# checks of ``read_deltas``), then the converted layer names against the family's denoiser. Only what needs the
# base's weights or the file's values is left to the swap: each layer's shape (and DoRA magnitudes' size) in this
# base, and finite values.
_META_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def swap_refusal(path: str | Path, family: str) -> str:
    """Why a swap into a base of ``family`` (a registry name) would refuse this file, or ``""`` when it takes
    it. Reads the header only; decided once per file (size, mtime) and once per tensor layout (every epoch of a
    run shares one)."""
    path = str(path)
    try:
        size, mtime_ns = file_identity(path)
    except LoraLoadError as exc:
        return exc.cause
    return _file_refusal(path, size, mtime_ns, family)


@functools.lru_cache(maxsize=4096)
def _file_refusal(path: str, size: int, mtime_ns: int, family: str) -> str:
    try:
        table = read_header(path, size).table
    except (HeaderError, OSError) as exc:
        return f"not a valid safetensors file, or truncated ({exc})"
    why = _layout_refusal(tuple((k, v.get("dtype"), tuple(v.get("shape", ()))) for k, v in table.items()
                                if isinstance(v, dict)), family)
    if "meta tensor" in why:  # a converter that looks at values (none does in diffusers 0.42): decide on the tensors
        try:
            _FamilyCheck.of(family)(path, _load_raw(path))
        except LoraLoadError as exc:
            return exc.cause
        return ""
    return why


@functools.lru_cache(maxsize=64)
def _layout_refusal(layout: tuple, family: str) -> str:
    if not layout:
        return "the file holds no tensors"
    raw = {k: torch.ones(shape) if is_alpha_key(k) else
           torch.empty(shape, dtype=_META_DTYPES.get(dtype, torch.float32), device="meta")
           for k, dtype, shape in layout}
    try:
        _FamilyCheck.of(family)("<header>", raw)
    except LoraLoadError as exc:
        return exc.cause
    return ""


def lora_loader(family):
    """The class whose ``lora_state_dict`` converts ``family``'s files: its pipeline's LoRA loader mixin (the very
    function the pipeline inherits: test_readiness.py checks it)."""
    return family.loader_cls()


class _FamilyCheck:
    """The name-level steps of ``Reader.prepare`` for one family, with no base loaded. ``Family.convert_lora``
    reads only the class's ``lora_state_dict`` and, for kohya's SGM block names on SDXL, ``layers_per_block`` of
    the UNet's config (2 in every SDXL UNet): a never-initialised instance of the loader carries that one value."""

    def __init__(self, name: str):
        from lora_spectrum.bases.families import get_family

        self.family = get_family(name)
        cls = lora_loader(self.family)
        pipe = cls.__new__(cls)
        config = SimpleNamespace(layers_per_block=2)
        object.__setattr__(pipe, self.family.denoiser_attr, SimpleNamespace(config=config))
        self.convert = functools.partial(self.family.convert_lora, pipe=pipe)
        self.names = NameMap(lambda path, sd: convert_keys(path, self.family, self.convert, sd)[0],
                             self.family.lora_prefix)
        self.roots = self.family.denoiser_roots

    @staticmethod
    @functools.cache
    def of(name: str) -> _FamilyCheck:
        return _FamilyCheck(name)

    def __call__(self, path: str, raw: dict[str, torch.Tensor]) -> None:
        """Raise ``LoraLoadError`` as ``Reader.prepare`` would for these names."""
        family = self.family
        if needs_deltas(raw):  # as read_deltas: factors grouped, complete, each module mapped to one layer
            modules, _dropped, strays = group_factors(raw)
            if strays:
                raise LoraLoadError(path, f"{len(strays)} key(s) are no LoRA/LyCORIS factor, e.g. {strays[0]!r}")
            if not modules:
                raise LoraLoadError(path, f"no {family.denoiser_attr} layers: it has only text-encoder keys")
            for module, factors in modules.items():
                layer_delta(path, module, dict(factors), None)
            targets = list(self.names(path, list(modules)).values())
        else:
            targets = [k.split(".lora_")[0] for k in convert_keys(path, family, self.convert, raw)[0]]
        for module in targets:
            if module.split(".")[0] not in self.roots:
                raise _missing_layer(path, family, module)
