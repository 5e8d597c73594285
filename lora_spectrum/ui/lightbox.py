"""The viewer over the grid, as one self-contained HTML string: every position of the grid is a slide holding its
own image (the cell's PNG as it is, a data URI), its own label, prompt and PNG ``parameters``, and its own
Up/Down/Left/Right/Close buttons naming where they lead; a small script shows one slide at a time, maps the keys
to those buttons, and opens the slide of a grid image when it is clicked. Text from files and prompts is escaped:
it shows as plain text. No Streamlit here (``grid.py`` puts the string on the page)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

from PIL import Image

from lora_spectrum.language import _
from lora_spectrum.render.plan import Cell, cell_at, index_cells
from lora_spectrum.ui.grid_layout import Layout, Spot

KEYS = {"up": ("ArrowUp", "↑"), "down": ("ArrowDown", "↓"), "left": ("ArrowLeft", "←"), "right": ("ArrowRight", "→")}
GRID_KEY = "lsv_grid"  # the key of the Streamlit container holding the grid's images (its class: st-key-<key>)


def position(layout: Layout, spot: Spot) -> int:
    """A slide's number: the spot's place in ``layout.spots``."""
    return spot.line * len(layout.plan.columns) + spot.column


def parameters_of(png: bytes) -> tuple[str | None, tuple[int, int]]:
    """The PNG's ``parameters`` text (None when it has none) and its size."""
    with Image.open(io.BytesIO(png)) as im:
        text = im.info.get("parameters")
        return (text if isinstance(text, str) else None), im.size


def viewer_html(layout: Layout, cells: list[Cell], grid_order: Sequence[Spot] = (), grid_key: str = GRID_KEY) -> str:
    """The viewer for ``cells`` laid out by ``layout``. ``grid_order``: the spots of the grid's images in the order
    they are drawn (a click on the i-th image opens its slide); the viewer's own button opens the first of them."""
    # 1. One slide per position; a cell's image is encoded once even where it shows twice (the base per strength).
    index, uris = index_cells(cells), {}
    slides = []
    for spot in layout.spots:
        line = layout.lines[spot.line]
        cell = cell_at(index, spot.column, layout.plan.columns[spot.column], line.prompt, line.seed, line.strength)
        slides.append(_slide(layout, spot, cell, uris))
    # 2. The bar on the page (the open button and the keys), the overlay with its slides, the style and the script.
    first = position(layout, grid_order[0]) if grid_order else 0
    order = ",".join(str(position(layout, s)) for s in grid_order)
    hint = _("Click any image to see it full size. In the viewer: ↑ ↓ the previous or next epoch, ← → the previous "
             "or next seed, strength or prompt, Esc closes.")
    opener, viewer = escape(_("Open viewer")), escape(_("Viewer"))
    return (f"<div class=\"lsv-root\" data-grid=\"st-key-{escape(grid_key)}\" data-order=\"{order}\" "
            f"data-first=\"{first}\">{_STYLE}"
            f"<div class=\"lsv-bar\"><button type=\"button\" class=\"lsv-open\">{opener}</button> "
            f"<span class=\"lsv-hint\">{escape(hint)}</span></div>"
            f"<div class=\"lsv-overlay\" hidden tabindex=\"-1\" role=\"dialog\" aria-modal=\"true\" "
            f"aria-label=\"{viewer}\">{''.join(slides)}</div>{_SCRIPT}</div>")


def _slide(layout: Layout, spot: Spot, cell: Cell | None, uris: dict) -> str:
    line, label = layout.lines[spot.line], layout.label(spot)
    # 1. The buttons, each naming where it leads (disabled at the grid's edge).
    buttons = []
    for direction, there in layout.neighbours(spot).items():
        key, arrow = KEYS[direction]
        if there is None:
            buttons.append(f"<button type=\"button\" data-key=\"{key}\" disabled>{arrow}</button>")
            continue
        name = layout.column_name(there.column) if direction in ("up", "down") else layout.step_name(there.line)
        buttons.append(f"<button type=\"button\" data-key=\"{key}\" data-go=\"{position(layout, there)}\" "
                       f"title=\"{escape(layout.label(there))}\">{arrow} {escape(name)}</button>")
    close = escape(_("Close"))
    buttons.append(f"<button type=\"button\" class=\"lsv-close\">✕ {close} (Esc)</button>")
    # 2. The image and what it is, or why there is none.
    size, params = "", None
    if cell is not None and cell.png is not None:
        params, (w, h) = parameters_of(cell.png)
        if id(cell) not in uris:
            uris[id(cell)] = "data:image/png;base64," + base64.b64encode(cell.png).decode("ascii")
        stage = f"<img src=\"{uris[id(cell)]}\" data-w=\"{w}\" data-h=\"{h}\" alt=\"{escape(label)}\">"
        size = f"{w}×{h} px"
    elif cell is not None and cell.error:
        stage = f"<p class=\"lsv-missing\">{escape(cell.error)}</p>"
    else:
        missing = escape(_("not rendered"))
        stage = f"<p class=\"lsv-missing\">{missing}</p>"
    text = escape(params) if params is not None else escape(_("no parameters in this PNG"))
    return (f"<figure class=\"lsv-slide\" data-pos=\"{position(layout, spot)}\" data-label=\"{escape(label)}\" hidden>"
            f"<div class=\"lsv-stage\">{stage}</div><figcaption class=\"lsv-panel\">"
            f"<div class=\"lsv-nav\">{''.join(buttons)}</div>"
            f"<div class=\"lsv-label\">{escape(label)}</div>"
            f"<div class=\"lsv-size\">{size} <span class=\"lsv-scale\"></span></div>"
            f"<div class=\"lsv-prompt\">{escape(line.prompt)}</div>"
            f"<pre class=\"lsv-params\">{text}</pre></figcaption></figure>")


_STYLE = """<style>
.lsv-bar{display:flex;gap:.75rem;align-items:center;flex-wrap:wrap;font-size:.875rem;opacity:.85}
.lsv-bar button,.lsv-nav button{font:inherit;padding:.3rem .7rem;border-radius:.4rem;border:1px solid #888;
  background:transparent;color:inherit;cursor:pointer;white-space:nowrap}
.lsv-overlay{position:fixed;inset:0;z-index:1000000;background:#0c0c0e;color:#eee;outline:none}
.lsv-overlay[hidden],.lsv-slide[hidden]{display:none}
.lsv-slide{margin:0;height:100%;display:grid;grid-template-columns:minmax(0,1fr) 22rem}
.lsv-stage{display:flex;align-items:center;justify-content:center;overflow:hidden;min-width:0;padding:1rem}
.lsv-stage img{image-rendering:pixelated;display:block}
.lsv-panel{padding:1rem;overflow:auto;border-left:1px solid #333;font-size:.9rem;display:flex;flex-direction:column;
  gap:.6rem}
.lsv-nav{display:flex;flex-wrap:wrap;gap:.4rem}
.lsv-nav button{color:#eee;border-color:#666}
.lsv-nav button:disabled{opacity:.35;cursor:default}
.lsv-label{font-size:1.15rem;font-weight:600}
.lsv-size{opacity:.75}
.lsv-prompt{white-space:pre-wrap;overflow-wrap:anywhere}
.lsv-params{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.8rem;background:#1d1d22;padding:.6rem;margin:0;
  border-radius:.4rem}
.lsv-missing{color:#f88;max-width:40rem;white-space:pre-wrap}
</style>"""

# The script is installed once per page: its listeners read whatever viewer is on the page at the time, so a
# rerun that redraws the viewer (another grid, another layout) needs nothing more from it.
_SCRIPT = """<script>
(() => {
  if (window.__lsvViewer) return;
  window.__lsvViewer = true;
  const root = () => { const all = document.querySelectorAll(".lsv-root"); return all[all.length - 1] || null; };
  const shown = r => r.querySelector(".lsv-slide:not([hidden])");
  function fit(fig) {
    const img = fig.querySelector(".lsv-stage img"), scale = fig.querySelector(".lsv-scale");
    if (!img) return;
    const stage = fig.querySelector(".lsv-stage"), w = +img.dataset.w, h = +img.dataset.h;
    const room = Math.min((stage.clientWidth - 32) / w, (stage.clientHeight - 32) / h);
    const whole = Math.floor(room), k = whole >= 1 ? whole : room;  // whole multiples; smaller only to fit
    img.style.width = Math.round(w * k) + "px";
    img.style.height = Math.round(h * k) + "px";
    img.style.imageRendering = whole >= 1 ? "pixelated" : "auto";
    scale.textContent = whole >= 1 ? "×" + whole : Math.round(k * 100) + "%";
  }
  function show(r, pos) {
    let fig = null;
    r.querySelectorAll(".lsv-slide").forEach(f => { f.hidden = f.dataset.pos !== String(pos); if (!f.hidden) fig = f; });
    if (!fig) return;
    const overlay = r.querySelector(".lsv-overlay");
    overlay.hidden = false;
    r.dataset.open = String(pos);
    fit(fig);
    overlay.focus({preventScroll: true});
  }
  function close(r) { r.querySelector(".lsv-overlay").hidden = true; delete r.dataset.open; }
  document.addEventListener("click", e => {
    const t = e.target, r = root();
    if (!r || !(t instanceof Element)) return;
    const mine = t.closest(".lsv-root");
    if (mine) {
      const go = t.closest("[data-go]");
      if (go && !go.disabled) show(mine, go.dataset.go);
      else if (t.closest(".lsv-close") || t.classList.contains("lsv-overlay")) close(mine);
      else if (t.closest(".lsv-open")) show(mine, mine.dataset.first);
      return;
    }
    const grid = t.closest("." + r.dataset.grid);
    if (!grid || t.tagName !== "IMG" || !t.closest("[data-testid='stImage']")) return;
    // The i-th image of the grid is the i-th spot drawn; its alt text (its label) must agree, else its label wins.
    const images = [...grid.querySelectorAll("[data-testid='stImage'] img")];
    let pos = r.dataset.order.split(",")[images.indexOf(t)];
    const fig = r.querySelector(`.lsv-slide[data-pos="${pos}"]`);
    if (!fig || fig.dataset.label !== t.alt) {
      const same = [...r.querySelectorAll(".lsv-slide")].find(f => f.dataset.label === t.alt);
      if (!same) return;
      pos = same.dataset.pos;
    }
    e.preventDefault();
    e.stopPropagation();
    show(r, pos);
  }, true);
  document.addEventListener("keydown", e => {
    const r = root();
    if (!r || r.dataset.open === undefined) return;
    if (e.key === "Escape") close(r);
    else {
      const b = shown(r) && shown(r).querySelector(`button[data-key="${e.key}"]`);
      if (!b) return;
      if (!b.disabled) show(r, b.dataset.go);
    }
    e.preventDefault();
    e.stopPropagation();
  }, true);
  window.addEventListener("resize", () => { const r = root(), f = r && shown(r); if (f && r.dataset.open) fit(f); });
})();
</script>"""
