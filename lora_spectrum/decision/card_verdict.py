"""The model card's account of the verdict as it stood when shipping: its reason (as another epoch's when it picked
another), the preference, the front, the epochs the measures cannot tell apart, this epoch's own probe numbers, and
the evidence that was missing. Markdown lines from a verdict block; values from files go in as plain text."""

from __future__ import annotations

from lora_spectrum.decision.card_text import text
from lora_spectrum.language import _
from lora_spectrum.loras.epoch_names import label as epoch_label
from lora_spectrum.measures.numbers import percent


def verdict_lines(verdict: dict | None, place: str, source: str, epoch: int | None) -> list[str]:
    """The verdict as it stood when shipping: its reason (said to be another epoch's when it picked another), the
    preference, the front, the epochs the measures cannot tell apart, this epoch's probe numbers."""
    if verdict is None:
        return []
    reason = text(verdict["reason"], 1000)
    if verdict.get("file") is None and verdict.get("epoch") is None:
        said = (_("Verdict when shipped: no probe judged these epochs, so none was picked. {reason}")
                if verdict["state"] == "needs probe" else _("Verdict when shipped: no pick. {reason}"))
        return ["- " + said.format(reason=reason), *_missing_line(verdict)]
    # 1. The verdict's own sentence, as this epoch's only when it picked this epoch.
    this = verdict["file"] == source if verdict.get("file") else verdict.get("epoch") == epoch
    said = (_("Verdict when shipped (this epoch): {reason}") if this else
            _("Shipped {place} by choice; the verdict picks {pick}: {reason}"))
    lines = ["- " + said.format(place=place, pick=_epoch_name(verdict.get("file"), verdict.get("epoch")),
                                reason=reason)]
    # 2. Where it stood: the preference, the front, the epochs the measures cannot tell apart.
    tied = verdict.get("tied") or []
    lines.append("- " + _("Preference: {preference}. Front (no other epoch has more style and more prompt fidelity): "
                          "{front}.").format(preference=text(preference_name(verdict.get("preference"))),
                                             front=_epoch_names(verdict.get("front")) or _("none"))
                 + " " + (_("The measures cannot tell apart: {epochs}.").format(epochs=_epoch_names(tied))
                          if len(tied) > 1 else _("The measures tell their pick apart from every other epoch.")))
    # 3. This epoch's own numbers on the probe, and how it stands against the measures' pick.
    point = next((p for p in verdict.get("points") or [] if p.get("file") == source), None)
    if point:
        where = _("on the front") if point.get("front") else _("not on the front")
        measures_pick = (verdict.get("picks") or {}).get(verdict.get("preference"))
        if not this and point.get("epoch") == measures_pick:
            where += _("; the measures alone pick this epoch")
        elif not this and point.get("epoch") in tied:
            where += _("; the measures cannot tell it apart from {name}").format(name=_epoch_name(None, measures_pick))
        lines.append("- " + _("This epoch on the probe: {style} ± {style_se} of the run's most style, {kept} ± "
                              "{kept_se} of the base's prompt fidelity kept; {where}.").format(
            style=percent(point.get("style")), style_se=percent(point.get("style_se")),
            kept=percent(point.get("fidelity")), kept_se=percent(point.get("fidelity_se")), where=where))
    return lines + _missing_line(verdict)


def _missing_line(verdict: dict) -> list[str]:
    missing = [text(m) for m in verdict.get("missing") or []]
    return ["- " + _("Evidence missing when shipped: {what}.").format(what=", ".join(missing))] if missing else []


def _epoch_name(file: str | None, epoch: int | None) -> str:
    return text(epoch_label(file or "", epoch, None, translate=_))


def _epoch_names(epochs) -> str:
    return ", ".join(_epoch_name(None, e) for e in epochs or [])


def preference_name(name: str | None) -> str:
    """The verdict's preference in words, in the active language."""
    words = {"balanced": _("balanced"), "fidelity": _("fidelity first"), "style": _("style first")}
    return words.get(name or "", str(name))
