"""The commands that decide and ship: ``ratings`` (the blind ranking so far), ``promote`` (an epoch as a release
file with its model card) and ``report`` (one self-contained HTML file of a grid). Parsing and printing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lora_spectrum.language import _, current


def add_parsers(sub) -> None:
    s = sub.add_parser("ratings", help="the blind ranking of a series' epochs from the votes cast in the Rank view")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--series")
    s.add_argument("--config", help="settings file (default configs/default.yaml): its ratings_dir holds the votes")
    s.add_argument("--ratings-dir", help="where the votes are (default: the config's ratings_dir)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("promote", help="copy one epoch out as a release file (same tensors, provenance in its "
                                       "metadata) with a model card")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--epoch", required=True, type=int, help="the epoch (or step, for step-numbered files)")
    s.add_argument("--series")
    s.add_argument("--to", required=True, help="the folder the release file and its card go to")
    s.add_argument("--name", help="the release name (default: the series name)")
    s.add_argument("--note", default="", help="why this epoch; goes into the metadata and the card")
    s.add_argument("--grid", help="a grid output folder: its grid image and settings go into the card")
    s.add_argument("--base", help="the base model the LoRA was judged on (default: the grid's, else the metadata's)")
    s.add_argument("--logs", help="a training log folder for the card's measures (default: <loras>/logs)")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--ratings-dir", help="where the votes are (default: the config's ratings_dir)")

    s = sub.add_parser("report", help="one self-contained HTML file of a grid: cells, parameters, times, measures")
    s.add_argument("--grid", required=True, help="a grid output folder (manifest.json, cells/, grid.png)")
    s.add_argument("--out", required=True, help="the .html file to write")
    s.add_argument("--loras", help="the loras folder: adds the blind ranking of the grid's series")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--ratings-dir", help="where the votes are (default: the config's ratings_dir)")


def _ratings_dir(args) -> Path:
    from lora_spectrum.settings import load_settings

    if args.ratings_dir:
        return Path(args.ratings_dir).resolve()
    settings = load_settings(args.config)
    return settings.path(settings.ratings_dir)


def _catalog(folder: str):
    from lora_spectrum.catalog import Catalog
    from lora_spectrum.errors import CatalogError

    if not Path(folder).is_dir():
        raise CatalogError(f"{folder}: loras folder does not exist")
    catalog = Catalog(Path(folder).resolve())
    catalog.scan()
    return catalog


def _cmd_ratings(args) -> int:
    from lora_spectrum.decision.votes import format_ratings, series_ratings

    catalog = _catalog(args.loras)
    summary = series_ratings(catalog, args.series, _ratings_dir(args))
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else format_ratings(summary))
    return 0


def _cmd_promote(args) -> int:
    from lora_spectrum import measures
    from lora_spectrum.decision.promotion import promote
    from lora_spectrum.decision.votes import series_ratings
    from lora_spectrum.errors import LoraSpectrumError
    from lora_spectrum.grid_files import read_manifest
    from lora_spectrum.workbench import logs_folder

    # 1. The folder as it is now, and what is known about the series: the votes, the measures, the grid.
    catalog = _catalog(args.loras)
    series, _entries = catalog.choose_series(args.series)
    ranking = series_ratings(catalog, series, _ratings_dir(args))
    manifest = read_manifest(args.grid)[1] if args.grid else {}
    try:  # the measures only enrich the card: a log or grid that cannot be read leaves them out, with a word
        insight = manifest.get("insight") if isinstance(manifest.get("insight"), dict) else None
        insight = insight or measures.series_insight(catalog, series=series, logs=args.logs or logs_folder(
            catalog.folder), grid=args.grid, use_clip=False, lenient=True)
    except LoraSpectrumError as exc:
        print(_("lora-spectrum promote: measures left out of the card: {error}").format(error=current().error(exc)),
              file=sys.stderr)
        insight = None
    base = args.base or (manifest.get("settings") or {}).get("base")
    # 2. The copy and its card; the source is never modified, an existing target never overwritten.
    done = promote(catalog, args.epoch, args.to, series=series, name=args.name, note=args.note,
                   ranking=ranking if ranking.get("votes") else None, insight=insight, grid=args.grid,
                   base_id=base)
    print(_("promoted {source} (epoch {epoch}, sha256 {sha256}) to {path}").format(
        source=done.source, epoch=done.epoch, sha256=done.sha256[:12], path=done.path) + "\n"
        + _("model card: {path}").format(path=done.card)
        + ("\n" + _("grid image: {path}").format(path=done.grid_image) if done.grid_image else ""))
    return 0


def _cmd_report(args) -> int:
    from lora_spectrum.decision.html_report import write_report
    from lora_spectrum.grid_files import read_manifest

    ranking = None
    if args.loras:  # the ranking of the series the grid shows: its files' series in the folder as it is now
        from lora_spectrum.decision.votes import series_ratings

        _folder, manifest = read_manifest(args.grid)
        catalog = _catalog(args.loras)
        names = {c.get("file") for c in manifest["cells"]} - {None}
        series = next((e.series for e in catalog.entries if e.name in names), None)
        ranking = series_ratings(catalog, series, _ratings_dir(args))
    out = write_report(args.grid, args.out, ranking=ranking)
    print(_("wrote {path} ({kib} KiB, self-contained)").format(path=out, kib=out.stat().st_size // 1024))
    return 0


COMMANDS = {"ratings": _cmd_ratings, "promote": _cmd_promote, "report": _cmd_report}
