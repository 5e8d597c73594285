"""The hashes other tools name a LoRA file by: A1111's addnet hash, kohya's ``sshs_*`` keys, Civitai's AutoV2/AutoV3.

- addnet hash (A1111 ``hashes.addnet_hash_safetensors``, sd-webui-additional-networks): the sha256 of the bytes
  after the safetensors header (skip 8 + the header's length), so that editing metadata keeps it. A1111 writes its
  first 12 hex digits in a PNG's ``Lora hashes`` (``network.py``'s ``shorthash``).
- Civitai AutoV2: the first 10 hex digits of the whole file's sha256. AutoV3: the first 12 hex digits of the
  addnet hash (the tensor data only), the same string A1111 writes in ``Lora hashes``.
- kohya ``sshs_model_hash`` / ``sshs_legacy_hash`` (sd-scripts ``precalculate_safetensors_hashes``): the addnet hash
  and the legacy hash (sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits) of the file safetensors writes
  for the same tensors with only the ``ss_*`` metadata.

Files are only read. Hashes of a file are computed once per (path, size, mtime).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000  # kohya / additional-networks' ``addnet_hash_legacy``


def addnet_hash_of(fh: BinaryIO) -> str:
    """The sha256 (64 hex digits) of everything after the safetensors header of the open file ``fh``."""
    fh.seek(0)
    head = fh.read(8)
    if len(head) != 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", head)
    fh.seek(8 + n)
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def legacy_hash_of(fh: BinaryIO) -> str:
    """The additional-networks legacy hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex digits."""
    fh.seek(LEGACY_OFFSET)
    return hashlib.sha256(fh.read(LEGACY_LENGTH)).hexdigest()[:8]


def short_hash(addnet: str) -> str:
    """A1111's ``shorthash`` of a LoRA (``Lora hashes`` in PNG parameters): the addnet hash's first 12 digits."""
    return addnet[:12]


def autov2(sha256: str) -> str:
    """Civitai's AutoV2 of a file: the first 10 hex digits of its whole sha256."""
    return sha256[:10]


def autov3(addnet: str) -> str:
    """Civitai's AutoV3 of a safetensors file: the first 12 hex digits of the sha256 of its tensor data."""
    return addnet[:12]


def addnet_hash(path: str | Path) -> str:
    """The addnet hash of the file at ``path`` (``addnet_hash_of``), computed once per (size, mtime)."""
    return _addnet(*_identity(path))


def kohya_hashes(path: str | Path, metadata: dict[str, str] | None = None) -> tuple[str, str]:
    """(``sshs_model_hash``, ``sshs_legacy_hash``) as kohya sd-scripts computes them for the tensors of ``path``:
    both taken over the bytes safetensors writes for those tensors with only the ``ss_*`` keys of ``metadata`` (the
    file's own when None; a release's, with its renamed ``ss_output_name``, when given). Loads the tensors (a
    LoRA's size) once per file and metadata."""
    ss = None if metadata is None else tuple(sorted((k, str(v)) for k, v in metadata.items() if k.startswith("ss_")))
    return _kohya(*_identity(path), ss)


def _identity(path: str | Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _addnet(path: str, _size: int, _mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return addnet_hash_of(fh)


@functools.lru_cache(maxsize=16)
def _kohya(path: str, _size: int, _mtime_ns: int, ss: tuple[tuple[str, str], ...] | None) -> tuple[str, str]:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(path, framework="pt") as f:
        own = {k: v for k, v in (f.metadata() or {}).items() if k.startswith("ss_")}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    buffer = io.BytesIO(save(tensors, own if ss is None else dict(ss)))
    return addnet_hash_of(buffer), legacy_hash_of(buffer)
