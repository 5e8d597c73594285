"""The stages of training the demo: the untrained tiny pipeline, its VAE, base (UNet and text encoders) and the
kohya-style ``jimeng`` LoRA, each a function over tensors already made (``shapes.py`` makes them).

Nothing here decides what to run or writes the shipped folders: ``trainer.py`` does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_spectrum.demo.assets import SERIES
from lora_spectrum.demo.tiny_pipelines import assemble_sdxl
from tools.demo_trainer.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZE, TRIGGER

NEUTRAL_TAGS = ("simple", "flat", "clean", "plain", "icon", "drawing", "minimal", "shape")


# ---------------------------------------------------------------------------------------------------- models
def build_pipeline(seed: int = 0, workdir: str | Path | None = None):
    """The untrained tiny StableDiffusionXLPipeline: a 2-level UNet with attention at both levels (so an
    attention-only LoRA reaches the full latent resolution), a 3-level VAE (factor 4), two tiny CLIP encoders and
    the byte-level tokenizer from ``tiny_pipelines.py``."""
    import tempfile

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    workdir = Path(workdir or tempfile.mkdtemp(prefix="lora_spectrum_tok_"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 4, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
        norm_num_groups=32,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 64], in_channels=3, out_channels=3, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4,
        norm_num_groups=16, sample_size=SIZE,
    )  # fmt: skip
    te_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=64, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=3, pad_token_id=1, vocab_size=520, hidden_act="gelu",
        projection_dim=32, max_position_embeddings=77,
    )  # fmt: skip
    return assemble_sdxl(unet, vae, te_config, workdir)


def encode_text(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, pooled) exactly as ``StableDiffusionXLPipeline.encode_prompt`` computes them, with grad."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    out1 = pipe.text_encoder(ids, output_hidden_states=True)
    out2 = pipe.text_encoder_2(ids, output_hidden_states=True)
    embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    return embeds, out2.text_embeds


def _time_ids(n: int) -> torch.Tensor:
    # original_size + crops_coords_top_left + target_size, as the pipeline passes them at SIZE x SIZE.
    return torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32).repeat(n, 1)


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Budget:
    """How much of each stage to run. ``FULL`` reproduces the shipped assets; ``QUICK`` is a smoke test."""

    vae_steps: int = 700
    vae_batch: int = 8
    te_warmup_steps: int = 300
    vae_decoder_steps: int = 900
    base_images: int = 3240  # 60 per (colour, shape, background)
    unet_steps: int = 2000
    unet_batch: int = 24
    style_images: int = 162  # a small LoRA data set, as in real life
    style_share: float = 0.6  # of the style set drawn from shapes.FAVOURITES: the bias that makes late epochs bleed
    validation_images: int = 54  # held-out styled images for loss/validation/epoch_average
    lora_epochs: int = 24
    lora_batch: int = 6
    lora_save_every: int = 3
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_lr: float = 4e-4
    oracle_seeds: int = 8  # the oracle renders each held-out prompt with this many of ``oracle.SEEDS``
    oracle_steps: int = 20  # in this many denoising steps


FULL = Budget()
QUICK = Budget(vae_steps=3, vae_batch=4, te_warmup_steps=3, vae_decoder_steps=2, base_images=54, unet_steps=3, unet_batch=4, style_images=18,
               validation_images=6, lora_epochs=2, lora_batch=6, lora_save_every=1, oracle_seeds=1, oracle_steps=4)


def log(msg: str) -> None:
    print(f"[demo.trainer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def train_vae(vae, images: torch.Tensor, budget: Budget, seed: int) -> float:
    """Train the VAE as a near-deterministic autoencoder (tiny KL), then set its ``scaling_factor`` so the scaled
    latents have unit standard deviation, as the diffusion schedule assumes. Returns the final L1 error."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train()
    l1 = float("nan")
    for step in range(budget.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, budget.vae_steps, 2e-3, warmup=50)
        idx = torch.randint(0, len(images), (budget.vae_batch,), generator=gen)
        x = images[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1_t = (rec - x).abs().mean()
        loss = l1_t + F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        l1 = l1_t.item()
        if step % 100 == 0 or step == budget.vae_steps - 1:
            log(f"vae step {step + 1}/{budget.vae_steps} l1 {l1:.4f}")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(images[i:i + 64]).latent_dist.mean for i in range(0, min(len(images), 512), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return l1


def refine_decoder(vae, images: torch.Tensor, steps: int, seed: int, batch: int = 8) -> float:
    """Fine-tune the VAE decoder alone on reconstructions of the encoder's (frozen) latents, as Stability's ft-MSE
    VAE did: the latents the UNet was trained on do not change, the colours come back truer. Returns the L1."""
    gen = torch.Generator().manual_seed(seed + 7)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    vae.train()
    l1 = float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, 1e-3, warmup=20)
        x = images[torch.randint(0, len(images), (batch,), generator=gen)]
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        l1_t = (rec - x).abs().mean()
        loss = l1_t + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        l1 = l1_t.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae decoder step {step + 1}/{steps} l1 {l1:.4f}")
    vae.eval()
    vae.requires_grad_(False)
    return l1


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, unscaled (cached once; the UNet stages sample from them)."""
    means, stds = [], []
    for i in range(0, len(images), 64):
        post = vae.encode(images[i:i + 64]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def _noisy(latents: torch.Tensor, alphas_cumprod: torch.Tensor, gen: torch.Generator):
    t = torch.randint(0, len(alphas_cumprod), (len(latents),), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise, noise, t


def attribute_labels(captions: list[str]) -> torch.Tensor:
    """(N, 3) indices of (colour, shape, background) named by each caption."""
    colours, shapes, backgrounds = list(COLOURS), list(SHAPES), list(BACKGROUNDS)
    rows = []
    for c in captions:
        words = c.split(",")[0].split()  # "a <colour> <shape> on a <background> background"
        rows.append([colours.index(words[1]), shapes.index(words[2]), backgrounds.index(words[5])])
    return torch.tensor(rows)


class AttributeProbe(torch.nn.Module):
    """Linear read-outs of (colour, shape, background) from the pooled embedding and from the mean token embedding.
    Used only as an auxiliary training loss: it makes the tiny text encoders separate the prompts clearly, so the
    UNet can read them (jointly trained from scratch, they otherwise blur similar colours). Not shipped."""

    def __init__(self, pooled_dim: int = 32, token_dim: int = 64):
        super().__init__()
        self.sizes = (len(COLOURS), len(SHAPES), len(BACKGROUNDS))
        self.pooled = torch.nn.Linear(pooled_dim, sum(self.sizes))
        self.tokens = torch.nn.Linear(token_dim, sum(self.sizes))

    def loss(self, embeds: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = embeds.new_zeros(())
        for logits in (self.pooled(pooled), self.tokens(embeds.mean(1))):
            for k, part in enumerate(logits.split(self.sizes, dim=-1)):
                total = total + F.cross_entropy(part, labels[:, k])
        return total


def _tagged(captions: list[str], gen: torch.Generator) -> list[str]:
    """Half of the captions get a neutral tag appended (so a trailing trigger phrase does not derail the base: the
    text encoders are causal, so a suffix leaves the earlier tokens' states unchanged)."""
    draw = torch.randint(0, 2 * len(NEUTRAL_TAGS), (len(captions),), generator=gen).tolist()
    return [c if k >= len(NEUTRAL_TAGS) else f"{c}, {NEUTRAL_TAGS[k]}" for c, k in zip(captions, draw, strict=True)]


def train_base(pipe, means, stds, captions: list[str], budget: Budget, seed: int) -> float:
    """Train the UNet and both text encoders together (epsilon prediction, the pipeline's own noise schedule),
    dropping 10% of the captions to zero embeddings so classifier-free guidance works with an empty negative
    prompt (SDXL's ``force_zeros_for_empty_prompt``). Keeps an EMA of the weights and loads it at the end.

    The text encoders first get ``te_warmup_steps`` alone on the ``AttributeProbe`` loss, which stays on (weight
    0.1) during the joint training."""
    gen = torch.Generator().manual_seed(seed)
    scale = pipe.vae.config.scaling_factor
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    labels = attribute_labels(captions)
    probe = AttributeProbe()
    # 1. Warm up the text encoders: make the prompts separable.
    te_params = [p for m in (pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()]
    opt = torch.optim.AdamW(te_params + list(probe.parameters()), lr=2e-3, weight_decay=0.0)
    for step in range(budget.te_warmup_steps):
        idx = torch.randint(0, len(captions), (64,), generator=gen)
        embeds, pooled = encode_text(pipe, _tagged([captions[i] for i in idx.tolist()], gen))
        aux = probe.loss(embeds, pooled, labels[idx])
        opt.zero_grad(set_to_none=True)
        aux.backward()
        opt.step()
        if step % 100 == 0 or step == budget.te_warmup_steps - 1:
            log(f"text encoder warm-up step {step + 1}/{budget.te_warmup_steps} probe loss {aux.item():.4f}")
    # 2. Joint training.
    modules = [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params + list(probe.parameters()), lr=1e-3, weight_decay=1e-4)
    for m in modules:
        m.train()
    avg = None
    for step in range(budget.unet_steps):
        # 1. A batch of latents (sampled from the cached posterior), noised at random timesteps.
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, budget.unet_steps, 1e-3)
        idx = torch.randint(0, len(means), (budget.unet_batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noisy, noise, t = _noisy(latents, alphas_cumprod, gen)
        # 2. Captions: half get a neutral tag (``_tagged``); 10% are dropped to zeros.
        embeds, pooled = encode_text(pipe, _tagged([captions[i] for i in idx.tolist()], gen))
        aux = probe.loss(embeds, pooled, labels[idx])
        keep = (torch.rand(len(idx), generator=gen) > 0.1).float()
        embeds, pooled = embeds * keep.view(-1, 1, 1), pooled * keep.view(-1, 1)
        # 3. Predict the noise, step, update the EMA.
        pred = pipe.unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled,
                                                               "time_ids": _time_ids(len(idx))}).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        (loss + 0.1 * aux).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == budget.unet_steps - 1:
            log(f"unet step {step + 1}/{budget.unet_steps} loss {avg:.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    for m in modules:
        m.eval()
        m.requires_grad_(False)
    return float(avg)


def lora_state_dict_kohya(unet) -> dict[str, torch.Tensor]:
    """The peft adapter of ``unet`` as kohya writes it: ``lora_unet_<module path with _>.lora_down/.lora_up/.alpha``."""
    from peft import get_peft_model_state_dict

    peft_sd = get_peft_model_state_dict(unet)
    alpha = float(unet.peft_config["default"].lora_alpha)
    out: dict[str, torch.Tensor] = {}
    for key, value in peft_sd.items():
        module, _, kind = key.rpartition(".lora_")
        kohya = "lora_unet_" + module.replace(".", "_")
        name = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
        out[f"{kohya}.{name}"] = value.detach().to(torch.float16).contiguous()
        out[f"{kohya}.alpha"] = torch.tensor(alpha)
    return out


def _kohya_metadata(epoch: int, steps: int, budget: Budget, tag_frequency: dict) -> dict[str, str]:
    return {
        "ss_output_name": SERIES,
        "ss_epoch": str(epoch),
        "ss_steps": str(steps),
        "ss_num_epochs": str(budget.lora_epochs),
        "ss_network_dim": str(budget.lora_rank),
        "ss_network_alpha": str(budget.lora_alpha),
        "ss_network_module": "networks.lora",
        "ss_learning_rate": str(budget.lora_lr),
        "ss_unet_lr": str(budget.lora_lr),
        "ss_text_encoder_lr": "0.0",
        "ss_train_batch_size": str(budget.lora_batch),
        "ss_num_train_images": str(budget.style_images),
        "ss_resolution": f"({SIZE}, {SIZE})",
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_sd_model_name": "lora_spectrum demo base-sdxl",
        "ss_tag_frequency": json.dumps(tag_frequency),
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.trigger_phrase": TRIGGER,
        "modelspec.title": f"{SERIES} epoch {epoch}",
        "modelspec.description": "LoRA Spectrum demo: thick dark ink outlines, learned epoch by epoch",
    }


def _validation_loss(pipe, val: tuple, seed: int) -> float:
    """Mean noise-prediction loss on held-out images, with noise and timesteps fixed by ``seed`` so that every
    epoch is scored on the same draws (as kohya's validation does)."""
    means, stds, embeds, pooled = val
    gen = torch.Generator().manual_seed(seed)
    latents = (means + stds * torch.randn(means.shape, generator=gen)) * pipe.vae.config.scaling_factor
    noisy, noise, t = _noisy(latents, pipe.scheduler.alphas_cumprod.float(), gen)
    with torch.no_grad():
        pred = pipe.unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled,
                                                               "time_ids": _time_ids(len(means))}).sample
    return F.mse_loss(pred, noise).item()


def train_lora(pipe, means, stds, captions: list[str], budget: Budget, seed: int, loras_dir: Path,
               logs_dir: Path, validation: tuple | None = None, on_save=None) -> list[Path]:
    """Train a peft LoRA on the UNet attention projections, kohya-style: fixed epochs over a small data set, a
    checkpoint every ``lora_save_every`` epochs, TensorBoard tags ``loss/current``, ``loss/average`` (mean of the
    last epoch's losses, as kohya) and ``lr/unet`` per step, and ``loss/epoch`` with the epoch as its step.

    ``validation`` is (means, stds, captions) of held-out images: their loss is logged per epoch under kohya's
    ``loss/validation/epoch_average``. ``on_save(epoch, path)`` runs after each saved epoch, the adapter active and
    the UNet in eval mode (the demo's oracle measures the epoch there)."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from torch.utils.tensorboard import SummaryWriter

    # 1. The adapter: the attention projections kohya's networks.lora trains in the UNet.
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=budget.lora_rank, lora_alpha=budget.lora_alpha, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=budget.lora_lr, weight_decay=0.0)
    # 2. Text embeddings are fixed (the encoders are frozen), so compute them once.
    with torch.no_grad():
        embeds, pooled = encode_text(pipe, captions)
    tags: dict[str, int] = {}
    for c in captions:
        for tag in (t.strip() for t in c.split(",")):
            tags[tag] = tags.get(tag, 0) + 1
    tag_frequency = {f"10_{SERIES}": tags}
    val = None
    if validation is not None:
        with torch.no_grad():
            val = (validation[0], validation[1], *encode_text(pipe, validation[2]))
    # 3. Epochs: shuffle, step, log; save a kohya file every few epochs.
    gen = torch.Generator().manual_seed(seed)
    scale = pipe.vae.config.scaling_factor
    alphas_cumprod = pipe.scheduler.alphas_cumprod.float()
    loras_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(logs_dir / SERIES / "network_train"))
    steps_per_epoch = math.ceil(len(means) / budget.lora_batch)
    saved, step, window = [], 0, []
    pipe.unet.train()
    for epoch in range(1, budget.lora_epochs + 1):
        order = torch.randperm(len(means), generator=gen)
        epoch_losses = []
        for b in range(steps_per_epoch):
            idx = order[b * budget.lora_batch:(b + 1) * budget.lora_batch]
            latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
            noisy, noise, t = _noisy(latents, alphas_cumprod, gen)
            pred = pipe.unet(noisy, t, embeds[idx], added_cond_kwargs={"text_embeds": pooled[idx],
                                                                        "time_ids": _time_ids(len(idx))}).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            current = loss.item()
            epoch_losses.append(current)
            window = (window + [current])[-steps_per_epoch:]
            writer.add_scalar("loss/current", current, step)
            writer.add_scalar("loss/average", sum(window) / len(window), step)
            writer.add_scalar("lr/unet", budget.lora_lr, step)
        epoch_loss = sum(epoch_losses) / len(epoch_losses)
        writer.add_scalar("loss/epoch", epoch_loss, epoch)
        line = f"lora epoch {epoch}/{budget.lora_epochs} loss {epoch_loss:.4f}"
        if val is not None:
            pipe.unet.eval()
            val_loss = _validation_loss(pipe, val, seed + 7)
            pipe.unet.train()
            writer.add_scalar("loss/validation/epoch_average", val_loss, epoch)
            line += f" validation {val_loss:.4f}"
        log(line)
        if epoch % budget.lora_save_every == 0 or epoch == budget.lora_epochs:
            path = loras_dir / f"{SERIES}_{epoch}.safetensors"
            save_file(lora_state_dict_kohya(pipe.unet), str(path),
                      metadata=_kohya_metadata(epoch, step, budget, tag_frequency))
            saved.append(path)
            if on_save is not None:
                pipe.unet.eval()
                on_save(epoch, path)
                pipe.unet.train()
    writer.close()
    pipe.unet.eval()
    return saved
