"""What the benchmark runs on: the tiny demo pipeline, or a family's real denoiser architecture (its
``bench_config``, hard-coded, never downloaded) with seeded random weights; their forward inputs; the epoch files.
Nothing here times anything."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch

from lora_spectrum.bases.families import REGISTRY, Family, get_family
from lora_spectrum.bases.families.sdxl import SDXL
from lora_spectrum.bench.timing import quiet
from lora_spectrum.errors import BaseLoadError

# The tiny demo pipeline, and each family's size model (``Family.bench_model``: its real denoiser's config).
MODELS = ("tiny", *(f.bench_model for f in REGISTRY if f.bench_model))
SDXL_UNET_CONFIG = SDXL.bench_config  # the end-to-end grid's UNet (``build_full_pipeline``)


# stabilityai/stable-diffusion-xl-base-1.0: text_encoder (CLIP ViT-L), text_encoder_2 (OpenCLIP bigG) and vae
# configs, the keys that size them.
SDXL_TEXT_ENCODER_CONFIGS = (
    {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
     "projection_dim": 768, "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77},
    {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
     "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408, "max_position_embeddings": 77},
)  # fmt: skip
SDXL_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025,
    "force_upcast": True,
}  # fmt: skip


def _fill_random(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights in the model's dtype, in seconds rather than minutes.

    Hand-written instead of the modules' own initialisers (minutes of CPU for billions of values): every weight
    matrix is a slice of one random pool scaled by 1/sqrt(fan_in), so activations keep a sane size through the
    network; norms get ones, biases zeros.
    """
    param = next(model.parameters())
    gen = torch.Generator(param.device).manual_seed(seed)
    pool = torch.empty(1 << 22, dtype=param.dtype, device=param.device)
    pool.uniform_(-math.sqrt(3.0), math.sqrt(3.0), generator=gen)  # unit variance
    rng = random.Random(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                flat, n, i = p.view(-1), p.numel(), 0
                off = rng.randrange(pool.numel() // 2)
                while i < n:
                    k = min(n - i, pool.numel() - off)
                    flat[i:i + k].copy_(pool[off:off + k])
                    i, off = i + k, 0
                flat.mul_(1.0 / math.sqrt(p[0].numel()))
            elif name.endswith("weight") or p.ndim == 0:
                p.fill_(1.0)
            else:
                p.zero_()


def _materialise(cls, config: dict, device: torch.device, dtype: torch.dtype, seed: int):
    """Build ``cls(**config)`` on the meta device (no memory, no init), then allocate it on ``device`` and fill it."""
    with quiet(), torch.device("meta"):
        model = cls(**config).to(dtype)
    model.to_empty(device=device)
    _fill_random(model, seed)
    return model.eval().requires_grad_(False)


def size_family(model: str) -> type[Family]:
    """The family whose bench size model is ``model``."""
    found = [f for f in REGISTRY if f.bench_model == model]
    if not found:
        raise BaseLoadError(f"unknown benchmark model {model!r}; choose one of {', '.join(MODELS)}")
    return found[0]


def build_model(model: str, device: torch.device, dtype: torch.dtype):
    """(pipeline, family name). The size models get a pipeline holding only the denoiser: enough for diffusers'
    LoRA loaders and for the swapper, which never touch the other components."""
    from lora_spectrum import demo

    if model == "tiny":
        pipe = demo.build_tiny_sdxl(seed=0).to(device=device, dtype=dtype)
        return pipe, SDXL.name
    family = get_family(size_family(model).name)
    denoiser = _materialise(family.denoiser_cls(), family.bench_config, device, dtype, seed=0)
    return family.bench_pipeline(denoiser), family.name


def build_full_pipeline(model: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    """A whole SDXL pipeline for the end-to-end grid: the full-size UNet, text encoders and VAE with seeded random
    weights (``sdxl-size``), or the tiny demo pipeline (``tiny``); the demo's byte-level tokenizer either way."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.image_processor import VaeImageProcessor
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_spectrum import demo

    if model == "tiny":
        return demo.build_tiny_sdxl(seed=0, workdir=workdir).to(device=device, dtype=dtype)
    if model != "sdxl-size":
        raise BaseLoadError(f"the end-to-end grid is built for tiny and sdxl-size, not {model}")
    pipe = demo.build_tiny_sdxl(seed=0, workdir=workdir)  # tokenizer and scheduler; its models are replaced
    unet = _materialise(UNet2DConditionModel, SDXL_UNET_CONFIG, device, dtype, seed=0)
    vae = _materialise(AutoencoderKL, SDXL_VAE_CONFIG, device, dtype, seed=1)
    encoders = []
    for i, (cls, cfg) in enumerate(zip((CLIPTextModel, CLIPTextModelWithProjection), SDXL_TEXT_ENCODER_CONFIGS,
                                       strict=True)):
        config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, **cfg)
        te = _materialise(lambda config=config, cls=cls: cls(config), {}, device, dtype, seed=2 + i)
        for name, buf in te.named_buffers():  # left uninitialised by to_empty
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1], device=device).expand_as(buf))
        encoders.append(te)
    pipe.register_modules(unet=unet, vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1])
    pipe.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    pipe.image_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor)
    pipe.default_sample_size = unet.config.sample_size
    return pipe


def _params(family: Family) -> int:
    with quiet(), torch.device("meta"):
        return sum(p.numel() for p in family.denoiser_cls()(**family.bench_config).parameters())


def check_memory(model: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, with the reason, a size model that does not fit: a GPU-only one on a CPU (the FLUX.1 transformer
    is 12 B parameters), or one larger than the free memory (the Z-Image transformer is ~12 GB in bf16)."""
    if model == "tiny":
        return
    import psutil

    family = get_family(size_family(model).name)
    if family.bench_gpu_only and device.type != "cuda":
        raise BaseLoadError(f"{model} runs on a GPU only (the {family.title} denoiser does not fit this machine's "
                            f"memory); use --model sdxl-size here, or run it on a CUDA machine")
    if model == SDXL.bench_model:
        return
    need = _params(family) * torch.tensor([], dtype=dtype).element_size()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if free < need * 1.2:
            raise BaseLoadError(f"{model} needs about {need * 1.2 / 2**30:.1f} GiB of free GPU memory; "
                                f"{free / 2**30:.1f} GiB is free. Use --model sdxl-size, or a larger GPU")
        need = 2 * 2**30  # the CPU side only holds the files' buffers
    available = psutil.virtual_memory().available
    if available < need * 1.25 + 2 * 2**30:
        raise BaseLoadError(f"{model} needs about {(need * 1.25 + 2 * 2**30) / 2**30:.1f} GiB of free RAM "
                            f"(the denoiser alone is {need / 2**30:.1f} GiB in {str(dtype).removeprefix('torch.')})"
                            f"; {available / 2**30:.1f} GiB is available. Skipped: use --model sdxl-size, or a "
                            f"machine with more memory")


def forward_inputs(family: str, denoiser, device: torch.device, dtype: torch.dtype, latent: int,
                    batch: int = 1) -> Callable:
    """A closure running one denoiser forward on fixed random inputs, returning the output. With ``batch`` > 1
    every sample gets the same inputs (a grid's epochs share prompt and seed), the output keeps the batch."""
    gen = torch.Generator("cpu").manual_seed(0)

    def rand(*shape):
        one = torch.randn(1, *shape[1:], generator=gen).to(device=device, dtype=dtype)
        return one.expand(shape[0], *shape[1:]).contiguous()

    run = get_family(family).bench_forward(denoiser, device, dtype, latent, batch, rand)

    def forward():
        with torch.no_grad():
            return run()

    return forward

def write_epochs(denoiser, family: str, rank: int, epochs: int, folder: Path, dtype: torch.dtype) -> list[Path]:
    """``epochs`` files on the attention projections in the family's trainer format, one layout, different values:
    one random LoRA drawn once, its up-projections scaled per epoch as a growing training run would."""
    from safetensors.torch import save_file

    from lora_spectrum import demo

    base = demo.make_lora_state_dict(denoiser, family, rank=rank, seed=0, dtype=dtype)
    paths = []
    for e in range(1, epochs + 1):
        scale = demo.growth(e, scale=epochs / 2)
        sd = {k: (v * scale).contiguous() if ".lora_up." in k or ".lora_B." in k else v for k, v in base.items()}
        meta = demo.kohya_metadata("bench", e, 100, rank, float(rank), family, epochs)
        path = folder / f"bench-{e:06d}.safetensors"
        save_file(sd, str(path), metadata=meta)
        paths.append(path)
    return paths
