"""Comparison runs: plans (epochs x seeds x strengths x prompts), execution order, the result cache, the labelled
grid, PNG ``parameters`` and the manifest. The ``grid`` command and the Streamlit view share this module.

Nothing here imports streamlit: progress goes out through a callback, cancellation comes in through an Event.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from lora_spectrum.catalog import READY, Catalog, LoraEntry
from lora_spectrum.errors import Cancelled, LoraSpectrumError, PlanError

BASE_LABEL = "base"


@dataclass
class Plan:
    """What to render. ``columns`` holds catalog entries in display order; ``None`` is the base column."""

    columns: list[LoraEntry | None]
    seeds: list[int]
    strengths: list[float]
    prompts: list[str]
    negative_prompt: str
    steps: int
    guidance: float
    width: int
    height: int
    sampler: str
    size_factor: int = 8

    def validate(self) -> None:
        """Raise one ``PlanError`` naming the first bad value; called before anything renders."""
        if not self.columns:
            raise PlanError("choose at least one epoch (or the base column)")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise PlanError("a prompt is required")
        if not self.seeds:
            raise PlanError("give at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0 or s >= 2**63:
                raise PlanError(f"seed {s!r} must be a non-negative whole number")
        if not self.strengths:
            raise PlanError("give at least one strength")
        for s in self.strengths:
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise PlanError(f"strength {s!r} must be a finite number")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PlanError(f"steps must be at least 1, not {self.steps!r}")
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise PlanError(f"guidance must be a finite number >= 0, not {self.guidance!r}")
        for name, v in (("width", self.width), ("height", self.height)):
            if not isinstance(v, int) or v <= 0 or v % self.size_factor:
                raise PlanError(f"{name} {v!r} must be a positive multiple of {self.size_factor} for this model")
        for e in self.columns:
            if e is not None and e.state != READY:
                raise PlanError(f"{e.name} cannot be used: {e.state}, {e.reason}")

    @property
    def rows(self) -> list[tuple[str, int, float]]:
        """(prompt, seed, strength) for each grid row, in display order."""
        return [(p, s, st) for p in self.prompts for st in self.strengths for s in self.seeds]

    def settings(self, base: str, family: str) -> dict:
        return {"base": base, "family": family, "prompts": self.prompts, "prompt": self.prompts[0],
                "negative_prompt": self.negative_prompt, "seeds": self.seeds, "strengths": self.strengths,
                "steps": self.steps, "guidance": self.guidance, "width": self.width, "height": self.height,
                "sampler": self.sampler,
                "columns": [BASE_LABEL if e is None else e.name for e in self.columns]}


def make_plan(defaults, columns, seeds, strengths=(1.0,), prompts=("",), negative_prompt=None, steps=None,
              guidance=None, width=None, height=None, sampler=None) -> Plan:
    """A validated plan; unset values come from ``defaults`` (``Engine.defaults``)."""
    plan = Plan(
        columns=list(columns), seeds=list(seeds), strengths=[float(s) for s in strengths], prompts=list(prompts),
        negative_prompt=defaults.negative_prompt if negative_prompt is None else negative_prompt,
        steps=defaults.steps if steps is None else steps,
        guidance=float(defaults.guidance if guidance is None else guidance),
        width=defaults.width if width is None else width, height=defaults.height if height is None else height,
        sampler=sampler or defaults.sampler, size_factor=defaults.size_factor,
    )
    plan.validate()
    if plan.sampler not in defaults.samplers:
        raise PlanError(f"sampler {plan.sampler!r} is not offered for this model; choose {defaults.samplers}")
    return plan


@dataclass
class Cell:
    """One image of the grid and how it came to be."""

    column: int
    epoch: int | None
    file: str | None
    sha256: str | None
    seed: int
    strength: float
    prompt: str
    image: Image.Image | None = field(default=None, repr=False)
    png: bytes | None = field(default=None, repr=False)  # the PNG with its parameters chunk
    image_path: str | None = None
    seconds: float = 0.0
    swap_seconds: float | None = None
    cached: bool = False
    error: str | None = None
    label: str = ""  # the column's label: "base", "epoch 20", "step 1000" or the file name
    routed: bool = False  # rendered in one denoiser call with other columns or strengths (``run_plan``'s ``mix``)

    def record(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("image", "png", "image_path", "column")}
        out["image"] = self.image_path
        return out


# ---------------------------------------------------------------------------------------------- PNG parameters
def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if ("," in value or ":" in value or '"' in value) else value


def parameters_text(cell: Cell, plan: Plan, base: str) -> str:
    """A1111's ``parameters`` text: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs."""
    prompt = cell.prompt
    pairs = [("Steps", str(plan.steps)), ("Sampler", plan.sampler), ("CFG scale", f"{plan.guidance:g}"),
             ("Seed", str(cell.seed)), ("Size", f"{plan.width}x{plan.height}"), ("Model", base)]
    if cell.file is not None:
        name = Path(cell.file).name.removesuffix(".safetensors")
        prompt = f"{prompt} <lora:{name}:{cell.strength:g}>"
        pairs += [("Lora hashes", f"{name}: {(cell.sha256 or '')[:12]}"), ("Lora", name),
                  ("Lora epoch", "" if cell.epoch is None else str(cell.epoch)),
                  ("Lora strength", f"{cell.strength:g}")]
    lines = [prompt]
    if plan.negative_prompt:
        lines.append(f"Negative prompt: {plan.negative_prompt}")
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


def encode_png(image: Image.Image, parameters: str) -> bytes:
    info = PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- cache
class RenderCache:
    """Rendered cells keyed by everything that decides their pixels; bounded in size (oldest dropped first)."""

    def __init__(self, folder: str | Path, max_mb: float = 2048):
        self.folder = Path(folder)
        self.max_bytes = int(max_mb * 2**20)
        self._lock = threading.Lock()

    @staticmethod
    def key(engine, plan: Plan, cell: Cell) -> str:
        fields = {"base": engine.base_id, "family": engine.family.name, "dtype": str(engine.dtype),
                  "device": engine.device.type, "fused": engine.fuse, "lora_sha256": cell.sha256,
                  "strength": cell.strength if cell.file else None, "prompt": cell.prompt,
                  "negative": plan.negative_prompt, "seed": cell.seed, "steps": plan.steps,
                  "guidance": plan.guidance, "width": plan.width, "height": plan.height, "sampler": plan.sampler}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # recently used: kept longest
            return data
        except OSError:
            return None

    def put(self, key: str, png: bytes, prune: bool = True) -> bool:
        """Store one cell; False when the cache folder cannot be written (full disk, not a folder). The cache only
        saves time, so a failure here never costs the caller its render. ``prune=False`` leaves the size bound to
        a later ``prune()`` (a run stores all its cells, then prunes once: pruning lists the whole folder).

        Every session of the app has its own ``RenderCache`` on the one folder, so writers of the same key can
        meet: each writes its own temporary file, and pruning skips files another writer removed meanwhile.
        """
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with self._lock:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(png)
                os.replace(tmp, path)  # readers never see a half-written file
                if prune:
                    self._prune()
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                return False
        return True

    def prune(self) -> None:
        """Drop the least recently used cells until the folder is within its bound; never raises."""
        with self._lock, contextlib.suppress(OSError):
            self._prune()

    def _prune(self) -> None:
        files = []
        for p in self.folder.glob("*/*.png"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue  # removed by another session's prune
            files.append((st.st_mtime, st.st_size, p))
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size


# ---------------------------------------------------------------------------------------------- execution
Progress = Callable[[int, int, Cell], None]


def _column_cells(plan: Plan, ci: int, entry: LoraEntry | None, sha: str | None, error: str | None) -> list[Cell]:
    strengths = [0.0] if entry is None else plan.strengths  # strength does not apply to the base column
    return [Cell(ci, None if entry is None else entry.epoch, None if entry is None else entry.name, sha, seed,
                 strength, prompt, error=error, label=column_label(entry))
            for strength in strengths for prompt in plan.prompts for seed in plan.seeds]


def column_label(entry: LoraEntry | None) -> str:
    return BASE_LABEL if entry is None else entry.label


def index_cells(cells: list[Cell]) -> dict[tuple, Cell]:
    """Cells by grid position, for ``cell_at``."""
    return {(c.column, c.prompt, c.seed, c.strength): c for c in cells}


def cell_at(index: dict[tuple, Cell], ci: int, entry: LoraEntry | None, prompt: str, seed: int,
            strength: float) -> Cell | None:
    """The cell shown at column ``ci`` of row (prompt, seed, strength); the base column has one per seed."""
    return index.get((ci, prompt, seed, 0.0 if entry is None else strength))


def plan_cells(plan: Plan, catalog: Catalog | None = None) -> list[Cell]:
    """Cells in execution order: epoch-major (each column swapped in once), then strength, prompt, seed.

    A file that cannot be hashed (removed since the scan) gets its error on its own cells only.
    """
    cells: list[Cell] = []
    for ci, entry in enumerate(plan.columns):
        sha, error = None, None
        if entry is not None and catalog is not None:
            try:
                sha = catalog.sha256(entry)
            except LoraSpectrumError as exc:
                error = str(exc)
        cells += _column_cells(plan, ci, entry, sha, error)
    return cells


def run_plan(engine, plan: Plan, catalog: Catalog | None = None, cache: RenderCache | None = None,
             on_progress: Progress | None = None, cancel: threading.Event | None = None,
             on_step: Callable[[int, int, str], None] | None = None, mix: int = 1) -> list[Cell]:
    """Render every cell of ``plan``. A failing column is recorded cell by cell and the rest still renders.

    Seeds of one (column, strength, prompt) are rendered in one batched call; with ``mix`` > 1, up to ``mix``
    such groups of one prompt (epochs, strengths, the base) share one call, each sample routed to its own
    adapter (``Engine.render_routed``; memory grows with the batch). Cached cells are skipped. When ``cancel`` is
    set, rendering stops within a denoising step and the cells not done carry the error "cancelled".
    Raises ``BusyError`` when the engine already has its maximum of runs.
    """
    from lora_spectrum.engine import RenderRequest

    # 1. Cells in execution order.
    cells = plan_cells(plan, catalog)
    total, done, reported = len(cells), 0, set()

    def report(cell):
        nonlocal done
        done += 1
        reported.add(id(cell))
        if on_progress:
            on_progress(done, total, cell)

    # 2. Groups in execution order: one swap per (column, strength), one batched render per prompt; with ``mix``,
    #    the groups of each prompt are packed, in that order, into calls of up to ``mix`` groups.
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.column, c.strength, c.prompt), []).append(c)
    if mix > 1:
        jobs = []
        for prompt in dict.fromkeys(key[2] for key in groups):
            keys = [key for key in groups if key[2] == prompt]
            jobs += [keys[i:i + mix] for i in range(0, len(keys), mix)]
    else:
        jobs = [[key] for key in groups]
    cancelled = False
    with engine.admit():
        for job in jobs:
            if cancelled or (cancel is not None and cancel.is_set()):
                break
            # 3. Per group: the file checked, cached cells taken; what is left to render.
            todos = [(key, _pending(engine, plan, catalog, cache, key, groups[key], report)) for key in job]
            todos = [(key, todo) for key, todo in todos if todo]
            if not todos:
                continue
            prompt = job[0][2]
            req = RenderRequest(prompt, plan.negative_prompt, tuple(c.seed for c in todos[0][1]), plan.steps,
                                plan.guidance, plan.width, plan.height, plan.sampler)
            labels = " + ".join(column_label(plan.columns[key[0]]) for key, _ in todos)
            step = (lambda i, n, label=labels: on_step(i, n, label)) if on_step else None
            # 4. Render: one group as a swap and a batched call; several as one routed call.
            t0 = time.perf_counter()
            try:
                if len(todos) == 1:
                    (ci, strength, _), todo = todos[0]
                    entry = plan.columns[ci]
                    results = [engine.render(req, None if entry is None else entry.path, strength, cancel=cancel,
                                             on_step=step)]
                else:
                    routes = [(None if plan.columns[ci] is None else plan.columns[ci].path, strength,
                               tuple(c.seed for c in todo)) for (ci, strength, _), todo in todos]
                    results = engine.render_routed(req, routes, cancel=cancel, on_step=step)
            except Cancelled:
                break
            except LoraSpectrumError as exc:
                results = [exc] * len(todos)
            # 5. Each group's cells: its images, or its own error.
            per_image = (time.perf_counter() - t0) / sum(len(todo) for _, todo in todos)
            for (_, todo), result in zip(todos, results, strict=True):
                if isinstance(result, Cancelled):  # not rendered: these cells end as "cancelled" below
                    cancelled = True
                    continue
                for i, c in enumerate(todo):
                    if isinstance(result, Exception):
                        c.error = str(result)
                    else:
                        c.image, c.seconds, c.swap_seconds = result.images[i], per_image, result.swap.seconds
                        c.routed = result.swap.kind.startswith("routed")
                        c.png = encode_png(c.image, parameters_text(c, plan, engine.base_id))
                        if cache:
                            cache.put(RenderCache.key(engine, plan, c), c.png, prune=False)
                    report(c)
    if cache:
        cache.prune()
    # 6. Every cell is reported once: those a cancel left unrendered (or never reached) as "cancelled".
    for c in cells:
        if c.image is None and c.error is None:
            c.error = "cancelled"
        if id(c) not in reported:
            report(c)
    return cells


def _pending(engine, plan: Plan, catalog: Catalog | None, cache: RenderCache | None, key: tuple,
             group: list[Cell], report) -> list[Cell]:
    """The cells of one (column, strength, prompt) group still to render; the others are reported done.

    The file must still be the one the scan read (label, epoch and hash come from it): one removed, replaced or
    broken since fails its own cells with the cause, and a symlink is never followed out of the folder. Checked
    before the cache too, so that no cached image is shown under a stale label.
    """
    entry = plan.columns[key[0]]
    problem = None
    if entry is not None and catalog is not None:
        try:
            catalog.verify(entry)
        except LoraSpectrumError as exc:
            problem = str(exc)
    todo = []
    for c in group:
        if c.error is None and problem is not None:
            c.error = problem
        if c.error:
            report(c)
            continue
        data = cache.get(RenderCache.key(engine, plan, c)) if cache else None
        if data is not None:
            c.png, c.image, c.cached = data, Image.open(io.BytesIO(data)).convert("RGB"), True
            report(c)
        else:
            todo.append(c)
    return todo


# ---------------------------------------------------------------------------------------------- files
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def compose_grid(plan: Plan, cells: list[Cell], min_cell: int = 160) -> Image.Image:
    """A labelled grid: a title line with the prompt, one column per epoch (or ``base``), one row per
    (prompt, seed, strength). Failed cells are grey with their error."""
    scale = max(1, math.ceil(min_cell / max(plan.width, plan.height)))
    cw, ch = plan.width * scale, plan.height * scale
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


def write_outputs(out_dir: str | Path, plan: Plan, cells: list[Cell], base: str, family: str) -> dict:
    """Write ``cells/*.png`` (with ``parameters``), ``grid.png`` and ``manifest.json``; return the manifest."""
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for c in cells:
        if c.png is not None:
            name = cell_filename(c)
            (out / "cells" / name).write_bytes(c.png)
            c.image_path = f"cells/{name}"
    compose_grid(plan, cells).save(out / "grid.png")
    manifest = {"settings": plan.settings(base, family), "cells": [c.record() for c in cells]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


# ---------------------------------------------------------------------------------------------- grid command
def select_columns(catalog: Catalog, series: str | None, epochs: str, include_base: bool) -> list:
    """Pick the series and epochs named on the command line; raise ``CatalogError`` (series) or ``PlanError``
    (epochs) listing the choices."""
    series, entries = catalog.choose_series(series, ready_only=True)
    if epochs != "all":
        try:
            wanted = [int(x) for x in epochs.split(",") if x.strip()]
        except ValueError as exc:
            raise PlanError(f"--epochs must be 'all' or comma-separated numbers, not {epochs!r}") from exc
        have = {e.epoch: e for e in entries}
        missing = [w for w in wanted if w not in have]
        if missing:
            raise PlanError(f"epoch(s) {missing} not in series {series!r}; it has "
                            f"{', '.join(str(e.epoch) for e in entries)}")
        entries = [have[w] for w in wanted]
    return ([None] if include_base else []) + entries


def grid_command(args, out, err) -> int:
    """``python -m lora_spectrum grid``: exit 0 all rendered, 1 some cells failed, 2 bad arguments/base."""
    from lora_spectrum.settings import load_settings
    from lora_spectrum.workbench import open_engine

    def fail(msg: str) -> int:
        print(f"lora-spectrum grid: {msg}", file=err)
        return 2

    try:
        # 1. Settings, then the command line on top.
        settings = load_settings(args.config)
        if args.base:
            settings.base = args.base
        if args.family:
            settings.family = args.family
        if args.device:
            settings.device = args.device
        if args.loras:  # paths typed on the command line are relative to the current folder
            settings.loras = str(Path(args.loras).resolve())
        if args.cache_dir:
            settings.cache_dir = str(Path(args.cache_dir).resolve())
        # 2. Check what is cheap to check before loading a base.
        for name in ("steps", "width", "height", "mix"):
            v = getattr(args, name)
            if v is not None and v < 1:
                return fail(f"--{name} must be at least 1")
        # 3. The base (or the demo with --base demo) and its loras folder.
        choice = open_engine(settings, allow_demo=settings.base == "demo", loras_given=bool(args.loras))
        engine = choice.engine
        catalog = choice.catalog()
        catalog.scan()
        columns = select_columns(catalog, args.series, args.epochs, args.include_base)
        plan = make_plan(engine.defaults, columns, args.seeds, args.strengths,
                         [args.prompt] if args.prompt is not None else [choice.prompt],
                         args.negative, args.steps, args.cfg, args.width, args.height, args.sampler)
    except LoraSpectrumError as exc:
        return fail(str(exc))
    cache = None if args.no_cache else RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)

    def progress(done, total, cell):
        state = "cached" if cell.cached else ("FAILED" if cell.error else f"{cell.seconds:.2f}s")
        print(f"[{done}/{total}] {cell.label} seed {cell.seed} strength {cell.strength:g}: {state}", file=err,
              flush=True)

    # 4. Render, write, report.
    cells = run_plan(engine, plan, catalog, cache, progress, mix=args.mix or settings.batch_epochs)
    manifest = write_outputs(args.out, plan, cells, engine.base_id, engine.family.name)
    _add_insight(args.out, manifest, catalog, columns)
    failed = [c for c in cells if c.error]
    for c in failed:
        print(f"{c.label} seed {c.seed}: {c.error}", file=err)
    print(f"wrote {Path(args.out) / 'grid.png'} and {len(cells) - len(failed)} cell(s); {len(failed)} failed",
          file=out)
    return 1 if failed else 0


def _add_insight(out_dir, manifest: dict, catalog: Catalog, columns) -> None:
    """Add the epoch measures (weight and image curves, suggestion) to the written manifest."""
    from lora_spectrum import measures

    series = next((c.series for c in columns if c is not None), None)
    try:
        catalog.scan()  # the folder as it is now: files may have changed while the grid rendered
        manifest["insight"] = measures.series_insight(catalog, series=series, grid=out_dir)
    except LoraSpectrumError as exc:
        manifest["insight"] = {"error": str(exc)}
    path = Path(out_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
