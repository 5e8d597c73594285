"""The bases the app can switch to: the configured one, the config's ``bases:`` list, every diffusers folder or
single file under ``models_dir``, and the diffusers pipelines of any supported family already in the local Hugging
Face cache; each with its family, size on disk and whether it is present. Reads files only: no network, no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.bases.downloads import hub_cache, repo_folder, wanted
from lora_spectrum.bases.families import DEMO_FAMILY, detect_family, pipeline_families
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.language import current

DEMO = "demo"


@dataclass(frozen=True)
class BaseOption:
    """One base to choose: ``source`` is what ``base:`` takes (repo id, folder, file or ``demo``)."""

    source: str
    kind: str  # repo | folder | file | demo
    origin: str  # configured | bases | models_dir | cache | demo
    family: str | None = None  # None: not known (a repo not on this machine)
    nbytes: int | None = None  # on disk; None when absent
    present: bool = False
    problem: str = ""  # why it cannot be used, when it cannot

    @property
    def label(self) -> str:
        if self.kind == DEMO:
            return "demo (tiny, offline)"
        name = Path(self.source).name if self.kind in ("folder", "file") else self.source
        size = size_text(self.nbytes) if self.nbytes else ("not downloaded" if self.kind == "repo" else "")
        return " · ".join(x for x in (name, self.family or "", size) if x)


def size_text(nbytes: int) -> str:
    """``6.9 GB`` / ``340 MB``, the number written the active language's way."""
    tr = current()
    return f"{tr.number(nbytes / 1e9, 1, fixed=True)} GB" if nbytes >= 1e9 else f"{tr.number(round(nbytes / 1e6), 0)} MB"


def list_bases(settings, cache_dir: str | Path | None = None) -> list[BaseOption]:
    """Every base the app knows, the configured one first and the demo last, each source once. ``cache_dir``:
    the Hugging Face cache (default: the config's ``hf_cache``, else huggingface_hub's)."""
    cache_dir = cache_dir or settings.hf_cache or None
    sources: list[tuple[str, str]] = []
    if settings.base != DEMO:
        sources.append((settings.base, "configured"))
    sources += [(str(b), "bases") for b in settings.bases]
    models = settings.path(settings.models_dir)
    if models.is_dir():
        for p in sorted(models.iterdir()):
            if (p / "model_index.json").is_file() or (p.is_file() and p.suffix.lower() == ".safetensors"):
                sources.append((str(p), "models_dir"))
    sources += [(repo, "cache") for repo in cached_pipelines(cache_dir)]
    out, seen = [], set()
    for source, origin in sources:
        key = str(Path(source).expanduser().resolve()) if _is_path(source) else source
        if key not in seen:
            seen.add(key)
            out.append(describe(source, origin, cache_dir))
    return out + [BaseOption(DEMO, DEMO, DEMO, DEMO_FAMILY, None, True)]


def describe(source: str, origin: str = "bases", cache_dir: str | Path | None = None) -> BaseOption:
    """One base as it stands on this machine (family read from its files, size summed)."""
    path = Path(source).expanduser()
    if _is_path(source):
        kind = "file" if path.suffix.lower() == ".safetensors" or path.is_file() else "folder"
        if not path.exists():
            return BaseOption(source, kind, origin, problem=f"{source} does not exist")
        nbytes = path.stat().st_size if path.is_file() else _folder_bytes(path)
    else:
        snap = cached_snapshot(source, cache_dir)
        if snap is None:
            return BaseOption(source, "repo", origin)
        family = pipeline_families().get(_class_name(snap / "model_index.json"))
        problem = "" if family else f"{source}: not a pipeline of a supported family"
        return BaseOption(source, "repo", origin, family, _folder_bytes(snap), True, problem)
    try:
        family = detect_family(source, local_files_only=True, cache_dir=cache_dir)
    except LoraSpectrumError as exc:  # BaseLoadError among them
        return BaseOption(source, kind, origin, None, nbytes, True, problem=str(exc))
    return BaseOption(source, kind, origin, family, nbytes, True)


def cached_pipelines(cache_dir: str | Path | None = None) -> list[str]:
    """Repo ids in the local Hugging Face cache whose snapshot is a pipeline of a supported family."""
    out = []
    for repo_dir in sorted(hub_cache(cache_dir).glob("models--*")):
        repo = repo_dir.name[len("models--"):].replace("--", "/")
        snap = cached_snapshot(repo, cache_dir)
        if snap is not None and _class_name(snap / "model_index.json") in pipeline_families():
            out.append(repo)
    return out


def cached_snapshot(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The snapshot ``refs/main`` points to, when it holds a ``model_index.json`` and every file a load needs."""
    repo_dir = repo_folder(repo_id, cache_dir)
    try:
        commit = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snap = repo_dir / "snapshots" / commit
    if not (snap / "model_index.json").is_file():
        return None
    # A fetch still running (or cut off) has linked some files only: huggingface_hub's tree of the commit, written
    # before the first file, says what a whole snapshot holds.
    try:
        tree = json.loads((repo_dir / "trees" / f"{commit}.json").read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return snap  # no tree (an older cache, or one made by another tool): as the folder says
    return snap if all((snap / f).is_file() for f in tree if wanted(f)) else None


def _class_name(index: Path) -> str:
    try:
        return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError):
        return ""


def _folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (symlinks of a hub snapshot followed to their blobs)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _is_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()
