"""Which adapter is in the denoiser, atomically; the LRU of resident adapters; purity; swap timings; routed
batches (several adapters in one denoiser call, each sample through its own: ``HotSwapper.routed``).

Nothing here chooses devices or knows about Streamlit. The text encoders are never touched: files are read with
safetensors, converted with diffusers' own converters, and only the denoiser's keys are loaded, into the denoiser.

How a swap works (and why it is both atomic and residue-free):
1. *Prepare* (touches no model): read the file with safetensors (never a pickle), convert keys with diffusers,
   keep the denoiser's keys, check every key names a layer of this denoiser with the right shape, cast to the
   model's dtype/device and check every value is finite. Any failure raises ``LoraLoadError`` and nothing has
   changed. The first file of a *layout* (same tensor table: names, dtypes, shapes, offsets; same alphas) also
   teaches a fast path: what diffusers' converter did to each tensor (a rename, maybe a constant factor) is
   learned by converting two probe state dicts and checked against the real conversion. Later files of that
   layout - every epoch of one run - skip the converter: their denoiser bytes are read with one ``readinto``
   into one buffer (a reused pinned one when the denoiser is on CUDA), scaled, moved, cast and checked with one
   grouped call each, and split into views. Hand-written
   because it is what makes a cold swap cost what reading the file costs (see ``python -m lora_spectrum bench``);
   anything it does not recognise goes through diffusers as above.
2. *Install*: the first file of a given layout (same keys, shapes and alphas) is loaded through diffusers'
   ``load_lora_adapter`` into a new peft adapter slot; the previous slot is deleted only once the new one loaded.
   Later files of the same layout are installed by re-pointing the slot's parameters at the prepared tensors (no
   copy, no peft call): hand-written for the same reason. It cannot fail halfway: every shape was checked in
   step 1.
3. *Strength* is peft's per-layer ``set_scale``; strength 0 and ``use_base()`` disable the adapter layers, whose
   forward then is exactly the base layer's. The layers are only touched when the strength or the on/off state
   changes. Unfused (the default), base weights are never modified, so nothing drifts.

Fused mode (``fuse=True`` or ``set_fuse(True)``; for long grids, where peft's unfused LoRA layers cost up to 2x per
denoiser forward on a GPU): after step 2 the active adapter is merged into the base weights of the layers it
targets, ``W = W0 + strength * scaling * (B @ A)`` computed in float32 from the *pristine* ``W0`` and cast to the
weight's dtype, written in place; the adapter layers are bypassed, so the delta is not added twice. A pristine copy
of every targeted base weight is taken once, lazily on the first merge (``fused_pristine_bytes()`` says what it
costs: one copy of the targeted weights), on the weights' device or on the CPU (``pristine_device="cpu"``).
``use_base()``, a strength change, a swap, ``unload()`` and ``set_fuse(False)`` put the base back by *copying* from
that copy, never by subtracting the delta (``W + d - d`` is not ``W`` in floating point: diffusers' ``unfuse_lora``
drifts), so the base stays bit-exact. Files are validated in step 1 as always, before any weight is touched; if a
merge fails midway, every merged weight is restored from the pristine copy, the base is active and a
``LoraLoadError`` is raised. Fused renders are close to, not bit-identical with, unfused ones (other arithmetic).
Layers that cannot be merged exactly here (a DoRA or bias-carrying adapter, a grouped or dilated convolution, a
convolution whose up-projection is not 1x1) make that file render unfused, with the reason in ``fuse_note``; plain
Linear layers and kohya LoCon-style Conv2d layers (down: the layer's kernel, up: 1x1) are merged.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lora_spectrum.errors import LoraLoadError, RenderError

TE_KEY_PREFIXES = ("text_encoder", "lora_te")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_MAX_LAYOUTS = 8
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
class _Layout:
    """What diffusers' converter does to every file with this tensor table, learned once (``_learn_layout``).

    Each output (a peft key of the denoiser) is one source tensor of the file, renamed, times a constant factor.
    """

    table: dict  # the file's header without ``__metadata__``: name -> dtype, shape, data_offsets
    src_dtype: torch.dtype  # every output's dtype in the file
    ranges: list[tuple[int, int]]  # byte ranges of the data section holding the outputs, merged, in file order
    keys: list[str]  # outputs in buffer (file) order
    shapes: list[tuple[int, ...]]
    numels: list[int]
    factor_runs: list[tuple[int, int, float]]  # (first, end) element of the buffer, factor != 1
    scalar_ranges: list[tuple[int, int]]  # byte ranges of the non-source scalars (alphas), merged
    scalar_bytes: bytes  # their bytes in the file that taught the layout: later files must match
    network_alphas: dict[str, float] | None
    signature: tuple
    dropped_text_encoder_keys: int


@dataclass
class SwapRecord:
    name: str
    kind: str  # cold | warm | rebuild | base | strength
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


def _file_identity(path: str) -> tuple[int, int]:
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


def _read_table(path: str, size: int) -> tuple[dict | None, int]:
    """A safetensors file's tensor table (its JSON header without ``__metadata__``) and where its data starts.

    Hand-written (8 bytes of length, then JSON: the documented format) because the fast path needs the byte
    offsets, which safetensors' Python API does not expose. ``(None, 0)`` for anything unexpected: the caller then
    reads the file with safetensors, which says what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 0 < n <= min(size - 8, 100 * 2**20):
                return None, 0
            table = json.loads(f.read(n))
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8
        return None, 0
    if not isinstance(table, dict):
        return None, 0
    table.pop("__metadata__", None)
    try:
        end = max((int(v["data_offsets"][1]) for v in table.values()), default=-1)
    except (TypeError, KeyError, IndexError, ValueError):
        return None, 0
    if 8 + n + end != size:  # truncated or padded: let safetensors report it
        return None, 0
    return table, 8 + n


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent byte ranges joined, so that each run of them is one read."""
    out: list[list[int]] = []
    for s, e in ranges:
        if out and out[-1][1] == s:
            out[-1][1] = e
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _read_range(f, data_start: int, r: tuple[int, int]) -> bytes:
    f.seek(data_start + r[0])
    return f.read(r[1] - r[0])


def _readinto_full(f, view: memoryview) -> int:
    """``readinto`` until ``view`` is full or the file ends (one call may return less, e.g. above 2 GB)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _constant(t: torch.Tensor) -> float | None:
    """The value of a tensor whose elements are all equal, else None."""
    if t.numel() == 0:
        return None
    if all(s == 0 for s in t.stride()):  # an expanded scalar: constant by construction
        return float(t[(0,) * t.ndim])
    lo, hi = torch.aminmax(t.reshape(-1))
    return float(lo) if bool(lo == hi) else None


class HotSwapper:
    """Owns the adapter slot in one denoiser. Not thread-safe by itself: the engine's lock serialises callers."""

    def __init__(self, pipe, family, resident: int = 4, empty_cache: bool = False, fuse: bool = False,
                 pristine_device: str | torch.device | None = None):
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
        self._layouts: list[_Layout] = []  # learned fast-path layouts, newest last
        self.fast_path_note = ""  # why the last new layout was (not) learned
        self._layer_state: tuple[bool, float] | None = None  # (enabled, strength) the slot's layers hold now
        self._staging: torch.Tensor | None = None  # pinned host buffer for files bound to a CUDA denoiser
        self._staging_lock = threading.Lock()
        # Fused mode (module doc). ``pristine_device`` None keeps the pristine copy on the weights' own device.
        self.fuse = bool(fuse)
        self.pristine_device = pristine_device
        self._pristine: dict[str, torch.Tensor] = {}  # module name -> its base weight as loaded, bit for bit
        self._fused_names: set[str] = set()  # layers whose base weight holds a merged adapter now
        self._fused_key: tuple[int, float] | None = None  # (install serial, strength) merged now
        self._install_serial = 0  # changes whenever the slot's parameters change (rebind or rebuild)
        self.fuse_note = ""  # why the last file in fused mode rendered unfused ("" when it was merged)

    # ------------------------------------------------------------------ reading
    @property
    def _param(self) -> torch.Tensor:
        return next(self.denoiser.parameters())

    def prepare(self, path: str | Path) -> PreparedAdapter:
        """Read, convert and check one file against this denoiser. Touches no model; raises ``LoraLoadError``."""
        path = str(path)
        identity = _file_identity(path)
        # 1. A file whose tensor table matches a learned layout: read straight into one buffer (module doc).
        table, data_start = _read_table(path, identity[0])
        candidates = [lay for lay in self._layouts if lay.table == table] if table is not None else []
        if candidates:
            staged = self._param.device.type == "cuda"
            with self._staging_lock:
                hit = self._read_fast(path, candidates, data_start, staged)
                if hit is not None:
                    return self._finish_flat(path, identity, *hit)
        # 2. Otherwise read with safetensors only (never pickle), then convert with diffusers' converters.
        raw = _load_raw(path)
        dora = next((k for k in raw if k.endswith(".dora_scale")), None)
        if dora is not None:  # diffusers drops these keys with a log line and loads the rest as a plain LoRA
            raise LoraLoadError(path, f"is a kohya DoRA file ({dora}); diffusers cannot load its magnitude vectors "
                                      f"and would render it as a different, plain LoRA, so it is not loaded")
        mine, alphas, dropped = self._convert(path, raw)
        # 3. Every key must name a layer of this denoiser, with matching shapes.
        self._check_layers(path, mine)
        # 4. Learn this layout, so that the next epoch of the same run takes step 1.
        if table is not None:
            self._learn_layout(path, table, data_start, raw, mine, alphas, dropped)
        # 5. Cast once to the model's dtype and device; then every value must be finite (a cast can overflow).
        ref = self._param
        mine = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in mine.items()}
        self._check_finite(path, mine)
        signature = _signature(mine, alphas)
        nbytes = sum(v.numel() * v.element_size() for v in mine.values())
        return PreparedAdapter(path, Path(path).name, identity, mine, alphas, signature, dropped, nbytes)

    def _convert(self, path: str, raw: dict[str, torch.Tensor]) -> tuple[dict, dict | None, int]:
        """diffusers' conversion of a file's tensors: (denoiser tensors in peft layout without prefix, network
        alphas or None, number of text-encoder tensors dropped)."""
        try:
            converted, alphas = self.family.convert_lora(raw, self.pipe)
        except Exception as exc:  # noqa: BLE001 - diffusers raises many types for unknown layouts; translated
            raise LoraLoadError(path, f"diffusers could not read its keys as a LoRA ({type(exc).__name__}: "
                                      f"{exc})") from exc
        # Keep the denoiser's keys; count what belongs to the text encoders (dropped, never loaded).
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
        if alphas:
            alphas = {k: float(v) for k, v in alphas.items() if k.startswith(prefix)}
        return mine, alphas or None, dropped

    # ------------------------------------------------------------------ the fast path (see the module doc)
    def _learn_layout(self, path, table, data_start, raw, mine, alphas, dropped) -> None:
        """Remember what the converter did to this file, so that files with the same table skip it.

        Never raises: a layout that cannot be learned (an unusual converter) simply keeps using diffusers; the
        reason is kept in ``fast_path_note`` for the benchmark and for debugging.
        """
        try:
            layout, why = self._derive_layout(path, table, data_start, raw, mine, alphas, dropped)
        except Exception as exc:  # noqa: BLE001 - probing an unknown converter may raise anything; diffusers stays
            layout, why = None, f"probing the converter failed ({type(exc).__name__}: {exc})"
        self.fast_path_note = why
        if layout is not None:
            self._layouts.append(layout)
            del self._layouts[:-_MAX_LAYOUTS]

    def _derive_layout(self, path, table, data_start, raw, mine, alphas, dropped) -> tuple[_Layout | None, str]:
        # 1. Probe the converter twice: every tensor with more than one value (a source) filled with its
        #    index + 1, then with ones; scalars (alphas) stay real. Stride-0 float64 views: free unless the
        #    converter computes on them. An output must be one source times a constant: index and factor.
        sources = [k for k, v in raw.items() if v.numel() > 1]
        index = {k: i for i, k in enumerate(sources)}

        def probe(fill) -> dict[str, float]:
            sd = {k: torch.full((), fill(index[k]), dtype=torch.float64).expand(v.shape) if k in index else v
                  for k, v in raw.items()}
            out, _, _ = self._convert(path, sd)
            return {k: _constant(v) for k, v in out.items()}

        ids, ones = probe(lambda i: float(i + 1)), probe(lambda i: 1.0)
        if ids.keys() != mine.keys() or ones.keys() != mine.keys():
            return None, "the probe conversion gave other keys"
        # 2. Map every output to its source and factor; same shapes and dtype, one source per output.
        src_of, factor_of = {}, {}
        for k, out in mine.items():
            a, b = ids[k], ones[k]
            if a is None or b is None or b == 0.0:
                return None, f"{k} is not a constant multiple of one file tensor"
            i = round(a / b) - 1
            if not 0 <= i < len(sources) or (i + 1) * b != a:
                return None, f"{k} is not a constant multiple of one file tensor"
            src = raw[sources[i]]
            if tuple(src.shape) != tuple(out.shape) or src.dtype != out.dtype:
                return None, f"{k} changes shape or dtype in the conversion"
            src_of[k], factor_of[k] = sources[i], b
        if len(set(src_of.values())) != len(src_of):
            return None, "one file tensor feeds several outputs"
        dtypes = {table[src]["dtype"] for src in src_of.values()}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _DTYPES:
            return None, f"outputs come in several dtypes or an unusual one ({sorted(dtypes)})"
        # 3. Buffer order = file order, so that consecutive outputs are read with one ``readinto``.
        keys = sorted(src_of, key=lambda k: table[src_of[k]]["data_offsets"][0])
        ranges = _merge([tuple(table[src_of[k]]["data_offsets"]) for k in keys])
        scalar_ranges = _merge(sorted(tuple(table[k]["data_offsets"]) for k, v in raw.items()
                                      if k not in index and v.numel() == 1))
        with open(path, "rb") as f:
            scalar_bytes = b"".join(_read_range(f, data_start, r) for r in scalar_ranges)
        runs: list[list] = []
        pos = 0
        for k in keys:
            n, factor = mine[k].numel(), factor_of[k]
            if factor != 1.0:
                if runs and runs[-1][1] == pos and runs[-1][2] == factor:
                    runs[-1][1] = pos + n
                else:
                    runs.append([pos, pos + n, factor])
            pos += n
        layout = _Layout(table, _DTYPES[next(iter(dtypes))], ranges, keys, [tuple(mine[k].shape) for k in keys],
                         [mine[k].numel() for k in keys], [tuple(r) for r in runs], scalar_ranges, scalar_bytes,
                         alphas, _signature(mine, alphas), dropped)
        # 4. Check the learned path against diffusers' own conversion of this very file, bit for bit.
        hit = self._read_fast(path, [layout], data_start)
        if hit is None:
            return None, "re-reading the file did not match its own scalars"
        parts = torch.split(hit[1], layout.numels)
        for k, part, shape in zip(keys, parts, layout.shapes, strict=True):
            if not torch.equal(part.view(shape), mine[k]):
                return None, f"the learned conversion differs from diffusers' at {k}"
        return layout, "learned"

    def _read_fast(self, path, candidates, data_start, staged=False) -> tuple[_Layout, torch.Tensor] | None:
        """The outputs of a file whose table matches learned layouts, as one flat host tensor of the file's dtype
        with the conversion's factors applied; None when its scalars (alphas) match no candidate.

        ``staged`` (for a CUDA denoiser; hold ``_staging_lock``): read into one reused pinned buffer instead of a
        new one, since the tensors will live on the GPU; copying from pinned memory is several times faster.
        """
        try:
            with open(path, "rb", buffering=0) as f:
                # 1. The scalars (alphas) decide which learned conversion applies.
                layout = None
                for cand in candidates:
                    if b"".join(_read_range(f, data_start, r) for r in cand.scalar_ranges) == cand.scalar_bytes:
                        layout = cand
                        break
                if layout is None:
                    return None
                # 2. One buffer for every output, filled by ``readinto``: no tensor per key, no second copy.
                #    numpy rather than torch.empty: numpy asks the kernel for huge pages, which made filling
                #    100 MB 3-4x faster on the benchmark machine (page faults dominate otherwise).
                nbytes = sum(e - s for s, e in layout.ranges)
                if staged:
                    if self._staging is None or self._staging.numel() < nbytes:
                        self._staging = None  # free the old one first
                        self._staging = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
                    buf = self._staging[:nbytes].numpy()
                else:
                    buf = np.empty(nbytes, dtype=np.uint8)
                view, pos = memoryview(buf), 0
                for s, e in layout.ranges:
                    f.seek(data_start + s)
                    if _readinto_full(f, view[pos:pos + e - s]) != e - s:
                        raise LoraLoadError(path, "not a valid safetensors file, or truncated (it ended early)")
                    pos += e - s
        except OSError as exc:
            raise LoraLoadError(path, f"cannot read the file ({exc})") from exc
        flat = torch.from_numpy(buf).view(layout.src_dtype)
        # 3. The converter's constant factors, one multiply per run of equal factors. ``mul_`` per run rather than
        #    ``torch._foreach_mul_``: the latter rounds bf16 differently from diffusers' ``tensor * factor``.
        for start, end, factor in layout.factor_runs:
            flat[start:end].mul_(factor)
        return layout, flat

    def _finish_flat(self, path, identity, layout: _Layout, flat: torch.Tensor) -> PreparedAdapter:
        # 4. Move and cast as one tensor (nothing to do for a bf16 file on a bf16 CPU model).
        ref = self._param
        if flat.device != ref.device:
            flat = flat.to(ref.device)  # synchronous: the staging buffer is free again after this line
        flat = flat.to(ref.dtype)
        tensors = {k: part.view(shape) for k, part, shape
                   in zip(layout.keys, torch.split(flat, layout.numels), layout.shapes, strict=True)}
        # 5. Every value must be finite: one norm over all of them; NaN/Inf anywhere makes it non-finite (and a
        #    mere overflow of the norm is sorted out by the per-tensor check, which then finds nothing).
        if not bool(torch.isfinite(torch.linalg.vector_norm(flat))):
            self._check_finite(path, tensors)
        return PreparedAdapter(path, Path(path).name, identity, tensors, layout.network_alphas, layout.signature,
                               layout.dropped_text_encoder_keys, flat.numel() * flat.element_size())

    def _check_layers(self, path: str, sd: dict[str, torch.Tensor]) -> None:
        for key, value in sd.items():
            module = key.split(".lora_")[0]
            if module not in self._layers:
                raise LoraLoadError(path, f"targets layer {module!r}, which this {self.family.name} "
                                          f"{self.family.denoiser_attr} does not have; a LoRA for another "
                                          f"architecture or model family?")
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
        # One grouped norm over all tensors, in their own dtype (a float copy of each cost seconds on 2 cores); a
        # NaN/Inf anywhere makes its norm non-finite, and an overflowing norm is cleared by the exact check below.
        if tensors and not bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors)).float()).all()):
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
            warm = prepared is not None and prepared is self._lru.get(str(path))
            if prepared is None:
                prepared, warm = self.load_adapter(path)
            # 2. Install into the slot.
            kind = "warm" if warm else "cold"
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
            self.generation += 1
            if self.empty_cache and torch.cuda.is_available():
                torch.cuda.empty_cache()
            record = SwapRecord(prepared.name, kind, time.perf_counter() - t0, strength, bool(self._fused_names))
            self.history.append(record)
            del self.history[:-1000]
            return record

    def use_base(self) -> SwapRecord:
        """Render with the bare base: every adapter layer is bypassed (its forward is the base layer's) and, in
        fused mode, every merged weight is copied back from the pristine copy."""
        with self._lock:
            t0 = time.perf_counter()
            self._restore_fused()
            if self._slot is not None:
                self._set_strength(0.0)
            self.active, self.strength = None, 0.0
            self.generation += 1
            record = SwapRecord("base", "base", time.perf_counter() - t0, 0.0)
            self.history.append(record)
            del self.history[:-1000]
            return record

    def unload(self) -> None:
        """Remove the adapter slot and the peft wrappers entirely, giving back the original modules."""
        with self._lock:
            self._restore_fused()
            self._pristine.clear()  # the weights are the base again; a later merge takes a new copy
            if self._slot is not None:
                self.denoiser.unload_lora()
                self._slot = None
            self._layer_state = None
            self._lru.clear()
            self._installed = None
            self.active, self.strength = None, 0.0
            self.generation += 1

    def set_fuse(self, enabled: bool) -> None:
        """Switch fused mode (module doc) on or off; the active adapter and strength stay what they are.

        Off: every merged weight is copied back from the pristine copy, which is then freed, and the adapter
        layers are enabled again. On: the active adapter is merged now. Either way renders change slightly (other
        arithmetic), so the generation counter moves.
        """
        with self._lock:
            enabled = bool(enabled)
            if enabled == self.fuse:
                return
            self.fuse = enabled
            self.generation += 1
            if not enabled:
                self._restore_fused()
                self._pristine.clear()
            if self._slot is None:
                return
            if self.active is None or self._installed is None:
                self._set_strength(0.0)
                return
            try:
                self._apply_strength(self._installed, self.strength)
            except LoraLoadError:
                self.active, self.strength = None, 0.0
                raise

    def unroutable(self, prepared: PreparedAdapter) -> str:
        """Why this adapter cannot share a routed batch ("" when it can): it targets a layer that embeds every
        sample's tokens in one call (``Family.unbatched_layers``), where samples cannot be told apart, or it is a
        DoRA adapter (peft's mixed-batch forward refuses those)."""
        for key in prepared.tensors:
            if key.split(".", 1)[0] in self.family.unbatched_layers:
                return f"it adapts {key.rsplit('.', 2)[0]}, which embeds every sample's tokens in one call"
            if "lora_magnitude_vector" in key:
                return "it is a DoRA adapter, which peft cannot route per sample"
        return ""

    @contextmanager
    def routed(self, routes: list[tuple[str | None, float]], way: str = "auto",
               prepared: dict[str, PreparedAdapter] | None = None):
        """Several adapters in one denoiser batch, each sample through its own (the multi-adapter batching LLM
        servers such as S-LoRA and vLLM do): inside the block, sample ``j`` of every denoiser call goes through
        ``routes[j]`` = (file or ``None`` for the base, strength). Yields a ``SwapRecord`` of the set-up.

        Two ways, both unfused arithmetic that never writes a base weight:
        - *stacked* (kind ``routed``), when the samples come in equal consecutive blocks per route, every file
          shares one layout and every adapted layer is a Linear (every epoch of one run, in grid order): the
          slot is installed for that layout (for its per-layer scaling, as diffusers configured peft), the
          routes' down and up matrices are stacked per layer once, and a forward hook adds every block's delta
          with two broadcast matmuls per layer. Hand-written because peft's mixed-batch forward indexes and
          copies every sample's rows per adapter per layer, and loading one peft adapter per route costs a
          diffusers load each (both measured by ``python -m lora_spectrum bench``).
        - *peft* (kind ``routed-peft``), otherwise: each distinct (file, strength) is loaded through diffusers
          into a temporary adapter and peft's own mixed-batch forward (``adapter_names``) routes the samples.
        On leaving the block the slot's adapter, strength and fused state are exactly what they were. Every file
        is read and checked before anything changes (``LoraLoadError`` names it), and a file that
        ``unroutable`` refuses raises too: render it on its own. ``way="peft"`` forces the second way (the
        benchmark compares the two). ``prepared`` passes adapters the caller read just now (by path), so that a
        batch wider than the LRU does not read its files twice.
        """
        with self._lock:
            t0 = time.perf_counter()
            # 1. Read and check every file first (warm ones from the LRU); nothing has changed if one fails. Each
            #    sample's key: (file, strength), or None for the base.
            keys = [None if p is None or float(s) == 0.0 else (str(p), float(s)) for p, s in routes]
            distinct: dict[tuple[str, float], PreparedAdapter] = {}
            for key in keys:
                if key is None or key in distinct:
                    continue
                path, strength = key
                if not math.isfinite(strength):
                    raise LoraLoadError(path, f"strength must be a finite number, not {strength}")
                adapter = (prepared or {}).get(path) or self.load_adapter(path)[0]
                why = self.unroutable(adapter)
                if why:
                    raise LoraLoadError(path, f"cannot share a batch with other epochs: {why}")
                distinct[key] = adapter
            blocks = self._stackable(keys, distinct) if way == "auto" else None
            installed, undo, in_flight = self._installed, [], False
            self._restore_fused()  # routed samples add their deltas unfused; the base weights must be the base
            try:
                # 2. Set up the chosen way; ``undo`` collects what step 4 takes back. Torch errors (out of memory
                #    while stacking, say) are translated, so the caller can fail or fall back like for any other.
                try:
                    if blocks is not None:
                        kind = "routed"
                        self._route_stacked(blocks, len(keys) // len(blocks), distinct, undo)
                    else:
                        kind = "routed-peft"
                        self._route_peft(keys, distinct, undo)
                except LoraLoadError:
                    raise
                except Exception as exc:  # noqa: BLE001 - translated for the caller
                    raise RenderError(f"could not set up the routed batch ({type(exc).__name__}: {exc})") from exc
                self.generation += 1
                record = SwapRecord(f"{len(distinct)} adapter(s) routed", kind, time.perf_counter() - t0)
                self.history.append(record)
                del self.history[:-1000]
                # 3. The caller renders.
                try:
                    yield record
                except BaseException:
                    in_flight = True  # a failure in step 4 must not replace the caller's (a cancel, say)
                    raise
            finally:
                # 4. Back to the single slot exactly as it was: hooks and temporary adapters gone, the adapter the
                #    slot held before reinstalled (from memory), active at its strength (merged again in fused
                #    mode), or bypassed for the base. Every step is tried; if one fails, the base is active and
                #    the first failure is raised once all steps ran.
                self._layer_state = None
                self.generation += 1
                failures = []
                for fn in reversed(undo):
                    try:
                        fn()
                    except Exception as exc:  # noqa: BLE001 - the other steps must still run
                        failures.append(exc)
                try:
                    if failures:  # a hook or temporary adapter may be left: render the base, say so below
                        raise failures[0]
                    if installed is not None and self._installed is not installed:
                        self._install(installed)
                    if self._slot is not None:
                        for layer in self._slot.layers:
                            layer.set_adapter(self._slot.adapter_name)
                        if self.active is not None and self._installed is not None:
                            self._apply_strength(self._installed, self.strength)
                        else:
                            self._set_strength(0.0)
                except Exception as exc:  # noqa: BLE001 - a failed reinstall or merge: the base is what renders
                    if exc not in failures:
                        failures.append(exc)
                    self.active, self.strength = None, 0.0
                    self._restore_fused()
                    if self._slot is not None:
                        self._layer_state = None
                        self._set_strength(0.0)
                if failures and not in_flight:
                    raise RenderError(f"could not restore the adapter after a routed batch ({failures[0]}); the "
                                      f"base is active") from failures[0]

    def _stackable(self, keys, distinct) -> list[tuple[str, float] | None] | None:
        """The samples' consecutive blocks (file and strength, ``None`` for the base) when the stacked way applies
        (``routed``); ``None`` otherwise."""
        if not distinct:
            return None
        blocks, sizes = [], []
        for key in keys:
            if blocks and blocks[-1] == key:
                sizes[-1] += 1
            else:
                blocks.append(key)
                sizes.append(1)
        if len(set(sizes)) != 1:
            return None
        first = next(iter(distinct.values()))
        if any(p.signature != first.signature for p in distinct.values()):
            return None
        for key, tensor in first.tensors.items():
            stem, leaf = key.rsplit(".", 1)[0], key.rsplit(".", 2)[-2]
            module = stem.rsplit(".", 1)[0]
            if leaf not in ("lora_A", "lora_B") or tensor.dim() != 2 or self._layers.get(module, ("",))[0] != "linear":
                return None
        return blocks

    def _route_stacked(self, blocks, samples: int, distinct, undo: list) -> None:
        """Stacked routing (``routed``): per adapted layer, (blocks, r, in) downs and (blocks, out, r) ups with
        each block's scaling folded in (the base's block: zeros), added after the layer's own forward."""
        from peft.tuners.lora import LoraLayer

        # 1. The slot installed for this layout, so that its peft layers tell each layer's scaling.
        first = next(iter(distinct.values()))
        if self._slot is None or self._slot.signature != first.signature:
            self._install(first)
        slot = self._slot
        # 2. Every LoRA layer bypassed for the block: the hooks add the deltas instead.
        for layer in self.denoiser.modules():
            if isinstance(layer, LoraLayer):
                layer.enable_adapters(False)
        self._layer_state = None
        # 3. Stacks and hooks, layer by layer.
        for name, layer in zip(slot.layer_names, slot.layers, strict=True):
            scaling = self._scaling(layer, slot.adapter_name)
            down_key, up_key = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
            zeros = torch.zeros_like(first.tensors[up_key])  # the base's block adds nothing
            downs = [(first if key is None else distinct[key]).tensors[down_key] for key in blocks]
            ups = [zeros if key is None else distinct[key].tensors[up_key] * (scaling * key[1]) for key in blocks]
            device = layer.get_base_layer().weight.device
            down_t = torch.stack(downs).to(device).transpose(1, 2)  # (blocks, in, r)
            up_t = torch.stack(ups).to(device).transpose(1, 2)  # (blocks, r, out)
            hook = functools.partial(_add_stacked, [down_t, up_t], samples)
            undo.append(layer.register_forward_hook(hook).remove)

    def _route_peft(self, keys, distinct, undo: list) -> None:
        """peft's mixed-batch forward (``routed``): one temporary adapter per distinct (file, strength)."""
        from peft.tuners.lora import LoraLayer

        # 1. One temporary adapter per distinct (file, strength), dropped again on leaving the block.
        names_for: dict[tuple[str, float], str] = {}
        for i, (key, prepared) in enumerate(distinct.items()):
            names_for[key] = f"lora_spectrum_mix{i}"
            self._load_named(prepared, names_for[key])
            undo.append(functools.partial(self._drop_adapter, names_for[key]))
        names = [MIX_BASE if key is None else names_for[key] for key in keys]
        # 2. Every LoRA layer enabled, each temporary adapter at its strength, told every sample's adapter.
        self._layer_state = None
        for layer in self.denoiser.modules():
            if not isinstance(layer, LoraLayer):
                continue
            layer.enable_adapters(True)
            for (_, strength), name in names_for.items():
                if name in layer.lora_A:
                    layer.set_scale(name, strength)
            undo.append(layer.register_forward_pre_hook(functools.partial(_route, names), with_kwargs=True).remove)


    def fused_pristine_bytes(self) -> int:
        """What fused mode costs in memory: the pristine copy of every base weight merged so far (0 unfused)."""
        return sum(t.numel() * t.element_size() for t in self._pristine.values())

    def is_fused(self) -> bool:
        """Whether an adapter is merged into the base weights now."""
        return bool(self._fused_names)

    # ------------------------------------------------------------------ internals
    def _apply_strength(self, prepared: PreparedAdapter, strength: float) -> None:
        """Unfused: set the adapter layers' scale. Fused: merge the slot into the base weights at ``strength``
        and bypass the adapter layers; a slot that cannot be merged renders unfused (``fuse_note`` says why)."""
        if not self.fuse or strength == 0.0:
            self._restore_fused()
            self._set_strength(strength)
            return
        why = self._unfusable(self._slot)
        if why:
            self.fuse_note = f"{prepared.name} renders unfused: {why}"
            self._restore_fused()
            self._set_strength(strength)
            return
        self.fuse_note = ""
        self._set_strength(0.0)  # bypassed first: the delta lives in the weights, never added twice
        self._merge(prepared, strength)

    def _unfusable(self, slot: _Slot) -> str:
        """Why this slot cannot be merged exactly by ``_merged`` ("" when it can); checked once per slot."""
        if slot.unfusable is not None:
            return slot.unfusable
        why = ""
        a = slot.adapter_name
        for name, layer in zip(slot.layer_names, slot.layers, strict=True):
            base = layer.get_base_layer()
            if layer.use_dora.get(a) or a in getattr(layer, "lora_variant", {}):
                why = f"{name} is a DoRA (or other variant) layer"
            elif getattr(layer, "lora_bias", {}).get(a):
                why = f"{name}'s up-projection carries a bias"
            elif getattr(layer, "fan_in_fan_out", False):
                why = f"{name} stores its weight transposed (fan_in_fan_out)"
            elif isinstance(base, torch.nn.Conv2d):
                down, up = layer.lora_A[a], layer.lora_B[a]
                same = all(getattr(down, k) == getattr(base, k)
                           for k in ("kernel_size", "stride", "padding", "dilation", "padding_mode"))
                if base.groups != 1 or not same or up.kernel_size != (1, 1) or up.stride != (1, 1) \
                        or up.padding != (0, 0) or base.dilation != (1, 1):
                    why = f"{name} is a convolution whose LoRA is not down: the layer's kernel, up: 1x1"
            elif not isinstance(base, torch.nn.Linear):
                why = f"{name} is a {type(base).__name__} layer"
            if why:
                break
        slot.unfusable = why
        return why

    def _merge(self, prepared: PreparedAdapter, strength: float) -> None:
        """Write ``W0 + delta`` into every layer of the slot, from the pristine ``W0``. On any failure every merged
        weight is copied back from the pristine copy and ``LoraLoadError`` is raised: the base is then active."""
        key = (self._install_serial, strength)
        if key == self._fused_key and self._fused_names:
            return
        slot = self._slot
        try:
            with torch.no_grad():
                # 1. The pristine copy of every layer this adapter targets, taken the first time it is merged (a
                #    weight not in the copy has never been written, so it is the base as loaded).
                for name, layer in zip(slot.layer_names, slot.layers, strict=True):
                    if name not in self._pristine:
                        w = layer.get_base_layer().weight
                        self._pristine[name] = w.detach().to(self.pristine_device or w.device, copy=True)
                # 2. Layers the previous merge wrote that this adapter leaves alone: back to the base.
                for name in self._fused_names - set(slot.layer_names):
                    self._restore(name)
                # 3. Merge, layer by layer; a layer counts as written before it is, so a failure restores it too.
                self._fused_key = None
                for name, layer in zip(slot.layer_names, slot.layers, strict=True):
                    w = layer.get_base_layer().weight
                    self._fused_names.add(name)
                    w.copy_(self._merged(layer, slot.adapter_name, self._pristine[name], w, strength))
        except Exception as exc:  # noqa: BLE001 - out of memory or anything else: the base comes back, translated
            self._restore_fused()
            raise LoraLoadError(prepared.path, f"could not be merged into the base weights (fused mode; "
                                               f"{type(exc).__name__}: {exc}); the base weights were restored "
                                               f"and the base is active") from exc
        self._fused_key = key

    @staticmethod
    def _merged(layer, adapter: str, w0: torch.Tensor, w: torch.Tensor, strength: float) -> torch.Tensor:
        """``W0 + strength * scaling * (B @ A)`` in float32 on ``w``'s device (the caller casts into ``w``).
        A Conv2d's 1x1 up-projection makes its delta one matmul."""
        scaling = strength * HotSwapper._scaling(layer, adapter)
        down = layer.lora_A[adapter].weight.to(device=w.device, dtype=torch.float32)
        up = layer.lora_B[adapter].weight.to(device=w.device, dtype=torch.float32)
        delta = (up.flatten(1) @ down.flatten(1)).view(w.shape)
        return torch.add(w0.to(device=w.device, dtype=torch.float32), delta, alpha=scaling)

    @staticmethod
    def _scaling(layer, adapter: str) -> float:
        """A peft LoRA layer's scaling at strength 1, as its ``set_scale`` computes it: alpha / r (or / sqrt(r))."""
        r = layer.r[adapter]
        return layer.lora_alpha[adapter] / (math.sqrt(r) if layer.use_rslora.get(adapter) else r)

    def _base_weight(self, name: str) -> torch.Tensor:
        module = self.denoiser.get_submodule(name)
        if hasattr(module, "get_base_layer"):
            module = module.get_base_layer()
        return module.weight

    def _restore(self, name: str) -> None:
        """Copy one base weight back from the pristine copy: bit-exact, never by subtracting the delta."""
        with torch.no_grad():
            self._base_weight(name).copy_(self._pristine[name])
        self._fused_names.discard(name)

    def _restore_fused(self) -> None:
        for name in sorted(self._fused_names):
            self._restore(name)
        self._fused_key = None

    def _set_strength(self, strength: float) -> None:
        """Set every adapter layer's scale (0: bypassed). The layers are only touched when the state changes:
        peft's ``enable_adapters`` walks each layer's modules, the one cost left in a warm swap otherwise."""
        slot = self._slot
        state = (strength != 0.0, strength if strength != 0.0 else 0.0)
        if state == self._layer_state:
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
        through diffusers. Returns whether the slot was rebuilt."""
        rebuilt = not (self._slot is not None and self._slot.signature == prepared.signature and self._slot.params)
        if rebuilt:
            self._rebuild(prepared)
        else:
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
            self.denoiser.load_lora_adapter(sd, prefix=prefix, network_alphas=alphas or None, adapter_name=name,
                                            low_cpu_mem_usage=True)
            if name not in getattr(self.denoiser, "peft_config", {}):
                raise LoraLoadError(prepared.path, "diffusers matched none of its keys to the model")
        except LoraLoadError:
            self._drop_adapter(name)
            raise
        except Exception as exc:  # noqa: BLE001 - peft/diffusers errors are translated here
            self._drop_adapter(name)
            raise LoraLoadError(prepared.path, f"could not be loaded into the {self.family.denoiser_attr} "
                                               f"({type(exc).__name__}: {exc})") from exc

    def _drop_adapter(self, adapter_name: str) -> None:
        if adapter_name in getattr(self.denoiser, "peft_config", {}):
            with warnings.catch_warnings():  # peft names the adapter it falls back to; the caller sets its own
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
                self.denoiser.delete_adapters(adapter_name)

    def resident_names(self) -> list[str]:
        return [p.name for p in self._lru.values()]

    def resident_bytes(self) -> int:
        return sum(p.nbytes for p in self._lru.values())
