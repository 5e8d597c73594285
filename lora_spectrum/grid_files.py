"""Everything written to an output folder, and reading it back."""

from __future__ import annotations

import json
from pathlib import Path

from lora_spectrum.errors import ConfigError


def read_manifest(grid: str | Path) -> tuple[Path, dict]:
    """The grid folder and its parsed ``manifest.json``; ``ConfigError`` naming the folder when it is missing."""
    folder = Path(grid)
    path = folder / "manifest.json" if folder.is_dir() or not folder.name.endswith(".json") else folder
    folder = path.parent
    if not path.is_file():
        raise ConfigError(f"{folder}: no manifest.json here; give --grid the output folder of a `grid` run")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable grid manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cells"), list):
        raise ConfigError(f"{path}: not a grid manifest (no 'cells' list)")
    return folder, manifest
