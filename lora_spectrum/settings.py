"""Reading ``configs/*.yaml`` into typed dataclasses. Unknown keys are an error; nothing here touches torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lora_spectrum.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


@dataclass(frozen=True)
class FamilyDefaults:
    """What one model family renders with unless the user says otherwise (``configs/<family>.yaml``)."""

    pipeline: str
    denoiser: str
    sampler: str
    samplers: list[str]
    steps: int
    guidance: float
    width: int
    height: int
    size_factor: int
    negative_prompt: str = ""
    dtype_cuda: str = "float16"


@dataclass
class Settings:
    """The app's and the CLI's settings (``configs/default.yaml``)."""

    base: str = "Tongyi-MAI/Z-Image-Turbo"
    family: str = "z-image"
    loras: str = "loras"
    logs: str = ""
    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"
    reserve_vram_gb: float = 0.0
    empty_cache_after_swap: bool = False
    resident_adapters: int = 4
    local_files_only: bool = True
    cache_dir: str = ".cache/renders"
    cache_max_mb: int = 2048
    demo: str = "trained"
    demo_dir: str = ".cache/demo"
    max_queued_renders: int = 2
    fuse: str = "auto"  # auto | on | off: merge the active adapter into the base weights (auto: on for CUDA)
    root: Path = field(default=PROJECT_ROOT, compare=False)

    def path(self, value: str) -> Path:
        """Resolve a configured path against the project root."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    return data


def _build(cls, data: dict, path: Path):
    names = {f.name for f in dataclasses.fields(cls) if f.name != "root"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the app settings; ``path`` defaults to ``configs/default.yaml``."""
    path = Path(path) if path else CONFIG_DIR / "default.yaml"
    settings = _build(Settings, _read_yaml(path), path)
    if settings.offload not in ("none", "model", "sequential"):
        raise ConfigError(f"{path}: offload must be none, model or sequential, not {settings.offload!r}")
    if isinstance(settings.fuse, bool):  # YAML 1.1 reads a bare on/off as a boolean
        settings.fuse = "on" if settings.fuse else "off"
    if settings.fuse not in ("auto", "on", "off"):
        raise ConfigError(f"{path}: fuse must be auto, on or off, not {settings.fuse!r}")
    if settings.demo not in ("trained", "random"):
        raise ConfigError(f"{path}: demo must be trained or random, not {settings.demo!r}")
    if settings.resident_adapters < 1:
        raise ConfigError(f"{path}: resident_adapters must be at least 1")
    return settings


def load_family_defaults(family: str) -> FamilyDefaults:
    """Read ``configs/<family>.yaml``."""
    path = CONFIG_DIR / f"{family}.yaml"
    return _build(FamilyDefaults, _read_yaml(path), path)
