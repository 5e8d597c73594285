"""Weight space: the low-rank factors of LoRA files (read with safetensors, never a pickle), layer groups and kinds,
the per-file cache, and the curves of norms and changes across the epochs of one series.

Renders nothing and loads no model; the maths and the shape of what ``weight_curves`` returns are in
docs/measures.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lora_spectrum.adapters.weight_deltas import LayerDelta, group_factors, layer_delta
from lora_spectrum.errors import CatalogError, LoraSpectrumError
from lora_spectrum.loras.catalog import Catalog, LoraEntry, file_sha256
from lora_spectrum.loras.lora_keys import (
    DOWN_ROLES,
    LOHA_MARKS,
    LOKR_MARKS,
    MODULE_PREFIXES,
    ROLE_RE,
    TE_PREFIXES,
    key_format,
)
from lora_spectrum.measures.numbers import Progress, rounded

CACHE_VERSION = 2  # 2: LyCORIS layers measured, text-encoder layers left out


# ---------------------------------------------------------------------------------------------- reading factors
@dataclass
class LowRank:
    """One layer's update ``dW = up @ down`` with the alpha/rank scale already folded into ``up`` (float64 numpy)."""

    down: np.ndarray  # (rank, in_features * kernel)
    up: np.ndarray  # (out_features, rank)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class Dense:
    """One layer's update that is no plain low-rank product (LyCORIS LoHa, LoKr): its factors, made into ``dW``
    (float64 numpy, ``(out, in * kernel)``) only when a norm or inner product needs it, one layer at a time."""

    layer: LayerDelta

    def matrix(self) -> np.ndarray:
        w = self.layer.delta(None, "cpu").to(torch.float64)
        return w.reshape(w.shape[0], -1).numpy()


def read_lora_factors(path: str | Path) -> tuple[dict[str, LowRank | Dense], dict]:
    """Read a LoRA file's low-rank pairs (and LyCORIS layers) with ``safe_open``, denoiser layers only. Returns
    ``(factors, info)``; ``info`` holds ``format``, ``modules``, ``text_encoder_modules`` (left out: only the
    denoiser is ever loaded) and ``unsupported_keys``. Raises ``CatalogError`` when the file cannot be read."""
    path = Path(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unsupported = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            raw = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError) as exc:
        raise CatalogError(f"{path.name}: cannot read its tensors ({exc})") from exc
    factors: dict[str, LowRank | Dense] = {}
    text_encoder = {m for m in (k.rsplit(".", 2)[0] for k in keys) if m.startswith(TE_PREFIXES)}
    lycoris, _, _ = group_factors({k: v for k, v in raw.items() if k.endswith(LOHA_MARKS + LOKR_MARKS + (".alpha",))})
    for module, p in lycoris.items():  # LoHa and LoKr layers: their own maths (adapters/weight_deltas.py)
        if any(k.startswith(("hada_", "lokr_")) for k in p) and not module.startswith(TE_PREFIXES):
            try:
                factors[module] = Dense(layer_delta(str(path), module, dict(p)))
            except LoraSpectrumError:  # a factor missing: not measurable
                unsupported += len(p)
                factors.pop(module, None)
    for key, tensor in raw.items():
        m = ROLE_RE.match(key)
        if m and m["module"] in lycoris and any(k.startswith(("hada_", "lokr_")) for k in lycoris[m["module"]]):
            continue  # a LyCORIS layer's alpha, used (or counted) above
        if not m:
            unsupported += 0 if key.endswith(LOHA_MARKS + LOKR_MARKS) else 1
            continue
        if m["module"].startswith(TE_PREFIXES):
            continue
        role = "alpha" if m["alpha"] else ("down" if m["role"] in DOWN_ROLES else "up")
        parts.setdefault(m["module"], {})[role] = tensor
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
    return factors, {"format": key_format(keys), "modules": len(factors), "text_encoder_modules": len(text_encoder),
                     "unsupported_keys": unsupported}


def _dense(f: LowRank | Dense) -> np.ndarray:
    return f.matrix() if isinstance(f, Dense) else f.up @ f.down


def sq_norm(f: LowRank | Dense) -> float:
    """``||up @ down||_F^2`` from two rank x rank matrices (a LyCORIS layer: from its ``dW``)."""
    if isinstance(f, Dense):
        return float((f.matrix() ** 2).sum())
    return float(((f.up.T @ f.up) * (f.down @ f.down.T)).sum())


def inner(f: LowRank | Dense, g: LowRank | Dense) -> float | None:
    """``<up_f down_f, up_g down_g>_F`` from rank-sized matrices (through ``dW`` when either is a LyCORIS layer);
    None when the layer shapes differ."""
    if isinstance(f, Dense) or isinstance(g, Dense):
        a, b = _dense(f), _dense(g)
        return float((a * b).sum()) if a.shape == b.shape else None
    if f.down.shape[1] != g.down.shape[1] or f.up.shape[0] != g.up.shape[0]:
        return None
    return float(((f.up.T @ g.up) * (f.down @ g.down.T)).sum())


# ---------------------------------------------------------------------------------------------- layer groups
def _plain(module: str) -> str:
    name = module
    for prefix in MODULE_PREFIXES:
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
def _compare(n_a: float, n_b: float, ip: float) -> tuple[float | None, float | None]:
    """(relative change ||a - b|| / ||b||, cosine) from two squared norms and an inner product."""
    if n_a <= 0 or n_b <= 0:
        return None, None
    diff = math.sqrt(max(n_a + n_b - 2.0 * ip, 0.0))
    return diff / math.sqrt(n_b), max(-1.0, min(1.0, ip / math.sqrt(n_a * n_b)))


def _measures(sq: dict[str, float], sq_prev, ip_prev, sq_last, ip_last, modules) -> dict:
    """Norm and comparisons over a set of modules (the total, one group or one kind)."""
    n = sum(sq.get(m, 0.0) for m in modules)
    out = {"weight_norm": rounded(math.sqrt(n)), "relative_change": None, "cosine_to_previous": None,
           "cosine_to_last": None, "relative_change_to_last": None,
           "modules": sum(1 for m in modules if m in sq)}
    if sq_prev is not None:
        change, cos = _compare(n, sum(sq_prev.get(m, 0.0) for m in modules), sum(ip_prev.get(m, 0.0) for m in modules))
        out["relative_change"], out["cosine_to_previous"] = rounded(change), rounded(cos)
    if sq_last is not None:
        change, cos = _compare(n, sum(sq_last.get(m, 0.0) for m in modules), sum(ip_last.get(m, 0.0) for m in modules))
        out["relative_change_to_last"], out["cosine_to_last"] = rounded(change), rounded(cos)
    return out


def weight_curves(entries: list[LoraEntry], *, catalog: Catalog | None = None, cache: WeightCache | None = None,
                  progress: Progress | None = None) -> list[dict]:
    """Weight-space measures for ``entries`` (one series, in epoch order); the shape is in docs/measures.md."""
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
            rounded(row["relative_change"] / (entry.epoch - prev_epoch))
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
