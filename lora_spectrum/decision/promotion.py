"""Promotion: one epoch of a scanned series copied out as a release file, with its model card and grid image.

The copy's tensors are the source's byte for byte; only the safetensors header is rewritten (the trainer's
metadata kept; provenance ``lora_spectrum.*`` keys, the series' verdict as it stood, and missing ``modelspec`` keys
added). The source is only read; nothing is ever overwritten (targets are created exclusively, under a lock that
every process shares); a file changed since the scan is refused. The card's text comes from ``model_card.py``; this
module owns the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock
from safetensors import SafetensorError, safe_open

from lora_spectrum.decision.local_paths import without_local_paths
from lora_spectrum.decision.model_card import epoch_measures, model_card, ranking_row, verdict_of
from lora_spectrum.decision.strengths import strength_advice
from lora_spectrum.errors import CatalogError, ShipError
from lora_spectrum.file_locks import held
from lora_spectrum.language import _
from lora_spectrum.loras.catalog import Catalog, LoraEntry, file_sha256
from lora_spectrum.loras.hashes import addnet_hash, kohya_hashes
from lora_spectrum.loras.lora_keys import HEADER_LIMIT, read_header
from lora_spectrum.records.grid_files import base_name, read_manifest

PREFIX = "lora_spectrum."
CHUNK = 1 << 22  # bytes per read of the data section
BAD_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]')  # path parts, control characters, what Windows refuses
LOCK_DIR = "lora_spectrum-locks"  # under the system's temporary folder: a release folder holds only what is published
LAYOUTS = ("hub", "flat")  # hub: README.md and images/ (the folder is a hub repository); flat: NAME.md beside others
MAX_IMAGES = 8  # example images of the hub layout's widget
LOCK_TIMEOUT_S = 120  # another promotion into the folder holds the lock while it copies one file


@dataclass(frozen=True)
class Promotion:
    """What ``promote`` wrote: the release file, its card and grid image, and the source it came from."""

    path: Path  # the new NAME.safetensors
    card: Path  # NAME.md, or README.md in the hub layout
    grid_image: Path | None  # NAME.grid.png, when a grid was given
    sha256: str  # of the source file, as hashed before and during the copy
    source: str  # the source's file name
    epoch: int  # the epoch (or step) asked for
    images: tuple[Path, ...] = ()  # the hub layout's example images (images/), this epoch's own renders


def promote(catalog: Catalog, epoch: int, out_dir: str | Path, series: str | None = None, name: str | None = None,
            note: str = "", ranking: dict | None = None, insight: dict | None = None,
            grid: str | Path | None = None, base_id: str | None = None, layout: str = "flat",
            license: str | None = None) -> Promotion:
    """Copy ``epoch`` of ``series`` out of the scanned ``catalog`` as ``out_dir/NAME.safetensors`` with
    ``NAME.md`` (and ``NAME.grid.png`` from ``grid``, a grid output folder). ``insight`` is ``series_insight``'s
    dict: its ``verdict`` goes into the metadata (``lora_spectrum.verdict``) and the card. ``ShipError`` when the
    epoch is not there, NAME is no plain file name, a target exists, or the source changed since the scan; then
    nothing stays written.

    ``layout="hub"`` makes the folder a hub repository: the card is ``README.md``, and this epoch's own renders from
    ``grid`` are copied into ``images/`` as the card's ``widget`` (each with its prompt); ``license`` goes into the
    card's front matter (else the file's ``modelspec.license``)."""
    # 1. The entry, the release name and the targets; all refused before anything is written.
    series_name, entry = pick_entry(catalog, epoch, series)
    name = release_name(name if name is not None else series_name)
    out = Path(out_dir)
    if out.resolve().is_relative_to(catalog.folder.resolve()):  # a release there would be scanned as an epoch
        raise ShipError(_("{folder}: inside the loras folder; promote into another folder").format(folder=out))
    manifest, grid_png = None, None
    if grid:
        grid_dir, manifest = read_manifest(grid)
        grid_png = grid_dir / "grid.png"
        if not grid_png.is_file():
            raise ShipError(_("{folder}: no grid.png in this grid folder").format(folder=grid_dir))
    if layout not in LAYOUTS:
        raise ShipError(_("{layout}: not a layout (one of {layouts})").format(layout=layout, layouts=", ".join(LAYOUTS)))
    targets = {"file": out / f"{name}.safetensors", "card": out / ("README.md" if layout == "hub" else f"{name}.md")}
    if grid_png is not None:
        targets["grid"] = out / f"{name}.grid.png"
    advice = strength_advice((insight or {}).get("image"), entry.name, (verdict_of(insight) or {}).get("preference"))
    recommended = advice["recommended"] if advice else None
    renders = release_renders(grid_dir, manifest, entry.name, strength=recommended) if grid and layout == "hub" else []
    images = {f"images/{src.name}": (src, prompt) for src, prompt in renders}
    targets.update({rel: out / rel for rel in images})
    _refuse_existing(targets.values())

    # 2. The source as scanned: unchanged since, its hash, its header.
    with _as_ship_error():
        catalog.verify(entry)
        sha = catalog.sha256(entry)
        header = read_header(entry.path, entry.size)
    trainer, local_paths = without_local_paths(header.metadata)  # a release never tells where files lived

    # 3. Under the release folder's lock, the targets checked again, then the copy, the grid image and the card;
    #    whatever was created is removed again if a later step fails. The lock is between processes, not only
    #    threads: several app processes, or the CLI beside the app, may ship the same name into one folder at
    #    once; the first writes the release whole, the second then finds its targets there and is refused
    #    before it writes anything. (The exclusive creates below still never overwrite, lock or no lock.)
    with _release_lock(out):
        _refuse_existing(targets.values())  # a promotion that held the lock before this one may have made them
        created: list[Path] = []
        try:
            promoted_at = datetime.now(UTC).isoformat(timespec="seconds")
            metadata = release_metadata(trainer, entry, name, sha, note, promoted_at,
                                        ranking_row(ranking, entry.name, entry.epoch, sha),
                                        epoch_measures(insight, entry.name, entry.epoch), verdict_of(insight))
            if recommended is not None:
                metadata[f"{PREFIX}recommended_strength"] = f"{recommended:g}"
            if local_paths:
                metadata[f"{PREFIX}local_paths_removed"] = str(local_paths)
            metadata = with_kohya_hashes(metadata, Path(entry.path))
            copy_with_metadata(entry, header.table, header.data_start, metadata, sha, targets["file"])
            created.append(targets["file"])
            if grid_png is not None:
                _copy_exclusive(grid_png, targets["grid"])
                created.append(targets["grid"])
            for rel, (src, _prompt) in images.items():
                targets[rel].parent.mkdir(exist_ok=True)
                _copy_exclusive(src, targets[rel])
                created.append(targets[rel])
            card = model_card(name, source=entry.name, sha256=sha, epoch=entry.epoch, step=entry.step,
                              metadata=trainer, trigger_words=entry.trigger_words, family=entry.family_hint,
                              base_id=base_name(base_id) if base_id else None, note=note, ranking=ranking,
                              insight=insight, grid=manifest, grid_image=targets["grid"].name if grid_png else None,
                              series=series_name, loras=catalog.folder.name, promoted_at=promoted_at,
                              release_sha256=file_sha256(targets["file"]), addnet=addnet_hash(targets["file"]),
                              license=license, base_local=local_base(base_id), layout=layout,
                              widget=[{"text": p, "output": {"url": rel}} for rel, (_s, p) in images.items()])
            _write_exclusive(targets["card"], card.encode("utf-8"))
            created.append(targets["card"])
        except BaseException as exc:
            for path in created:
                path.unlink(missing_ok=True)
            if images:
                with contextlib.suppress(OSError):  # only when empty: never another release's images
                    (out / "images").rmdir()
            if isinstance(exc, OSError):  # a full disk, a folder we may not write to
                raise _cannot_write(out, exc) from exc
            raise
    return Promotion(path=targets["file"], card=targets["card"], grid_image=targets.get("grid"), sha256=sha,
                     source=entry.name, epoch=epoch, images=tuple(targets[rel] for rel in images))


# ---------------------------------------------------------------------------------------------- choosing
def release_renders(grid_dir: Path, manifest: dict, source: str, limit: int = MAX_IMAGES,
                    strength: float | None = None) -> list[tuple[Path, str]]:
    """This epoch's own renders in a grid (never the whole grid): (image file, its prompt), at ``strength`` (the
    recommended one) or else the strength nearest 1 the grid used, at most ``limit``; cells that failed or whose
    image is gone are left out."""
    cells = [c for c in manifest.get("cells") or [] if isinstance(c, dict) and c.get("file") == source
             and not c.get("error") and isinstance(c.get("image"), str)]
    cells = [(c, grid_dir / c["image"]) for c in cells]
    cells = [(c, p) for c, p in cells if p.resolve().is_relative_to(grid_dir.resolve()) and p.is_file()]
    strengths = [float(c.get("strength") or 0) for c, _p in cells]
    best = strength if strength in strengths else min(strengths, key=lambda x: abs(x - 1.0), default=None)
    return [(p, str(c.get("prompt", ""))) for c, p in cells if float(c.get("strength") or 0) == best][:limit]


def local_base(base_id: str | None) -> bool:
    """Whether the base was loaded from this machine (a folder, a file, the demo) rather than a hub repo id."""
    return bool(base_id) and (base_id == "demo" or Path(base_id).expanduser().exists())


def pick_entry(catalog: Catalog, epoch: int, series: str | None = None) -> tuple[str, LoraEntry]:
    """(series, the entry of ``epoch``): matched by epoch, else by step (step-numbered files); ``ShipError``
    listing what the series has when none or several match."""
    with _as_ship_error():
        series, entries = catalog.choose_series(series)
    by_epoch = [e for e in entries if e.epoch == epoch]
    by_step = [e for e in entries if e.step == epoch]
    found = by_epoch or by_step
    if len(found) == 1:
        return series, found[0]
    if found:
        hint = "; give one of their steps instead" if all(e.step is not None for e in found) else "; move or rename all but one"
        raise ShipError(f"series {series!r} has {len(found)} files for {'epoch' if by_epoch else 'step'} {epoch} "
                        f"({', '.join(e.name for e in found)}){hint}")
    epochs = sorted({e.epoch for e in entries if e.epoch is not None})
    steps = sorted({e.step for e in entries if e.step is not None})
    have = "; ".join([_("epochs {numbers}").format(numbers=", ".join(map(str, epochs)))] * bool(epochs)
                     + [_("steps {numbers}").format(numbers=", ".join(map(str, steps)))] * bool(steps)) \
        or _("no numbered files")
    raise ShipError(_("series {series} has no epoch {epoch}; it has {have}").format(series=repr(series), epoch=epoch,
                                                                                    have=have))


def release_name(name: str) -> str:
    """``name`` when it is a plain file name (no path parts, no suffix); ``ShipError`` saying why not."""
    if not name or name.strip() != name or name in (".", "..") or name.startswith(".") or BAD_NAME.search(name):
        raise ShipError(f"{name!r}: not a plain file name for the release (no folders, no leading dot, none of "
                        f'<>:"/\\|?* ); give --name')
    if name.lower().endswith(".safetensors") or len(name) > 200:
        raise ShipError(_("{name}: give the release name without .safetensors, at most 200 characters").format(
            name=repr(name)))
    return name


# ---------------------------------------------------------------------------------------------- the copy
def release_metadata(trainer: dict, entry: LoraEntry, name: str, sha: str, note: str, promoted_at: str,
                     ranking: dict | None, measures: dict, verdict: dict | None = None) -> dict[str, str]:
    """The copy's ``__metadata__``: every key the trainer wrote, the ``lora_spectrum.*`` provenance keys (the
    verdict as JSON that ``Verdict.from_json`` reads back), ``modelspec.trigger_phrase`` where the trainer left it
    out, and the release ``name`` as ``modelspec.title`` and ``ss_output_name`` (the trainer's values kept as
    ``lora_spectrum.source_<key>``). All values strings. kohya's ``sshs_*`` hashes are ``with_kohya_hashes``'."""
    meta = {str(k): str(v) for k, v in trainer.items()}
    meta.update({
        f"{PREFIX}source_file": entry.name,
        f"{PREFIX}source_epoch": "" if entry.epoch is None else str(entry.epoch),
        f"{PREFIX}source_sha256": sha,
        f"{PREFIX}note": note,
        f"{PREFIX}promoted_at": promoted_at,
    })
    if entry.step is not None:
        meta[f"{PREFIX}source_step"] = str(entry.step)
    if ranking:
        meta[f"{PREFIX}ranking"] = json.dumps({k: ranking.get(k) for k in ("rank", "of", "score", "stderr", "votes")})
    if measures:
        meta[f"{PREFIX}measures"] = json.dumps(measures)
    if verdict:
        meta[f"{PREFIX}verdict"] = json.dumps(verdict)
    # The release's name as its title (and kohya's output name, when the trainer wrote one); the old ones kept.
    for key in ("modelspec.title", "ss_output_name"):
        if key in meta:
            meta[f"{PREFIX}source_{key}"] = meta[key]
    meta["modelspec.title"] = name
    if "ss_output_name" in meta:
        meta["ss_output_name"] = name
    if not (meta.get("modelspec.trigger_phrase") or "").strip() and entry.trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(entry.trigger_words)
    return meta


def with_kohya_hashes(metadata: dict[str, str], source: Path) -> dict[str, str]:
    """``metadata`` with ``sshs_model_hash`` and ``sshs_legacy_hash`` as kohya computes them for the release: the
    source's tensors (the copy's, byte for byte) with the release's ``ss_*`` keys (``hashes.kohya_hashes``)."""
    try:
        model_hash, legacy = kohya_hashes(source, metadata)
    except (OSError, SafetensorError) as exc:
        raise ShipError(_("{file}: cannot be read to hash its tensors ({error}); nothing was promoted").format(
            file=source.name, error=exc)) from exc
    return {**metadata, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy}


def encode_header(table: dict, metadata: dict[str, str]) -> bytes:
    """8 bytes of little-endian length, then the JSON header padded with spaces to a multiple of 8 (as
    safetensors itself pads, so the data section stays aligned)."""
    raw = json.dumps({"__metadata__": metadata, **table}, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > HEADER_LIMIT:
        raise ShipError(f"the new header would be {len(raw)} bytes; safetensors allows at most {HEADER_LIMIT} "
                        f"(shorten the note)")
    return struct.pack("<Q", len(raw)) + raw


def copy_with_metadata(entry: LoraEntry, table: dict, data_start: int, metadata: dict[str, str], sha: str,
                       target: Path) -> None:
    """Write ``target``: a new header, then the source's data section byte for byte.

    Hand-written on purpose: safetensors' ``save_file`` would load every tensor into memory and serialise it
    again; this streams the bytes, so the tensors are provably the source's. Data offsets in the header are
    relative to the start of the data section, so they stay valid under a header of another length. The source
    is hashed while it is read (header and data, every byte that was copied): a hash other than ``sha`` (taken
    before) means the file was replaced mid-copy, and the copy is refused and removed. The finished copy appears
    under its name only through ``os.link``, which never replaces an existing file.
    """
    # 1. The copy, in a temporary file next to the target.
    # (not ``mkstemp``: its files are private, 0600; an exclusive ``open`` gives a release file the usual mode)
    head = encode_header(table, metadata)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.part"
    dst = open(tmp, "xb")  # ours from here on: closed and removed below, whatever happens
    try:
        digest = hashlib.sha256()
        with dst, open(entry.path, "rb") as src:
            dst.write(head)
            digest.update(src.read(data_start))
            shutil.copyfileobj(_Hashing(src, digest), dst, CHUNK)
            dst.flush()
            os.fsync(dst.fileno())
        # 2. The bytes read were the bytes hashed before, and the copy reads back as the same tensors.
        if digest.hexdigest() != sha:
            raise ShipError(_("{file}: the file changed while it was being copied; nothing was promoted (rescan and "
                              "try again)").format(file=entry.name))
        _check_copy(tmp, table, metadata)
        # 3. Into place, never over an existing file.
        _link_exclusive(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _Hashing:
    """A reader that hashes what passes through it (for ``shutil.copyfileobj``)."""

    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def read(self, n: int = -1) -> bytes:
        chunk = self.fh.read(n)
        self.digest.update(chunk)
        return chunk


def _check_copy(path: Path, table: dict, metadata: dict[str, str]) -> None:
    try:
        with safe_open(str(path), framework="pt") as f:
            ok = set(f.keys()) == set(table) and (f.metadata() or {}) == metadata
    except SafetensorError as exc:
        raise ShipError(f"the copy does not read back as a safetensors file ({exc}); nothing was promoted") from exc
    if not ok:
        raise ShipError("the copy does not read back with the source's tensors and the new metadata; nothing was "
                        "promoted")


def release_lock(out: Path) -> Path:
    """The lock file of a release folder: outside it (a folder pushed to a hub as it is must not carry a lock
    file), named by the folder's absolute path, in the temporary folder every process of this machine shares. It
    is kept: removing a lock file others wait on would let two writers in."""
    folder = Path(tempfile.gettempdir()) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:32] + ".lock")


@contextlib.contextmanager
def _release_lock(out: Path):
    """Make the release folder and hold its lock (``release_lock``, between processes); ``ShipError`` when the
    folder cannot be made or locked, or another promotion into it holds the lock for ``LOCK_TIMEOUT_S``."""
    with held(FileLock(release_lock(out), timeout=LOCK_TIMEOUT_S), out,
              lambda: ShipError(_("{folder}: another promotion into this folder has run for {seconds} s; try again "
                                  "when it is done").format(folder=out, seconds=LOCK_TIMEOUT_S)),
              lambda exc: _cannot_write(out, exc)):
        yield


def _cannot_write(out: Path, exc: OSError) -> ShipError:
    return ShipError(f"{out}: cannot write the release ({exc.strerror or exc}); nothing was promoted")


def _refuse_existing(paths) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ShipError(_exists(path))


def _exists(path: Path) -> str:
    return _("{path}: exists; never overwritten (choose another --name or folder)").format(path=path)


def _link_exclusive(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError as exc:
        raise ShipError(_exists(target)) from exc
    except OSError:  # a file system without hard links: an exclusive create, which also never overwrites
        _copy_exclusive(tmp, target)


def _copy_exclusive(src: Path, target: Path) -> None:
    with open(src, "rb") as fh:
        _write_exclusive(target, fh)


def _write_exclusive(target: Path, data: bytes | BinaryIO) -> None:
    """Create ``target`` (never over an existing file) holding ``data``; removed again if writing fails."""
    try:
        dst = open(target, "xb")  # closed below: the exclusive create is the point
    except FileExistsError as exc:
        raise ShipError(_exists(target)) from exc
    try:
        with dst:
            if isinstance(data, bytes):
                dst.write(data)
            else:
                shutil.copyfileobj(data, dst, CHUNK)
    except BaseException:
        target.unlink(missing_ok=True)  # ours: created above
        raise


@contextlib.contextmanager
def _as_ship_error():
    """Catalog and header errors, re-raised as ``ShipError`` with the same plain message."""
    try:
        yield
    except CatalogError as exc:  # HeaderError included
        raise ShipError(str(exc)) from exc
