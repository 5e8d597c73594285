"""Everything about the files in the loras folder: listing, ``.bak`` hiding, epochs, series, headers, metadata,
states and hashes.

This module is the only code that looks at the loras folder. It reads safetensors headers and metadata only
(``safe_open``; never a tensor's data, never a pickle) and never loads anything into a model.

Rules a user can rely on:
- ``*.safetensors`` files are listed; a name ending in ``.bak`` is hidden (rename it back to see it again).
- ``.ckpt``, ``.pt``, ``.pth``, ``.bin`` are listed as ``ignored``: pickle-based formats can run code when loaded.
- Symlinks are followed only when their target stays inside the loras folder; others are ``unreadable``. The
  rule is checked again right before a swap (``Catalog.verify``), so a link changed after the scan is not followed.
- Order: series in natural order; inside a series by epoch (9 < 10 < 100), then by step; natural order for ties.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from natsort import natsort_keygen
from safetensors import SafetensorError, safe_open

from lora_spectrum.errors import CatalogError, HeaderError
from lora_spectrum.language import N_, _
from lora_spectrum.loras import epoch_names
from lora_spectrum.loras.epoch_names import int_or_none
from lora_spectrum.loras.lora_keys import (
    DOWN_SUFFIXES,
    algorithm,
    family_hint,
    is_alpha_key,
    is_denoiser_key,
    is_text_encoder_key,
    key_format,
    rank_of,
    read_header,
)

# The states (N_: the UI shows them translated; the values, in JSON too, stay these English words)
READY, UNREADABLE, INCOMPLETE, IGNORED = N_("ready"), N_("unreadable"), N_("incomplete"), N_("ignored")
INCOMPATIBLE = N_("incompatible")  # readable, but made for another model family than the base
UNSUPPORTED = N_("unsupported")  # readable, but a form no loader here handles (OFT, IA3, full diffs ...)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SETTLE_SECONDS = 2.0  # a file whose size changed this recently is taken as still being copied
METADATA_KEYS = (
    "ss_epoch", "ss_steps", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name",
    "ss_learning_rate", "ss_num_epochs", "ss_network_module", "ss_session_id", "ss_training_comment",
    "modelspec.architecture", "modelspec.title", "modelspec.trigger_phrase", "sshs_model_hash", "ss_network_args",
    "training_info",
)  # fmt: skip

_natural = natsort_keygen()


@dataclass
class LoraEntry:
    """One file in the loras folder, described from its name and header."""

    name: str
    path: str
    series: str
    epoch: int | None
    step: int | None
    state: str
    reason: str
    format: str = "unknown"
    algorithm: str = "unknown"  # lora, locon, loha, lokr, dora, or other (``unsupported`` says why)
    unsupported: str = ""
    ranks: list[int] = field(default_factory=list)
    alpha: float | None = None
    denoiser_keys: int = 0
    text_encoder_keys: int = 0  # tensors only: alpha scalars are counted in ``alpha_keys``
    alpha_keys: int = 0
    other_keys: int = 0
    family_hint: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    trigger_words: list[str] = field(default_factory=list)
    size: int = 0
    mtime_ns: int = 0

    @property
    def rank(self) -> int | None:
        return max(self.ranks) if self.ranks else None

    @property
    def selectable(self) -> bool:
        return self.state == READY

    @property
    def label(self) -> str:
        return epoch_names.label(self.name, self.epoch, self.step)

    def problem(self, family: str | None = None) -> tuple[str, str] | None:
        """(state, reason) when this file cannot be rendered on a base of ``family``; None when it can. Without a
        family (``inspect``): on the family it was made for, or on any when it names none. Files made for another
        family (by metadata or key names) are *incompatible*; files a swap would refuse are *unsupported* with the
        swap's reason, or *incompatible* when a base of the other family takes them."""
        if self.state != READY:
            return self.state, self.reason
        if self.unsupported:
            return UNSUPPORTED, self.unsupported
        if family and self.family_hint and self.family_hint != family:
            return INCOMPATIBLE, _("made for {hint} (its metadata or key names); the base is {family}").format(
                hint=self.family_hint, family=family)
        return self._refused(family)

    def _refused(self, family: str | None) -> tuple[str, str] | None:
        # One decision of *ready*: ``swap_refusal`` runs the swap's own preparation (adapters/reading.py: diffusers'
        # converter, then the checks on the converted names) on this file's header, so what is listed ready is
        # what a swap takes; only what needs the base's weights or the file's values (a layer's shape, NaN) is
        # left to the swap. Cached per (size, mtime) there: the app asks on every rerun.
        from lora_spectrum.adapters.reading import swap_refusal
        from lora_spectrum.bases.families import FAMILY_NAMES

        wanted = [family] if family else [self.family_hint] if self.family_hint in FAMILY_NAMES else FAMILY_NAMES
        reasons = []
        for f in wanted:  # ready on the first family that takes it
            reasons.append(swap_refusal(self.path, f))
            if not reasons[-1]:
                return None
        fits = [f for f in FAMILY_NAMES if f not in wanted and not swap_refusal(self.path, f)]
        reason = reasons[0] if len(wanted) == 1 else \
            "; ".join(f"{f}: {r}" for f, r in zip(wanted, reasons, strict=True))
        if fits:
            return INCOMPATIBLE, f"{reason} (it fits a {fits[0]} base)"
        return UNSUPPORTED, reason

    def to_json(self) -> dict:
        out = asdict(self)
        out["rank"] = self.rank
        return out


def _trigger_words(meta: dict[str, str]) -> list[str]:
    phrase = (meta.get("modelspec.trigger_phrase") or "").strip()
    if phrase:
        return [w.strip() for w in phrase.split(",") if w.strip()]
    try:
        freq = json.loads(meta.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    if isinstance(freq, dict):
        for tags in freq.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)):
                        counts[str(tag).strip()] += n
    return [t for t, _count in counts.most_common(5) if t]


def _diagnose(path: Path, size: int) -> tuple[str, str] | None:
    """(state, reason) when the header says the file is unreadable or incomplete; None when it looks sound."""
    try:
        read_header(path, size)
    except HeaderError as exc:
        return (INCOMPLETE if exc.incomplete else UNREADABLE), exc.reason
    return None


def read_entry(path: Path, previous: LoraEntry | None = None, now: float | None = None) -> LoraEntry:
    """Describe one file from its name and header. Never raises for a bad file: the state says what is wrong."""
    # 1. Name: series, epoch, step.
    name = path.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else path.stem
    series, epoch, step = epoch_names.parse_name(stem, path.parent.name)
    base = LoraEntry(name=name, path=str(path), series=series, epoch=epoch, step=step, state=READY, reason="")

    # 2. Files we never open.
    if name.lower().endswith(PICKLE_SUFFIXES):
        base.state, base.reason = IGNORED, "pickle-based format; only .safetensors files are loaded"
        return base
    try:
        st = path.stat()
    except FileNotFoundError:
        base.state, base.reason = UNREADABLE, "file disappeared while the folder was being read"
        return base
    except OSError as exc:
        base.state, base.reason = UNREADABLE, f"cannot stat the file ({exc.strerror or exc})"
        return base
    base.size, base.mtime_ns = st.st_size, st.st_mtime_ns
    now = time.time() if now is None else now

    # 3. Header sanity, then safetensors' own validation of header and offsets. What no amount of copying can
    #    make valid (a pickle, garbage, a header over the limit) is said first; a file that changed size within
    #    the last seconds is otherwise taken as still being copied.
    try:
        verdict = _diagnose(path, st.st_size)
        if verdict and verdict[0] == UNREADABLE:
            base.state, base.reason = verdict
            return base
        if previous is not None and previous.size != st.st_size and now - st.st_mtime_ns / 1e9 < SETTLE_SECONDS:
            base.state, base.reason = INCOMPLETE, ("file is still growing (being copied); looked at again on the "
                                                   "next scan")
            return base
        if verdict:
            base.state, base.reason = verdict
            return base
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            ranks: set[int] = set()
            alphas: set[float] = set()
            conv = False
            for k in keys:
                if is_alpha_key(k):
                    alphas.add(float(f.get_tensor(k).float().item()))
                    continue
                shape = f.get_slice(k).get_shape()
                rank = rank_of(k, shape)
                if rank is not None:
                    ranks.add(rank)
                    conv = conv or (len(shape) == 4 and k.endswith(DOWN_SUFFIXES))
    except SafetensorError as exc:
        base.state, base.reason = UNREADABLE, f"not a valid safetensors file ({exc})"
        return base
    except FileNotFoundError:
        base.state, base.reason = UNREADABLE, "file disappeared while the folder was being read"
        return base
    except OSError as exc:
        base.state, base.reason = UNREADABLE, f"cannot read the file ({exc.strerror or exc})"
        return base
    st2 = path.stat() if path.exists() else None
    if st2 is None or st2.st_size != st.st_size:
        base.state, base.reason = INCOMPLETE, "file changed while being read (still being copied)"
        return base

    # 4. What the header says.
    base.format = key_format(keys)
    base.algorithm, base.unsupported = algorithm(keys, conv)
    base.denoiser_keys = sum(1 for k in keys if is_denoiser_key(k))
    base.text_encoder_keys = sum(1 for k in keys if is_text_encoder_key(k))
    base.alpha_keys = sum(1 for k in keys if is_alpha_key(k))
    base.other_keys = len(keys) - base.denoiser_keys - base.text_encoder_keys - base.alpha_keys
    base.ranks = sorted(ranks)
    if alphas:
        base.alpha = max(alphas)
    elif int_or_none(meta.get("ss_network_alpha")) is not None:
        base.alpha = float(meta["ss_network_alpha"])
    base.metadata = {k: meta[k] for k in METADATA_KEYS if k in meta}
    base.trigger_words = _trigger_words(meta)
    base.family_hint = family_hint(keys, meta)

    # 5. Epoch and step from the metadata where the name lacks them (``epoch_names.place``).
    base.series, base.epoch, base.step = epoch_names.place(stem, meta, path.parent.name)
    if not keys:
        base.state, base.reason = UNREADABLE, "the file holds no tensors"
    return base


SYMLINK_OUTSIDE = "symlink points outside the loras folder (or nowhere); not followed"


def _escapes(path: Path, root: Path) -> bool:
    """True when the symlink ``path`` resolves to nothing or to something outside ``root`` (a resolved folder)."""
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return True
    return not target.is_relative_to(root)


def sort_key(entry: LoraEntry):
    return epoch_names.sort_key(entry.series, entry.epoch, entry.step, entry.name)


class Catalog:
    """The listing of one loras folder. ``scan()`` is cheap when nothing changed (entries are kept by
    (size, mtime)); sha256 is computed on first request and cached the same way. Thread-safe."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._entries: dict[str, LoraEntry] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self.hidden: list[str] = []
        self.generation = 0  # changes whenever the listing changes

    def scan(self) -> list[LoraEntry]:
        """List the folder again: new, renamed and removed files are picked up."""
        if not self.folder.is_dir():
            raise CatalogError(f"{self.folder}: loras folder does not exist")
        root = self.folder.resolve()
        fresh: dict[str, LoraEntry] = {}
        hidden: list[str] = []
        with os.scandir(self.folder) as it:
            items = list(it)
        for item in items:
            name = item.name
            low = name.lower()
            if low.endswith(".bak"):
                hidden.append(name)
                continue
            if not (low.endswith(".safetensors") or low.endswith(PICKLE_SUFFIXES)):
                continue
            path = self.folder / name
            if item.is_symlink() and _escapes(path, root):
                series, epoch, step = epoch_names.parse_name(name.rsplit(".", 1)[0], self.folder.name)
                fresh[name] = LoraEntry(name, str(path), series, epoch, step, UNREADABLE, SYMLINK_OUTSIDE)
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # removed between listing and stat: it is simply gone
            old = self._entries.get(name)
            if old and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns and old.state != INCOMPLETE:
                fresh[name] = old
            else:
                fresh[name] = read_entry(path, previous=old)
        with self._lock:
            if set(fresh) != set(self._entries) or any(fresh[n] is not self._entries.get(n) for n in fresh):
                self.generation += 1
            self._entries = fresh
            self.hidden = sorted(hidden, key=_natural)
        return self.entries

    @property
    def entries(self) -> list[LoraEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=sort_key)

    def series(self) -> dict[str, list[LoraEntry]]:
        """Entries grouped by series, each group in epoch order."""
        out: dict[str, list[LoraEntry]] = {}
        for e in self.entries:
            if e.state != IGNORED:
                out.setdefault(e.series, []).append(e)
        return out

    def choose_series(self, series: str | None = None, ready_only: bool = False,
                      family: str | None = None) -> tuple[str, list[LoraEntry]]:
        """The series named (or the only one there is) and its entries in epoch order (``ready_only``: the usable
        ones on a base of ``family``, and only series that have any); ``CatalogError`` listing the choices
        otherwise."""
        groups = self.series()
        if ready_only:
            groups = {k: v for k, v in ((k, [e for e in es if e.problem(family) is None])
                                        for k, es in groups.items()) if v}
        if not groups:
            what = "usable LoRA files" if ready_only else "LoRA files (*.safetensors)"
            raise CatalogError(f"{self.folder}: no {what} in this folder")
        if series is None:
            if len(groups) > 1:
                raise CatalogError(f"{self.folder} holds {len(groups)} series; choose one with --series: "
                                   + ", ".join(f"{s} ({len(es)} files)" for s, es in groups.items()))
            series = next(iter(groups))
        if series not in groups:
            raise CatalogError(f"{self.folder}: no series {series!r}; choose one of: {', '.join(groups)}")
        return series, groups[series]

    def get(self, name: str) -> LoraEntry:
        """The entry for a file name in this folder; names with path parts are refused."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CatalogError(f"{name!r}: not a file name in the loras folder")
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise CatalogError(f"{name}: no such LoRA in {self.folder} (rescan, or it was renamed or removed)")
        return entry

    def verify(self, entry: LoraEntry) -> None:
        """Check, just before ``entry`` is swapped in, that its file is still the one the last scan read.

        Raises ``CatalogError`` naming the file and the cause when it is not: removed, turned into a symlink out of
        the folder, cut off, still being copied, not a safetensors file, or replaced by another file. A replaced
        file is refused too, even a valid one: its label, epoch and hash come from the scan and would describe
        other weights. The UI and the CLI scan right before a run, so this only fires for files changed mid-run.
        """
        path = Path(entry.path)
        if path.is_symlink() and _escapes(path, self.folder.resolve()):
            raise CatalogError(f"{entry.name}: {SYMLINK_OUTSIDE}")
        try:
            st = path.stat()
        except FileNotFoundError as exc:
            raise CatalogError(f"{entry.name}: file was removed after the last scan") from exc
        except OSError as exc:
            raise CatalogError(f"{entry.name}: cannot stat the file ({exc.strerror or exc})") from exc
        if (st.st_size, st.st_mtime_ns) != (entry.size, entry.mtime_ns):
            now = read_entry(path)  # what the file is now, complete or not
            if now.state == READY:
                raise CatalogError(f"{entry.name}: the file was replaced after the last scan; rescan to use the "
                                   f"new file")
            if now.state == INCOMPLETE:  # a copy still in progress, or one that stopped
                now = read_entry(path, previous=entry)
            raise CatalogError(f"{entry.name}: {now.state} since the last scan: {now.reason}")
        if entry.state != READY:
            raise CatalogError(f"{entry.name}: {entry.state}, {entry.reason}")

    def sha256(self, entry: LoraEntry) -> str:
        """The file's sha256, computed once per (size, mtime)."""
        try:
            st = os.stat(entry.path)
        except FileNotFoundError as exc:
            raise CatalogError(f"{entry.name}: file was removed after the last scan") from exc
        key = (entry.path, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._hashes:
                return self._hashes[key]
        digest = file_sha256(entry.path)
        with self._lock:
            self._hashes[key] = digest
        return digest


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    except FileNotFoundError as exc:
        raise CatalogError(f"{Path(path).name}: file was removed") from exc
    return h.hexdigest()
