"""What to render: a ``Plan`` (columns x prompts x seeds x strengths, one ``Sampling``), its cells, and the one
place where cells are grouped into swaps and batched calls. Nothing here renders or imports streamlit."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from PIL import Image

from lora_spectrum.errors import LoraSpectrumError, PlanError
from lora_spectrum.language import N_, _
from lora_spectrum.loras import epoch_names
from lora_spectrum.loras.catalog import READY, Catalog, LoraEntry
from lora_spectrum.render.sampling import Sampling

BASE_LABEL = N_("base")  # also a value: the base column's name in manifests and run records


@dataclass
class Plan:
    """What to render. ``columns`` holds catalog entries in display order; ``None`` is the base column."""

    columns: list[LoraEntry | None]
    seeds: list[int]
    strengths: list[float]
    prompts: list[str]
    sampling: Sampling
    size_factor: int = 8

    def validate(self, samplers: list[str] | None = None) -> None:
        """Raise one ``PlanError`` naming the first bad value; called before anything renders."""
        if not self.columns:
            raise PlanError(_("choose at least one epoch (or the base column)"))
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise PlanError(_("a prompt is required"))
        if not self.seeds:
            raise PlanError(_("give at least one seed"))
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0 or s >= 2**63:
                raise PlanError(_("seed {seed} must be a non-negative whole number").format(seed=repr(s)))
        if not self.strengths:
            raise PlanError(_("give at least one strength"))
        for s in self.strengths:
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise PlanError(_("strength {strength} must be a finite number").format(strength=repr(s)))
        self.sampling.validate(self.size_factor)
        for e in self.columns:
            if e is not None and e.state != READY:
                raise PlanError(_("{file} cannot be used: {state}, {reason}").format(file=e.name, state=_(e.state),
                                                                                       reason=e.reason))
        if samplers is not None:
            self.sampling.validate(self.size_factor, samplers)

    @property
    def rows(self) -> list[tuple[str, int, float]]:
        """(prompt, seed, strength) for each grid row, in display order."""
        return [(p, s, st) for p in self.prompts for st in self.strengths for s in self.seeds]

    def settings(self, base: str, family: str) -> dict:
        """The manifest's ``settings``: everything needed to render the same grid again."""
        s = self.sampling
        return {"base": base, "family": family, "prompts": self.prompts, "prompt": self.prompts[0],
                "negative_prompt": s.negative_prompt, "seeds": self.seeds, "strengths": self.strengths,
                "steps": s.steps, "guidance": s.guidance, "width": s.width, "height": s.height, "sampler": s.sampler,
                "columns": [BASE_LABEL if e is None else e.name for e in self.columns]}


def make_plan(defaults, columns, seeds, strengths=(1.0,), prompts=("",), sampling: Sampling | None = None) -> Plan:
    """A validated plan; ``sampling`` defaults to ``defaults.sampling`` (``Engine.defaults``, a ``FamilyDefaults``)."""
    plan = Plan(columns=list(columns), seeds=list(seeds), strengths=[float(s) for s in strengths],
                prompts=list(prompts), sampling=sampling or defaults.sampling, size_factor=defaults.size_factor)
    plan.validate(defaults.samplers)
    return plan


def select_columns(catalog: Catalog, series: str | None, epochs: str, include_base: bool,
                   family: str | None = None) -> tuple[list, list[tuple[str, str]]]:
    """The series and epochs named on the command line, among the files usable on a base of ``family``, and the
    files of that series left out, each with why. Raises ``CatalogError`` (series) or ``PlanError`` (epochs,
    naming a requested file that is unusable and why) listing the choices."""
    series, entries = catalog.choose_series(series, ready_only=True, family=family)
    unusable = {e.name: (e, e.problem(family)) for e in catalog.series().get(series, []) if e.problem(family)}
    skipped = [(name, f"{problem[0]}: {problem[1]}") for name, (_entry, problem) in unusable.items()]
    if epochs != "all":
        try:
            wanted = [int(x) for x in epochs.split(",") if x.strip()]
        except ValueError as exc:
            raise PlanError(_("--epochs must be 'all' or comma-separated numbers, not {epochs}").format(
                epochs=repr(epochs))) from exc
        have = {e.epoch: e for e in entries}
        for w in wanted:
            bad = next(((e, p) for e, p in unusable.values() if e.epoch == w), None)
            if w not in have and bad:
                raise PlanError(_("epoch {epoch} of series {series} is {file}, which cannot be used: {state}, "
                                  "{reason}").format(epoch=w, series=repr(series), file=bad[0].name,
                                                     state=_(bad[1][0]), reason=bad[1][1]))
        missing = [w for w in wanted if w not in have]
        if missing:
            raise PlanError(_("epoch(s) {missing} not in series {series}; it has {epochs}").format(
                missing=missing, series=repr(series), epochs=", ".join(str(e.epoch) for e in entries)))
        entries, skipped = [have[w] for w in wanted], []
    return ([None] if include_base else []) + entries, skipped


# ---------------------------------------------------------------------------------------------- cells
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
    worker: str | None = None  # who rendered it: "local", or a Ray worker's name ("worker-1"); None when cached
    cancelled: bool = field(default=False, repr=False)  # left unrendered by a cancel (``error`` then says so)

    def record(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("image", "png", "image_path", "column",
                                                                  "cancelled")}
        out["image"] = self.image_path
        return out


def column_label(entry: LoraEntry | None, translate=str) -> str:
    """``base``, ``epoch 20``, ``step 250``: in English where it is stored or drawn; a front end passes its ``_``
    as ``translate`` to show it in its language."""
    if entry is None:
        return translate(BASE_LABEL)
    return epoch_names.label(entry.name, entry.epoch, entry.step, translate=translate)


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
        strengths = [0.0] if entry is None else plan.strengths  # strength does not apply to the base column
        cells += [Cell(ci, None if entry is None else entry.epoch, None if entry is None else entry.name, sha, seed,
                       strength, prompt, error=error, label=column_label(entry))
                  for strength in strengths for prompt in plan.prompts for seed in plan.seeds]
    return cells


def index_cells(cells: list[Cell]) -> dict[tuple, Cell]:
    """Cells by grid position, for ``cell_at``."""
    return {(c.column, c.prompt, c.seed, c.strength): c for c in cells}


def cell_at(index: dict[tuple, Cell], ci: int, entry: LoraEntry | None, prompt: str, seed: int,
            strength: float) -> Cell | None:
    """The cell shown at column ``ci`` of row (prompt, seed, strength); the base column has one per seed."""
    return index.get((ci, prompt, seed, 0.0 if entry is None else strength))


# ---------------------------------------------------------------------------------------------- batching
class GroupKey(NamedTuple):
    """A column at a strength for a prompt: one swap, one batched render of its seeds."""

    column: int
    strength: float
    prompt: str


class Group(NamedTuple):
    """A group's cells (one per seed, in order) under its key; after the cache, only those still to render."""

    key: GroupKey
    cells: list[Cell]


def groups(cells: list[Cell]) -> dict[GroupKey, list[Cell]]:
    """Cells by (column, strength, prompt), in execution order: one swap and one batched render each."""
    out: dict[GroupKey, list[Cell]] = {}
    for c in cells:
        out.setdefault(GroupKey(c.column, c.strength, c.prompt), []).append(c)
    return out


def jobs(keys: list[GroupKey], mix: int = 1) -> list[list[GroupKey]]:
    """Groups in execution order, packed per prompt into jobs of up to ``mix`` groups (1: one group a job).

    A job of several groups is rendered as routed batches, each image through its own column's adapter.
    """
    if mix <= 1:
        return [[key] for key in keys]
    out = []
    for prompt in dict.fromkeys(key.prompt for key in keys):
        mine = [key for key in keys if key.prompt == prompt]
        out += [mine[i:i + mix] for i in range(0, len(mine), mix)]
    return out


def calls(todos: list[Group]) -> list[list[Group]]:
    """A job's groups still to render (cached cells taken out), split into batched calls: groups with the same
    number of seeds left share one call (so that routing can stack them), in the order they first appear."""
    by_count: dict[int, list[Group]] = {}
    for key, todo in todos:
        by_count.setdefault(len(todo), []).append(Group(key, todo))
    return list(by_count.values())
