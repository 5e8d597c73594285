"""Z-Image: ``ZImagePipeline``, its DiT the denoiser, one Qwen3 text encoder, musubi/ai-toolkit ``diffusion_model.*``
files, flow matching. Two variants: Turbo (distilled: 8 steps, guidance 0; configs/z-image.yaml) and the base model
(released January 2026) and de-distilled Turbo merges, which need classifier-free guidance and more steps."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from lora_spectrum.bases.families.base import Family
from lora_spectrum.bases.families.tokenizers import qwen_tokenizer

# Tongyi-MAI/Z-Image-Turbo, transformer/config.json.
TRANSFORMER_CONFIG = {
    "all_f_patch_size": [1], "all_patch_size": [2], "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560, "dim": 3840, "in_channels": 16, "n_heads": 30, "n_kv_heads": 30, "n_layers": 30,
    "n_refiner_layers": 2, "norm_eps": 1e-05, "qk_norm": True, "rope_theta": 256.0, "t_scale": 1000.0,
}  # fmt: skip

# A base named like Z-Image but not like Turbo (Tongyi-MAI/Z-Image), or a de-distilled Turbo.
_NOT_DISTILLED = re.compile(r"(z[-_ ]?image(?![-_ ]?turbo))|de-?distill", re.IGNORECASE)


class ZImage(Family):
    name = "z-image"
    title = "Z-Image"
    pipeline_class = "ZImagePipeline"
    pipelines = ("ZImagePipeline",)
    lora_loader = "ZImageLoraLoaderMixin"
    denoiser_attr = "transformer"
    denoiser_class = "ZImageTransformer2DModel"
    text_encoder_attrs = ("text_encoder",)
    # siglip_* only in its omni variant.
    denoiser_roots = ("all_x_embedder", "cap_embedder", "t_embedder", "noise_refiner", "context_refiner", "layers",
                      "all_final_layer", "siglip_embedder", "siglip_refiner")
    # Z-Image embeds all images' patches and all captions in one call.
    unbatched_layers = ("all_x_embedder", "cap_embedder", "siglip_embedder")
    checkpoint_marks = ("noise_refiner", "context_refiner")
    version_marks = ("z-image", "zimage", "z_image")
    key_marks = ("context_refiner", "noise_refiner", ".adaLN_modulation.")
    hub_tag = "z-image-turbo"
    known_bases = {"z-image-turbo": "Tongyi-MAI/Z-Image-Turbo", "z_image_turbo": "Tongyi-MAI/Z-Image-Turbo"}
    base_model_version = "z_image_turbo"
    # The base model's card: classifier-free guidance about 3 to 5 and 28 to 50 steps.
    variants = {"base": {"steps": 28, "guidance": 4.0}}
    tiny_sampling = {"width": 32, "height": 32, "guidance": 0.0, "sampler": "Euler (flow)"}
    bench_model = "z-image-size"
    bench_config = TRANSFORMER_CONFIG

    def variant_for(self, base: str, pipe) -> str:
        """Turbo unless the base's id or folder name says the base model (or a de-distilled Turbo): the two share
        one architecture and scheduler config, so the name is what tells them apart."""
        name = Path(str(base).rstrip("/\\")).name if base else ""
        return "base" if name and _NOT_DISTILLED.search(name) else ""

    def demo_lora_names(self, module: str) -> tuple[str, str, str | None]:
        key = "diffusion_model." + module  # musubi-tuner / ai-toolkit (ComfyUI names)
        return f"{key}.lora_down.weight", f"{key}.lora_up.weight", f"{key}.alpha"

    def encode_prompt(self, pipe, prompt, negative_prompt, cfg, device, max_sequence_length) -> tuple:
        return pipe.encode_prompt(prompt, device=device, do_classifier_free_guidance=cfg,
                                  negative_prompt=negative_prompt or None, max_sequence_length=max_sequence_length)

    def call_kwargs(self, embeds, images, max_sequence_length) -> dict:
        pe, npe = embeds
        return dict(prompt_embeds=list(pe), negative_prompt_embeds=list(npe) if npe else None,
                    max_sequence_length=max_sequence_length)

    def build_tiny(self, seed: int = 0, workdir=None):
        """A tiny ZImagePipeline (2-layer DiT, tiny Qwen3 encoder)."""
        import torch
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
        from transformers import Qwen3Config, Qwen3Model

        workdir = Path(workdir or tempfile.mkdtemp(prefix="lora_spectrum_tok_"))
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
            axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
        )  # fmt: skip
        with torch.no_grad():  # these start uninitialised (torch.empty) in diffusers
            transformer.x_pad_token.fill_(1.0)
            transformer.cap_pad_token.fill_(1.0)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 64], layers_per_block=1,
            latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
        )  # fmt: skip
        tokenizer = qwen_tokenizer(workdir / "qwen_tokenizer")
        text_encoder = Qwen3Model(Qwen3Config(
            hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=len(tokenizer), max_position_embeddings=512,
        ))  # fmt: skip
        pipe = ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            transformer=transformer,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def bench_pipeline(self, denoiser):
        from diffusers import ZImagePipeline

        return ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=denoiser)

    def bench_forward(self, denoiser, device, dtype, latent, batch, rand):
        import torch

        cfg = denoiser.config
        x = [rand(1, cfg.in_channels, 1, latent, latent)[0]] * batch
        caption = [rand(1, 32, cfg.cap_feat_dim)[0]] * batch
        timestep = torch.tensor([0.5] * batch, device=device, dtype=dtype)

        def run():
            out = denoiser(x, timestep, caption, return_dict=False)[0]
            return out[0] if batch == 1 else torch.stack(out)

        return run
