"""The insight of one series as readable text tables, for the ``insight`` command."""

from __future__ import annotations

from lora_spectrum.language import N_, _, pad, width
from lora_spectrum.measures.columns import MEASURES
from lora_spectrum.measures.numbers import percent


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned columns; the first row, the header, is translated (its words are marked with ``N_``)."""
    rows = [[_(c) for c in rows[0]], *rows[1:]]
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(pad(c, w, bool(j)) for j, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def format_insight(result: dict) -> str:
    """``series_insight``'s result as readable tables, ending with the verdict."""
    lines = [_("series {series} in {folder}: {n} epoch file(s)").format(
        series=result["series"], folder=result["folder"], n=len(result["epochs"])), ""]
    image = result.get("image")

    # 1. One row per epoch: the weight measures, then the image measures when a grid was given (MEASURES' order).
    loss_tags = list(dict.fromkeys(t for e in result["epochs"] for t in (e.get("epoch_loss") or {})))
    clip_scores = bool(image) and not image["text_alignment"]["skipped"]
    shown = [m for m in MEASURES if m.group == "weights" or (image and m.group == "images" and
                                                             (clip_scores or m.key != "image.clip_score"))]
    rows = [[N_("epoch"), N_("file"), *(m.label for m in shown), *loss_tags]]
    for e in result["epochs"]:
        rows.append([str(e["epoch"]) if e["epoch"] is not None else e["label"], e["file"],
                     *(m.format(m.of(e)) for m in shown), *(_fmt((e.get("epoch_loss") or {}).get(t))
                                                             for t in loss_tags)])
    lines += _table(rows)

    # 2. Norm per layer group.
    groups = list(dict.fromkeys(g for e in result["epochs"] for g in e["groups"]))
    if groups:
        lines += ["", _("update norm per layer group:")]
        rows = [[N_("epoch"), *groups]]
        for e in result["epochs"]:
            rows.append([str(e["epoch"]) if e["epoch"] is not None else e["label"],
                         *[_fmt((e["groups"].get(g) or {}).get("weight_norm")) for g in groups]])
        lines += _table(rows)
    if result.get("skipped"):
        lines += [""] + [_("skipped {file}: {reason}").format(file=s["file"], reason=s["reason"])
                         for s in result["skipped"]]

    # 3. Loss and image notes.
    loss = result.get("loss")
    if loss:
        lines += ["", _("loss from {folder} (run {run}, {n} event file(s)):").format(
            folder=loss["folder"], run=loss["run"] or ".", n=loss["event_files"])]
        for tag, pts in loss["series"].items():
            if pts:
                lines.append("  " + _("{tag}: {n} points, steps {first_step}..{last_step}, first {first}, last "
                                      "{last}, min {least}").format(
                    tag=tag, n=len(pts), first_step=pts[0][0], last_step=pts[-1][0], first=f"{pts[0][1]:.4g}",
                    last=f"{pts[-1][1]:.4g}", least=f"{min(v for _step, v in pts):.4g}"))
        if loss.get("note"):
            lines.append("  " + _("note: {note}").format(note=loss["note"]))
    if image:
        lines += ["", _("image measure: {measure} ({description}), {n} image(s) from {grid}").format(
            measure=image["measure"], description=image["measure_description"], n=image["cells_used"],
            grid=image["grid"])]
        if image["clip"]["skipped"]:
            lines.append("  " + _("CLIP measures skipped: {reason}").format(reason=image["clip"]["reason"]))
        lines += ["  " + _("note: {note}").format(note=n) for n in image["notes"]]
    probe = result.get("probe")
    if probe:
        clip = (probe["clip"]["model"] if not probe["clip"]["skipped"]
                else _("CLIP unavailable: {reason}").format(reason=probe["clip"]["reason"]))
        lines += ["", _("probe set {probe_set} ({measure} measure, {clip}), images in {folder}:").format(
            probe_set=probe["probe_set"], measure=probe["measure"], clip=clip, folder=probe["folder"])]
        points = {p["file"]: p for p in (result.get("verdict") or {}).get("points", [])}
        rows = [[N_("epoch"), N_("style"), N_("fidelity"), N_("kept"), N_("leak"), N_("leak ratio"),
                 N_("seed spread"), N_("score"), N_("front")]]
        rows.append([_("base"), "-", _fmt(probe["base"]["fidelity"], ".3f"), "100%", "-", "-", "-", "-", ""])
        for e in probe["epochs"]:
            point = points.get(e["file"]) or {}
            rows.append([str(e["epoch"]) if e["epoch"] is not None else e["file"], _pm(e["style"], e.get("style_se")),
                         _pm(e["fidelity"], e.get("fidelity_se")),
                         percent(e["fidelity_kept"]) if e["fidelity_kept"] else "-",
                         _fmt(e["leak"], ".3g"), percent(e["leak_ratio"]) if e["leak_ratio"] is not None else "-",
                         _fmt(e["consistency"], ".2g"), _fmt(point.get("score"), ".3f"),
                         "*" if point.get("front") else ""])
        lines += _table(rows)
        lines += [f"  {k}: {v}" for k, v in probe["definitions"].items()]
        lines += ["  " + _("note: {note}").format(note=n) for n in probe["notes"]]
    return "\n".join([*lines, "", *verdict_lines(result.get("verdict") or {})])


def verdict_lines(verdict: dict) -> list[str]:
    """The verdict as the terminal shows it: the reason, then the front, the tie, the preference and what is
    missing (``insight``, ``watch`` and ``ratings`` print these)."""
    lines = [_("Verdict: {reason}").format(reason=verdict.get("reason", ""))]
    if verdict.get("file") is not None:
        lines.append("  " + _("front (style against fidelity): {epochs}; cannot be told apart: {tied}; preference: "
                              "{preference}").format(epochs=", ".join(map(str, verdict.get("front", []))),
                                                     tied=", ".join(map(str, verdict.get("tied", []))),
                                                     preference=verdict.get("preference")))
    if verdict.get("missing"):
        lines.append("  " + _("missing: {what}").format(what=", ".join(verdict["missing"])))
    if verdict.get("stop"):
        lines.append("  " + verdict["stop_reason"])
    return lines


def _pm(value: float | None, se: float | None) -> str:
    """``0.512 ± 0.03``: a measure with its standard error."""
    return "-" if value is None else _fmt(value, ".3g") + (f" ± {se:.2g}" if se is not None else "")
