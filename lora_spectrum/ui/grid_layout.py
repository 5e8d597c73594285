"""The grid's layout as plain values: epochs as columns or rows, seeds, strengths or prompts along the other axis
(the dimensions left over make one block each), every position's label (never broken inside "seed 1"), its
neighbours for the viewer, and the whole-number enlargement of small renders. No Streamlit here; words come out in
the active language (``lora_spectrum.language.using``: the UI wraps calls in ``active()``)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from lora_spectrum.language import _
from lora_spectrum.render.plan import Plan, column_label

EPOCHS_AS = ("columns", "rows")  # option values (English, never shown): where the epochs run
OTHER_AXES = ("seeds", "strengths", "prompts")  # what runs the other way
_DIM = {"seeds": "seed", "strengths": "strength", "prompts": "prompt"}
_NESTING = ("prompt", "strength", "seed")  # plan.rows' order, outermost first

NBSP = "\u00a0"
SEP = " · "  # between label parts, where a line may break (as ``controls.caption_for`` writes captions)
GRID_WIDTH = 900  # px the grid is laid out for: Streamlit's wide layout beside the sidebar on a laptop screen
MAX_CELL = 192  # px: the largest a small render is enlarged to in the grid (the viewer shows it full size)
GAP = 16  # px between Streamlit columns


@dataclass(frozen=True)
class Line:
    """One (prompt, seed, strength) of the plan: a row of today's grid, a step along the other axis."""

    prompt: str
    seed: int
    strength: float


@dataclass(frozen=True)
class Block:
    """One table of the grid: the left-over dimensions' values (``fixed``) and its lines along the other axis."""

    fixed: tuple[tuple[str, object], ...]  # e.g. (("prompt", "a red circle"), ("strength", 0.6))
    lines: tuple[int, ...]  # indices into ``Layout.lines``


@dataclass(frozen=True)
class Spot:
    """A position of the grid: a column of the plan (an epoch or the base) at one line."""

    column: int
    line: int


class Layout:
    """The grid of ``plan`` with ``other`` (``OTHER_AXES``) along the non-epoch axis.

    ``lines`` runs block after block (prompts, then strengths, then seeds, with ``other``'s dimension innermost):
    Left/Right step along it, Up/Down step through the plan's columns at the same line.
    """

    def __init__(self, plan: Plan, other: str = "seeds"):
        if other not in OTHER_AXES:
            raise ValueError(f"other must be one of {OTHER_AXES}, not {other!r}")
        self.plan, self.other = plan, other
        inner = _DIM[other]
        outer = [d for d in _NESTING if d != inner]
        values = {"prompt": plan.prompts, "strength": plan.strengths, "seed": plan.seeds}
        self.lines: list[Line] = []
        self.blocks: list[Block] = []
        for a in values[outer[0]]:
            for b in values[outer[1]]:
                fixed = {outer[0]: a, outer[1]: b}
                start = len(self.lines)
                for v in values[inner]:
                    d = {**fixed, inner: v}
                    self.lines.append(Line(d["prompt"], d["seed"], d["strength"]))
                self.blocks.append(Block(tuple(fixed.items()), tuple(range(start, len(self.lines)))))

    @property
    def spots(self) -> list[Spot]:
        return [Spot(c, li) for li in range(len(self.lines)) for c in range(len(self.plan.columns))]

    def neighbours(self, spot: Spot) -> dict[str, Spot | None]:
        """Up/Down: the previous/next column (epoch) at the same line; Left/Right: the previous/next line."""
        n_cols, n_lines = len(self.plan.columns), len(self.lines)
        return {"up": Spot(spot.column - 1, spot.line) if spot.column > 0 else None,
                "down": Spot(spot.column + 1, spot.line) if spot.column + 1 < n_cols else None,
                "left": Spot(spot.column, spot.line - 1) if spot.line > 0 else None,
                "right": Spot(spot.column, spot.line + 1) if spot.line + 1 < n_lines else None}

    def table(self, block: Block, epochs_as: str) -> tuple[list[int], list[tuple[int, list[Spot]]]]:
        """A block as drawn: the header's items, then each row's own item and its spots, left to right. Epochs as
        columns: the header holds column indices and each row is a line; as rows, the other way round."""
        columns = list(range(len(self.plan.columns)))
        if epochs_as == "columns":
            return columns, [(li, [Spot(c, li) for c in columns]) for li in block.lines]
        return list(block.lines), [(c, [Spot(c, li) for li in block.lines]) for c in columns]

    # ------------------------------------------------------------------------------------------ words
    def column_name(self, column: int) -> str:
        return unbroken(column_label(self.plan.columns[column], translate=_))

    def label(self, spot: Spot) -> str:
        """What an image shows: ``epoch 20 · strength 0.6 · seed 1`` (the base has no strength)."""
        line = self.lines[spot.line]
        strength = None if self.plan.columns[spot.column] is None else line.strength
        return cell_label(column_label(self.plan.columns[spot.column], translate=_), strength, line.seed)

    def line_name(self, line: int) -> str:
        """The other axis' value at ``line``: ``seed 2``, ``strength 0.6`` or the prompt."""
        return value_name(_DIM[self.other], getattr(self.lines[line], _DIM[self.other]))

    def step_name(self, line: int) -> str:
        """Where Left/Right lands, in words: the line's values that vary in this plan (``strength 0.6 · seed 2``)."""
        ln, plan = self.lines[line], self.plan
        parts = [value_name(d, getattr(ln, d)) for d, vs in (("prompt", plan.prompts), ("strength", plan.strengths),
                                                            ("seed", plan.seeds)) if len(vs) > 1]
        return SEP.join(parts) or value_name("seed", ln.seed)

    def heading(self, block: Block) -> str:
        """A block's fixed values worth saying: its prompt always, a strength or seed when the plan has several."""
        plan, parts = self.plan, []
        many = {"prompt": True, "strength": len(plan.strengths) > 1, "seed": len(plan.seeds) > 1}
        for dim, value in block.fixed:
            if many[dim]:
                parts.append(value_name(dim, value))
        return SEP.join(parts)


def unbroken(text: str) -> str:
    """``text`` with its spaces made non-breaking: a label part never wraps inside itself."""
    return text.replace(" ", NBSP)


def value_name(dim: str, value) -> str:
    if dim == "seed":
        return unbroken(_("seed {seed}").format(seed=value))
    if dim == "strength":
        return unbroken(_("strength {strength}").format(strength=f"{value:g}"))
    return str(value)  # a prompt wraps where it likes


def cell_label(column: str, strength: float | None, seed: int) -> str:
    """``epoch 20 · strength 0.6 · seed 1``: lines may break only around the dots."""
    parts = [column if column.count(" ") > 1 else unbroken(column)]  # a file's own name may wrap at its spaces
    if strength is not None:
        parts.append(value_name("strength", strength))
    parts.append(value_name("seed", seed))
    return SEP.join(parts)


# ---------------------------------------------------------------------------------------------- enlargement
def whole_factor(width: int, height: int, room: float, most: int = MAX_CELL) -> int:
    """The largest whole enlargement of a ``width`` x ``height`` render that fits ``room`` px across and
    ``most`` px either way; 1 when it is already that big (a large render is never enlarged)."""
    return max(1, min(int(room) // max(1, width), most // max(1, width, height)))


def enlarge(image: Image.Image, factor: int) -> Image.Image:
    """``image`` made ``factor`` times larger by repeating each pixel (nearest-neighbour): blocks, never blur."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def shown_whole(image: Image.Image, room: float, most: int = MAX_CELL) -> tuple[Image.Image, int | str]:
    """``image`` as a view shows it in ``room`` px: enlarged by the largest whole multiple that fits (``most`` px
    at most either way), with its width in px; a render larger than the room keeps its pixels and is fitted to the
    room by the browser (``"stretch"``: scaled down, never up)."""
    if image.width > room:
        return image, "stretch"
    big = enlarge(image, whole_factor(image.width, image.height, room, most))
    return big, big.width


def column_room(weights: list[float], index: int, width: int = GRID_WIDTH) -> float:
    """The px width of column ``index`` of ``st.columns(weights)`` in a grid ``width`` px wide."""
    return (width - GAP * (len(weights) - 1)) * weights[index] / sum(weights)
