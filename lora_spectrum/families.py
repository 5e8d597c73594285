"""What differs between SDXL and Z-Image-Turbo: pipeline class, denoiser attribute, LoRA prefix, key conversion,
samplers and defaults. Holds no state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.errors import BaseLoadError, ConfigError, HeaderError, reason, translated
from lora_spectrum.lora_keys import read_header
from lora_spectrum.settings import FamilyDefaults, load_family_defaults

FAMILY_NAMES = ("sdxl", "z-image")
_PIPELINE_TO_FAMILY = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "ZImagePipeline": "z-image",
}


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str
    denoiser_attr: str
    text_encoder_attrs: tuple[str, ...]
    defaults: FamilyDefaults
    # Denoiser layers that see the tokens of every sample concatenated (no batch dimension), so one batch cannot
    # route its samples to different adapters there. Z-Image embeds all images' patches and all captions in one
    # call; every other layer of both families is batch-first (tests/adapters/test_routing.py checks it in a real forward).
    unbatched_layers: tuple[str, ...] = ()

    @property
    def lora_prefix(self) -> str:
        """The prefix diffusers' ``lora_state_dict`` puts in front of the denoiser's keys."""
        return self.denoiser_attr

    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attr)

    def text_encoders(self, pipe) -> list:
        return [m for m in (getattr(pipe, a, None) for a in self.text_encoder_attrs) if m is not None]

    def convert_lora(self, raw: dict, pipe) -> tuple[dict, dict | None]:
        """Turn a LoRA file's tensors into diffusers' key layout with diffusers' own converters.

        Returns ``(state_dict, network_alphas)``; keys are prefixed ``unet.``/``transformer.``/``text_encoder*.``.
        """
        cls = type(pipe)
        if self.name == "sdxl":
            sd, alphas = cls.lora_state_dict(dict(raw), unet_config=pipe.unet.config)
            return sd, alphas
        return cls.lora_state_dict(dict(raw)), None

    def make_scheduler(self, sampler: str, base_config):
        """A fresh scheduler for ``sampler``, built from the base's own scheduler config."""
        import diffusers as d

        if self.name == "z-image":
            if sampler not in self.defaults.samplers:
                raise ConfigError(f"sampler {sampler!r} is not offered for z-image; choose {self.defaults.samplers}")
            return d.FlowMatchEulerDiscreteScheduler.from_config(base_config)
        table = {
            "DPM++ 2M Karras": (d.DPMSolverMultistepScheduler, {"use_karras_sigmas": True,
                                                                 "algorithm_type": "dpmsolver++"}),
            "DPM++ 2M": (d.DPMSolverMultistepScheduler, {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}),
            "Euler": (d.EulerDiscreteScheduler, {}),
            "Euler a": (d.EulerAncestralDiscreteScheduler, {}),
            "DDIM": (d.DDIMScheduler, {}),
        }
        if sampler not in table:
            raise ConfigError(f"sampler {sampler!r} is not offered for sdxl; choose one of {', '.join(table)}")
        cls, kwargs = table[sampler]
        return cls.from_config(base_config, **kwargs)


def get_family(name: str) -> Family:
    if name not in FAMILY_NAMES:
        raise ConfigError(f"unknown model family {name!r}; choose one of {', '.join(FAMILY_NAMES)}")
    defaults = load_family_defaults(name)
    if name == "sdxl":
        return Family(name, defaults.pipeline, defaults.denoiser, ("text_encoder", "text_encoder_2"), defaults)
    return Family(name, defaults.pipeline, defaults.denoiser, ("text_encoder",), defaults,
                  unbatched_layers=("all_x_embedder", "cap_embedder", "siglip_embedder"))


def pipeline_families() -> dict[str, str]:
    """Supported pipeline class names (``model_index.json``'s ``_class_name``) and their families."""
    return dict(_PIPELINE_TO_FAMILY)


def detect_family(base: str, local_files_only: bool = True, cache_dir=None) -> str:
    """Read the family from the base itself: a folder's (or a cached repo id's) ``model_index.json``, or a single
    ``.safetensors`` file's tensor names (read from its header only). Raises ``BaseLoadError`` saying why not."""
    path = Path(base).expanduser()
    if path.is_file():
        return _single_file_family(path)
    index = path / "model_index.json"
    if not index.is_file():
        if path.is_dir() or base.startswith((".", "/", "~")):
            raise BaseLoadError(f"{base}: no model_index.json there, so it is not a diffusers folder")
        from huggingface_hub import hf_hub_download

        def hub_error(exc: BaseException) -> BaseLoadError:
            where = "in the local Hugging Face cache (local_files_only: true)" if local_files_only else "on the hub"
            return BaseLoadError(f"{base}: not found {where} ({reason(exc)}); download it once with "
                                 f"local_files_only: false, or point base: at a local folder")

        with translated(hub_error):
            index = Path(hf_hub_download(base, "model_index.json", local_files_only=local_files_only,
                                         cache_dir=cache_dir))
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseLoadError(f"{index}: unreadable model_index.json ({exc})") from exc
    if class_name not in _PIPELINE_TO_FAMILY:
        raise BaseLoadError(f"{base}: pipeline {class_name!r} is not supported; LoRA Spectrum supports "
                            f"{', '.join(sorted(_PIPELINE_TO_FAMILY))}")
    return _PIPELINE_TO_FAMILY[class_name]


def _single_file_family(path: Path) -> str:
    """SDXL checkpoints (original layout) hold ``conditioner.embedders.1``; Z-Image ones its refiner blocks.
    Other single files are named by what they are not; pickles are never opened."""
    if path.suffix.lower() != ".safetensors":
        return "sdxl"  # refused with the reason when it is loaded: pickle checkpoints are never unpickled
    try:
        table = read_header(path, path.stat().st_size).table
    except (HeaderError, OSError) as exc:
        raise BaseLoadError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    names = " ".join(list(table)[:5000])
    if "noise_refiner" in names or "context_refiner" in names:
        return "z-image"
    if "conditioner.embedders.1" in names or "add_embedding" in names or "label_emb" in names:
        return "sdxl"
    raise BaseLoadError(f"{path}: not an SDXL or Z-Image checkpoint (its tensor names fit neither); give "
                        f"--family if you know better")
