"""Training logs: the loss scalars of a TensorBoard log folder, and where the epoch files sit on its step axis.

Reads TensorBoard event files (``events.out.tfevents.*``, searched recursively) with ``tbparse``, without running
TensorBoard. Nothing here renders, loads a model or imports streamlit; every function returns plain data (the shapes
and kohya's tags are in docs/measures.md).
"""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from lora_spectrum.errors import ConfigError
from lora_spectrum.language import _
from lora_spectrum.loras.catalog import int_or_none

EVENT_PREFIX = "events.out.tfevents"
STEP_LOSS_TAGS = ("loss/current", "loss/average")
EPOCH_LOSS_TAGS = ("loss/epoch", "loss/epoch_average", "loss/validation/epoch_average")


def find_event_files(folder: str | Path) -> list[Path]:
    """The TensorBoard event files under ``folder`` (recursively), in path order."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: training log folder does not exist")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        found += [Path(dirpath) / f for f in files if f.startswith(EVENT_PREFIX)]
    if not found:
        raise ConfigError(f"{root}: no TensorBoard event files ({EVENT_PREFIX}.*) in this folder or below it; "
                          "point --logs at the trainer's logging_dir")
    return sorted(found)


def _is_loss_tag(tag: str) -> bool:
    return tag.startswith("loss") or "/loss" in tag or tag.endswith("loss")


def _read_frames(folder: Path):
    """1. Read scalars (and 0-d tensors, which TF2-style writers use for scalars) with tbparse; one DataFrame."""
    import numpy as np
    import pandas as pd
    from tbparse import SummaryReader

    try:
        reader = SummaryReader(str(folder), pivot=False, extra_columns={"dir_name", "wall_time"},
                               event_types={"scalars", "tensors"})
        scalars, tensors = reader.scalars, reader.tensors
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{folder}: the event files could not be read ({exc})") from exc
    frames = [scalars] if len(scalars) else []
    if len(tensors):
        values = tensors["value"].map(lambda v: np.asarray(v))
        scalar_like = values.map(lambda v: v.size == 1 and np.issubdtype(v.dtype, np.number))
        if scalar_like.any():
            t = tensors[scalar_like].copy()
            t["value"] = values[scalar_like].map(lambda v: float(v.reshape(-1)[0]))
            frames.append(t)
    if not frames:
        return pd.DataFrame(columns=["step", "tag", "value", "wall_time", "dir_name"])
    return pd.concat(frames, ignore_index=True)


def _series_from_frame(df, tags=None) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    if tags is not None:
        df = df[df["tag"].isin(list(tags))]
    df = df.sort_values(["tag", "step", "wall_time"], kind="stable")
    df = df.drop_duplicates(subset=["tag", "step"], keep="last")  # a resumed run rewrote this step: the later wins
    for tag, group in df.groupby("tag", sort=True):
        out[str(tag)] = [(int(s), float(v)) for s, v in zip(group["step"], group["value"], strict=True)
                         if math.isfinite(float(v))]
    return out


def read_scalars(folder: str | Path, tags=None, run: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under ``folder`` (or only ``tags``; only sub-folder ``run`` when given) as step-ordered
    ``(step, value)`` pairs. Raises ``ConfigError`` when the folder holds no event files."""
    root = Path(folder)
    find_event_files(root)
    df = _read_frames(root)
    if run is not None and len(df):
        df = df[df["dir_name"] == run]
    return _series_from_frame(df, tags)


def read_loss(folder: str | Path, run: str | None = None) -> dict:
    """The loss curves of a training log folder (the shape is in docs/measures.md)."""
    # 1. Find and read the event files.
    root = Path(folder)
    files = find_event_files(root)
    df = _read_frames(root)
    if len(df):
        df = df[df["tag"].map(_is_loss_tag)]
    if not len(df):
        raise ConfigError(f"{root}: {len(files)} event file(s) found but none holds a loss scalar "
                          f"(looked for {', '.join(STEP_LOSS_TAGS + EPOCH_LOSS_TAGS)} and other loss/* tags)")

    # 2. Several runs in one folder (sub-folders): read one, never mix them.
    last_write = df.groupby("dir_name")["wall_time"].max().sort_values()
    runs = [str(r) for r in last_write.index]
    note = None
    if run is None:
        run = runs[-1]
        if len(runs) > 1:
            note = _("{n} runs in this folder ({runs}); showing the most recently written one, {run}").format(
                n=len(runs), runs=", ".join(r or "." for r in runs), run=run or ".")
    elif run not in runs:
        raise ConfigError(f"{root}: no run {run!r} with loss scalars; choose one of: "
                          f"{', '.join(repr(r) for r in runs)}")
    series = _series_from_frame(df[df["dir_name"] == run])

    # 3. Which tags count epochs: the known per-epoch tags and anything else named "epoch".
    per_epoch = [t for t in series if t in EPOCH_LOSS_TAGS or "epoch" in t]
    per_step = [t for t in series if t not in per_epoch]
    return {
        "folder": str(root), "event_files": len(files), "runs": runs, "run": run,
        "series": {t: [[s, v] for s, v in pts] for t, pts in series.items()},
        "per_step": per_step, "per_epoch": per_epoch, "note": note,
    }


def place_entries(entries) -> list[dict]:
    """Put catalog entries (``LoraEntry``) on the step axis of the training log.

    1. ``ss_steps`` in the file's metadata is the step it was saved at (``step_source: "ss_steps"``).
    2. Otherwise a step read from the file name (``name-step500``) is used as is.
    3. Otherwise, when other files give steps per epoch (``ss_steps / ss_epoch``) that agree within 1%, the step is
       ``epoch * steps_per_epoch`` (``step_source: "estimated"``); if not, ``step`` stays None.
    """
    rows = []
    ratios = []
    for e in entries:
        meta = getattr(e, "metadata", None) or {}
        epoch = e.epoch if e.epoch is not None else int_or_none(meta.get("ss_epoch"))
        steps = int_or_none(meta.get("ss_steps"))
        source = None
        if steps is not None:
            source = "ss_steps"
            if epoch:
                ratios.append(steps / epoch)
        elif e.step is not None:
            steps, source = e.step, "file name"
        rows.append({"file": e.name, "epoch": epoch, "step": steps, "step_source": source})
    if ratios:
        per_epoch = statistics.median(ratios)
        if all(abs(r - per_epoch) <= 0.01 * per_epoch for r in ratios):
            for row in rows:
                if row["step"] is None and row["epoch"] is not None:
                    row["step"], row["step_source"] = round(row["epoch"] * per_epoch), "estimated"
    return rows
