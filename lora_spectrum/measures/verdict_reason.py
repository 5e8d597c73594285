"""The verdict's sentences: one or two, in the active language, that state the pick and what supports it (never
what weighs against it: a trade-off the pick lost is shown as the front, not argued in the reason). Pure text
from the numbers ``verdict.decide`` computed."""

from __future__ import annotations

from lora_spectrum.language import _
from lora_spectrum.loras.epoch_names import label
from lora_spectrum.measures.numbers import percent


def _name(file: str | None, epoch: int | None) -> str:
    return label(file or "", epoch, None, translate=_)


def _names(epochs) -> str:
    return ", ".join(_name(None, e) for e in epochs)


def empty() -> str:
    return _("No verdict: this series has no readable epoch file.")


def needs_probe(context: dict) -> str:
    """Before a probe: what the weight curves and the log show, and that they cannot pick."""
    where = []
    if context.get("settled_epoch") is not None:
        where.append(_("the weights settle at {name}").format(name=_name(None, context["settled_epoch"])))
    elif context.get("files", 0) >= 2:
        where.append(_("the weights are still moving at the last file"))
    if context.get("validation_lowest_epoch") is not None:
        where.append(_("the validation loss is lowest at {name}").format(
            name=_name(None, context["validation_lowest_epoch"])))
    text = _("No pick yet: weight curves cannot see overfitting, so a probe must judge style against prompt "
             "fidelity.")
    return text + (" " + _("So far {facts}.").format(facts="; ".join(where)) if where else "")


def no_style(probe: dict) -> str:
    return _("No pick: the probe ({probe_set}) saw no style in any epoch; check the trigger words and the probe "
             "prompts.").format(probe_set=probe.get("probe_set"))


def _point(verdict, epoch: int | None) -> dict:
    return next(p for p in verdict.points if p["epoch"] == epoch)


def judged(verdict, probe: dict, *, measures_pick: int | None, worse: int) -> str:
    """The reason of a judged verdict: the pick and its numbers, then how sure (the resamples, the votes)."""
    preference = {"balanced": _("balanced"), "fidelity": _("fidelity first"), "style": _("style first")}[
        verdict.preference]
    if verdict.state == "votes":
        v = verdict.votes
        first = _("{name}, by your blind votes ({n} votes, clearly ahead of the next epoch)").format(
            name=_name(verdict.file, verdict.epoch), n=v["votes"])
        if measures_pick != verdict.epoch:
            first += _("; the measures alone would pick {name}").format(name=_name(None, measures_pick))
        return first + "."
    p = _point(verdict, verdict.epoch)
    first = _("{name} has the best balance of style and prompt fidelity ({preference}): {style} of the run's most "
              "style, keeping {kept} of the base's prompt fidelity ({measure} measure, probe set {probe_set})").format(
        name=_name(verdict.file, verdict.epoch), preference=preference, style=percent(p["style"]),
        kept=percent(p["fidelity"]), measure=probe.get("measure", "clip"), probe_set=probe.get("probe_set"))
    later = [q for q in verdict.points if q["epoch"] is not None and verdict.epoch is not None
             and q["epoch"] > verdict.epoch]
    if later and worse:
        low = min(later, key=lambda q: q["fidelity"])
        first += _("; later epochs keep as little as {kept} ({name})").format(kept=percent(low["fidelity"]),
                                                                           name=_name(low["file"], low["epoch"]))
    elif not later:
        first += _("; no later epoch was probed, so training longer might still add style")
    others = [e for e in verdict.tied if e != verdict.epoch]
    sure = (_("The measures cannot tell it apart from {names} (the same pick in {share} of the resamples).").format(
        names=_names(others), share=percent(verdict.confidence)) if others else
        _("The same pick in {share} of the resamples of the probe's prompts and seeds.").format(
            share=percent(verdict.confidence)))
    v = verdict.votes
    if v.get("top") is not None:
        sure += " " + (_("Your {n} blind votes agree.").format(n=v["votes"]) if v.get("agree") else
                       _("Your {n} blind votes lean to {name}, not yet beyond their uncertainty.").format(
                           n=v["votes"], name=_name(v.get("top_file"), v["top"])))
    return first + ". " + sure


def stop(verdict, worse: int) -> str:
    """The watcher's advice once the run has passed its best."""
    return _("The run has passed its best: {n} saves after {name} keep clearly less prompt fidelity and the style "
             "is no longer rising; training can stop.").format(n=worse, name=_name(verdict.file, verdict.epoch))
