"""The model card of a promoted epoch: Markdown with the YAML front matter the Hugging Face hub reads for LoRAs.

Pure text building from plain values (a file's metadata, a ranking summary, an insight dict, a grid manifest): no
files are read or written here (``promotion.py`` does that). Every value taken from a file goes in as plain text:
Markdown and HTML characters are escaped, code blocks are fenced longer than any backtick run they hold, and the
front matter is written by a YAML dumper. Large metadata (tag frequencies, dataset folders) is summarised.
"""

from __future__ import annotations

import json
import re
import shlex
from datetime import UTC, datetime
from urllib.parse import quote

from lora_spectrum.decision.card_front_matter import (
    card_license,
    front_matter,
    hub_base,
    license_line,
    local_base_command_line,
    local_base_line,
)
from lora_spectrum.decision.card_text import code_block, number, text
from lora_spectrum.decision.card_verdict import preference_name, verdict_lines
from lora_spectrum.decision.local_paths import last_part
from lora_spectrum.decision.strengths import strength_advice, strength_lines
from lora_spectrum.errors import ConfigError
from lora_spectrum.language import N_, _
from lora_spectrum.measures.columns import MEASURES
from lora_spectrum.measures.numbers import number as finite
from lora_spectrum.measures.verdict import DEFAULT_PREFERENCE, Verdict

TOP_TAGS = 8
TRAINING_KEYS = (
    ("ss_network_module", N_("network module")), ("ss_network_dim", N_("rank (network dim)")),
    ("ss_network_alpha", N_("alpha")), ("ss_network_args", N_("network args")), ("ss_learning_rate", N_("learning rate")),
    ("ss_unet_lr", N_("UNet learning rate")), ("ss_text_encoder_lr", N_("text encoder learning rate")),
    ("ss_optimizer", N_("optimizer")), ("ss_lr_scheduler", N_("learning-rate scheduler")), ("ss_epoch", N_("epoch")),
    ("ss_num_epochs", N_("epochs in the run")), ("ss_max_train_steps", N_("max train steps")), ("ss_steps", N_("steps")),
    ("ss_num_train_images", N_("training images")), ("ss_total_batch_size", N_("batch size")),
    ("ss_resolution", N_("resolution")), ("ss_mixed_precision", N_("mixed precision")), ("ss_seed", N_("seed")),
    ("ss_noise_offset", N_("noise offset")), ("ss_min_snr_gamma", N_("min SNR gamma")),
    ("ss_training_started_at", N_("training started")), ("ss_training_finished_at", N_("training finished")),
    ("training_info", N_("training info (ai-toolkit)")), ("software", N_("software")), ("version", N_("trainer version")),
    ("modelspec.resolution", N_("resolution (modelspec)")), ("modelspec.date", N_("date (modelspec)")),
    ("ss_tag_frequency", N_("top tags")), ("ss_dataset_dirs", N_("dataset folders")), ("ss_datasets", N_("datasets")),
)  # fmt: skip
BASE_KEYS = ("ss_base_model_version", "ss_sd_model_name", "modelspec.architecture")
TIMESTAMP_KEYS = ("ss_training_started_at", "ss_training_finished_at")

def _json(raw: str):
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- plain data
def ranking_row(ranking: dict | None, file: str, epoch: int | None, sha256: str | None = None) -> dict | None:
    """This epoch's place in a ranking summary: ``{"rank", "of", "score", "stderr", "votes", "total_votes"}``.

    Read from a list of rows (``items`` as ``votes.series_ratings`` gives them, or ``ranking``/``epochs``/``rows``:
    dicts with ``file``, ``key``/``sha256`` or ``epoch``, and ``rank``, ``score``, ``stderr``, ``votes`` or
    ``wins``/``losses``/``ties``) or from ``Ranking.to_json()`` (scores keyed by sha256 or file name). None when
    the epoch is not in it."""
    if not isinstance(ranking, dict):
        return None
    total = ranking.get("votes")
    total = len(total) if isinstance(total, list) else total if isinstance(total, int) else None
    rows = next(([r for r in ranking[k] if isinstance(r, dict)] for k in ("items", "ranking", "epochs", "rows")
                 if isinstance(ranking.get(k), list) and any(isinstance(r, dict) for r in ranking[k])), None)
    if rows is not None:
        match = next((r for r in rows if r.get("file") == file or (sha256 and sha256 in (r.get("sha256"), r.get("key")))),
                     None)
        if match is None and epoch is not None:
            match = next((r for r in rows if r.get("epoch") == epoch and not r.get("file")), None)
        if match is None:
            return None
        votes = match.get("votes", match.get("comparisons"))
        if votes is None and any(k in match for k in ("wins", "losses", "ties")):
            votes = sum(int(match.get(k) or 0) for k in ("wins", "losses", "ties"))
        ranked = [r for r in rows if r.get("rank") is not None] if any("rank" in r for r in rows) else rows
        return {"rank": match.get("rank", rows.index(match) + 1), "of": len(ranked), "score": match.get("score"),
                "stderr": match.get("stderr"), "votes": votes, "total_votes": total}
    scores, order = ranking.get("scores"), ranking.get("order")
    if isinstance(scores, dict) and isinstance(order, list):
        key = next((k for k in (sha256, file) if k and k in scores), None)
        if key is None:
            return None
        votes = sum(int((ranking.get(k) or {}).get(key) or 0) for k in ("wins", "losses", "ties"))
        return {"rank": order.index(key) + 1 if key in order else None, "of": len(order), "score": scores[key],
                "stderr": (ranking.get("stderr") or {}).get(key), "votes": votes, "total_votes": total}
    return None


def epoch_measures(insight: dict | None, file: str, epoch: int | None) -> dict:
    """This epoch's numbers from ``measures.series_insight``'s dict, flat: weight curves, probe measures, image
    measures (``image_*``) and per-epoch loss tags (``loss:<tag>``). Numbers only; empty when there are none."""
    rows = (insight or {}).get("epochs") if isinstance(insight, dict) else None
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    row = next((r for r in rows if r.get("file") == file), None)
    row = row or next((r for r in rows if epoch is not None and r.get("epoch") == epoch), None) or {}
    out = {m.flat: m.of(row) for m in MEASURES if m.key != "score" and m.of(row) is not None}
    image = row.get("image") if isinstance(row.get("image"), dict) else {}
    if image.get("measure") and any(k.startswith("image_") for k in out):
        out["image_measure"] = str(image["measure"])
    loss = row.get("epoch_loss") if isinstance(row.get("epoch_loss"), dict) else {}
    out.update({f"loss:{k}": v for k, v in loss.items() if finite(v) is not None})
    return out


def verdict_of(insight: dict | None) -> dict | None:
    """The series' verdict in ``series_insight``'s dict (``measures.verdict``'s block), read back and checked; None
    when the insight has none (no insight, an old manifest, a block that is not a verdict)."""
    block = insight.get("verdict") if isinstance(insight, dict) else None
    try:
        return Verdict.from_json(block).to_json() if block is not None else None
    except (ConfigError, TypeError):
        return None


def public_path(value: str) -> str:
    """A local path as its last part only (a shared card never tells where files live on this machine); a hub id
    or a plain name as it is."""
    v = str(value)
    if v.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", v):
        return last_part(v)
    return v


def summary(key: str, raw: str) -> str:
    """One metadata value as a short plain string: timestamps as UTC dates, JSON blobs summarised."""
    data = _json(raw) if raw[:1] in "{[" else None
    if key in TIMESTAMP_KEYS:
        try:
            return datetime.fromtimestamp(float(raw), UTC).isoformat(timespec="seconds")
        except (ValueError, OverflowError, OSError):
            return raw
    if key == "ss_tag_frequency" and isinstance(data, dict):
        counts: dict[str, float] = {}
        for tags in data.values():
            for tag, n in (tags.items() if isinstance(tags, dict) else ()):
                if finite(n) is not None:
                    counts[str(tag)] = counts.get(str(tag), 0) + n
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:TOP_TAGS]
        return ", ".join(f"{t} ({n:g})" for t, n in top) + (f" ... ({len(counts)} tags)" if len(counts) > TOP_TAGS
                                                            else "")
    if key == "ss_dataset_dirs" and isinstance(data, dict):
        parts = [f"{d}: {v.get('img_count', '?')} images x {v.get('n_repeats', '?')}" for d, v in data.items()
                 if isinstance(v, dict)]
        return "; ".join(parts[:5]) + (f"; ... ({len(parts)} folders)" if len(parts) > 5 else "")
    if key == "ss_datasets" and isinstance(data, list):
        subsets = sum(len(d.get("subsets") or []) for d in data if isinstance(d, dict))
        return f"{len(data)} dataset(s), {subsets} subset(s)"
    if key in ("training_info", "software") and isinstance(data, dict):
        return ", ".join(f"{k} {v}" for k, v in data.items() if isinstance(v, (str, int, float)))
    return raw


# ---------------------------------------------------------------------------------------------- the card
def model_card(name: str, *, source: str, sha256: str, epoch: int | None, metadata: dict[str, str],
               step: int | None = None, trigger_words: list[str] | tuple[str, ...] = (), family: str | None = None,
               base_id: str | None = None, note: str = "", ranking: dict | None = None, insight: dict | None = None,
               grid: dict | None = None, grid_image: str | None = None, series: str | None = None,
               loras: str = "loras", promoted_at: str = "", release_sha256: str | None = None,
               addnet: str | None = None, license: str | None = None, widget: list[dict] | None = None,
               base_local: bool = False, layout: str = "flat") -> str:
    """The model card of ``name``.safetensors, promoted from ``source``: front matter, then title, trigger words,
    base model, why this epoch, the grid image, how to reproduce the grid, training metadata, the files.

    ``metadata``: the source's whole ``__metadata__``; ``ranking``: a ranking summary (``ranking_row``);
    ``insight``: ``series_insight``'s dict (its ``verdict`` is quoted as it stands: the reason is this epoch's
    only when the verdict picked this epoch); ``grid``: a grid manifest (``settings``, ``cells``); ``grid_image``: the
    image's file name next to the card; ``loras``: the loras folder as the reproduce command names it;
    ``release_sha256`` / ``addnet``: the release file's sha256 and addnet hash (``hashes.py``), listed when given;
    ``license``: the one given; ``widget``: this epoch's example images; ``base_local``: the base was a local folder
    (no ``base_model``); ``layout``: "hub" adds the license section and reproduces from the release folder."""
    triggers = [t for t in trigger_words if str(t).strip()]
    base = None if base_local else hub_base(base_id, metadata)
    place = _("epoch {epoch}").format(epoch=epoch) if epoch is not None else _("step {step}").format(step=step)
    parts = [
        front_matter(triggers, base, family, metadata, grid, grid_image if layout != "hub" else None, license,
                     widget),
        f"# {text(name)}",
        _("A LoRA promoted with LoRA Spectrum from {place} of the training run {run} (file {file}). Its tensors "
          "are the source file's, bit for bit; only the metadata gained provenance keys (`lora_spectrum.*`).").format(
            place=place, run=text(series or source), file=text(source)),
        "## " + _("Trigger words"),
        _("Use {words} in the prompt.").format(words=", ".join(f"**{text(t)}**" for t in triggers)) if triggers else
        _("The file names no trigger words (no `modelspec.trigger_phrase`, no tag frequencies)."),
        "## " + _("Base model"),
        _base_section(base_id, base, family, metadata) + ("\n\n" + local_base_line() if base_local else ""),
        *(["## " + _("License"), license_line(card_license(license, metadata))] if layout == "hub" else []),
        "## " + _("Why this epoch"),
        _why_section(place, source, sha256, epoch, note, ranking, insight),
    ]
    verdict = verdict_of(insight)
    strengths = strength_lines(strength_advice((insight or {}).get("image"), source, (verdict or {}).get("preference")),
                               name, preference_name((verdict or {}).get("preference") or DEFAULT_PREFERENCE))
    if strengths:
        parts += ["## " + _("Recommended strength"), *strengths]
    if grid_image:
        parts += ["## " + _("The epochs compared"), "![" + _("The grid of epochs compared") + f"]({quote(grid_image)})"]
    if grid and isinstance(grid.get("settings"), dict):
        parts += ["## " + _("Reproduce the grid"), _reproduce_section(
            grid, series, loras, str(epoch if epoch is not None else step) if layout == "hub" else None)]
        if layout == "hub" and base_local:
            parts.append(local_base_command_line(text(public_path(str(grid["settings"].get("base", ""))))))
    parts += ["## " + _("Training metadata"), _training_section(metadata),
              "## " + _("Files"), _files_section(name, source, sha256, promoted_at, release_sha256, addnet)]
    return "\n\n".join(p for p in parts if p) + "\n"


def _base_section(base_id, base, family, metadata) -> str:
    lines = ["- " + _("judged on: {base}").format(base=text(public_path(base_id)))] if base_id else []
    if base and base != base_id:
        lines.append("- " + _("on the hub: {base} (from the file's {key})").format(
            base=text(base), key=text("ss_base_model_version")))
    for key in BASE_KEYS:
        if metadata.get(key):
            lines.append(f"- {text(key)}: {text(public_path(metadata[key]))}")
    if family:
        lines.append("- " + _("model family: {family}").format(family=text(family)))
    return "\n".join(lines) or _("The file does not say which base it was trained on.")


def _why_section(place, source, sha256, epoch, note, ranking, insight) -> str:
    lines = ["- " + _("Chosen: {place} ({file}).").format(place=place, file=text(source))]
    if note.strip():
        lines.append("- " + _("Note: {note}").format(note=text(note, 2000)))
    row = ranking_row(ranking, source, epoch, sha256)
    if row and row["rank"] is None:  # votes exist, none on this epoch
        lines.append("- " + _("Blind A/B ranking: this epoch was not judged ({n} vote(s) on others).").format(
            n=row["total_votes"] or 0))
    elif row:
        score = (_("score {score}").format(score=number(row["score"])) if finite(row.get("score")) is not None
                 else _("no score yet"))
        if finite(row.get("score")) is not None and finite(row.get("stderr")) is not None:
            score += f" ± {number(row['stderr'])}"
        votes = _(", {n} vote(s) on this epoch").format(n=row["votes"]) if row.get("votes") is not None else ""
        total = _(" of {n} cast").format(n=row["total_votes"]) if row.get("total_votes") is not None else ""
        lines.append("- " + _("Blind A/B ranking: #{rank} of {of} ({score}{votes}{total}; Bradley-Terry "
                              "log-strength ± standard error).").format(rank=row["rank"], of=row["of"], score=score,
                                                                        votes=votes, total=total))
    lines += verdict_lines(verdict_of(insight), place, source, epoch)
    measures = epoch_measures(insight, source, epoch)
    if measures:
        lines += ["", _row(_("measure"), _("value")), "|---|---|"]
        lines += [f"| {text(k)} | {number(v)} |" for k, v in measures.items()]
    return "\n".join(lines)


def _reproduce_section(grid: dict, series: str | None, loras: str, here: str | None = None) -> str:
    s = grid["settings"]
    prompts = [p for p in (s.get("prompts") or [s.get("prompt", "")]) if isinstance(p, str)]
    rows = [(_("prompt") if len(prompts) == 1 else _("prompt {n}").format(n=i + 1), p) for i, p in enumerate(prompts)]
    rows += [(_(label), s.get(key)) for label, key in (
        (N_("negative prompt"), "negative_prompt"), (N_("seeds"), "seeds"), (N_("strengths"), "strengths"),
        (N_("steps"), "steps"), (N_("cfg (guidance)"), "guidance"), (N_("sampler"), "sampler"),
        (N_("family"), "family"))]
    rows.append((_("base"), public_path(str(s.get("base", "")))))
    rows.append((_("size"), f"{s.get('width')}x{s.get('height')}"))
    rows.append((_("columns"), s.get("columns")))
    table = [_row(_("setting"), _("value")), "|---|---|"]
    for label, value in rows:
        shown = ", ".join(str(_plain(v)) for v in value) if isinstance(value, list) else _plain(value)
        table.append(f"| {label} | {text(shown, 1000)} |")
    if here is not None:  # from the release folder: this epoch's images, from the release file beside the card
        s = {k: v for k, v in s.items() if k != "columns"}
        commands = [grid_command(s, p, None, ".", here) for p in prompts or [""]]
        intro = _("The command line that renders this epoch's images again (one per prompt), run in this folder: it "
                  "reads the release file here.")
    else:
        commands = [grid_command(s, p, series, loras, _epochs(grid)) for p in prompts or [""]]
        intro = _("The command line that renders it again (one per prompt), run from the folder holding the loras "
                  "folder:")
    return "\n".join(table) + "\n\n" + intro + "\n\n" + code_block("\n".join(commands), "bash")


def _plain(v):
    return "" if v is None else (format(v, "g") if isinstance(v, float) else v)


def _epochs(grid: dict) -> str:
    cells = [c for c in grid.get("cells") or [] if isinstance(c, dict) and c.get("file")]
    epochs = list(dict.fromkeys(c.get("epoch") for c in cells))
    return "all" if not epochs or any(not isinstance(e, int) for e in epochs) else ",".join(map(str, epochs))


def _float(v) -> str:
    return format(v, "g") if float(format(v, "g")) == v else repr(float(v))


def grid_command(settings: dict, prompt: str, series: str | None, loras: str, epochs: str = "all") -> str:
    """``python -m lora_spectrum grid ...`` with the grid's settings, shell-quoted (the base and the loras folder
    by name only when they are local paths)."""
    cmd = ["python", "-m", "lora_spectrum", "grid", "--base", public_path(str(settings.get("base", "")))]
    if settings.get("family"):
        cmd += ["--family", str(settings["family"])]
    cmd += ["--loras", public_path(loras)]
    if series:
        cmd += ["--series", series]
    cmd += ["--epochs", epochs]
    if "base" in (settings.get("columns") or []):
        cmd.append("--include-base")
    cmd += ["--seeds", ",".join(str(int(x)) for x in settings.get("seeds") or [1])]
    cmd += ["--strengths", ",".join(_float(x) for x in settings.get("strengths") or [1.0])]
    cmd += ["--prompt", prompt]
    if settings.get("negative_prompt"):
        cmd += ["--negative", str(settings["negative_prompt"])]
    for flag, key in (("--steps", "steps"), ("--cfg", "guidance"), ("--sampler", "sampler"), ("--width", "width"),
                      ("--height", "height")):
        v = settings.get(key)
        if v is not None and v != "":
            cmd += [flag, _float(v) if isinstance(v, float) else str(v)]
    cmd += ["--out", f"grid-{series or 'epochs'}"]
    return " ".join(shlex.quote(c) for c in cmd)


def _training_section(metadata: dict[str, str]) -> str:
    shown = [(label, key) for key, label in TRAINING_KEYS if str(metadata.get(key) or "").strip()]
    if not shown:
        return _("The file carries no training metadata this card knows ({formats}).").format(
            formats=text("kohya ss_*, ai-toolkit, musubi-tuner"))
    table = [_row(_("setting"), _("value"), _("key")), "|---|---|---|"]
    table += [_row(_(label), text(summary(key, str(metadata[key]))), text(key)) for label, key in shown]
    listed = {k for _label, k in shown} | set(BASE_KEYS)
    rest = len([k for k in metadata if k not in listed and not k.startswith("lora_spectrum.")])
    if rest:
        table.append("\n" + _("{n} more metadata key(s) are kept in the file, unchanged.").format(n=rest))
    return "\n".join(table)


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _hex(value: str) -> str:
    return f"`{value}`" if re.fullmatch(r"[0-9a-f]{10,64}", value) else text(value)


def _files_section(name: str, source: str, sha256: str, promoted_at: str, release_sha256: str | None = None,
                   addnet: str | None = None, license: str | None = None, widget: list[dict] | None = None,
               base_local: bool = False, layout: str = "flat") -> str:
    promoted = (_("{file}.safetensors: promoted on {when} from {source}.") if promoted_at
                else _("{file}.safetensors: promoted from {source}."))
    lines = [
        "- " + promoted.format(file=text(name), when=text(promoted_at), source=text(source)),
        "- " + _("sha256 of the source file: {sha256} (the copy's own hash differs: its metadata gained the "
                 "`lora_spectrum.*` keys; its tensor data is byte-identical).").format(sha256=_hex(sha256)),
    ]
    if release_sha256:
        lines.append("- " + _("sha256 of {file}.safetensors: {sha256} (Civitai AutoV2: {autov2}).").format(
            file=text(name), sha256=_hex(release_sha256), autov2=_hex(release_sha256[:10])))
    if addnet:
        lines.append("- " + _("addnet hash (sha256 of the tensor data after the header, the same for the source and "
                              "the copy): {addnet}; A1111 names it {short} in `Lora hashes`, as the grid's images "
                              "do (Civitai AutoV3).").format(addnet=_hex(addnet), short=_hex(addnet[:12])))
    return "\n".join(lines)
