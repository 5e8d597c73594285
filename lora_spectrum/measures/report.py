"""The insight of one series as readable text tables, for the ``insight`` command."""

from __future__ import annotations

from lora_spectrum.measures.numbers import percent


def _fmt(x, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def format_insight(result: dict) -> str:
    """``series_insight``'s result as readable tables, ending with the suggestion."""
    lines = [f"series {result['series']} in {result['folder']}: {len(result['epochs'])} epoch file(s)", ""]
    image = result.get("image")

    # 1. One row per epoch: weights, then images when a grid was given.
    head = ["epoch", "file", "norm", "change", "per epoch", "cos prev", "cos last", "to last"]
    loss_tags = list(dict.fromkeys(t for e in result["epochs"] for t in (e.get("epoch_loss") or {})))
    clip_scores = bool(image) and not image["text_alignment"]["skipped"]
    if image:
        head += ["img from base", "seed spread", "img change"] + (["clip score"] if clip_scores else [])
    head += loss_tags
    rows = [head]
    for e in result["epochs"]:
        row = [str(e["epoch"]) if e["epoch"] is not None else e["label"], e["file"], _fmt(e["weight_norm"]),
               percent(e["relative_change"]) if e["relative_change"] is not None else "-",
               percent(e.get("relative_change_per_epoch")) if e.get("relative_change_per_epoch") is not None else "-",
               _fmt(e["cosine_to_previous"], ".3f"), _fmt(e["cosine_to_last"], ".3f"),
               percent(e["relative_change_to_last"])]
        if image:
            im = e.get("image") or {}
            row += [_fmt(im.get("distance_from_base"), ".3g"), _fmt(im.get("seed_spread"), ".2g"),
                    _fmt(im.get("change_from_previous"), ".3g")]
            row += [_fmt(im.get("clip_score"), ".1f")] if clip_scores else []
        row += [_fmt((e.get("epoch_loss") or {}).get(t)) for t in loss_tags]
        rows.append(row)
    lines += _table(rows)

    # 2. Norm per layer group.
    groups = list(dict.fromkeys(g for e in result["epochs"] for g in e["groups"]))
    if groups:
        lines += ["", "update norm per layer group:"]
        rows = [["epoch", *groups]]
        for e in result["epochs"]:
            rows.append([str(e["epoch"]) if e["epoch"] is not None else e["label"],
                         *[_fmt((e["groups"].get(g) or {}).get("weight_norm")) for g in groups]])
        lines += _table(rows)
    if result.get("skipped"):
        lines += [""] + [f"skipped {s['file']}: {s['reason']}" for s in result["skipped"]]

    # 3. Loss and image notes.
    loss = result.get("loss")
    if loss:
        lines += ["", f"loss from {loss['folder']} (run {loss['run'] or '.'}, {loss['event_files']} event file(s)):"]
        for tag, pts in loss["series"].items():
            if pts:
                lines.append(f"  {tag}: {len(pts)} points, steps {pts[0][0]}..{pts[-1][0]}, "
                             f"first {pts[0][1]:.4g}, last {pts[-1][1]:.4g}, min {min(v for _, v in pts):.4g}")
        if loss.get("note"):
            lines.append(f"  note: {loss['note']}")
    if image:
        lines += ["", f"image measure: {image['measure']} ({image['measure_description']}), "
                      f"{image['cells_used']} image(s) from {image['grid']}"]
        if image["clip"]["skipped"]:
            lines.append(f"  CLIP measures skipped: {image['clip']['reason']}")
        lines += [f"  note: {n}" for n in image["notes"]]
    probe = result.get("probe")
    if probe:
        lines += ["", f"probe set {probe['probe_set']} ({probe['measure']} measure"
                      + (f", {probe['clip']['model']}" if not probe["clip"]["skipped"] else ", CLIP unavailable: "
                         + probe["clip"]["reason"]) + f"), images in {probe['folder']}:"]
        weighed = {w["file"]: w for w in (result.get("suggestion") or {}).get("numbers", {}).get("rule_inputs", [])}
        rows = [["epoch", "style", "fidelity", "kept", "leak", "leak ratio", "seed spread", "score"]]
        rows.append(["base", "-", _fmt(probe["base"]["fidelity"], ".3f"), "100%", "-", "-", "-", "-"])
        for e in probe["epochs"]:
            rows.append([str(e["epoch"]) if e["epoch"] is not None else e["file"], _fmt(e["style"], ".3g"),
                         _fmt(e["fidelity"], ".3f"), percent(e["fidelity_kept"]) if e["fidelity_kept"] else "-",
                         _fmt(e["leak"], ".3g"), percent(e["leak_ratio"]) if e["leak_ratio"] is not None else "-",
                         _fmt(e["consistency"], ".2g"), _fmt((weighed.get(e["file"]) or {}).get("score"), ".3f")])
        lines += _table(rows)
        lines += [f"  {k}: {v}" for k, v in probe["definitions"].items()]
        lines += [f"  note: {n}" for n in probe["notes"]]
    lines += ["", result["reason"]]
    return "\n".join(lines)
