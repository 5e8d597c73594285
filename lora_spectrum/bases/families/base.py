"""``Family``: what one model family is, as class attributes (pipeline, denoiser, key marks, hub names, bench size)
and overridable methods (LoRA conversion, samplers, prompt encoding, call arguments, variants, tiny builders).

Like diffusers' per-family LoRA loader mixins and ComfyUI's ``supported_models.py``: one subclass per family, no
branch on a family's name anywhere. Holds no state beyond its defaults; never imports ``lora_keys`` (which asks
the registry for its hints).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from lora_spectrum.errors import ConfigError
from lora_spectrum.settings import FamilyDefaults, load_family_defaults


class Family:
    """One model family. Subclasses set the class attributes and override the methods whose code differs."""

    # What it is, and where diffusers keeps it.
    name: ClassVar[str]  # the config's and the CLI's word (configs/<name>.yaml holds its defaults)
    title: ClassVar[str]  # for people: "Stable Diffusion XL"
    pipeline_class: ClassVar[str]  # the diffusers pipeline it loads with
    pipelines: ClassVar[tuple[str, ...]]  # model_index.json ``_class_name``s that are this family
    lora_loader: ClassVar[str]  # the diffusers.loaders mixin whose ``lora_state_dict`` converts its files
    denoiser_attr: ClassVar[str]  # the pipeline's denoiser: the one model LoRAs are swapped into
    denoiser_class: ClassVar[str]  # its diffusers model class
    text_encoder_attrs: ClassVar[tuple[str, ...]]  # never modified, so prompt embeddings are cached
    # The top-level modules of the denoiser that hold Linear/Conv2d layers (tests/adapters/test_readiness.py).
    denoiser_roots: ClassVar[tuple[str, ...]]
    # Denoiser layers that see every sample's tokens concatenated (no batch dimension), so one batch cannot route
    # its samples to different adapters there (tests/adapters/test_routing.py checks the others in a real forward).
    unbatched_layers: ClassVar[tuple[str, ...]] = ()
    # Detection: single-file checkpoints (loaded for single_file families only), and a LoRA file's metadata
    # (``ss_base_model_version`` / ``modelspec.architecture``, lowercased) and key names.
    single_file: ClassVar[bool] = False
    checkpoint_marks: ClassVar[tuple[str, ...]] = ()
    version_marks: ClassVar[tuple[str, ...]] = ()
    key_marks: ClassVar[tuple[str, ...]] = ()
    # The hub: the model card's tag, and what trainers write in ss_base_model_version as a hub id.
    hub_tag: ClassVar[str] = ""
    known_bases: ClassVar[dict[str, str]] = {}
    # What kohya writes for this family (the demo's and the fixtures' metadata).
    base_model_version: ClassVar[str] = ""
    network_module: ClassVar[str] = "networks.lora"
    # Variants of one family that render with other defaults: name -> sampling values over configs/<name>.yaml.
    variants: ClassVar[dict[str, dict]] = {}
    # The tiny pipeline's render settings for tests and checks (size, guidance, sampler).
    tiny_sampling: ClassVar[dict] = {}
    # The bench: its size model (the real denoiser's config, seeded random weights), and whether it needs a GPU.
    bench_model: ClassVar[str] = ""
    bench_config: ClassVar[dict] = {}
    bench_gpu_only: ClassVar[bool] = False

    def __init__(self, variant: str = "", defaults: FamilyDefaults | None = None):
        if variant and variant not in self.variants:
            raise ConfigError(f"{self.name} has no variant {variant!r}; it has {', '.join(self.variants) or 'none'}")
        self.variant = variant
        base = defaults or load_family_defaults(self.name)
        self.defaults = base.with_sampling(**self.variants[variant]) if variant else base

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' ' + self.variant if self.variant else ''}>"

    # ------------------------------------------------------------------ the pipeline
    @property
    def lora_prefix(self) -> str:
        """The prefix diffusers' ``lora_state_dict`` puts in front of the denoiser's keys."""
        return self.denoiser_attr

    def pipeline_cls(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def loader_cls(self):
        """The class whose ``lora_state_dict`` converts this family's files (importing it, not the pipeline and its
        text encoders' classes, keeps ``inspect`` light)."""
        import diffusers.loaders

        return getattr(diffusers.loaders, self.lora_loader)

    def denoiser_cls(self):
        import diffusers

        return getattr(diffusers, self.denoiser_class)

    def denoiser(self, pipe):
        return getattr(pipe, self.denoiser_attr)

    def text_encoders(self, pipe) -> list:
        return [m for m in (getattr(pipe, a, None) for a in self.text_encoder_attrs) if m is not None]

    def variant_for(self, base: str, pipe) -> str:
        """Which of ``variants`` a loaded base is ("" for the config's defaults)."""
        return ""

    def for_base(self, base: str, pipe) -> Family:
        """This family with the defaults of ``base``'s variant."""
        variant = self.variant_for(base, pipe)
        return self if variant == self.variant else type(self)(variant)

    # ------------------------------------------------------------------ LoRA files
    def convert_lora(self, raw: dict, pipe) -> tuple[dict, dict | None]:
        """A LoRA file's tensors in diffusers' key layout, by diffusers' own converter (``pipe``: anything whose
        class has the family's ``lora_state_dict``). Returns ``(state_dict, network_alphas)``; keys are prefixed
        ``unet.``/``transformer.``/``text_encoder*.``."""
        return type(pipe).lora_state_dict(dict(raw)), None

    def demo_lora_names(self, module: str) -> tuple[str, str, str | None]:
        """(down key, up key, alpha key or None): how the trainer most used for this family names one layer's
        LoRA factors (``module``: the layer's name in the diffusers denoiser). The demo epochs are written so."""
        raise NotImplementedError

    # ------------------------------------------------------------------ rendering
    def make_scheduler(self, sampler: str, base_config):
        """A fresh scheduler for ``sampler`` from the base's own scheduler config (flow matching by default)."""
        import diffusers

        if sampler not in self.defaults.samplers:
            raise ConfigError(f"sampler {sampler!r} is not offered for {self.name}; choose {self.defaults.samplers}")
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(base_config)

    def uses_cfg(self, pipe, guidance: float) -> bool:
        """Whether ``guidance`` means classifier-free guidance: two denoiser samples per image."""
        return guidance > 0.0

    def encode_prompt(self, pipe, prompt: str, negative_prompt: str, cfg: bool, device,
                      max_sequence_length: int) -> tuple:
        """The prompt's embeddings as ``call_kwargs`` takes them back (the text encoders run here only)."""
        raise NotImplementedError

    def call_kwargs(self, embeds: tuple, images: int, max_sequence_length: int) -> dict:
        """The pipeline's keyword arguments for ``embeds`` and ``images`` images a call, over the common ones
        (steps, guidance, size, generators, step callback)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ tiny and bench models
    def build_tiny(self, seed: int = 0, workdir=None):
        """The tiny real pipeline of this family with seeded random weights; nothing is downloaded."""
        raise NotImplementedError

    def bench_pipeline(self, denoiser):
        """A pipeline holding only ``denoiser`` (the bench's size models): enough for the loaders and the swapper."""
        raise NotImplementedError

    def bench_forward(self, denoiser, device, dtype, latent: int, batch: int, rand: Callable) -> Callable:
        """A closure running one denoiser forward on fixed inputs drawn by ``rand(*shape)``, returning the output."""
        raise NotImplementedError
