"""Epoch measures: weight-space curves from the LoRA files, image measures over a rendered grid, the loss overlay and
a suggested epoch.

This module owns every number the Insight view and ``python -m lora_spectrum insight`` show. It reads tensors with
safetensors only (never a pickle), renders nothing, loads no diffusion model and never imports streamlit. Progress
goes out through an optional ``progress(done, total, label)`` callback. Every public function returns plain data
(dicts, lists, floats, None) that ``json.dumps`` accepts; a number that cannot be computed is ``None``, never NaN.

Weight space (no rendering). A LoRA layer adds ``dW = scale * up @ down`` with ``scale = alpha / rank`` (1 when
the file has no ``.alpha``). Key layouts read: kohya (``lora_unet_*``/``lora_te*`` with ``.lora_down``/``.lora_up``/
``.alpha``), musubi/ai-toolkit (``diffusion_model.*``), diffusers/peft (``.lora_A``/``.lora_B``, ``.lora.down``/
``.lora.up``). Norms and inner products are computed from rank-sized matrices, never the full ``dW``::

    ||B A||_F^2        = sum((B^T B) * (A A^T))
    <B1 A1, B2 A2>_F   = sum((B1^T B2) * (A1 A2^T))

LoHa/LoKr/DoRA-magnitude keys are not low-rank products of this kind; they are counted as ``unsupported_keys``.

Public functions:

``folder_insight(loras, series=None, logs=None, grid=None, *, cache=None, clip_model=None, use_clip=True,
allow_download=False, progress=None) -> dict``
    everything for one series of a loras folder (a path or a ``Catalog``)::

        {"series": str, "folder": str,
         "epochs": [{"epoch": int | None, "step": int | None, "file": str, "label": str, "sha256": str,
                     "weight_norm": float,                 # ||sum of dW||_F over all layers
                     "relative_change": float | None,      # ||dW_e - dW_prev|| / ||dW_prev||   (None first)
                     "relative_change_per_epoch": float | None,  # the same divided by the epochs between them,
                                                           # comparable when files were saved at uneven gaps
                     "cosine_to_previous": float | None,
                     "cosine_to_last": float | None, "relative_change_to_last": float | None,
                     "modules": int, "unsupported_keys": int,
                     "groups": {name: {"weight_norm", "relative_change", "cosine_to_previous",
                                       "cosine_to_last", "relative_change_to_last", "modules"}},
                     "kinds": {...same shape, by layer kind: attn1, attn2, attention, ff, modulation, other},
                     "image": None | {"measure", "strength", "distance_from_base", "seed_spread",
                                      "change_from_previous", "clip_score"},   # at the strength nearest 1.0
                     "epoch_loss": None | {tag: value}}],  # per-epoch loss tags of the log at this epoch
         "skipped": [{"file": str, "reason": str}],        # files of the series that are not ready
         "loss": None | training_log.read_loss(...) + {"markers": training_log.place_entries(...)},
         "image": None | image_measures(...),
         "suggested_epoch": int | None, "suggested_file": str | None,
         "reason": str,                                    # one sentence, starts with "Suggestion:"
         "suggestion": suggest_epoch(...)}                 # the rule and the numbers behind it

    Groups are positions in the denoiser: ``down``/``mid``/``up`` (UNet; kohya SGM names included),
    ``layers`` (DiT; split into early/middle/late thirds, e.g. ``layers 0-9``, when there are 6 or more),
    ``noise_refiner``, ``context_refiner``, ``text_encoder``, ``text_encoder_2``, ``other``.
``format_insight(result) -> str``
    the same as readable tables.
``weight_curves(entries, *, catalog=None, cache=None, progress=None) -> list[dict]``
    the ``epochs`` list above (without ``image``) for catalog entries given in epoch order.
``image_measures(grid, *, clip_model=None, use_clip=True, allow_download=False, progress=None) -> dict``
    measures over a grid folder's ``manifest.json`` (written by ``runs.write_outputs``)::

        {"grid": str, "measure": "pixel" | "clip",   # the measure behind distance_from_base, seed_spread, change
         "measure_description": str, "has_base": bool, "cells_used": int, "notes": [str],
         "clip": {"skipped": True, "reason": str} | {"skipped": False, "model": str},
         "text_alignment": {"skipped": True, "reason": str} | {"skipped": False, "model": str,
                                                               "score": "100 * max(cos(image, prompt), 0)"},
         "base": {"images": int, "clip_score": float | None},
         "rows": [{"epoch": int | None, "file": str, "label": str, "strength": float, "images": int,
                   "distance_from_base": float | None,   # mean over seeds/prompts of d(image, base same seed)
                   "seed_spread": float | None,          # std of those distances across seeds (0 = consistent)
                   "change_from_previous": float | None, # mean d(image, previous epoch same seed/strength)
                   "clip_score": float | None,
                   "pixel": {"distance_from_base", "dssim_from_base", "seed_spread", "change_from_previous"},
                   "per_image": [{"seed", "prompt", "image", "distance_from_base", "change_from_previous",
                                  "clip_score"}]}]}

    The pixel measure always works: mean absolute difference of 64x64 grayscale images in 0..1, and
    ``dssim_from_base = (1 - SSIM) / 2`` on the same images. The CLIP measure (``1 - cosine`` of image embeddings)
    and the text alignment are used only when a CLIP model is on this machine already (``local_files_only``;
    ``allow_download=True`` lets transformers fetch it once); ``clip_model`` is a model id or local folder, else
    ``$LORA_SPECTRUM_CLIP_MODEL``, else ``openai/clip-vit-base-patch32``, or the tuple ``load_clip`` returned (so a
    UI can keep one loaded model in ``st.cache_resource``). Without a model the CLIP parts say
    ``{"skipped": True, "reason": ...}`` and everything else still works.
``load_clip(model_id=None, allow_download=False) -> (model, processor, model_id)``
    raises ``ClipUnavailable`` (a ``LoraSpectrumError``) with the reason.
``suggest_epoch(epochs, image=None, loss=None, settled=0.05, near_last=0.10) -> dict``
    ``{"label": "suggestion", "epoch", "file", "rule", "reason", "numbers": {...}}``; the rules are in its docstring.
``read_lora_factors(path) -> (dict[str, LowRank], dict)`` and ``WeightCache(cache_dir=None)``
    the low-level reader and the sha256-keyed cache (in memory; small JSON files too when ``cache_dir`` is given).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lora_spectrum.catalog import READY, Catalog, LoraEntry, file_sha256
from lora_spectrum.errors import CatalogError, ClipUnavailable, ConfigError
from lora_spectrum.lora_keys import key_format

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MODEL_ENV = "LORA_SPECTRUM_CLIP_MODEL"
SETTLED_CHANGE = 0.05  # relative change to the previous epoch below which the weights count as settled
NEAR_LAST = 0.10  # relative distance to the last epoch within which an epoch counts as "nearly there"
VALIDATION_TAG = "loss/validation/epoch_average"
VALIDATION_RISE = 0.05  # a validation loss this much above its minimum means the later epochs overfit
PIXEL_SIZE = 64
CACHE_VERSION = 1
Progress = Callable[[int, int, str], None]

_ROLE_RE = re.compile(
    r"^(?P<module>.+?)\.(?:(?P<role>lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)(?:\.[\w-]+)?\.weight"
    r"|(?P<alpha>alpha))$"
)
_DOWN_ROLES = ("lora_down", "lora_A", "lora.down")
_STRIP_PREFIXES = ("lora_unet_", "lora_transformer_", "base_model.model.", "unet.", "transformer.",
                   "diffusion_model.", "model.diffusion_model.")  # fmt: skip


# ---------------------------------------------------------------------------------------------- reading factors
@dataclass
class LowRank:
    """One layer's update ``dW = up @ down`` with the alpha/rank scale already folded into ``up`` (float64 numpy)."""

    down: np.ndarray  # (rank, in_features * kernel)
    up: np.ndarray  # (out_features, rank)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def read_lora_factors(path: str | Path) -> tuple[dict[str, LowRank], dict]:
    """Read a LoRA file's low-rank pairs with ``safe_open``. Returns ``(factors, info)``; ``info`` holds
    ``format``, ``modules`` and ``unsupported_keys``. Raises ``CatalogError`` when the file cannot be read."""
    path = Path(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            for key in keys:
                m = _ROLE_RE.match(key)
                if not m:
                    unsupported += 1
                    continue
                role = "alpha" if m["alpha"] else ("down" if m["role"] in _DOWN_ROLES else "up")
                parts.setdefault(m["module"], {})[role] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise CatalogError(f"{path.name}: cannot read its tensors ({exc})") from exc

    factors: dict[str, LowRank] = {}
    for module, p in parts.items():
        if "down" not in p or "up" not in p:
            unsupported += len(p)
            continue
        # numpy, not torch, for the small products below: torch's thread pool costs more than the maths here.
        down = p["down"].to(torch.float64).reshape(p["down"].shape[0], -1).numpy()
        up = p["up"].to(torch.float64).reshape(p["up"].shape[0], -1).numpy()
        if up.shape[1] != down.shape[0]:  # e.g. a Tucker ``lora_mid`` layout: not a plain product
            unsupported += len(p)
            continue
        rank = down.shape[0]
        scale = float(p["alpha"].to(torch.float64).reshape(-1)[0]) / rank if "alpha" in p else 1.0
        factors[module] = LowRank(down=down, up=up * scale)
    return factors, {"format": key_format(keys), "modules": len(factors), "unsupported_keys": unsupported}


def sq_norm(f: LowRank) -> float:
    """``||up @ down||_F^2`` from two rank x rank matrices."""
    return float(((f.up.T @ f.up) * (f.down @ f.down.T)).sum())


def inner(f: LowRank, g: LowRank) -> float | None:
    """``<up_f down_f, up_g down_g>_F`` from rank-sized matrices; None when the layer shapes differ."""
    if f.down.shape[1] != g.down.shape[1] or f.up.shape[0] != g.up.shape[0]:
        return None
    return float(((f.up.T @ g.up) * (f.down @ g.down.T)).sum())


# ---------------------------------------------------------------------------------------------- layer groups
def _plain(module: str) -> str:
    name = module
    for prefix in _STRIP_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace(".", "_")


def _layer_index(module: str) -> int | None:
    m = re.match(r"^layers_(\d+)_", _plain(module))
    return int(m[1]) if m else None


def layer_group(module: str, n_layers: int | None = None) -> str:
    """Where a layer sits: down/mid/up (UNet), layers[ a-b]/noise_refiner/context_refiner (DiT), text encoders."""
    if module.startswith(("lora_te2_", "text_encoder_2.", "te2.")):
        return "text_encoder_2"
    if module.startswith(("lora_te", "text_encoder", "te1.", "te.")):
        return "text_encoder"
    name = _plain(module)
    if name.startswith(("down_blocks", "input_blocks")):
        return "down"
    if name.startswith(("mid_block", "middle_block")):
        return "mid"
    if name.startswith(("up_blocks", "output_blocks")):
        return "up"
    index = _layer_index(module)
    if index is not None:
        if not n_layers or n_layers < 6:
            return "layers"
        third = math.ceil(n_layers / 3)
        lo = (index // third) * third
        return f"layers {lo}-{min(lo + third, n_layers) - 1}"
    for name_prefix in ("noise_refiner", "context_refiner", "double_blocks", "single_blocks", "transformer_blocks"):
        if name.startswith(name_prefix):
            return name_prefix
    return "other"


def layer_kind(module: str) -> str:
    """What a layer does: attn1 (self-attention), attn2 (cross-attention), attention (DiT), ff, modulation, other."""
    name = "_" + _plain(module) + "_"
    for token, kind in (("_attn1_", "attn1"), ("_attn2_", "attn2"), ("_attention_", "attention"),
                        ("_attn_", "attention"), ("_self_attn_", "attention"), ("_ff_", "ff"),
                        ("_feed_forward_", "ff"), ("_mlp_", "ff"), ("adaLN", "modulation")):
        if token in name:
            return kind
    return "other"


# ---------------------------------------------------------------------------------------------- cache
class WeightCache:
    """Per-file squared norms and per-pair inner products, keyed by file sha256. In memory; also as small JSON
    files under ``cache_dir`` when given (safe to delete at any time). Thread-safe; share one across sessions."""

    def __init__(self, cache_dir: str | Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._memory: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _file(self, key: str) -> Path | None:
        return self.cache_dir / f"{key}.json" if self.cache_dir else None

    def get(self, key: str) -> dict | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        path = self._file(key)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None  # a damaged cache file is recomputed and rewritten
        if not isinstance(record, dict) or record.get("version") != CACHE_VERSION:
            return None
        with self._lock:
            self._memory[key] = record
        return record

    def put(self, key: str, record: dict) -> None:
        record = {"version": CACHE_VERSION, **record}
        with self._lock:
            self._memory[key] = record
        path = self._file(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, path)

    @staticmethod
    def pair_key(sha_a: str, sha_b: str) -> str:
        a, b = sorted((sha_a, sha_b))
        return f"pair-{a}-{b}"


# ---------------------------------------------------------------------------------------------- weight curves
def _num(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _compare(n_a: float, n_b: float, ip: float) -> tuple[float | None, float | None]:
    """(relative change ||a - b|| / ||b||, cosine) from two squared norms and an inner product."""
    if n_a <= 0 or n_b <= 0:
        return None, None
    diff = math.sqrt(max(n_a + n_b - 2.0 * ip, 0.0))
    return diff / math.sqrt(n_b), max(-1.0, min(1.0, ip / math.sqrt(n_a * n_b)))


def _measures(sq: dict[str, float], sq_prev, ip_prev, sq_last, ip_last, modules) -> dict:
    """Norm and comparisons over a set of modules (the total, one group or one kind)."""
    n = sum(sq.get(m, 0.0) for m in modules)
    out = {"weight_norm": _num(math.sqrt(n)), "relative_change": None, "cosine_to_previous": None,
           "cosine_to_last": None, "relative_change_to_last": None,
           "modules": sum(1 for m in modules if m in sq)}
    if sq_prev is not None:
        change, cos = _compare(n, sum(sq_prev.get(m, 0.0) for m in modules), sum(ip_prev.get(m, 0.0) for m in modules))
        out["relative_change"], out["cosine_to_previous"] = _num(change), _num(cos)
    if sq_last is not None:
        change, cos = _compare(n, sum(sq_last.get(m, 0.0) for m in modules), sum(ip_last.get(m, 0.0) for m in modules))
        out["relative_change_to_last"], out["cosine_to_last"] = _num(change), _num(cos)
    return out


def weight_curves(entries: list[LoraEntry], *, catalog: Catalog | None = None, cache: WeightCache | None = None,
                  progress: Progress | None = None) -> list[dict]:
    """Weight-space measures for ``entries`` (one series, in epoch order); see the module docstring."""
    cache = cache or WeightCache()
    n = len(entries)
    if n == 0:
        return []

    # 1. Hash every file: the cache key.
    shas = [catalog.sha256(e) if catalog is not None else file_sha256(e.path) for e in entries]

    # 2. Read factors lazily; at most the current, previous and last file are held at once.
    held: dict[int, dict[str, LowRank]] = {}

    def factors(i: int) -> dict[str, LowRank]:
        if i not in held:
            held[i] = read_lora_factors(entries[i].path)[0]
        return held[i]

    def file_record(i: int) -> dict:
        record = cache.get(shas[i])
        if record is None:
            fs, info = read_lora_factors(entries[i].path)
            held[i] = fs
            record = {"sq_norms": {m: sq_norm(f) for m, f in fs.items()}, **info}
            cache.put(shas[i], record)
        return record

    def pair_record(i: int, j: int) -> dict[str, float]:
        key = WeightCache.pair_key(shas[i], shas[j])
        record = cache.get(key)
        if record is None:
            fi, fj = factors(i), factors(j)
            products = {m: inner(fi[m], fj[m]) for m in fi.keys() & fj.keys()}
            record = {"inner": {m: v for m, v in products.items() if v is not None}}
            cache.put(key, record)
        return record["inner"]

    # 3. Per epoch: norms, then comparisons with the previous and the last epoch.
    last = n - 1
    records = [None] * n
    last_record = file_record(last)
    layers = [i for m in last_record["sq_norms"] if (i := _layer_index(m)) is not None]
    n_layers = max(layers) + 1 if layers else None
    out = []
    for i, entry in enumerate(entries):
        if progress:
            progress(i, n, entry.name)
        records[i] = file_record(i)
        sq = records[i]["sq_norms"]
        sq_prev = records[i - 1]["sq_norms"] if i > 0 else None
        ip_prev = pair_record(i - 1, i) if i > 0 else None
        ip_last = pair_record(i, last) if i != last else sq
        modules = set(sq) | (set(sq_prev) if sq_prev else set()) | set(last_record["sq_norms"])
        groups: dict[str, set[str]] = {}
        kinds: dict[str, set[str]] = {}
        for m in modules:
            groups.setdefault(layer_group(m, n_layers), set()).add(m)
            kinds.setdefault(layer_kind(m), set()).add(m)
        total = _measures(sq, sq_prev, ip_prev, last_record["sq_norms"], ip_last, modules)
        row = {"epoch": entry.epoch, "step": entry.step, "file": entry.name, "label": entry.label,
               "sha256": shas[i], **total, "unsupported_keys": records[i].get("unsupported_keys", 0),
               "groups": {g: _measures(sq, sq_prev, ip_prev, last_record["sq_norms"], ip_last, ms)
                          for g, ms in sorted(groups.items(), key=lambda kv: _group_order(kv[0]))},
               "kinds": {k: _measures(sq, sq_prev, ip_prev, last_record["sq_norms"], ip_last, ms)
                         for k, ms in sorted(kinds.items())}}
        prev_epoch = entries[i - 1].epoch if i > 0 else None
        row["relative_change_per_epoch"] = (
            _num(row["relative_change"] / (entry.epoch - prev_epoch))
            if row["relative_change"] is not None and entry.epoch is not None and prev_epoch is not None
            and entry.epoch > prev_epoch else None
        )
        out.append(row)
        for k in list(held):  # 4. Free what the next step no longer needs.
            if k not in (i, last):
                del held[k]
    if progress:
        progress(n, n, "weights done")
    return out


def _group_order(name: str):
    order = ["text_encoder", "text_encoder_2", "down", "mid", "up", "context_refiner", "noise_refiner", "layers"]
    base = name.split(" ")[0]
    first = int(name.split(" ")[1].split("-")[0]) if " " in name else 0
    return (order.index(base) if base in order else len(order), first, name)


# ---------------------------------------------------------------------------------------------- image measures
def _gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        g = im.convert("L").resize((PIXEL_SIZE, PIXEL_SIZE), Image.Resampling.BOX)
    return np.asarray(g, dtype=np.float64) / 255.0


def pixel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two grayscale arrays in 0..1."""
    return float(np.abs(a - b).mean())


def dssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """``(1 - SSIM) / 2`` with uniform ``window`` x ``window`` windows (data range 1): 0 same, 1 opposite."""
    from numpy.lib.stride_tricks import sliding_window_view

    c1, c2 = 0.01**2, 0.03**2
    wa, wb = sliding_window_view(a, (window, window)), sliding_window_view(b, (window, window))
    mu_a, mu_b = wa.mean(axis=(-2, -1)), wb.mean(axis=(-2, -1))
    var_a, var_b = wa.var(axis=(-2, -1)), wb.var(axis=(-2, -1))
    cov = (wa * wb).mean(axis=(-2, -1)) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float((1.0 - ssim.mean()) / 2.0)


def load_clip(model_id: str | None = None, allow_download: bool = False):
    """``(model, processor, model_id)``, from local files only unless ``allow_download``; raises
    ``ClipUnavailable`` with the reason."""
    model_id = model_id or os.environ.get(CLIP_MODEL_ENV) or DEFAULT_CLIP_MODEL
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as exc:
        raise ClipUnavailable(f"transformers is not installed ({exc})") from exc
    try:
        model = CLIPModel.from_pretrained(model_id, local_files_only=not allow_download, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(model_id, local_files_only=not allow_download)
    except OSError as exc:  # not in the local cache (or, when downloading, not reachable)
        where = "could not be downloaded" if allow_download else "is not on this machine (no download attempted)"
        raise ClipUnavailable(f"CLIP model {model_id!r} {where}; fetch it once with `hf download {model_id}` or set "
                              f"${CLIP_MODEL_ENV} to a local folder holding a CLIP model") from exc
    except (ValueError, KeyError) as exc:
        raise ClipUnavailable(f"CLIP model {model_id!r} could not be loaded ({exc})") from exc
    model.eval()
    return model, processor, model_id


def _features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in older transformers and an output object with ``pooler_output`` in
    newer ones."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_embeddings(model, processor, images: list[Path], prompts: list[str], batch: int = 16):
    """Unit-length CLIP embeddings of ``images`` and ``prompts`` (two float64 numpy arrays)."""
    from PIL import Image

    img_out, txt_out = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            pics = []
            for p in images[start:start + batch]:
                with Image.open(p) as im:
                    pics.append(im.convert("RGB"))
            inputs = processor(images=pics, return_tensors="pt")
            img_out.append(_features(model.get_image_features(pixel_values=inputs["pixel_values"])))
        unique = sorted(set(prompts))
        for start in range(0, len(unique), batch):
            inputs = processor(text=unique[start:start + batch], return_tensors="pt", padding=True, truncation=True)
            txt_out.append(_features(model.get_text_features(input_ids=inputs["input_ids"],
                                                             attention_mask=inputs["attention_mask"])))
    img = torch.nn.functional.normalize(torch.cat(img_out).double(), dim=-1).numpy()
    txt = torch.nn.functional.normalize(torch.cat(txt_out).double(), dim=-1).numpy() if txt_out else None
    by_prompt = {p: txt[i] for i, p in enumerate(unique)} if txt is not None else {}
    return img, np.stack([by_prompt[p] for p in prompts]) if prompts else None


def read_manifest(grid: str | Path) -> tuple[Path, dict]:
    """The grid folder and its parsed ``manifest.json``; ``ConfigError`` naming the folder when it is missing."""
    folder = Path(grid)
    path = folder / "manifest.json" if folder.is_dir() or not folder.name.endswith(".json") else folder
    folder = path.parent
    if not path.is_file():
        raise ConfigError(f"{folder}: no manifest.json here; give --grid the output folder of a `grid` run")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable grid manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cells"), list):
        raise ConfigError(f"{path}: not a grid manifest (no 'cells' list)")
    return folder, manifest


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _std(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.std(values)) if len(values) >= 2 else None


def image_measures(grid: str | Path, *, clip_model: str | tuple | None = None, use_clip: bool = True,
                   allow_download: bool = False, progress: Progress | None = None) -> dict:
    """Image measures over a rendered grid; see the module docstring for the shape."""
    # 1. Read the manifest and keep the cells whose image exists inside the grid folder.
    folder, manifest = read_manifest(grid)
    root = folder.resolve()
    notes: list[str] = []
    cells = []
    for c in manifest["cells"]:
        if not isinstance(c, dict) or c.get("error") or not c.get("image"):
            continue
        path = (folder / str(c["image"])).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            notes.append(f"image {c['image']!r} is missing or outside the grid folder; left out")
            continue
        cells.append({**c, "path": path, "prompt": str(c.get("prompt") or ""), "seed": c.get("seed")})
    failed = sum(1 for c in manifest["cells"] if isinstance(c, dict) and c.get("error"))
    if failed:
        notes.append(f"{failed} cell(s) failed to render and are left out")
    if not cells:
        raise ConfigError(f"{folder}: the manifest lists no rendered images")

    # 2. Pixel arrays for every image.
    total = len(cells)
    for i, c in enumerate(cells):
        if progress:
            progress(i, total, Path(c["path"]).name)
        c["gray"] = _gray(c["path"])

    # 3. CLIP embeddings when a model is on this machine.
    clip: dict = {"skipped": True, "reason": "turned off (use_clip=False)"}
    if use_clip:
        try:
            loaded = clip_model if isinstance(clip_model, tuple) else load_clip(clip_model, allow_download)
            model, processor, model_id = loaded
            img, txt = clip_embeddings(model, processor, [c["path"] for c in cells], [c["prompt"] for c in cells])
            for i, c in enumerate(cells):
                c["emb"] = img[i]
                c["clip_score"] = 100.0 * max(float(img[i] @ txt[i]), 0.0) if c["prompt"] else None
            clip = {"skipped": False, "model": model_id}
        except ClipUnavailable as exc:
            clip = {"skipped": True, "reason": str(exc)}
    measure = "pixel" if clip["skipped"] else "clip"

    def dist(a: dict, b: dict) -> float:
        if measure == "clip":
            return 1.0 - float(a["emb"] @ b["emb"])
        return pixel_distance(a["gray"], b["gray"])

    # 4. Columns: the base (epoch null, no file) and one per (file, strength), in epoch order.
    base = {(c["prompt"], c["seed"]): c for c in cells if c.get("file") is None}
    if not base:
        notes.append("no base column in this grid, so no distance from base (render with --include-base)")
    columns: dict[tuple[str, float], list[dict]] = {}
    for c in cells:
        if c.get("file") is not None:
            columns.setdefault((c["file"], float(c.get("strength") or 0.0)), []).append(c)
    order = sorted(columns, key=lambda k: (columns[k][0].get("epoch") is None, columns[k][0].get("epoch") or 0))

    # 5. Per column: distance from base per seed, its spread, change from the previous epoch at the same strength.
    rows = []
    previous: dict[float, dict] = {}
    for key in order:
        file, strength = key
        group = columns[key]
        before = previous.get(strength)
        before_by_seed = {(c["prompt"], c["seed"]): c for c in before["cells"]} if before else {}
        per_image = []
        for c in group:
            b = base.get((c["prompt"], c["seed"]))
            p = before_by_seed.get((c["prompt"], c["seed"]))
            per_image.append({
                "seed": c["seed"], "prompt": c["prompt"], "image": c["image"],
                "distance_from_base": _num(dist(c, b)) if b else None,
                "change_from_previous": _num(dist(c, p)) if p else None,
                "clip_score": _num(c.get("clip_score")),
                "_pixel_base": pixel_distance(c["gray"], b["gray"]) if b else None,
                "_dssim_base": dssim(c["gray"], b["gray"]) if b else None,
                "_pixel_prev": pixel_distance(c["gray"], p["gray"]) if p else None,
            })
        row = {
            "epoch": group[0].get("epoch"), "file": file, "strength": strength, "images": len(group),
            "label": f"epoch {group[0]['epoch']}" if group[0].get("epoch") is not None else file,
            "distance_from_base": _num(_mean(x["distance_from_base"] for x in per_image)),
            "seed_spread": _num(_std(x["distance_from_base"] for x in per_image)),
            "change_from_previous": _num(_mean(x["change_from_previous"] for x in per_image)),
            "clip_score": _num(_mean(x["clip_score"] for x in per_image)),
            "pixel": {
                "distance_from_base": _num(_mean(x["_pixel_base"] for x in per_image)),
                "dssim_from_base": _num(_mean(x["_dssim_base"] for x in per_image)),
                "seed_spread": _num(_std(x["_pixel_base"] for x in per_image)),
                "change_from_previous": _num(_mean(x["_pixel_prev"] for x in per_image)),
            },
            "per_image": [{k: v for k, v in x.items() if not k.startswith("_")} for x in per_image],
        }
        rows.append(row)
        previous[strength] = {"cells": group}
    if progress:
        progress(total, total, "images done")

    description = ("1 - cosine similarity of CLIP image embeddings" if measure == "clip" else
                   f"mean absolute difference of {PIXEL_SIZE}x{PIXEL_SIZE} grayscale images (0..1)")
    alignment = ({"skipped": False, "model": clip["model"], "score": "100 * max(cos(image, prompt), 0)"}
                 if not clip["skipped"] else {"skipped": True, "reason": clip["reason"]})
    base_scores = [c.get("clip_score") for c in base.values()]
    return {
        "grid": str(folder), "measure": measure, "measure_description": description, "has_base": bool(base),
        "cells_used": len(cells), "notes": notes, "clip": clip, "text_alignment": alignment,
        "base": {"images": len(base), "clip_score": _num(_mean(base_scores))}, "rows": rows,
    }


def _image_row_for(image: dict | None, file: str) -> dict | None:
    """The image row of ``file`` at the strength nearest 1.0, in the short form attached to an epoch."""
    if not image:
        return None
    rows = [r for r in image["rows"] if r["file"] == file]
    if not rows:
        return None
    r = min(rows, key=lambda r: (abs(r["strength"] - 1.0), -r["strength"]))
    return {"measure": image["measure"], "strength": r["strength"], "distance_from_base": r["distance_from_base"],
            "seed_spread": r["seed_spread"], "change_from_previous": r["change_from_previous"],
            "clip_score": r["clip_score"]}


# ---------------------------------------------------------------------------------------------- suggestion
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _name(row: dict) -> str:
    return row["label"] if row.get("label") else (f"epoch {row['epoch']}" if row.get("epoch") is not None
                                                  else row["file"])


def suggest_epoch(epochs: list[dict], image: dict | None = None, loss: dict | None = None,
                  settled: float = SETTLED_CHANGE, near_last: float = NEAR_LAST) -> dict:
    """A suggested epoch from the weight curves, with a one-sentence reason and the numbers behind it.

    Rules, in order (``r_i`` is the relative change of epoch i to the epoch before it):
    1. One epoch: that one; there is nothing to compare.
    2. Settled: the earliest epoch after which every ``r_i`` stays below ``settled`` (5%): later epochs add little.
    3. Still moving, 3+ epochs: the earliest epoch within ``near_last`` (10%) of the last one
       (``relative_change_to_last``): nearly the end state, with less risk of over-training; compare it by eye.
    4. Otherwise the last epoch, the most trained one; the reason says that training had not settled.
    5. Then early stopping: when the log has a validation loss per epoch (kohya's
       ``loss/validation/epoch_average``) and it was lowest at an earlier epoch file than the pick, and the pick's
       is more than ``VALIDATION_RISE`` (5%) above that minimum, the later epochs are fitting the training set
       rather than the task: the epoch with the lowest validation loss is suggested instead, and the reason says
       what the weights alone would have picked.
    The image measures (distance from base, spread across seeds) and the training loss are quoted when known;
    they do not change the choice. It is a suggestion for where to look first, not a verdict.
    """
    out = {"label": "suggestion", "epoch": None, "file": None, "rule": None, "reason": "", "numbers": {}}
    if not epochs:
        out["reason"] = "Suggestion: none, no readable epoch file in this series."
        return out
    n = len(epochs)
    changes = [e["relative_change"] for e in epochs]

    # 1. Pick the epoch.
    if n == 1:
        pick, rule = 0, "only one epoch"
    else:
        pick, rule = None, None
        for k in range(n - 1):
            later = changes[k + 1:]
            if all(c is not None and c < settled for c in later):
                pick, rule = k, "settled"
                break
        if pick is None and n >= 3:
            for k in range(n - 1):
                d = epochs[k]["relative_change_to_last"]
                if d is not None and d <= near_last:
                    pick, rule = k, "near the last epoch"
                    break
        if pick is None:
            pick, rule = n - 1, "still moving"
    weights_pick = pick
    val = {int(s): v for s, v in (loss or {}).get("series", {}).get(VALIDATION_TAG, [])}
    files_val = [(k, val[e["epoch"]]) for k, e in enumerate(epochs) if e.get("epoch") in val]
    if files_val and epochs[pick].get("epoch") in val:
        best, best_v = min(files_val, key=lambda kv: (kv[1], kv[0]))
        if best < pick and best_v > 0 and val[epochs[pick]["epoch"]] > (1 + VALIDATION_RISE) * best_v:
            pick, rule = best, "validation loss"
    row = epochs[pick]
    last = epochs[-1]
    name = _name(row)
    norm_fraction = (row["weight_norm"] / last["weight_norm"]) if last["weight_norm"] else None
    later = [c for c in changes[pick + 1:] if c is not None]
    numbers = {
        "threshold_settled": settled, "threshold_near_last": near_last,
        "relative_change": row["relative_change"], "max_later_relative_change": _num(max(later)) if later else None,
        "last_relative_change": changes[-1] if n > 1 else None,
        "relative_change_to_last": row["relative_change_to_last"], "cosine_to_last": row["cosine_to_last"],
        "norm_fraction_of_last": _num(norm_fraction),
    }

    # 2. Say why, with the numbers.
    if rule == "validation loss":
        rise = val[epochs[weights_pick]["epoch"]] / val[row["epoch"]] - 1
        numbers.update({"validation_loss": _num(val[row["epoch"]]), "validation_rise_after": _num(rise),
                        "weights_rule_pick": epochs[weights_pick].get("epoch")})
        why = (f"{name}: the validation loss was lowest there ({val[row['epoch']]:.4g}) and is {_pct(rise)} higher "
               f"at {_name(epochs[weights_pick])}, which the weight curves alone would suggest; the later epochs "
               f"likely fit the training images more than the task")
    elif rule == "only one epoch":
        why = f"{name} is the only readable epoch of the series, so there is nothing to compare it with"
    elif rule == "settled":
        why = (f"{name}: every later epoch changed the weights by less than {_pct(settled)} from the one before "
               f"(at most {_pct(numbers['max_later_relative_change'])}), so training had settled there"
               if later else f"{name}: it changed the weights by less than {_pct(settled)} from the one before")
        if pick < n - 1:
            why += f"; its update is {_pct(norm_fraction)} of the last epoch's in size"
    elif rule == "near the last epoch":
        why = (f"{name}: the weights were still moving ({_pct(changes[-1])} between the last two epochs, above "
               f"{_pct(settled)}), and {name} is the earliest epoch within {_pct(near_last)} of the last one "
               f"({_pct(row['relative_change_to_last'])} away, {_pct(norm_fraction)} of its size, cosine "
               f"{row['cosine_to_last']:.3f}); compare it with {_name(last)} by eye")
    elif n == 2:
        why = (f"{name}: only two epochs, and they differ by {_pct(changes[-1])} (above {_pct(settled)}), so the "
               "later, more trained one; a weak suggestion")
    else:
        why = (f"{name}: the weights were still changing {_pct(changes[-1])} between the last two epochs and no "
               f"earlier epoch is within {_pct(near_last)} of the last, so the most trained one; training longer "
               "may still change the style")

    # 3. Quote the image and loss numbers where known.
    img = _image_row_for(image, row["file"])
    if img and img["distance_from_base"] is not None:
        numbers.update({"image_measure": img["measure"], "distance_from_base": img["distance_from_base"],
                        "seed_spread": img["seed_spread"]})
        why += (f"; its images are {img['distance_from_base']:.3g} from the base ({img['measure']} measure)"
                + (f" with a spread of {img['seed_spread']:.2g} across seeds" if img["seed_spread"] is not None
                   else ""))
    if loss and row.get("epoch") is not None and rule != "validation loss":
        for tag in (VALIDATION_TAG, "loss/epoch_average", "loss/epoch"):
            points = dict((int(s), v) for s, v in loss.get("series", {}).get(tag, []))
            if row["epoch"] in points:
                numbers["epoch_loss"] = {"tag": tag, "value": _num(points[row["epoch"]])}
                why += f"; {tag} there is {points[row['epoch']]:.4g}"
                break
    out.update({"epoch": row.get("epoch"), "file": row["file"], "rule": rule, "numbers": numbers,
                "reason": f"Suggestion: {why}."})
    return out


# ---------------------------------------------------------------------------------------------- one folder
def _epoch_loss(loss: dict | None, epoch: int | None) -> dict[str, float] | None:
    """``{tag: value}`` of the per-epoch loss tags at ``epoch`` (they use the epoch number as step)."""
    if not loss or epoch is None:
        return None
    found = {tag: v for tag in loss["per_epoch"] for s, v in loss["series"][tag] if s == epoch}
    return found or None


def folder_insight(loras: str | Path | Catalog, series: str | None = None, logs: str | Path | None = None,
                   grid: str | Path | None = None, *, cache: WeightCache | None = None,
                   clip_model: str | tuple | None = None, use_clip: bool = True, allow_download: bool = False,
                   progress: Progress | None = None, lenient: bool = False) -> dict:
    """Weight curves, loss curve, image measures and a suggestion for one series; see the module docstring."""
    from lora_spectrum import training_log

    # 1. The series' files, from the catalog.
    catalog = loras if isinstance(loras, Catalog) else Catalog(loras)
    catalog.scan()
    series, entries = catalog.choose_series(series)
    ready = [e for e in entries if e.state == READY]
    skipped = [{"file": e.name, "reason": f"{e.state}: {e.reason}"} for e in entries if e.state != READY]
    if not ready:
        raise CatalogError(f"{catalog.folder}: no readable file in series {series!r} "
                           f"({'; '.join(s['file'] + ' ' + s['reason'] for s in skipped)})")

    # 2. Weight-space curves.
    epochs = weight_curves(ready, catalog=catalog, cache=cache, progress=progress)

    # 3. The loss curve, with a marker per epoch file.
    # With ``lenient`` (the UI), an unusable log folder or grid is reported in ``notes`` instead of failing the
    # whole insight: the weight curves and the suggestion do not depend on them.
    loss, notes = None, []
    if logs:
        try:
            loss = training_log.read_loss(logs)
            loss["markers"] = training_log.place_entries(ready)
        except ConfigError as exc:
            if not lenient:
                raise
            loss, notes = None, [*notes, f"training log not used: {exc}"]
    for row in epochs:
        row["epoch_loss"] = _epoch_loss(loss, row["epoch"])

    # 4. Image measures from a rendered grid.
    image = None
    if grid:
        try:
            image = image_measures(grid, clip_model=clip_model, use_clip=use_clip, allow_download=allow_download,
                                   progress=progress)
        except ConfigError as exc:
            if not lenient:
                raise
            notes.append(f"image measures not available: {exc}")
    for row in epochs:
        row["image"] = _image_row_for(image, row["file"])

    # 5. The suggestion.
    suggestion = suggest_epoch(epochs, image=image, loss=loss)
    return {"series": series, "folder": str(catalog.folder), "epochs": epochs, "skipped": skipped, "loss": loss,
            "image": image, "notes": notes, "suggested_epoch": suggestion["epoch"], "suggested_file": suggestion["file"],
            "reason": suggestion["reason"], "suggestion": suggestion}


# ---------------------------------------------------------------------------------------------- text output
def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def format_insight(result: dict) -> str:
    """``folder_insight``'s result as readable tables, ending with the suggestion."""
    lines = [f"series {result['series']} in {result['folder']}: {len(result['epochs'])} epoch file(s)", ""]
    image = result.get("image")

    # 1. One row per epoch: weights, then images when a grid was given.
    head = ["epoch", "file", "norm", "change", "per epoch", "cos prev", "cos last", "to last"]
    loss_tags = list(dict.fromkeys(t for e in result["epochs"] for t in (e.get("epoch_loss") or {})))
    clip_scores = bool(image) and not image["text_alignment"]["skipped"]
    if image:
        head += ["img from base", "seed spread", "img change"] + (["clip score"] if clip_scores else [])
    head += loss_tags
    rows = [head]
    for e in result["epochs"]:
        row = [str(e["epoch"]) if e["epoch"] is not None else e["label"], e["file"], _fmt(e["weight_norm"]),
               _pct(e["relative_change"]) if e["relative_change"] is not None else "-",
               _pct(e.get("relative_change_per_epoch")) if e.get("relative_change_per_epoch") is not None else "-",
               _fmt(e["cosine_to_previous"], ".3f"), _fmt(e["cosine_to_last"], ".3f"),
               _pct(e["relative_change_to_last"])]
        if image:
            im = e.get("image") or {}
            row += [_fmt(im.get("distance_from_base"), ".3g"), _fmt(im.get("seed_spread"), ".2g"),
                    _fmt(im.get("change_from_previous"), ".3g")]
            row += [_fmt(im.get("clip_score"), ".1f")] if clip_scores else []
        row += [_fmt((e.get("epoch_loss") or {}).get(t)) for t in loss_tags]
        rows.append(row)
    lines += _table(rows)

    # 2. Norm per layer group.
    groups = list(dict.fromkeys(g for e in result["epochs"] for g in e["groups"]))
    if groups:
        lines += ["", "update norm per layer group:"]
        rows = [["epoch", *groups]]
        for e in result["epochs"]:
            rows.append([str(e["epoch"]) if e["epoch"] is not None else e["label"],
                         *[_fmt((e["groups"].get(g) or {}).get("weight_norm")) for g in groups]])
        lines += _table(rows)
    if result.get("skipped"):
        lines += [""] + [f"skipped {s['file']}: {s['reason']}" for s in result["skipped"]]

    # 3. Loss and image notes.
    loss = result.get("loss")
    if loss:
        lines += ["", f"loss from {loss['folder']} (run {loss['run'] or '.'}, {loss['event_files']} event file(s)):"]
        for tag, pts in loss["series"].items():
            if pts:
                lines.append(f"  {tag}: {len(pts)} points, steps {pts[0][0]}..{pts[-1][0]}, "
                             f"first {pts[0][1]:.4g}, last {pts[-1][1]:.4g}, min {min(v for _, v in pts):.4g}")
        if loss.get("note"):
            lines.append(f"  note: {loss['note']}")
    if image:
        lines += ["", f"image measure: {image['measure']} ({image['measure_description']}), "
                      f"{image['cells_used']} image(s) from {image['grid']}"]
        if image["clip"]["skipped"]:
            lines.append(f"  CLIP measures skipped: {image['clip']['reason']}")
        lines += [f"  note: {n}" for n in image["notes"]]
    lines += ["", result["reason"]]
    return "\n".join(lines)
