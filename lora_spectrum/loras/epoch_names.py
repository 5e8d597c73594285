"""Where a checkpoint sits in its training run, from its file name and metadata: series, epoch and step, as the
trainers write them, and the label and order that follow. Pure functions over names and strings.

File names the trainers write (from their sources): kohya sd-scripts and musubi-tuner ``name-000010`` (an epoch,
six digits) and ``name-step00001000`` (a step), final ``name``; ai-toolkit ``name_000000250`` (a step, nine digits)
and final ``name``; DiffSynth-Studio ``epoch-0`` (0-based) and ``step-500``; hand-named ``jimeng_20``, ``x_e5``.
"""

from __future__ import annotations

import json
import re

from natsort import natsort_keygen

from lora_spectrum.language import N_

# <series>-step<N> / <series>_step<N>: a step count.        <series>_<9 digits>: ai-toolkit's step count.
# <series>_e<N>, <series>-000010, <series>_20: an epoch.     epoch-<N> / step-<N> alone: DiffSynth-Studio.
_STEP_RE = re.compile(r"^(?P<series>.+?)[-_.]step[-_]?(?P<n>\d+)$", re.IGNORECASE)
_AI_TOOLKIT_STEP_RE = re.compile(r"^(?P<series>.+?)_(?P<n>\d{9})$")
_EPOCH_RE = re.compile(r"^(?P<series>.+?)[-_.](?:e|ep|epoch)?[-_]?(?P<n>\d+)$", re.IGNORECASE)
_BARE_RE = re.compile(r"^(?P<kind>epoch|step)[-_]?(?P<n>\d+)$", re.IGNORECASE)
_natural = natsort_keygen()


def int_or_none(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_name(stem: str, folder: str = "") -> tuple[str, int | None, int | None]:
    """(series, epoch, step) read from a file name without its suffix. A bare ``epoch-3`` or ``step-500``
    (DiffSynth-Studio names files by number alone) belongs to the series named after its ``folder``."""
    m = _BARE_RE.match(stem)
    if m:
        n = int(m["n"])
        return folder or m["kind"], (n if m["kind"].lower() == "epoch" else None), \
            (n if m["kind"].lower() == "step" else None)
    for pattern, is_step in ((_STEP_RE, True), (_AI_TOOLKIT_STEP_RE, True), (_EPOCH_RE, False)):
        m = pattern.match(stem)
        if m:
            return m["series"], (None if is_step else int(m["n"])), (int(m["n"]) if is_step else None)
    return stem, None, None


def numbers_from_metadata(meta: dict[str, str]) -> tuple[int | None, int | None]:
    """(epoch, step) the trainer recorded: ai-toolkit's ``training_info`` JSON (``{"step": 250, "epoch": 1}``),
    else kohya's and musubi's ``ss_epoch`` (never ``ss_steps`` alone: kohya writes it into epoch files too)."""
    try:
        info = json.loads(meta.get("training_info") or "{}")
    except json.JSONDecodeError:
        info = {}
    if isinstance(info, dict) and (int_or_none(info.get("step")) is not None or
                                   int_or_none(info.get("epoch")) is not None):
        return int_or_none(info.get("epoch")), int_or_none(info.get("step"))
    return int_or_none(meta.get("ss_epoch")), None


def place(stem: str, meta: dict[str, str], folder: str = "") -> tuple[str, int | None, int | None]:
    """(series, epoch, step) of one file: the name first; the metadata adds an epoch to a step-numbered file and
    numbers a final file that has none in its name (kohya's final file also names its series: ``ss_output_name``).
    A number is never taken for an epoch unless the name or the metadata says it is one."""
    series, epoch, step = parse_name(stem, folder)
    meta_epoch, meta_step = numbers_from_metadata(meta)
    if epoch is None and step is None:
        epoch, step = meta_epoch, meta_step
        if epoch is not None and meta.get("ss_output_name"):
            series = meta["ss_output_name"]
    elif epoch is None:
        epoch = meta_epoch
    return series, epoch, step


def label(name: str, epoch: int | None, step: int | None, translate=str) -> str:
    """``epoch 20``, ``step 250``, ``step 250 (epoch 1)``, or the file name when it carries no number.

    In English always where it is stored or drawn (manifests, the grid PNG, whose font has no Chinese); the UI
    passes its ``_`` as ``translate`` to show it in the session's language."""
    if epoch is not None and step is not None:
        return translate(N_("step {step} (epoch {epoch})")).format(step=step, epoch=epoch)
    if epoch is not None:
        return translate(N_("epoch {epoch}")).format(epoch=epoch)
    if step is not None:
        return translate(N_("step {step}")).format(step=step)
    return name


def shown(written: str, name: str, epoch: int | None, step: int | None, translate) -> str:
    """A label read back from a file (a manifest, an insight) as shown: translated when it is the label this
    package writes for ``name``, ``epoch`` and ``step``; any other label (a user's, a hostile one) as it is."""
    return label(name, epoch, step, translate) if written == label(name, epoch, step) else written


def sort_key(series: str, epoch: int | None, step: int | None, name: str) -> tuple:
    """Series naturally, then epoch, then step, numerically; files without any number last in their series."""
    unnumbered = epoch is None and step is None
    return (_natural(series), unnumbered, epoch is None, epoch or 0, step is None, step or 0, _natural(name))
