"""CLIP for the image measures: loading a model from this machine (a download only when allowed) and unit-length
image and prompt embeddings. Raises ``ClipUnavailable`` with the reason; the caller falls back to pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lora_spectrum.errors import ClipUnavailable
from lora_spectrum.language import _

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MODEL_ENV = "LORA_SPECTRUM_CLIP_MODEL"


def load_clip(model_id: str | None = None, allow_download: bool = False):
    """``(model, processor, model_id)``, from local files only unless ``allow_download``; raises
    ``ClipUnavailable`` with the reason."""
    model_id = model_id or os.environ.get(CLIP_MODEL_ENV) or DEFAULT_CLIP_MODEL
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as exc:
        raise ClipUnavailable(_("transformers is not installed ({error})").format(error=exc)) from exc
    try:
        model = CLIPModel.from_pretrained(model_id, local_files_only=not allow_download, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(model_id, local_files_only=not allow_download)
    except OSError as exc:  # not in the local cache (or, when downloading, not reachable)
        where = (_("CLIP model {model} could not be downloaded") if allow_download
                 else _("CLIP model {model} is not on this machine (no download attempted)"))
        raise ClipUnavailable(where.format(model=repr(model_id)) + _("; fetch it once with {command} or set {variable} "
                              "to a local folder holding a CLIP model").format(
            command=f"`hf download {model_id}`", variable=f"${CLIP_MODEL_ENV}")) from exc
    except (ValueError, KeyError) as exc:
        raise ClipUnavailable(_("CLIP model {model} could not be loaded ({error})").format(model=repr(model_id),
                                                                                         error=exc)) from exc
    model.eval()
    return model, processor, model_id


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in older transformers and an output object with ``pooler_output`` in
    newer ones."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_embeddings(model, processor, images: list[Path], batch: int = 16) -> np.ndarray:
    """Unit-length CLIP embeddings of the images at ``images`` (float64, one row each)."""
    from PIL import Image

    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            pics = []
            for p in images[start:start + batch]:
                with Image.open(p) as im:
                    pics.append(im.convert("RGB"))
            inputs = processor(images=pics, return_tensors="pt")
            out.append(_features(model.get_image_features(pixel_values=inputs["pixel_values"])))
    return torch.nn.functional.normalize(torch.cat(out).double(), dim=-1).numpy()


def text_embeddings(model, processor, texts: list[str], batch: int = 16) -> dict[str, np.ndarray]:
    """Unit-length CLIP embeddings of each distinct text, by text."""
    unique = sorted(set(texts))
    out = []
    with torch.inference_mode():
        for start in range(0, len(unique), batch):
            inputs = processor(text=unique[start:start + batch], return_tensors="pt", padding=True, truncation=True)
            out.append(_features(model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs["attention_mask"])))
    if not out:
        return {}
    emb = torch.nn.functional.normalize(torch.cat(out).double(), dim=-1).numpy()
    return {t: emb[i] for i, t in enumerate(unique)}


def clip_embeddings(model, processor, images: list[Path], prompts: list[str], batch: int = 16):
    """Unit-length CLIP embeddings of ``images`` and, row for row, of ``prompts`` (two float64 numpy arrays)."""
    img = image_embeddings(model, processor, images, batch)
    by_text = text_embeddings(model, processor, prompts, batch)
    return img, np.stack([by_text[p] for p in prompts]) if prompts else None
