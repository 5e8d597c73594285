"""Offline tiny pipelines and demo epoch LoRAs. Nothing here downloads anything.

Used by ``app.py`` and the CLI when the configured base cannot load, and by the tests. The pipelines are the real
diffusers classes (``StableDiffusionXLPipeline``, ``ZImagePipeline``) at a tiny size with random, seeded weights,
and tokenizers built from a byte-level vocabulary written here. The demo epochs ``jimeng_20 ... jimeng_300`` move
along one fixed direction whose length grows with the epoch (quickly at first, then flattening), as a real training
run tends to, so that "how far did the style move" has a known answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

DEMO_EPOCHS = (20, 50, 80, 150, 220, 300)
DEMO_SERIES = "jimeng"
DEMO_TRIGGER = "jimeng style"
ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
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


def attention_targets(denoiser) -> list[tuple[str, torch.nn.Linear]]:
    """The attention projections a kohya/musubi LoRA usually trains, in module order."""
    out = []
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTN_TARGETS):
            if ".attn" in name or ".attention." in name:
                out.append((name, module))
    return out


def growth(epoch: int, scale: float = 100.0) -> float:
    """How far demo epoch ``epoch`` has moved along its direction: fast at first, flattening later."""
    return 1.0 - math.exp(-epoch / scale)


def make_lora_state_dict(denoiser, family: str, rank: int = 4, magnitude: float = 1.0, seed: int = 0,
                         noise: float = 0.0, noise_seed: int = 0, alpha: float | None = None,
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A LoRA on the attention projections of ``denoiser``, in the file format trainers write for ``family``:
    kohya (``lora_unet_*`` with ``.alpha``) for SDXL, musubi (``diffusion_model.*`` with ``.alpha``) for Z-Image.

    ``seed`` fixes the direction; ``magnitude`` scales it; ``noise`` adds a per-``noise_seed`` perturbation.
    """
    gen = torch.Generator().manual_seed(seed)
    ngen = torch.Generator().manual_seed(10_000 + noise_seed)
    alpha = float(rank if alpha is None else alpha)
    sd: dict[str, torch.Tensor] = {}
    for name, module in attention_targets(denoiser):
        down = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=gen) / math.sqrt(rank)
        if noise:
            up = up + noise * torch.randn(module.out_features, rank, generator=ngen) / math.sqrt(rank)
        up = up * magnitude
        if family == "sdxl":
            key = "lora_unet_" + name.replace(".", "_")
        else:
            key = "diffusion_model." + name
        sd[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
        sd[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def kohya_metadata(series: str, epoch: int, steps_per_epoch: int, rank: int, alpha: float, family: str,
                   num_epochs: int) -> dict[str, str]:
    """The kohya sd-scripts metadata a real epoch file carries (all values are strings)."""
    return {
        "ss_output_name": series,
        "ss_epoch": str(epoch),
        "ss_steps": str(epoch * steps_per_epoch),
        "ss_num_epochs": str(num_epochs),
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_network_module": "networks.lora",
        "ss_learning_rate": "0.0001",
        "ss_base_model_version": "sdxl_base_v1-0" if family == "sdxl" else "z-image-turbo",
        "ss_tag_frequency": json.dumps({"10_jimeng": {"jimeng style": 40, "ink": 22, "stripes": 17}}),
        "modelspec.trigger_phrase": DEMO_TRIGGER,
        "modelspec.title": f"{series} epoch {epoch}",
    }


def write_demo_loras(denoiser, folder: str | Path, family: str, epochs=DEMO_EPOCHS, series: str = DEMO_SERIES,
                     rank: int = 4, strength: float = 1.5, steps_per_epoch: int = 10) -> list[Path]:
    """Write ``<series>_<epoch>.safetensors`` for each epoch: one fixed direction, length ``growth(epoch)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch in epochs:
        sd = make_lora_state_dict(denoiser, family, rank=rank, magnitude=strength * growth(epoch), seed=1,
                                  noise=0.05, noise_seed=epoch)
        meta = kohya_metadata(series, epoch, steps_per_epoch, rank, float(rank), family, max(epochs))
        path = folder / f"{series}_{epoch}.safetensors"
        save_file(sd, str(path), metadata=meta)
        paths.append(path)
    return paths


def build_tiny(family: str, seed: int = 0, workdir: str | Path | None = None):
    if family == "sdxl":
        return build_tiny_sdxl(seed, workdir)
    if family == "z-image":
        return build_tiny_zimage(seed, workdir)
    raise ValueError(f"unknown family {family!r}")


def write_demo(out: str | Path, family: str = "sdxl", seed: int = 0) -> tuple[Path, Path]:
    """Write a demo base (a diffusers folder) and its epoch LoRAs under ``out``. Returns (base_dir, loras_dir)."""
    out = Path(out)
    base_dir, loras_dir = out / f"base-{family}", out / "loras"
    pipe = build_tiny(family, seed, out / "tokenizer-src")
    pipe.save_pretrained(str(base_dir), safe_serialization=True)
    denoiser = pipe.unet if family == "sdxl" else pipe.transformer
    write_demo_loras(denoiser, loras_dir, family)
    (out / "README.md").write_text(
        f"LoRA Spectrum demo ({family}): a tiny base with random weights and epochs "
        f"{', '.join(map(str, DEMO_EPOCHS))} whose effect grows with the epoch. Not a real model.\n",
        encoding="utf-8",
    )
    return base_dir, loras_dir


def copy_trained_demo(out: str | Path) -> tuple[Path, Path, Path]:
    """Copy the shipped trained demo (base, epochs, training log) to ``out``; returns (base, loras, logs)."""
    import shutil

    from lora_spectrum import demo_training as trained
    from lora_spectrum.errors import LoraSpectrumError

    if not trained.assets_available():
        raise LoraSpectrumError(f"{trained.ASSETS_DIR}: the trained demo is missing; rebuild it with "
                                f"python -m lora_spectrum.demo_training --out {trained.ASSETS_DIR}")
    out = Path(out)
    parts = (trained.BASE_DIRNAME, trained.LORAS_DIRNAME, trained.LOGS_DIRNAME)
    for name in parts:
        shutil.copytree(trained.ASSETS_DIR / name, out / name, dirs_exist_ok=True)
    return tuple(out / name for name in parts)


def ensure_demo(demo_dir: str | Path, family: str = "sdxl") -> tuple[Path, Path]:
    """The random demo's base folder and loras folder, written on first use (seconds, no download)."""
    demo_dir = Path(demo_dir)
    base, loras = demo_dir / f"base-{family}", demo_dir / "loras"
    if not (base / "model_index.json").is_file() or not any(loras.glob("*.safetensors")):
        write_demo(demo_dir, family)
    return base, loras
