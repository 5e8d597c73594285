"""What a LoRA file's key names and header say: every key-format table, and the one safetensors header reader.

Pure functions over names and bytes: nothing here loads tensors into a model or imports torch.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.errors import HeaderError

HEADER_LIMIT = 100_000_000  # bytes of JSON header; safetensors refuses larger ones, and so do we

# Key prefixes as trainers write them (kohya's lora_te1_/lora_te2_, peft's text_encoder., OneTrainer's te1.).
TE_PREFIXES = ("lora_te", "text_encoder", "te1.", "te2.", "te.")
DENOISER_PREFIXES = ("lora_unet_", "unet.", "transformer.", "diffusion_model.", "lora_transformer_")
# Text-encoder keys after diffusers' converters (``text_encoder.``, ``text_encoder_2.``; kohya names left over).
CONVERTED_TE_PREFIXES = ("text_encoder", "lora_te")
# Prefixes stripped to reach a module path that names the same layer in every format (for measures).
MODULE_PREFIXES = ("lora_unet_", "lora_transformer_", "base_model.model.", "unet.", "transformer.",
                   "diffusion_model.", "model.diffusion_model.")  # fmt: skip
# ``<module>.<role>.weight`` (peft may put the adapter name before ``.weight``) or ``<module>.alpha``.
ROLE_RE = re.compile(
    r"^(?P<module>.+?)\.(?:(?P<role>lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)(?:\.[\w-]+)?\.weight"
    r"|(?P<alpha>alpha))$"
)
# peft's own factor names: ``<module>.lora_A.weight``, or with peft's adapter name, ``<module>.lora_A.default.weight``.
PEFT_FACTOR_RE = re.compile(r"^(?P<module>.+?)\.(?P<role>lora_[AB])(?:\.[\w-]+)?\.weight$")
DOWN_ROLES = ("lora_down", "lora_A", "lora.down")
DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")


# LyCORIS's own key suffixes (kohya ``network_module=lycoris.kohya``, musubi, ai-toolkit save them so).
LOHA_MARKS = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2")
LOKR_MARKS = (".lokr_w1", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
# Forms we name but do not load, with what they are.
UNSUPPORTED_MARKS = {".diff": "full weight differences", ".diff_b": "full weight differences",
                     ".oft_blocks": "OFT", ".oft_diag": "OFT", ".boft_R": "BOFT", ".on_input": "IA3",
                     ".a1.weight": "GLoRA", ".hada_w1": "LoHa without factors"}  # fmt: skip
SUPPORTED_ALGORITHMS = ("lora", "locon", "loha", "lokr", "dora")
# Rank-carrying factors: (suffix, which dimension is the rank).
RANK_FACTORS = ((".lora_down.weight", 0), (".lora_A.weight", 0), (".lora.down.weight", 0),
                (".lora_A.default.weight", 0), (".hada_w1_b", 0), (".lokr_w1_b", 0), (".lokr_w2_b", 0))  # fmt: skip


def is_dora_key(key: str) -> bool:
    return key.endswith(".dora_scale") or "lora_magnitude_vector" in key


def is_alpha_key(key: str) -> bool:
    return key.endswith(".alpha")


def is_text_encoder_key(key: str) -> bool:
    return key.startswith(TE_PREFIXES) and not is_alpha_key(key)


def is_denoiser_key(key: str) -> bool:
    """A denoiser tensor (never an alpha scalar): a known prefix, or a LoRA/LyCORIS factor with no prefix at all
    (DiffSynth-Studio saves ``layers.0.attention.to_q.lora_A.default.weight``)."""
    if is_alpha_key(key) or key.startswith(TE_PREFIXES):
        return False
    return key.startswith(DENOISER_PREFIXES) or bool(ROLE_RE.match(key)) or key.endswith(LOHA_MARKS + LOKR_MARKS) \
        or is_dora_key(key)


def peft_without_prefix(keys) -> bool:
    """Every key is a peft LoRA factor named after the denoiser's own modules, with no prefix saying which model:
    what ``peft.get_peft_model_state_dict`` writes for a bare UNet or transformer
    (``down_blocks.1.attentions.0...to_q.lora_A.weight``) and what DiffSynth-Studio saves, peft's adapter name kept
    (``layers.0.attention.to_q.lora_A.default.weight``). No alpha keys: peft's files carry none."""
    keys = list(keys)
    return bool(keys) and all(PEFT_FACTOR_RE.match(k) for k in keys) \
        and not any(k.startswith((*DENOISER_PREFIXES, *TE_PREFIXES, "base_model.")) for k in keys)


def with_model_prefix(key: str, prefix: str) -> str:
    """A key of a ``peft_without_prefix`` file as diffusers names it: ``<prefix>.<module>.lora_A.weight`` (the
    adapter name dropped). diffusers' model-level ``load_lora_adapter(sd, prefix=None)`` takes these files so."""
    m = PEFT_FACTOR_RE.match(key)
    return f"{prefix}.{m['module']}.{m['role']}.weight"


def rank_of(key: str, shape: list[int]) -> int | None:
    """The rank a factor's shape shows, for the factors that carry one; None for the others."""
    for suffix, dim in RANK_FACTORS:
        if key.endswith(suffix) and len(shape) > dim:
            return int(shape[dim])
    return None


def algorithm(keys: list[str], conv_factors: bool = False) -> tuple[str, str]:
    """(algorithm, why it is not supported or ""): lora, locon (``conv_factors``: a down factor with a kernel),
    loha, lokr, dora (DoRA magnitudes on any of them), or the name of an unsupported form with the reason."""
    for mark, what in UNSUPPORTED_MARKS.items():
        if any(k.endswith(mark) for k in keys):
            return "other", f"{what} ({mark} keys) are not supported; LoRA, LoCon, LoHa, LoKr and DoRA are"
    if any(is_dora_key(k) for k in keys):
        return "dora", ""
    if any(k.endswith(LOHA_MARKS) for k in keys):
        return "loha", ""
    if any(k.endswith(LOKR_MARKS) for k in keys):
        return "lokr", ""
    if not any(ROLE_RE.match(k) and not is_alpha_key(k) for k in keys):
        return "other", "no LoRA factors (lora_down/lora_up, lora_A/lora_B, hada_*, lokr_*) in the file"
    return ("locon" if conv_factors else "lora"), ""


def key_format(keys: list[str]) -> str:
    """Name the key layout of a LoRA file: kohya, musubi/ai-toolkit, diffusers/peft or unknown, with " DoRA" when
    it carries DoRA magnitudes (kohya DoRA files are refused at swap time: diffusers drops their magnitudes)."""
    if not keys:
        return "empty"
    if any(is_dora_key(k) for k in keys):
        return key_format([k for k in keys if not is_dora_key(k)]) + " DoRA"
    if all(k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "kohya"
    if any(k.startswith("diffusion_model.") for k in keys):
        return "musubi/ai-toolkit"
    if any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or ".lora_down." in k for k in keys):
        known = any(k.startswith(DENOISER_PREFIXES + TE_PREFIXES + MODULE_PREFIXES) for k in keys)
        return "diffusers/peft" if known else "diffsynth"
    return "unknown"


def family_hint(keys: list[str], meta: dict[str, str]) -> str | None:
    """The model family a file was made for, from its metadata or, failing that, its key names; None if unknown.
    Each family's marks are its own (``families/``); this asks the registry."""
    from lora_spectrum.bases.families import registry

    return registry.family_hint(keys, meta)


def looks_like_pickle(head: bytes) -> bool:
    """A zip archive (``torch.save`` since 1.6) or a pickle's PROTO opcode with a protocol number 2..5."""
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


@dataclass(frozen=True)
class Header:
    """A safetensors file's JSON header: the tensor table (``__metadata__`` taken out), and where data starts."""

    table: dict
    metadata: dict
    data_start: int  # byte offset of the data section
    data_end: int  # the largest end offset in the table, relative to ``data_start``


def read_header(path: str | Path, size: int) -> Header:
    """Read and check a safetensors header (8 bytes of length, then JSON: the documented format).

    Hand-written because safetensors' errors do not tell *incomplete* (a copy in progress, looked at again later)
    from *unreadable*, and because the adapters' fast path needs the byte offsets, which its Python API does not
    expose. Raises ``HeaderError`` (``incomplete`` set when more bytes may still come) naming the cause.
    """
    if size == 0:
        raise HeaderError("empty file (zero bytes); still being written, or the copy failed", incomplete=True)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if looks_like_pickle(head):
            raise HeaderError("a pickle/PyTorch file renamed to .safetensors; pickle files are never loaded")
        if size < 8:
            raise HeaderError(f"not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > HEADER_LIMIT:
            if n > 10 * HEADER_LIMIT:
                raise HeaderError("not a safetensors file (no valid header)")
            raise HeaderError(f"header too large ({n} bytes; safetensors allows at most {HEADER_LIMIT})")
        if 8 + n > size:
            raise HeaderError(f"header claims {n} bytes but the file has {size}; cut off or still being copied",
                              incomplete=True)
        raw = fh.read(n)
    if raw[:1] != b"{":
        raise HeaderError("not a safetensors file (header is not JSON)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError("corrupt header (not valid JSON)") from exc
    if not isinstance(header, dict):
        raise HeaderError("corrupt header (not a JSON object)")
    metadata = header.pop("__metadata__", None)
    # Malformed entries are left for safetensors itself to name when the file is opened.
    ends = [v.get("data_offsets", [0, 0]) for v in header.values() if isinstance(v, dict)]
    end = max((e[1] for e in ends if isinstance(e, list) and len(e) == 2 and isinstance(e[1], int)), default=0)
    if 8 + n + end > size:
        raise HeaderError(f"truncated: tensor data needs {8 + n + end} bytes, file has {size}", incomplete=True)
    return Header(header, metadata if isinstance(metadata, dict) else {}, 8 + n, end)
