"""The HTML report of a grid folder: one self-contained file (images inline as ``data:`` URIs, charts as inline SVG,
CSS in the page; no script, no network reference) that opens anywhere and reads on a phone.

It reads what ``grid_files.write_outputs`` wrote (``manifest.json`` with its ``settings``, ``cells`` and, from the
``grid`` command, ``insight``; ``cells/*.png`` with their A1111 ``parameters``) and a ranking from
``decision.votes.series_ratings`` when given. Every text that comes from a file is escaped as plain text. It renders
and measures nothing: the numbers are the manifest's. The CLI's ``report`` command and the app's download call it.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lora_spectrum.decision.report_insight import fmt, insight_section, number
from lora_spectrum.errors import ConfigError
from lora_spectrum.language import N_, _, current
from lora_spectrum.loras.epoch_names import parse_name, shown
from lora_spectrum.records.grid_files import base_name, read_manifest

THUMB_MAX = 256  # px: a larger cell gets a downscaled thumbnail; its full-size PNG stays in the lightbox
MIN_SHOWN = 160  # px: smaller cells are shown enlarged (pixelated), as in the grid image
FULL_MIN_SHOWN = 512  # px: the lightbox shows small cells at least this large (never wider than the screen)
e = html.escape

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1280px;
 padding:12px;color:#111;background:#fff}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}pre{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:.3em 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid td,.grid th{text-align:center}.grid th.row{text-align:left;white-space:nowrap;font-weight:normal}
.grid td.cell,.grid td.repeat{min-width:120px}.grid img.pixel,.lightbox img.pixel{image-rendering:pixelated}
.grid details{text-align:left;max-width:320px}.grid summary{font-size:12px;color:#555;cursor:pointer}
.missing{display:flex;align-items:center;justify-content:center;min-height:100px;background:#eee;color:#900}
.repeat small,.note{color:#666;font-size:12px}.pick{background:#fff7d6}
.verdict{background:#fff7d6;border-left:4px solid #e0b000;padding:8px 10px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{flex:1 1 300px}
dl.settings{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}dl.settings dd{margin:0}
.lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.94);z-index:10;overflow:auto;padding:12px}
.lightbox:target{display:block}.lightbox figure{margin:0 auto;max-width:1100px;color:#eee;position:relative}
.lightbox a.close{color:#fff;font-size:18px;display:inline-block;margin-bottom:8px}
.lightbox figcaption{margin:.4em 0}
@media (max-width:640px){body{padding:6px;font-size:14px}.grid td.cell,.grid td.repeat{min-width:96px}
 th,td{padding:3px}dl.settings{grid-template-columns:1fr}dl.settings dt{font-weight:bold}.charts svg{flex-basis:100%}}
"""
# Nothing may load from anywhere: the policy makes a browser refuse any fetch the markup might still hold.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _strength(v) -> str:
    return format(v, "g") if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _base_shown(base: str) -> str:
    """The base by its name only: a report is shared, and never tells where the base lives on this machine."""
    name = base_name(base)
    return Path(name).name if name == base and (Path(base).is_absolute() or base.startswith("~")) else name


# ---------------------------------------------------------------------------------------------- cell images
def _load_cell(folder: Path, rel) -> dict:
    """A cell's images: ``{"full", "thumb", "size", "parameters"}``, or ``{"missing": why}``."""
    if not isinstance(rel, str) or not rel:
        return {"missing": "no image"}
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):  # a manifest never makes the report embed files outside it
        return {"missing": f"{rel} is outside the grid folder"}
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size, params = im.size, im.info.get("parameters")
            if im.format != "PNG":
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = buf.getvalue()
            thumb = data
            if max(size) > THUMB_MAX:
                small = im.copy()
                small.thumbnail((THUMB_MAX, THUMB_MAX), Image.LANCZOS)
                buf = io.BytesIO()
                small.save(buf, format="PNG")
                thumb = buf.getvalue()
    except FileNotFoundError:
        return {"missing": f"{rel} not found"}
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return {"missing": f"{rel} unreadable ({exc})"}
    return {"full": data, "thumb": thumb, "size": size, "parameters": params}


def _shown(w: int, h: int, least: int, most: int | None = None) -> tuple[int, int, bool]:
    """Display size for an image of ``w`` x ``h``: small ones enlarged to ``least`` (pixelated), capped at ``most``."""
    scale = max(1.0, least / max(w, h, 1))
    if most is not None:
        scale = min(scale, most / max(w, h, 1))
    return round(w * scale), round(h * scale), scale > 1


# ---------------------------------------------------------------------------------------------- the grid
def _columns(settings: dict, cells: list[dict]) -> list[tuple[str | None, str]]:
    """(file or None for the base, label) in display order: the manifest's columns, then any other cell's."""
    labels: dict = {}
    for c in cells:
        if c.get("file") not in labels:
            labels[c.get("file")] = _shown_label(c)
    named = [None if n == "base" else n for n in settings.get("columns") or [] if isinstance(n, str)]
    order = [f for f in dict.fromkeys([*named, *labels]) if f in labels]
    return [(f, str(labels[f])) for f in order]


def _shown_label(cell: dict) -> str:
    """A column's name in the active language: ``base``, or the manifest's ``label`` (``epoch 20``, ``step 250``)
    translated when it is the label this package writes for that file; any other label is shown as it is."""
    file = cell.get("file")
    if not isinstance(file, str):
        return _("base")
    _series, named_epoch, step = parse_name(Path(file).stem)
    epoch = cell.get("epoch") if isinstance(cell.get("epoch"), int) else named_epoch
    return shown(str(cell.get("label") or file), file, epoch, step, translate=_)


def _ordered(first, values) -> list:
    return list(dict.fromkeys([*(first or []), *values]))


def _rows(settings: dict, cells: list[dict]) -> list[tuple]:
    """(prompt, strength, seed) per grid row, in the plan's order, for every row that has a cell."""
    lora = [c for c in cells if c.get("file") is not None]
    prompts = _ordered(settings.get("prompts"), [c.get("prompt") for c in cells])
    seeds = _ordered(settings.get("seeds"), [c.get("seed") for c in cells])
    strengths = _ordered(settings.get("strengths"), [c.get("strength") for c in lora]) if lora else [0.0]
    have = {(c.get("prompt"), c.get("seed")) for c in cells}
    lora_have = {(c.get("prompt"), c.get("strength"), c.get("seed")) for c in lora}
    return [(p, st, s) for p in prompts for st in strengths for s in seeds
            if (p, st, s) in lora_have or (not lora and (p, s) in have)]


def _cell_html(n: int, c: dict, img: dict) -> tuple[str, str, str]:
    """A grid cell (``td.cell`` with its data attributes), its lightbox (``div#full-n``; "" when missing) and its
    linked thumbnail alone (for the base repeated in later rows)."""
    epoch = c.get("epoch")
    attrs = (f'class="cell{" missing-cell" if "missing" in img else ""}" id="cell-{n}" '
             f'data-file="{e(str(c.get("file") or ""))}" data-epoch="{"" if epoch is None else e(str(epoch))}" '
             f'data-seed="{e(str(c.get("seed")))}" data-strength="{e(_strength(c.get("strength")))}" '
             f'data-label="{e(str(c.get("label") or ""))}" data-image="{e(str(c.get("image") or ""))}"')
    what = _("{label}, seed {seed}, strength {strength}").format(label=c.get("label") or _("base"), seed=c.get("seed"),
                                                                 strength=_strength(c.get("strength")))
    if "missing" in img:
        error = c.get("error")
        state = e(_("failed") if error else _("missing"))
        body = (f'<div class="missing">{state}</div><small class="note">'
                f"{e(str(error) if error else img['missing'])}</small>")
        return f"<td {attrs}>{body}</td>", "", body
    w, h = img["size"]
    tw, th, pixel = _shown(w, h, MIN_SHOWN, THUMB_MAX)
    cls = ' class="pixel"' if pixel else ""
    params = img["parameters"]
    text = e(params) if params is not None else '<span class="note">' + e(_("no parameters in this PNG")) + "</span>"
    thumb = (f'<a class="thumb" href="#full-{n}"><img{cls} src="{_png_uri(img["thumb"])}" width="{tw}" '
             f'height="{th}" alt="{e(what)}"></a>')
    summary, close, file = e(_("parameters")), e(_("close")), e(str(c.get("file") or _("base")))
    cell = f"<td {attrs}>{thumb}<details><summary>{summary}</summary><pre>{text}</pre></details></td>"
    fw, fh, pixel = _shown(w, h, FULL_MIN_SHOWN)
    cls = ' class="pixel"' if pixel else ""
    box = (f'<div class="lightbox" id="full-{n}"><figure><a class="close" href="#cell-{n}">&#x2715; {close}</a>'
           f'<img{cls} src="{_png_uri(img["full"])}" width="{fw}" height="{fh}" alt="{e(what)}">'
           f"<figcaption>{e(what)} &middot; {file} &middot; {w}&times;{h}</figcaption>"
           f"<pre>{text}</pre></figure></div>")
    return cell, box, thumb


def _grid_section(folder: Path, settings: dict, cells: list[dict]) -> tuple[str, str]:
    """The labelled grid as a table (rows: prompt x strength x seed; columns: base and epochs) and its lightboxes.

    Every manifest cell appears once as a ``td.cell``; the base, which has no strength, is repeated in the later
    strength rows as a ``td.repeat`` linking to the same lightbox.
    """
    columns, rows = _columns(settings, cells), _rows(settings, cells)
    slots: dict[tuple, list[int]] = {}
    for i, c in enumerate(cells):
        key = (c.get("file"), c.get("prompt"), c.get("seed"), None if c.get("file") is None else c.get("strength"))
        slots.setdefault(key, []).append(i)
    done: dict[int, str] = {}  # cell index -> its linked thumbnail
    boxes: list[str] = []

    again, absent = e(_("base again: no strength")), e(_("not in this grid"))

    def place(i: int) -> str:
        if i in done:  # the base again, in a later strength row
            return f'<td class="repeat">{done[i]}<br><small>{again}</small></td>'
        n = len(done)
        cell, box, thumb = _cell_html(n, cells[i], _load_cell(folder, cells[i].get("image")))
        done[i] = thumb
        boxes.append(box)
        return cell

    multi = len({p for p, _st, _s in rows}) > 1
    head = "".join(f"<th>{e(label)}</th>" for _f, label in columns)
    body, prompt_now = [], object()
    for p, st, s in rows:
        if multi and p != prompt_now:
            shown = e(_("prompt: {prompt}").format(prompt=p))
            body.append(f'<tr><th colspan="{len(columns) + 1}" class="row">{shown}</th></tr>')
        prompt_now = p
        tds = []
        for f, _label in columns:
            found = slots.get((f, p, s, None if f is None else st), [])
            tds.append(place(found[0]) if found else f'<td class="empty"><span class="note">{absent}</span></td>')
        label = e(_("seed {seed}").format(seed=s)) + ("<br>" + e(_("strength {strength}").format(strength=_strength(st)))
                                                    if any(f for f, _label in columns) else "")
        body.append(f'<tr><th class="row">{label}</th>{"".join(tds)}</tr>')
    row = e(_("row"))
    table = (f'<div class="scroll"><table class="grid"><thead><tr><th>{row}</th>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    others = [i for i in range(len(cells)) if i not in done]  # cells the rows above have no place for
    if others:
        extra = "".join(place(i) for i in others)
        table += ("<h3>" + e(_("Other cells")) + "</h3>"
                  f'<div class="scroll"><table class="grid"><tr>{extra}</tr></table></div>')
    note = '<p class="note">' + e(_('Tap an image for full size (close with the link above it); "parameters" shows '
                                   "the A1111 text stored in each PNG.")) + "</p>"
    return "<h2>" + e(_("Grid")) + f"</h2>{note}{table}", "".join(boxes)


# ---------------------------------------------------------------------------------------------- settings, times
def _settings_section(settings: dict) -> str:
    prompts = settings.get("prompts") or ([settings["prompt"]] if settings.get("prompt") else [])
    rows = [(N_("base"), _base_shown(str(settings.get("base", "")))), (N_("family"), settings.get("family")),
            (N_("prompt") if len(prompts) <= 1 else N_("prompts"), "\n".join(str(p) for p in prompts)),
            (N_("negative prompt"), settings.get("negative_prompt") or _("(none)")),
            (N_("seeds"), ", ".join(str(s) for s in settings.get("seeds") or [])),
            (N_("strengths"), ", ".join(_strength(s) for s in settings.get("strengths") or [])),
            (N_("sampler"), settings.get("sampler")), (N_("steps"), settings.get("steps")),
            (N_("CFG scale"), _strength(settings.get("guidance"))),
            (N_("size"), f"{settings.get('width')}×{settings.get('height')}")]
    items = "".join("<dt>" + e(_(k)) + f"</dt><dd><pre>{e(str(v))}</pre></dd>" for k, v in rows if v not in (None, ""))
    return "<h2>" + e(_("Settings")) + f'</h2><dl class="settings">{items}</dl>'


def _mean(values) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(nums) / len(nums) if nums else None


def _times_section(settings: dict, cells: list[dict]) -> str:
    """Per column: cells, cached, failed, routed, mean render seconds per image and mean swap seconds."""
    rows = []
    for f, name in _columns(settings, cells):
        mine = [c for c in cells if c.get("file") == f]
        fresh = [c for c in mine if not c.get("cached") and not c.get("error")]
        cells_td = "".join(f'<td class="num">{n}</td>' for n in (
            len(mine), sum(1 for c in mine if c.get("cached")), sum(1 for c in mine if c.get("error")),
            sum(1 for c in mine if c.get("routed"))))
        rows.append(f"<tr><td>{e(name)}</td>{cells_td}"
                    f'<td class="num">{fmt(_mean(c.get("seconds") for c in fresh), ".3g")}</td>'
                    f'<td class="num">{fmt(_mean(c.get("swap_seconds") for c in fresh), ".3g")}</td></tr>')
    head = _header_row((N_("column"), N_("cells"), N_("cached"), N_("failed"), N_("routed"), N_("render s/image"),
                        N_("swap s")))
    return ("<h2>" + e(_("Render and swap times")) + '</h2><p class="note">'
            + e(_("Means over the cells rendered in this run (cached cells took no time).")) + "</p>"
            f'<div class="scroll"><table class="times">{head}{"".join(rows)}</table></div>')


def _header_row(names) -> str:
    return "<tr>" + "".join("<th>" + e(_(n)) + "</th>" for n in names) + "</tr>"


# ---------------------------------------------------------------------------------------------- ranking
def _ranking_section(ranking, strict: bool) -> str:
    """The blind ranking (``votes.series_ratings``' dict) as a table; ``strict``: a bad one is an error."""
    if ranking is None:
        return ""
    if not isinstance(ranking, dict) or not isinstance(ranking.get("items"), list):
        if strict:
            raise ConfigError("the ranking is not a ratings dict (expected votes.series_ratings' result, with "
                              "an 'items' list)")
        unreadable = e(_("The manifest's ranking is not readable."))
        return "<h2>" + e(_("Blind ranking")) + f'</h2><p class="note">{unreadable}</p>'
    items = sorted((i for i in ranking["items"] if isinstance(i, dict)),
                   key=lambda i: (number(i.get("rank")) is None, number(i.get("rank")) or 0))
    base = _("base")
    body = "".join(
        f"<tr><td class=\"num\">{fmt(i.get('rank'))}</td><td>{e(str(i.get('label') or i.get('key') or ''))}</td>"
        f"<td>{e(str(i.get('file') or base))}</td><td class=\"num\">{fmt(i.get('score'), '.3f')}</td>"
        f"<td class=\"num\">{fmt(i.get('stderr'), '.3f')}</td>"
        + "".join(f'<td class="num">{fmt(i.get(k))}</td>' for k in ("wins", "losses", "ties")) + "</tr>"
        for i in items)
    head = _header_row((N_("rank"), N_("epoch"), N_("file"), N_("score"), N_("± stderr"), N_("wins"), N_("losses"),
                        N_("ties")))
    votes, aside = ranking.get("votes"), ranking.get("set_aside")
    note = (_("{n} blind vote(s)").format(n=fmt(votes)) + (_(", {n} set aside").format(n=fmt(aside)) if aside else "")
            + _("; score: Bradley-Terry log-strength (higher is preferred)."))
    return ("<h2>" + e(_("Blind ranking")) + f'</h2><p class="note">{note}</p>'
            f'<div class="scroll"><table class="ranking">{head}{body}</table></div>')


# ---------------------------------------------------------------------------------------------- the page
def build_report(grid: str | Path, ranking: dict | None = None, title: str | None = None,
                 insight: dict | None = None) -> str:
    """The HTML text of the report of grid folder ``grid`` (``ConfigError`` naming it when it has no manifest).

    ``ranking`` is ``votes.series_ratings``' dict; without it the manifest's ``ranking`` is used when present;
    ``insight`` (``series_insight``'s dict, the app's) likewise stands in for the manifest's ``insight``. A
    missing cell PNG shows as "missing" in its cell; the rest is written.
    """
    # 1. The manifest.
    folder, manifest = read_manifest(grid)
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    cells = [c for c in manifest["cells"] if isinstance(c, dict)]
    insight = insight if isinstance(insight, dict) else manifest.get("insight")
    series = insight.get("series") if isinstance(insight, dict) else None
    if not series:  # no insight: the series as the file names tell it
        name = next((c["file"] for c in cells if isinstance(c.get("file"), str)), None)
        series = parse_name(Path(name).stem)[0] if name else folder.name
    base = _base_shown(str(settings.get("base", "")))
    title = title or _("{series}: LoRA Spectrum report").format(series=series)
    # 2. The sections.
    grid_html, boxes = _grid_section(folder, settings, cells)
    strict = ranking is not None
    ranked = _ranking_section(ranking if strict else manifest.get("ranking"), strict)
    made = current().date(datetime.now().astimezone())
    about = e(_("series {series} · base {base} · {n} cell(s) · made {when}")).format(
        series=f"<b>{e(str(series))}</b>", base=f"<b>{e(base)}</b>", n=len(cells), when=e(made))
    header = f'<header id="top"><h1>{e(title)}</h1><p>{about}</p></header>'
    body = [header, ranked, grid_html, _settings_section(settings), _times_section(settings, cells),
            insight_section(insight), boxes]
    return (f"<!DOCTYPE html>\n<html lang=\"{current().code.replace('_', '-')}\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body>\n" + "\n".join(b for b in body if b)
            + "\n</body></html>\n")


def write_report(grid: str | Path, out: str | Path, ranking: dict | None = None) -> Path:
    """Write ``build_report(grid, ranking)`` to ``out`` (its folder made when needed); return the path."""
    text = build_report(grid, ranking)
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the report ({exc.strerror or exc})") from exc
    return path
