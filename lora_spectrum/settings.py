"""Reading ``configs/*.yaml`` into typed dataclasses. Unknown keys are an error; nothing here touches torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lora_spectrum.errors import ConfigError
from lora_spectrum.language import CHOICES
from lora_spectrum.render.sampling import Sampling

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"


@dataclass(frozen=True)
class FamilyDefaults:
    """What one model family renders with unless the user says otherwise (``configs/<family>.yaml``, whose
    sampling keys - steps, guidance, width, height, sampler, negative_prompt - make its ``sampling``)."""

    pipeline: str
    denoiser: str
    samplers: list[str]
    size_factor: int
    sampling: Sampling
    dtype_cuda: str = "float16"

    def with_sampling(self, **values) -> FamilyDefaults:
        """These defaults with some sampling values replaced (a base that needs others: the tiny demo)."""
        return dataclasses.replace(self, sampling=self.sampling.override(**values))


@dataclass
class Settings:
    """The app's and the CLI's settings (``configs/default.yaml``)."""

    base: str = "Tongyi-MAI/Z-Image-Turbo"
    family: str = "auto"  # sdxl | z-image | auto: read from the base (model_index.json, or the file's keys)
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
    fuse: str = "auto"  # auto | on | off: merge the active adapter into the base weights (auto: fuse_policy.py)
    compile: str = "auto"  # off | on | auto: the denoiser through torch.compile (auto: where bench --compile pays)
    compile_backend: str = "inductor"  # torch.compile's backend ("eager": dynamo's capture only, for checks)
    prefetch: bool = True  # read the plan's next epoch in the background while the current one renders
    batch_epochs: int = 1  # epochs (and strengths) rendered in one routed denoiser call; the UI's starting value
    clip_model: str = ""  # CLIP for Insight's image measures: a model id or folder ("" = $LORA_SPECTRUM_CLIP_MODEL
    #                       or openai/clip-vit-base-patch32); downloaded once when local_files_only is false
    probes: dict = field(default_factory=dict)  # probe sets by name, as in configs/probes/*.yaml (probes.py)
    probe_set: str = ""  # the probe set epochs are judged with: a name or a .yaml/.txt file ("" = auto)
    auto_probe: bool = True  # Insight probes a series that has no probe yet by itself (progress, Cancel, cached)
    ratings_dir: str = "ratings"  # blind votes, one JSON file per series (never inside the loras folder)
    runs_dir: str = ".cache/runs"  # every comparison rendered in the app, reopened by History
    runs_max: int = 50  # at most this many runs are kept; the oldest go first
    runs_max_mb: int = 2048  # ... and at most this much disk (the newest run is always kept)
    shipped_dir: str = "shipped"  # where "Ship this epoch" writes the promoted file and its model card
    license: str = ""  # the model card's license (a hub license id, e.g. openrail++) when promote has no --license
    bases: list = field(default_factory=list)  # more bases for the sidebar's Base picker: repo ids, folders, files
    models_dir: str = "models"  # every diffusers folder or SDXL .safetensors file here is offered as a base too
    hf_cache: str = ""  # the Hugging Face cache bases are loaded from and fetched into ("": HF_HUB_CACHE / HF_HOME)
    hub_endpoint: str = ""  # where fetches go ("": HF_ENDPOINT or huggingface.co; a mirror such as hf-mirror.com)
    executor: str = "local"  # local | ray: renders on this process's engine, or on Ray workers (execution/)
    workers: int = 0  # ray: how many workers (0: one per GPU of the cluster); CPU workers where there is no GPU
    ray_address: str = ""  # ray: an existing cluster ("auto", "ray://host:10001", "host:6379"); "": a local one
    language: str = "auto"  # auto | en | zh_CN: the UI's words (auto: the browser's language; language.py)
    operators: list = field(default_factory=list)  # e-mail addresses that are the operator once logged in with
    #                       Streamlit's login (.streamlit/secrets.toml [auth]); access.py, docs/SECURITY.md
    operator_token_file: str = ""  # a file whose first line is the operator token ($LORA_SPECTRUM_OPERATOR_TOKEN
    #                       wins); typed once per session in the sidebar to switch bases, download, ship, delete
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


_PLAIN_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}
_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false"}


def _build(cls, data: dict, path: Path):
    names = {f.name for f in dataclasses.fields(cls) if f.name != "root"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    # Plain types are checked here, so a quoted number or a word where a number belongs is named at once.
    for f in dataclasses.fields(cls):
        value = data.get(f.name)
        expected = _PLAIN_TYPES.get(f.type)
        if f.name in data and expected and (not isinstance(value, expected) or
                                            (isinstance(value, bool) and f.type in ("int", "float"))):
            raise ConfigError(f"{path}: {f.name} must be {_TYPE_WORDS[f.type]}, not {value!r}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the app settings; ``path`` defaults to ``configs/default.yaml``."""
    path = Path(path) if path else CONFIG_DIR / "default.yaml"
    data = _read_yaml(path)
    for key in ("fuse", "compile"):
        if isinstance(data.get(key), bool):  # YAML 1.1 reads a bare on/off as a boolean
            data[key] = "on" if data[key] else "off"
    settings = _build(Settings, data, path)
    if settings.offload not in ("none", "model", "sequential", "group"):
        raise ConfigError(f"{path}: offload must be none, model, sequential or group, not {settings.offload!r}")
    for key in ("fuse", "compile"):
        if getattr(settings, key) not in ("auto", "on", "off"):
            raise ConfigError(f"{path}: {key} must be auto, on or off, not {getattr(settings, key)!r}")
    if not (settings.device in ("auto", "cpu", "cuda") or str(settings.device).startswith("cuda:")):
        raise ConfigError(f"{path}: device must be auto, cpu, cuda or cuda:N, not {settings.device!r}")
    if settings.demo not in ("trained", "random"):
        raise ConfigError(f"{path}: demo must be trained or random, not {settings.demo!r}")
    if settings.resident_adapters < 1:
        raise ConfigError(f"{path}: resident_adapters must be at least 1")
    if settings.batch_epochs < 1:
        raise ConfigError(f"{path}: batch_epochs must be at least 1")
    if settings.executor not in ("local", "ray"):
        raise ConfigError(f"{path}: executor must be local or ray, not {settings.executor!r}")
    if settings.language not in CHOICES:
        raise ConfigError(f"{path}: language must be {', '.join(CHOICES)}, not {settings.language!r}")
    if settings.workers < 0:
        raise ConfigError(f"{path}: workers must be 0 (one per GPU) or more")
    if settings.runs_max < 1:
        raise ConfigError(f"{path}: runs_max must be at least 1")
    if not isinstance(settings.bases, list) or not all(isinstance(b, str) and b.strip() for b in settings.bases):
        raise ConfigError(f"{path}: bases must be a list of repo ids, folders or files, not {settings.bases!r}")
    if not isinstance(settings.operators, list) or not all(isinstance(e, str) and "@" in e for e in settings.operators):
        raise ConfigError(f"{path}: operators must be a list of e-mail addresses, not {settings.operators!r}")
    if not isinstance(settings.probes, dict):
        raise ConfigError(f"{path}: probes must be a mapping of set names to probe sets, not {settings.probes!r}")
    return settings


def load_family_defaults(family: str) -> FamilyDefaults:
    """Read ``configs/<family>.yaml``: its sampling keys into one ``Sampling``, the rest beside it."""
    path = CONFIG_DIR / f"{family}.yaml"
    data = _read_yaml(path)
    sampling_keys = {f.name for f in dataclasses.fields(Sampling)}
    names = sampling_keys | {f.name for f in dataclasses.fields(FamilyDefaults)} - {"sampling"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    sampling = _build(Sampling, {k: v for k, v in data.items() if k in sampling_keys}, path)
    rest = {k: v for k, v in data.items() if k not in sampling_keys}
    return _build(FamilyDefaults, {**rest, "sampling": sampling}, path)
