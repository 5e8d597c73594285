"""Everything written to an output folder - cell PNGs with A1111 ``parameters``, the labelled grid, the manifest -
and reading it back. Nothing here renders."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from lora_spectrum.errors import ConfigError
from lora_spectrum.loras.hashes import short_hash
from lora_spectrum.render.plan import Cell, Plan, cell_at, column_label, index_cells
from lora_spectrum.render.sampling import Sampling


# ---------------------------------------------------------------------------------------------- PNG parameters
def base_name(base_id: str) -> str:
    """The base as PNG parameters name it: a repo id as it is, a local folder or file by its name only (a shared
    image never tells where the base lives on this machine)."""
    path = Path(base_id).expanduser()
    if path.is_file():
        return path.stem
    return path.name if path.is_dir() else base_id


@functools.lru_cache(maxsize=4)
def base_hash(base_id: str) -> str | None:
    """A1111's ``Model hash`` of a single-file base (the first 10 hex digits of its sha256, computed once); None
    for diffusers folders and repo ids, which have no single file to hash."""
    path = Path(base_id).expanduser()
    if not path.is_file():
        return None
    from lora_spectrum.loras.catalog import file_sha256

    return file_sha256(path)[:10]


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if ("," in value or ":" in value or '"' in value) else value


# How a cell was rendered beyond its plan (``render_cache.PixelSettings.record()``), as PNG ``parameters`` keys.
RENDER_KEYS = (("dtype", "Dtype"), ("device", "Device"), ("threads", "Threads"), ("compiled", "Compiled"),
               ("fused", "Fused"), ("batch", "Batch size"), ("routed", "Routed"))


def parameters_text(cell: Cell, sampling: Sampling, model: str, model_hash: str | None = None,
                    how: dict | None = None, lora_hash: str | None = None) -> str:
    """A1111's ``parameters`` text: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs. ``model`` is
    the base's name (``base_name``), never a local path; ``how``: how the cell was rendered (``RENDER_KEYS``);
    ``lora_hash``: the LoRA's addnet hash (``hashes.addnet_hash``), written as A1111 does in ``Lora hashes`` (its
    first 12 digits; left out when not known: a hash of another kind would name no file A1111 or Civitai know)."""
    prompt = cell.prompt
    pairs = [("Steps", str(sampling.steps)), ("Sampler", sampling.sampler), ("CFG scale", f"{sampling.guidance:g}"),
             ("Seed", str(cell.seed)), ("Size", f"{sampling.width}x{sampling.height}"),
             ("Model hash", model_hash or ""), ("Model", model)]
    if cell.file is not None:
        name = Path(cell.file).name.removesuffix(".safetensors")
        prompt = f"{prompt} <lora:{name}:{cell.strength:g}>"
        pairs += [("Lora hashes", f"{name}: {short_hash(lora_hash)}" if lora_hash else ""), ("Lora", name),
                  ("Lora epoch", "" if cell.epoch is None else str(cell.epoch)),
                  ("Lora strength", f"{cell.strength:g}")]
    for field, key in RENDER_KEYS if how else ():
        value = how.get(field)
        if value is not None:
            pairs.append((key, ("yes" if value else "no") if isinstance(value, bool) else str(value)))
    lines = [prompt]
    if sampling.negative_prompt:
        lines.append(f"Negative prompt: {sampling.negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs if v != ""))
    return "\n".join(lines)


_PAIR_RE = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Parse an A1111 ``parameters`` text back into ``{"prompt", "negative_prompt", <Key>: value, ...}``."""
    lines = text.split("\n")
    last = lines[-1] if len(lines) > 1 else ""
    body = lines[:-1] if last else lines
    out: dict = {"negative_prompt": ""}
    prompt_lines = []
    for i, line in enumerate(body):
        if line.startswith("Negative prompt:"):
            out["negative_prompt"] = "\n".join([line[len("Negative prompt:"):].strip(), *body[i + 1:]])
            break
        prompt_lines.append(line)
    out["prompt"] = "\n".join(prompt_lines)
    for m in _PAIR_RE.finditer(last):
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"'):
            value = json.loads(value)
        out[key] = value
    return out


def render_settings(png: bytes | None) -> dict | None:
    """How a cell was rendered, read back from its PNG's ``parameters`` (``RENDER_KEYS``); None when it has none."""
    if png is None:
        return None
    try:
        text = Image.open(io.BytesIO(png)).info.get("parameters")
    except (OSError, ValueError):
        return None
    params = parse_parameters(text) if isinstance(text, str) else {}
    out: dict = {}
    for field, key in RENDER_KEYS:
        value = params.get(key)
        if value is None:
            continue
        out[field] = value == "yes" if value in ("yes", "no") else int(value) if value.isdigit() else value
    if not out:
        return None
    out.setdefault("threads", None)
    return out


def encode_png(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- files
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def compose_grid(plan: Plan, cells: list[Cell], min_cell: int = 160) -> Image.Image:
    """A labelled grid: a title line with the prompt, one column per epoch (or ``base``), one row per
    (prompt, seed, strength). Failed cells are grey with their error."""
    scale = max(1, math.ceil(min_cell / max(plan.sampling.width, plan.sampling.height)))
    cw, ch = plan.sampling.width * scale, plan.sampling.height * scale
    font, small = _font(14), _font(11)
    head, left, title_h, pad = 24, 130, 28, 4
    rows = plan.rows
    grid = Image.new("RGB", (left + len(plan.columns) * (cw + pad), title_h + head + len(rows) * (ch + pad)), "white")
    draw = ImageDraw.Draw(grid)
    title = plan.prompts[0] if len(plan.prompts) == 1 else f"{len(plan.prompts)} prompts"
    draw.text((pad, 6), title[:200], fill="black", font=font)
    for ci, entry in enumerate(plan.columns):
        draw.text((left + ci * (cw + pad) + 4, title_h + 4), column_label(entry), fill="black", font=font)
    index = index_cells(cells)
    for ri, (prompt, seed, strength) in enumerate(rows):
        y = title_h + head + ri * (ch + pad)
        row_label = f"seed {seed}\nstrength {strength:g}"
        if len(plan.prompts) > 1:
            row_label += f"\n{prompt[:18]}"
        draw.multiline_text((pad, y + 4), row_label, fill="black", font=small)
        for ci, entry in enumerate(plan.columns):
            x = left + ci * (cw + pad)
            c = cell_at(index, ci, entry, prompt, seed, strength)
            if c is not None and c.image is not None:
                grid.paste(c.image.resize((cw, ch), Image.NEAREST), (x, y))
            else:
                draw.rectangle((x, y, x + cw - 1, y + ch - 1), fill=(200, 200, 200))
                msg = (c.error if c is not None and c.error else "not rendered")[:120]
                words, line, lines = msg.split(), "", []
                for w in words:
                    if len(line) + len(w) > max(10, cw // 7):
                        lines.append(line)
                        line = ""
                    line = f"{line} {w}".strip()
                lines.append(line)
                draw.multiline_text((x + 4, y + 4), "\n".join(lines[:8]), fill=(120, 0, 0), font=small)
    return grid


def cell_filename(cell: Cell) -> str:
    """The cell's PNG name: unique per (file, seed, strength, prompt), the same in every run, at most ~170 bytes.

    A file name that had to be changed (spaces, punctuation) or shortened gets a digest of the real name, so that
    ``a b_1`` and ``a_b_1`` do not overwrite each other, and a 250-byte LoRA name still fits a file system's
    255-byte limit.
    """
    if cell.file is None:
        stem = "base"
    else:
        name = cell.file.removesuffix(".safetensors")
        stem = re.sub(r"[^\w.-]+", "_", name).encode("utf-8")[:100].decode("utf-8", errors="ignore")
        if stem != name:
            stem += "-" + hashlib.sha256(cell.file.encode("utf-8")).hexdigest()[:8]
    prompt = hashlib.sha256(cell.prompt.encode("utf-8")).hexdigest()[:6]
    return f"{stem}_s{cell.seed}_w{cell.strength:g}_p{prompt}.png"


def write_outputs(out_dir: str | Path, plan: Plan, cells: list[Cell], base: str, family: str,
                  extra: dict | None = None) -> dict:
    """Write ``cells/*.png`` (with ``parameters``), ``grid.png`` and ``manifest.json`` (with the keys of ``extra``
    added); return the manifest."""
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for c in cells:
        if c.png is not None:
            name = cell_filename(c)
            (out / "cells" / name).write_bytes(c.png)
            c.image_path = f"cells/{name}"
    compose_grid(plan, cells).save(out / "grid.png")
    # Each cell as rendered: where, with what, and how (``render``: dtype, device, threads, compiled, fused, batch
    # size and routing, as its PNG says: a cached cell keeps the settings it was rendered with).
    records = [{**c.record(), "render": render_settings(c.png)} for c in cells]
    manifest = {"settings": plan.settings(base, family), "cells": records, **(extra or {})}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def output_files(out_dir: str | Path) -> dict[str, bytes]:
    """The downloads of an output folder: ``grid`` (PNG), ``manifest`` (JSON) and ``zip`` (the cells and the
    manifest), read once per render rather than on every rerun of a page."""
    out = Path(out_dir)
    manifest = (out / "manifest.json").read_bytes()
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        for png in sorted((out / "cells").glob("*.png")):
            zf.write(png, f"cells/{png.name}")
        zf.writestr("manifest.json", manifest)
    return {"grid": (out / "grid.png").read_bytes(), "manifest": manifest, "zip": zbuf.getvalue()}


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
