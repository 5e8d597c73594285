"""FLUX.1: ``FluxPipeline``, its MMDiT the denoiser (CLIP-L and T5 never touched), kohya's ``lora_unet_double_blocks_*``,
ai-toolkit's ``transformer.*`` (peft names), ComfyUI's ``diffusion_model.*`` and LyCORIS files through diffusers'
``FluxLoraLoaderMixin``; flow matching without classifier-free guidance. Two variants: dev (guidance embedding,
about 28 steps at guidance 3.5; configs/flux.yaml) and schnell (distilled: 4 steps, no guidance embedding)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lora_spectrum.bases.families.base import Family
from lora_spectrum.bases.families.tokenizers import clip_tokenizer, t5_tokenizer

# black-forest-labs/FLUX.1-dev, transformer/config.json (12 B parameters: the bench builds it on a GPU only).
TRANSFORMER_CONFIG = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}  # fmt: skip


class Flux(Family):
    name = "flux"
    title = "FLUX.1"
    pipeline_class = "FluxPipeline"
    pipelines = ("FluxPipeline",)
    lora_loader = "FluxLoraLoaderMixin"
    denoiser_attr = "transformer"
    denoiser_class = "FluxTransformer2DModel"
    text_encoder_attrs = ("text_encoder", "text_encoder_2")
    denoiser_roots = ("x_embedder", "context_embedder", "time_text_embed", "transformer_blocks",
                      "single_transformer_blocks", "norm_out", "proj_out")
    # Every layer is batch-first: image and text tokens are joined per sample, along the sequence.
    checkpoint_marks = ("double_blocks.", "single_blocks.")
    # kohya: ss_base_model_version "flux1"; modelspec.architecture "flux-1-dev/lora", "flux-1-schnell/lora".
    version_marks = ("flux1", "flux-1", "flux.1", "flux_1")
    key_marks = ("double_blocks", "single_blocks", "single_transformer_blocks", "img_attn", "txt_attn")
    hub_tag = "flux"
    # known_bases: none; kohya's "flux1" names neither dev nor schnell.
    base_model_version = "flux1"
    network_module = "networks.lora_flux"
    variants = {"schnell": {"steps": 4, "guidance": 0.0}}
    tiny_sampling = {"width": 32, "height": 32, "guidance": 3.5, "sampler": "Euler (flow)"}
    bench_model = "flux-size"
    bench_config = TRANSFORMER_CONFIG
    bench_gpu_only = True

    def variant_for(self, base: str, pipe) -> str:
        """schnell has no guidance embedding (its transformer config says so); dev and its fine-tunes have one."""
        return "" if self.denoiser(pipe).config.guidance_embeds else "schnell"

    def convert_lora(self, raw: dict, pipe) -> tuple[dict, dict | None]:
        # kohya's and ComfyUI's files come back with alpha folded into the factors (alphas None).
        return type(pipe).lora_state_dict(dict(raw), return_alphas=True)

    def demo_lora_names(self, module: str) -> tuple[str, str, str | None]:
        key = "transformer." + module  # ai-toolkit: peft names, no alpha (alpha = rank)
        return f"{key}.lora_A.weight", f"{key}.lora_B.weight", None

    def uses_cfg(self, pipe, guidance: float) -> bool:
        return False  # guidance is an input of dev's transformer (guidance embedding), never a second sample

    def encode_prompt(self, pipe, prompt, negative_prompt, cfg, device, max_sequence_length) -> tuple:
        pe, ppe, _text_ids = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1,
                                                max_sequence_length=max_sequence_length)
        return pe, ppe

    def call_kwargs(self, embeds, images, max_sequence_length) -> dict:
        # FluxPipeline takes given embeddings as they are: one row per image, so repeated here.
        pe, ppe = embeds
        return dict(prompt_embeds=pe.repeat(images, 1, 1), pooled_prompt_embeds=ppe.repeat(images, 1),
                    num_images_per_prompt=1, max_sequence_length=max_sequence_length)

    def build_tiny(self, seed: int = 0, workdir=None):
        """A tiny FluxPipeline: one double and one single block of width 32, tiny CLIP-L and T5 encoders, a VAE
        with one latent channel (four after FLUX's 2x2 packing). Built dev-like (guidance embedding)."""
        import torch
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        workdir = Path(workdir or tempfile.mkdtemp(prefix="lora_spectrum_tok_"))
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=[4, 4, 8],
        )  # fmt: skip
        with torch.no_grad():  # wider AdaLN gates than the default init: the attention (where LoRAs go) shows
            for name, module in transformer.named_modules():
                if name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear")):
                    module.weight.mul_(4.0)
        vae = AutoencoderKL(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
            latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=0.0609, scaling_factor=1.5035,
        )  # fmt: skip
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
            num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
            projection_dim=32,
        ))  # fmt: skip
        tokenizer_2 = t5_tokenizer()
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
            dropout_rate=0.0,  # a model built from a config is in training mode: no dropout, so prompts repeat exactly
        )).eval()  # fmt: skip
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
            tokenizer=clip_tokenizer(workdir / "clip_tokenizer"), text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2, transformer=transformer,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def bench_pipeline(self, denoiser):
        from diffusers import FluxPipeline

        return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                            tokenizer_2=None, transformer=denoiser)

    def bench_forward(self, denoiser, device, dtype, latent, batch, rand):
        import torch

        cfg = denoiser.config
        tokens = (latent // 2) ** 2  # 2x2 patches of the latent
        hidden = rand(batch, tokens, cfg.in_channels)
        context = rand(batch, 512, cfg.joint_attention_dim)
        pooled = rand(batch, cfg.pooled_projection_dim)
        img_ids = torch.zeros(tokens, 3, device=device, dtype=dtype)
        txt_ids = torch.zeros(512, 3, device=device, dtype=dtype)
        timestep = torch.full((batch,), 0.5, device=device, dtype=dtype)
        guidance = torch.full((batch,), 3.5, device=device, dtype=torch.float32) if cfg.guidance_embeds else None
        return lambda: denoiser(hidden_states=hidden, encoder_hidden_states=context, pooled_projections=pooled,
                                timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                                return_dict=False)[0]
