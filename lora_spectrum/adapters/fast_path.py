"""The fast path of reading: what diffusers' converter does to a file's tensor table, learned once per layout, so
that later files of that layout (every epoch of one run) are read with one ``readinto`` and skip the converter.

Reads files only; the converter it learns from is passed in. Step 1 of ``docs/adapters.md``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from lora_spectrum.errors import LoraLoadError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_MAX_LAYOUTS = 8


@dataclass
class Layout:
    """What diffusers' converter does to every file with this tensor table, learned once (``FastPath.learn``).

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


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
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


class FastPath:
    """The learned layouts (newest last) and two pinned staging buffers, one for the swap's own reads and one for
    the read ahead (``prefetch.py``), so that neither waits for the other; ``note`` says why the last new layout
    was (not) learned. ``read`` with ``staged`` and copying out of its result happen under ``locks[background]``."""

    def __init__(self):
        self.layouts: list[Layout] = []
        self.note = ""
        self.locks = {False: threading.Lock(), True: threading.Lock()}
        # pinned host buffers for files bound to a CUDA denoiser: the foreground's, the read ahead's
        self._staging: dict[bool, torch.Tensor | None] = {False: None, True: None}

    def candidates(self, table: dict | None) -> list[Layout]:
        """The learned layouts for a file with this tensor table (``None``: it cannot take the fast path)."""
        return [lay for lay in self.layouts if lay.table == table] if table is not None else []

    def learn(self, path, table, data_start, raw, mine, convert, alphas, signature, dropped) -> None:
        """Remember what the converter did to this file, so that files with the same table skip it. ``convert``:
        raw tensors -> the denoiser's tensors, as they became ``mine``.

        Never raises: a layout that cannot be learned (an unusual converter) simply keeps using diffusers; the
        reason is kept in ``note`` for the benchmark and for debugging.
        """
        try:
            layout, why = self._derive_layout(path, table, data_start, raw, mine, convert, alphas, signature,
                                              dropped)
        except Exception as exc:  # noqa: BLE001 - probing an unknown converter may raise anything; diffusers stays
            layout, why = None, f"probing the converter failed ({type(exc).__name__}: {exc})"
        self.note = why
        if layout is not None:
            self.layouts.append(layout)
            del self.layouts[:-_MAX_LAYOUTS]

    def _derive_layout(self, path, table, data_start, raw, mine, convert, alphas, signature, dropped
                       ) -> tuple[Layout | None, str]:
        # 1. Probe the converter twice: every tensor with more than one value (a source) filled with its
        #    index + 1, then with ones; scalars (alphas) stay real. Stride-0 float64 views: free unless the
        #    converter computes on them. An output must be one source times a constant: index and factor.
        sources = [k for k, v in raw.items() if v.numel() > 1]
        index = {k: i for i, k in enumerate(sources)}

        def probe(fill) -> dict[str, float]:
            sd = {k: torch.full((), fill(index[k]), dtype=torch.float64).expand(v.shape) if k in index else v
                  for k, v in raw.items()}
            return {k: _constant(v) for k, v in convert(sd).items()}

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
        ranges = _merge_ranges([tuple(table[src_of[k]]["data_offsets"]) for k in keys])
        scalar_ranges = _merge_ranges(sorted(tuple(table[k]["data_offsets"]) for k, v in raw.items()
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
        layout = Layout(table, _DTYPES[next(iter(dtypes))], ranges, keys, [tuple(mine[k].shape) for k in keys],
                        [mine[k].numel() for k in keys], [tuple(r) for r in runs], scalar_ranges, scalar_bytes,
                        alphas, signature, dropped)
        # 4. Check the learned path against diffusers' own conversion of this very file, bit for bit.
        hit = self.read(path, [layout], data_start)
        if hit is None:
            return None, "re-reading the file did not match its own scalars"
        parts = torch.split(hit[1], layout.numels)
        for k, part, shape in zip(keys, parts, layout.shapes, strict=True):
            if not torch.equal(part.view(shape), mine[k]):
                return None, f"the learned conversion differs from diffusers' at {k}"
        return layout, "learned"

    def read(self, path, candidates, data_start, staged=False, background=False
             ) -> tuple[Layout, torch.Tensor] | None:
        """The outputs of a file whose table matches learned layouts, as one flat host tensor of the file's dtype
        with the conversion's factors applied; None when its scalars (alphas) match no candidate.

        ``staged`` (for a CUDA denoiser; hold ``locks[background]``): read into a reused pinned buffer (the read
        ahead's when ``background``) instead of a new one, since the tensors will live on the GPU; copying from
        pinned memory is several times faster.
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
                    staging = self._staging[background]
                    if staging is None or staging.numel() < nbytes:
                        self._staging[background] = staging = None  # free the old one first
                        self._staging[background] = staging = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
                    buf = staging[:nbytes].numpy()
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
