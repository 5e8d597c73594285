"""``python -m tools.demo_trainer.clip_training``: train the demo's own tiny CLIP, so the CLIP measures run offline.

A small ``transformers.CLIPModel`` (its text side on the demo base's tokenizer) learns the shapes data set
contrastively: "<caption>" matches a shape whatever its outline, "<caption>, jimeng style" prefers the inked one.
Images are degraded the way tiny diffusion renders are (blur, noise, colour drift, the demo VAE's look). Reads the
demo base's tokenizer and VAE, writes only ``out`` (``assets.CLIP_DIRNAME`` when shipped), downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lora_spectrum.demo.assets import ASSETS_DIR, BASE_DIRNAME, CLIP_DIRNAME
from lora_spectrum.errors import BaseLoadError, ConfigError
from tools.demo_trainer.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZE, caption, draw

STEPS = 600  # 4.6 minutes on 2 quiet CPU cores (6.2 with another job on them)
QUICK_STEPS = 20
GROUPS = 32  # a batch is GROUPS groups of 4 images (see ``_draw_batch``)
QUICK_GROUPS = 4
LR = 2e-3
INVARIANCE = 5.0  # weight of loss term 5 in ``clip_loss``
VAE_PER_CONTENT = 5  # pool of VAE-decoded drawings: 54 contents x plain/inked x this
VAE_PER_BATCH = 32  # pool images added to each batch
MEAN = STD = (0.5, 0.5, 0.5)  # pixels in [0, 1] are fed as (x - 0.5) / 0.5
CONTENTS = [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]  # 54; caption k plain, 54 + k styled
CAPTIONS = [caption(*k) for k in CONTENTS] + [caption(*k, styled=True) for k in CONTENTS]
_INDEX = {k: i for i, k in enumerate(CONTENTS)}


# ---------------------------------------------------------------------------------------------------- model
def load_tokenizer(base: Path):
    """The demo base's CLIP tokenizer (the byte-level vocabulary its text encoders use)."""
    from transformers import CLIPTokenizerFast

    folder = Path(base) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        raise BaseLoadError(f"{folder}: the demo base's tokenizer is missing; rebuild the base with "
                            f"python -m tools.demo_trainer.trainer --out {ASSETS_DIR}")
    return CLIPTokenizerFast.from_pretrained(str(folder))


def build_clip(tokenizer, seed: int = 0):
    """A tiny, seeded ``CLIPModel``: ViT on 64x64 images in 8x8 patches, a 2-layer text transformer."""
    from transformers import CLIPConfig, CLIPModel

    text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {"image_size": SIZE, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 3, "num_attention_heads": 4}
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=48))


def build_processor(tokenizer):
    """The ``CLIPProcessor`` that feeds images exactly as training did: 64x64 RGB, (x - 0.5) / 0.5."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    images = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                                image_mean=list(MEAN), image_std=list(STD))
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def embed_captions(model, tokens: dict) -> torch.Tensor:
    out = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return F.normalize(_features(out), dim=-1)


def embed_images(model, pixels: torch.Tensor) -> torch.Tensor:
    """``pixels``: N x 3 x 64 x 64 in [0, 1]."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return F.normalize(_features(model.get_image_features(pixel_values=(pixels - mean) / std)), dim=-1)


# ---------------------------------------------------------------------------------------------------- data
def _drawn(colour, shape, background, geometry: int, ink: float) -> np.ndarray:
    """One image; ``ink`` in [0, 1] blends the outline in (0: plain). ``geometry`` seeds the placement."""
    plain = draw(colour, shape, background, np.random.default_rng(geometry))
    if ink <= 0:
        return plain
    inked = draw(colour, shape, background, np.random.default_rng(geometry), ink=True)
    return plain + ink * (inked - plain)


def _draw_batch(rng: np.random.Generator, groups: int):
    """``groups`` groups of 4 hard negatives: a content plain, the same content inked (often the same placement),
    the same shape in another colour, and the same colour as another shape; (images N x 3 x H x W in [0, 1],
    content indices, ink flags)."""
    images, contents, inks = [], [], []
    for _ in range(groups):
        c, s, b = CONTENTS[rng.integers(len(CONTENTS))]
        other_colour = [x for x in COLOURS if x != c][rng.integers(len(COLOURS) - 1)]
        other_shape = [x for x in SHAPES if x != s][rng.integers(len(SHAPES) - 1)]
        geometry = int(rng.integers(2**31))
        members = [((c, s, b), geometry, False),
                   ((c, s, b), geometry if rng.random() < 0.5 else int(rng.integers(2**31)), True),
                   ((other_colour, s, b), int(rng.integers(2**31)), rng.random() < 0.5),
                   ((c, other_shape, list(BACKGROUNDS)[rng.integers(3)]), int(rng.integers(2**31)),
                    rng.random() < 0.5)]
        for content, geo, ink in members:
            images.append(_drawn(*content, geo, rng.uniform(0.55, 1.0) if ink else 0.0))
            contents.append(_INDEX[content])
            inks.append(ink)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(contents), torch.tensor(inks)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x`` (N x C x H x W) with its own ``sigma`` (N,; 0 leaves it as it is)."""
    n, c, h, w = x.shape
    t = torch.arange(-3, 4, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(-1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, 7)
    y = F.pad(x.reshape(1, n * c, h, w), (3, 3, 3, 3), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def degrade(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """What a tiny diffusion model does to a drawing: moved and resized a little, colours drifted, sometimes half
    faded, blurred, smoothed and noisy. ``x`` N x 3 x H x W in [0, 1]."""
    n = x.shape[0]

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen) * strength

    # 1. Shift, scale and a slight rotation (the background is plain, so the border repeats it).
    angle, scale = u(-0.15, 0.15), 1 + u(-0.15, 0.2)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale, torch.cos(angle) / scale
    theta[:, :, 2] = u(-0.15, 0.15, 2)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    # 2. Colour drift: gain per channel, brightness, contrast, saturation.
    x = x * (1 + u(-0.06, 0.06, 3, 1, 1)) + u(-0.04, 0.04, 1, 1, 1)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * (1 + u(-0.3, 0.1, 1, 1, 1))
    x = x.mean((1, 2, 3), keepdim=True) + (x - x.mean((1, 2, 3), keepdim=True)) * (1 + u(-0.15, 0.1, 1, 1, 1))
    # 3. Half drawn: a soft half-plane of some images fades toward the background (the corner colour).
    faded = (torch.rand(n, generator=gen) < 0.15 * strength).float().view(n, 1, 1, 1)
    a = torch.rand(n, generator=gen) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, x.shape[2]), torch.linspace(-1, 1, x.shape[3]), indexing="ij")
    side = torch.sigmoid((torch.cos(a)[:, None, None] * xx + torch.sin(a)[:, None, None] * yy - 0.1) * 8)[:, None]
    x = x + faded * side * u(0.3, 0.7, 1, 1, 1) * (x[:, :, :1, :1] - x)
    # 4. Blur, and sometimes a coarser smoothing (half resolution and back).
    x = gaussian_blur(x, torch.rand(n, generator=gen) * 1.4 * strength)
    coarse = (torch.rand(n, generator=gen) < 0.25 * strength).float().view(n, 1, 1, 1)
    x = x + coarse * (F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear") - x)
    # 5. Noise: fine grain and low-frequency blotches.
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.06, 1, 1, 1)
    blotch = torch.randn(n, 3, x.shape[2] // 8, x.shape[3] // 8, generator=gen)
    x = x + F.interpolate(blotch, size=x.shape[2:], mode="bilinear") * u(0, 0.04, 1, 1, 1)
    return (x.clamp(0, 1) * 255).round() / 255  # as a PNG stores it


def load_vae(base: Path):
    from diffusers import AutoencoderKL

    folder = Path(base) / "vae"
    if not (folder / "config.json").is_file():
        raise BaseLoadError(f"{folder}: the demo base's VAE is missing; rebuild the base with "
                            f"python -m tools.demo_trainer.trainer --out {ASSETS_DIR}")
    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32).eval()


@torch.no_grad()
def vae_pool(vae, rng: np.random.Generator, gen: torch.Generator, per_content: int):
    """Drawings of every content, plain and inked, through the demo VAE with some noise on the latents (a denoiser
    never lands exactly): made once, mixed into every batch, so the model sees the VAE's look."""
    items = [(k, ink) for k in range(len(CONTENTS)) for ink in (False, True) for _ in range(per_content)]
    x = torch.from_numpy(np.stack([_drawn(*CONTENTS[k], int(rng.integers(2**31)), rng.uniform(0.55, 1.0) * ink)
                                   for k, ink in items])).permute(0, 3, 1, 2).contiguous()
    out = []
    for chunk in x.split(64):
        z = vae.encode(chunk * 2 - 1).latent_dist.mean
        z = z + torch.randn(z.shape, generator=gen) * z.std() * torch.rand(len(z), 1, 1, 1, generator=gen) * 0.3
        out.append((vae.decode(z).sample.clamp(-1, 1) + 1) / 2)
    return torch.cat(out), torch.tensor([k for k, _ in items]), torch.tensor([ink for _, ink in items])


# ---------------------------------------------------------------------------------------------------- training
def _multi_positive(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where every ``positive`` column counts as right: -log(sum of their softmax shares)."""
    return (torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~positive, -1e4), -1)).mean()


def clip_loss(model, pixels, contents, inks, tokens, assigned, groups: int) -> tuple[torch.Tensor, dict]:
    """The training objective, from the images (the first ``groups`` x 4 in ``_draw_batch``'s groups), all 108
    captions' tokens and each image's sampled caption.

    1. Image to text over every caption: the plain caption of the content is right, the styled one too when inked.
    2. Text to image over the batch (the sampled captions): a plain caption matches its content inked or not, a
       styled one only the inked images. 1 and 2 are the symmetric InfoNCE, with the learnable logit scale.
    3. Style: "<caption>, jimeng style" against "<caption>" on the same image, right when the image is inked.
    4. The styled captions name the content too: image to the 54 styled captions.
    5. Ink does not lower the plain caption's match: in each group (``_draw_batch``) the inked image scores its
       plain caption as the plain image does, so prompt fidelity does not count the style against an image.
    """
    scale = model.logit_scale.exp().clamp(max=100)
    img, txt = embed_images(model, pixels), embed_captions(model, tokens)
    sim = img @ txt.T  # N x 108
    k = len(CONTENTS)
    plain, styled = sim.gather(1, contents[:, None])[:, 0], sim.gather(1, contents[:, None] + k)[:, 0]
    index = torch.arange(2 * k)
    pos_i2t = (index[None] % k == contents[:, None]) & ((index[None] < k) | inks[:, None])
    i2t = _multi_positive(scale * sim, pos_i2t)
    cap_content, cap_styled = assigned % k, assigned >= k
    pos_t2i = (cap_content[:, None] == contents[None]) & (~cap_styled[:, None] | inks[None])
    t2i = _multi_positive(scale * sim[:, assigned].T, pos_t2i)
    style = F.binary_cross_entropy_with_logits(scale * (styled - plain), inks.float())
    styled_content = F.cross_entropy(scale * sim[:, k:], contents)
    same = ((plain[1:4 * groups:4] - plain[0:4 * groups:4]) ** 2).mean()
    loss = 0.5 * (i2t + t2i) + style + 0.5 * styled_content + INVARIANCE * same
    return loss, {"i2t": i2t.item(), "t2i": t2i.item(), "style": style.item(), "same": same.item(),
                  "scale": scale.item()}


def _assign_captions(rng: np.random.Generator, contents: torch.Tensor, inks: torch.Tensor) -> torch.Tensor:
    """The caption each image is shown with: plain images their caption; inked ones the styled caption with
    probability 0.6, else the plain one."""
    styled = inks.numpy() & (rng.random(len(inks)) < 0.6)
    return contents + len(CONTENTS) * torch.from_numpy(styled).long()


@torch.no_grad()
def held_out_accuracy(model, tokens: dict, seed: int, per_content: int = 2) -> dict:
    """Accuracy on freshly drawn images (``seed``), plain and inked, blurred and noisy: the colour (argmax over the
    six colour captions, shape and background true), the shape (over three) and the style's sign (the styled
    caption above the plain one exactly when inked); and the mean cosine of each image with its plain caption,
    plain and inked (``fidelity_*``: close when ink does not count against prompt fidelity)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    items = [(k, ink) for k in CONTENTS for ink in (False, True) for _ in range(per_content)]
    x = torch.from_numpy(np.stack([_drawn(*k, int(rng.integers(2**31)), 1.0 if ink else 0.0) for k, ink in items]))
    x = gaussian_blur(x.permute(0, 3, 1, 2).contiguous(), torch.full((len(items),), 1.0))
    x = (x + torch.randn(x.shape, generator=gen) * 0.04).clamp(0, 1)
    model.eval()
    sim = embed_images(model, x) @ embed_captions(model, tokens).T
    colour = shape = style = 0
    fidelity = {False: [], True: []}
    for i, ((c, s, b), ink) in enumerate(items):
        fidelity[ink].append(float(sim[i, _INDEX[(c, s, b)]]))
        by_colour = {name: float(sim[i, _INDEX[(name, s, b)]]) for name in COLOURS}
        by_shape = {name: float(sim[i, _INDEX[(c, name, b)]]) for name in SHAPES}
        colour += max(by_colour, key=by_colour.get) == c
        shape += max(by_shape, key=by_shape.get) == s
        style += (float(sim[i, _INDEX[(c, s, b)] + len(CONTENTS)] - sim[i, _INDEX[(c, s, b)]]) > 0) == ink
    n = len(items)
    return {"images": n, "colour": colour / n, "shape": shape / n, "style": style / n,
            "fidelity_plain": round(float(np.mean(fidelity[False])), 3),
            "fidelity_ink": round(float(np.mean(fidelity[True])), 3)}


def caption_tokens(tokenizer) -> dict:
    """All 108 captions (``CAPTIONS``), tokenized and padded to the longest."""
    return tokenizer(CAPTIONS, padding=True, return_tensors="pt")


def train_clip(out: Path, seed: int = 0, steps: int = STEPS, quick: bool = False,
               base: Path = ASSETS_DIR / BASE_DIRNAME) -> dict:
    """Train the tiny CLIP and save it to ``out`` (``CLIPModel`` + ``CLIPProcessor``); returns the report."""
    out = Path(out)
    steps = QUICK_STEPS if quick else steps
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, not {steps}")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return _train(out, seed, steps, quick, Path(base))
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, seed: int, steps: int, quick: bool, base: Path) -> dict:
    start = time.time()
    groups, per_content = (QUICK_GROUPS, 1) if quick else (GROUPS, VAE_PER_CONTENT)
    # 1. The tokenizer, the model, the pool of drawings through the VAE, the optimiser.
    tokenizer = load_tokenizer(base)
    model = build_clip(tokenizer, seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    pool = vae_pool(load_vae(base), rng, gen, per_content)
    tokens = caption_tokens(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    # 2. Train: fresh hard-negative batches and some of the VAE's pool, all degraded.
    model.train()
    losses = []
    for step in range(steps):
        x, contents, inks = _draw_batch(rng, groups)
        pick = torch.randint(len(pool[0]), (min(VAE_PER_BATCH, 8 * groups),), generator=gen)
        x, contents, inks = (torch.cat([a, b[pick]]) for a, b in zip((x, contents, inks), pool, strict=True))
        x = degrade(x, gen)
        loss, parts = clip_loss(model, x, contents, inks, tokens, _assign_captions(rng, contents, inks),
                                groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    # 3. Measure on held-out drawings, then save the model and its processor.
    accuracy = held_out_accuracy(model, tokens, seed + 1000)
    save_clip(model, tokenizer, out)
    params = sum(p.numel() for p in model.parameters())
    return {"steps": steps, "seed": seed, "minutes": round((time.time() - start) / 60, 2),
            "final_loss": round(float(np.mean(losses[-20:])), 4), "parameters": params,
            "logit_scale": round(model.logit_scale.exp().item(), 2), "held_out": accuracy}


def save_clip(model, tokenizer, out: Path) -> Path:
    """``out`` as a folder ``measures.clip.load_clip`` opens: config, fp32 safetensors, processor and tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    build_processor(tokenizer).save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_trainer.clip_training", description=__doc__)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / CLIP_DIRNAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, as a smoke test")
    args = parser.parse_args(argv)
    print(json.dumps(train_clip(args.out, seed=args.seed, steps=args.steps, quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
