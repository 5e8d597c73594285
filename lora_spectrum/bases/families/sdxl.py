"""Stable Diffusion XL: ``StableDiffusionXLPipeline``, its UNet the denoiser, two CLIP text encoders, kohya's
``lora_unet_*`` files, the classic samplers, single-file checkpoints; its tiny pipeline and bench size."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lora_spectrum.bases.families.base import Family
from lora_spectrum.bases.families.tokenizers import clip_tokenizer
from lora_spectrum.errors import ConfigError

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (hard-coded: the benchmark never downloads).
UNET_CONFIG = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}  # fmt: skip

_SAMPLERS = {  # name -> (diffusers scheduler class, its settings)
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "algorithm_type": "dpmsolver++"}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False, "algorithm_type": "dpmsolver++"}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
}


class SDXL(Family):
    name = "sdxl"
    title = "Stable Diffusion XL"
    pipeline_class = "StableDiffusionXLPipeline"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
    lora_loader = "StableDiffusionXLLoraLoaderMixin"
    denoiser_attr = "unet"
    denoiser_class = "UNet2DConditionModel"
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    denoiser_roots = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block", "up_blocks",
                      "conv_out")
    single_file = True
    checkpoint_marks = ("conditioner.embedders.1", "add_embedding", "label_emb")
    version_marks = ("xl",)
    key_marks = ("lora_te2_", "text_encoder_2", "add_embedding")
    hub_tag = "stable-diffusion-xl"
    known_bases = {"sdxl_base_v1-0": "stabilityai/stable-diffusion-xl-base-1.0"}
    base_model_version = "sdxl_base_v1-0"
    tiny_sampling = {"width": 64, "height": 64, "guidance": 5.0, "sampler": "Euler"}
    bench_model = "sdxl-size"
    bench_config = UNET_CONFIG

    def convert_lora(self, raw: dict, pipe) -> tuple[dict, dict | None]:
        # kohya's SGM block names need the UNet's layers_per_block: diffusers reads it from this config.
        return type(pipe).lora_state_dict(dict(raw), unet_config=pipe.unet.config)

    def demo_lora_names(self, module: str) -> tuple[str, str, str | None]:
        key = "lora_unet_" + module.replace(".", "_")  # kohya sd-scripts
        return f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"

    def make_scheduler(self, sampler: str, base_config):
        import diffusers

        if sampler not in _SAMPLERS:
            raise ConfigError(f"sampler {sampler!r} is not offered for {self.name}; choose one of "
                              f"{', '.join(_SAMPLERS)}")
        cls, kwargs = _SAMPLERS[sampler]
        return getattr(diffusers, cls).from_config(base_config, **kwargs)

    def uses_cfg(self, pipe, guidance: float) -> bool:
        return guidance > 1.0 and pipe.unet.config.time_cond_proj_dim is None

    def encode_prompt(self, pipe, prompt, negative_prompt, cfg, device, max_sequence_length) -> tuple:
        return pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                                  negative_prompt=negative_prompt or None)

    def call_kwargs(self, embeds, images, max_sequence_length) -> dict:
        pe, npe, ppe, nppe = embeds
        return dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                    negative_pooled_prompt_embeds=nppe)

    def build_tiny(self, seed: int = 0, workdir=None):
        """A tiny StableDiffusionXLPipeline (32/64-channel UNet, two tiny CLIP encoders)."""
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig

        workdir = Path(workdir or tempfile.mkdtemp(prefix="lora_spectrum_tok_"))
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=32,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=[32, 64], in_channels=3, out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=128,
        )  # fmt: skip
        te_config = CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
            num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
            projection_dim=32,
        )  # fmt: skip
        return assemble_sdxl(unet, vae, te_config, workdir)

    def bench_pipeline(self, denoiser):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=denoiser, scheduler=None)

    def bench_forward(self, denoiser, device, dtype, latent, batch, rand):
        import torch

        cfg = denoiser.config
        sample = rand(batch, cfg.in_channels, latent, latent)
        hidden = rand(batch, 77, cfg.cross_attention_dim)
        embeds_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        size = float(latent * 8)
        added = {"text_embeds": rand(batch, embeds_dim),
                 "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]] * batch, device=device, dtype=dtype)}
        timestep = torch.tensor([500.0] * batch, device=device)
        return lambda: denoiser(sample, timestep, hidden, added_cond_kwargs=added).sample


def assemble_sdxl(unet, vae, te_config, workdir: Path):
    """A StableDiffusionXLPipeline around ``unet`` and ``vae``: two CLIP encoders built from ``te_config`` (in
    this order, so seeded weights are reproducible), the byte-level tokenizer, an Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_encoder = CLIPTextModel(te_config)
    text_encoder_2 = CLIPTextModelWithProjection(te_config)
    tokenizer = clip_tokenizer(workdir / "clip_tokenizer")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe
