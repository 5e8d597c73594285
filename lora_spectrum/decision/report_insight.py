"""The Insight section of the HTML report: the series' verdict (its reason, the pick marked, style and fidelity with
their standard errors, the front, the tie), the measures per epoch as a table and as inline SVG charts, the loss,
and the notes. Reads an insight dict (``measures.insight.series_insight``'s, or a manifest's); escapes every
text from it; measures nothing. ``html_report.py`` places it in the page.
"""

from __future__ import annotations

import html

from lora_spectrum.decision.card_verdict import preference_name
from lora_spectrum.decision.model_card import verdict_of
from lora_spectrum.decision.svg_chart import line_chart
from lora_spectrum.language import N_, _
from lora_spectrum.loras.epoch_names import label, shown
from lora_spectrum.measures.columns import CHARTS, MEASURES
from lora_spectrum.measures.numbers import number, percent

CHART_HEADERS = tuple((chart, tuple(m.label for m in MEASURES if m.chart == chart)) for chart in CHARTS)

e = html.escape


def fmt(v, spec: str = ".4g") -> str:
    """A number for a table cell ("-" when there is none; other values as escaped text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else e(str(v))
    return format(v, spec)


def _epoch_measures(insight: dict, verdict: dict | None) -> list[dict]:
    """Per epoch row: ``{"name", "file", "x", "values": {header: number}}`` from the insight's epochs (the probe
    score from the verdict's points)."""
    scores = {p.get("file"): p.get("score") for p in (verdict or {}).get("points") or []}
    out = []
    for row in insight.get("epochs") or []:
        if not isinstance(row, dict):
            continue
        values = {m.label: m.of(row, scores) for m in MEASURES}
        for tag, v in (row.get("epoch_loss") or {}).items():
            values[str(tag)] = number(v)
        for group, g in (row.get("groups") or {}).items():
            values[_("norm: {group}").format(group=group)] = number((g or {}).get("weight_norm"))
        file, epoch, step = row.get("file") or "", row.get("epoch"), row.get("step")
        name = shown(row.get("label") or file, file, epoch, step, translate=_)
        out.append({"name": str(name), "file": row.get("file"), "epoch": row.get("epoch"), "step": row.get("step"),
                    "values": values})
    return out


def verdict_section(verdict: dict | None) -> str:
    """The verdict: its reason; once a probe judged, the preference, the front, the tie, and per probed epoch its
    style and fidelity kept with their standard errors, the pick's row marked. "" when there is no verdict."""
    if verdict is None:
        return ""
    parts = [f'<p class="verdict">{e(str(verdict["reason"]))}</p>']
    facts, pick = [], verdict.get("file")
    if pick or verdict.get("epoch") is not None:
        tied = verdict.get("tied") or []
        facts += [_("preference: {preference}").format(preference=preference_name(verdict.get("preference"))),
                  _("front (style against prompt fidelity): {epochs}").format(epochs=_names(verdict.get("front")))]
        facts += [_("the measures cannot tell apart: {epochs}").format(epochs=_names(tied))] if len(tied) > 1 else []
        if number(verdict.get("confidence")) is not None:
            facts.append(_("the same pick in {share} of the resamples").format(share=percent(verdict["confidence"])))
    if verdict.get("missing"):
        facts.append(_("missing: {what}").format(what=", ".join(map(str, verdict["missing"]))))
    if verdict.get("stop") and verdict.get("stop_reason"):
        facts.append(str(verdict["stop_reason"]))
    if facts:
        parts.append('<p class="note">' + " · ".join(e(f) for f in facts) + "</p>")
    points = [p for p in verdict.get("points") or [] if isinstance(p, dict)]
    if points:
        head = "".join("<th>" + e(_(h)) + "</th>" for h in (
            N_("epoch"), N_("style gained"), N_("fidelity kept"), N_("score"), N_("on the front"),
            N_("picked in resamples")))
        body = "".join(
            f'<tr{" class=pick" if pick and p.get("file") == pick else ""}>'
            f'<td>{e(label(str(p.get("file") or ""), p.get("epoch"), None, translate=_))}</td>'
            f'<td class="num">{_pm(p.get("style"), p.get("style_se"))}</td>'
            f'<td class="num">{_pm(p.get("fidelity"), p.get("fidelity_se"))}</td>'
            f'<td class="num">{fmt(p.get("score"), ".3f")}</td><td>{"★" if p.get("front") else ""}</td>'
            f'<td class="num">{e(percent(p["share"])) if number(p.get("share")) is not None else "-"}</td></tr>'
            for p in points)
        parts.append(f'<div class="scroll"><table class="verdict-points"><tr>{head}</tr>{body}</table></div>')
    return "".join(parts)


def _names(epochs) -> str:
    return ", ".join(label("", x, None, translate=_) for x in epochs or [])


def _pm(value, se) -> str:
    """``87.5% ± 2.4%``: a share with its standard error ("-" when not measured)."""
    if number(value) is None:
        return "-"
    return e(percent(value)) + (f" ± {e(percent(se))}" if number(se) is not None else "")


def insight_section(insight) -> str:
    """The section's HTML: a note when the manifest has no insight (or a failed one), else table, charts, notes."""
    title = "<h2>" + e(_("Insight")) + "</h2>"
    if insight is None:
        return title + '<p class="note">' + _("No insight in this manifest (the {command} command adds it).").format(
            command="<code>grid</code>") + "</p>"
    if not isinstance(insight, dict) or "error" in insight:
        why = insight.get("error") if isinstance(insight, dict) else "not a dict"
        return title + '<p class="note">' + e(_("Insight was not measured: {why}").format(why=why)) + "</p>"
    verdict = verdict_of(insight)
    parts = [title, verdict_section(verdict)]
    rows = _epoch_measures(insight, verdict)
    headers = [h for h in dict.fromkeys(h for r in rows for h in r["values"]) if any(r["values"].get(h) is not None
                                                                                   for r in rows)]
    pick = (verdict or {}).get("file")
    if rows and headers:
        head = "".join("<th>" + e(_(h)) + "</th>" for h in headers)
        body = "".join(f'<tr{" class=pick" if pick and r["file"] == pick else ""}><td>{e(r["name"])}</td>'
                       + "".join(f'<td class="num">{fmt(r["values"].get(h))}</td>' for h in headers) + "</tr>"
                       for r in rows)
        epoch = e(_("epoch"))
        parts.append(f'<div class="scroll"><table class="measures"><tr><th>{epoch}</th>{head}</tr>{body}</table></div>')
        if all(r["epoch"] is not None for r in rows):
            xs, x_label = [r["epoch"] for r in rows], _("epoch")
        elif all(r["step"] is not None for r in rows):
            xs, x_label = [r["step"] for r in rows], _("step")
        else:
            xs, x_label = list(range(1, len(rows) + 1)), _("file (in order)")
        marker = next((x for x, r in zip(xs, rows, strict=True) if pick and r["file"] == pick), None)
        norms = {_("norm: {group}").format(group=g) for r in insight.get("epochs") or [] if isinstance(r, dict)
                 for g in r.get("groups") or {}}
        groups = tuple(h for h in headers if h in norms)
        losses = tuple(h for h in headers if h.startswith("loss"))
        charts = [line_chart([(_(h), [(x, r["values"].get(h)) for x, r in zip(xs, rows, strict=True)])
                              for h in names if h in headers], title=_(name), x_label=x_label, marker=marker,
                             marker_label=_("the verdict's pick"))
                  for name, names in (*CHART_HEADERS, (N_("Norm per layer group"), groups),
                                      (N_("Loss per epoch"), losses))]
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    loss = insight.get("loss")
    if isinstance(loss, dict) and loss.get("series"):
        per_epoch = set(loss.get("per_epoch") or [])
        steps = [(str(t), [(p[0], p[1]) for p in pts[:: max(1, len(pts) // 400)] if len(p) == 2])
                 for t, pts in loss["series"].items() if t not in per_epoch and pts]
        chart = line_chart(steps, title=_("Training loss"), x_label=_("step")) if steps else ""
        parts.append(f'<div class="charts">{chart}</div>' if chart else "")
    notes = [*(insight.get("notes") or []),
             *(_("skipped {file}: {reason}").format(file=s.get("file"), reason=s.get("reason"))
               for s in insight.get("skipped") or [] if isinstance(s, dict))]
    probe = insight.get("probe")
    if isinstance(probe, dict):
        notes.append(_("probe set {probe_set} ({measure} measure)").format(probe_set=probe.get("probe_set"),
                                                                           measure=probe.get("measure")))
        notes += [f"{k}: {v}" for k, v in (probe.get("definitions") or {}).items()]
    image = insight.get("image")
    if isinstance(image, dict) and image.get("measure"):
        notes.append(_("image measure: {measure} ({description})").format(
            measure=image.get("measure"), description=image.get("measure_description", "")))
    if notes:
        parts.append("<ul class=\"note\">" + "".join(f"<li>{e(str(n))}</li>" for n in notes) + "</ul>")
    return "".join(parts)
