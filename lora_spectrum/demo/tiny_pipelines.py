"""Tiny real diffusers pipelines (SDXL, Z-Image) with seeded random weights, and byte-level tokenizers.

The pipelines are the real diffusers classes (``StableDiffusionXLPipeline``, ``ZImagePipeline``) at a tiny size;
the tokenizers are built from a byte-level vocabulary written here. Nothing here downloads anything or knows LoRAs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lora_spectrum.errors import ConfigError

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _write_tokenizer_files(folder: Path, kind: str) -> tuple[Path, Path]:
    """A byte-level BPE vocabulary with no merges: every character is a token. Enough to make prompts differ."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_vocab()
    if kind == "clip":
        vocab = {c: i for i, c in enumerate(chars)}
        vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
        vocab["<|startoftext|>"] = len(vocab)
        vocab["<|endoftext|>"] = len(vocab)
    else:
        vocab = {c: i for i, c in enumerate(chars)}
        for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
            vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    vocab, merges = _write_tokenizer_files(folder, "clip")
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def _qwen_tokenizer(folder: Path):
    from transformers import Qwen2Tokenizer

    vocab, merges = _write_tokenizer_files(folder, "qwen")
    tok = Qwen2Tokenizer(str(vocab), str(merges), pad_token="<|endoftext|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def build_tiny_sdxl(seed: int = 0, workdir: str | Path | None = None):
    """A tiny StableDiffusionXLPipeline (32/64-channel UNet, two tiny CLIP encoders) with seeded random weights."""
    import tempfile

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


def assemble_sdxl(unet, vae, te_config, workdir: Path):
    """A StableDiffusionXLPipeline around ``unet`` and ``vae``: two CLIP encoders built from ``te_config`` (in
    this order, so seeded weights are reproducible), the byte-level tokenizer, an Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_encoder = CLIPTextModel(te_config)
    text_encoder_2 = CLIPTextModelWithProjection(te_config)
    tokenizer = _clip_tokenizer(workdir / "clip_tokenizer")
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


def build_tiny_zimage(seed: int = 0, workdir: str | Path | None = None):
    """A tiny ZImagePipeline (2-layer DiT, tiny Qwen3 encoder) with seeded random weights."""
    import tempfile

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
    tokenizer = _qwen_tokenizer(workdir / "qwen_tokenizer")
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


def build_tiny(family: str, seed: int = 0, workdir: str | Path | None = None):
    """The tiny pipeline of ``family`` (``"sdxl"`` or ``"z-image"``), seeded; nothing is downloaded."""
    if family == "sdxl":
        return build_tiny_sdxl(seed, workdir)
    if family == "z-image":
        return build_tiny_zimage(seed, workdir)
    raise ConfigError(f"unknown family {family!r}; choose sdxl or z-image")
