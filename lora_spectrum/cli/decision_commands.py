"""The commands that decide and ship: ``ratings`` (the blind ranking so far, then the verdict), ``promote`` (an epoch
as a release file with its model card and the verdict as it stood) and ``report`` (one self-contained HTML file of a
grid). Parsing and printing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lora_spectrum.language import _, current

MB = 1024 * 1024

PROBE_HELP = ("a probe folder already rendered by 'insight --probe' (it holds probe.json): its measures judge the "
              "epochs (default: none; the verdict then says no probe has judged them). Its CLIP: the config's "
              "clip_model, else the demo's own CLIP when the loras are the demo's or the probe was rendered on the "
              "demo base, else the default CLIP if it is on this machine (pixel measures otherwise)")


def _verdict_arguments(s) -> None:
    """--probe, --references, --preference, --logs: what the verdict weighs, as ``insight`` takes them."""
    s.add_argument("--probe", metavar="DIR", help=PROBE_HELP)
    s.add_argument("--references", help="with --probe: a folder of training images for its style measure (default: "
                                        "the demo's style set on the demo, as for the CLIP of --probe, else none)")
    s.add_argument("--preference", choices=("fidelity", "balanced", "style"), default="balanced",
                   help="where on the style/fidelity front the verdict picks (default balanced)")
    s.add_argument("--logs", help="a training log folder for the verdict's context and the card's measures "
                                  "(default: <loras>/logs)")


def add_parsers(sub) -> None:
    s = sub.add_parser("ratings", help="the blind ranking of a series' epochs from the votes cast in the Rank view, "
                                       "then the series' verdict as far as the votes (and --probe) tell it")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--series")
    s.add_argument("--config", help="settings file (default configs/default.yaml): its ratings_dir holds the votes")
    s.add_argument("--ratings-dir", help="where the votes are (default: the config's ratings_dir)")
    _verdict_arguments(s)
    s.add_argument("--json", action="store_true", help="the ranking as JSON, with the verdict under 'verdict'")

    s = sub.add_parser("promote", help="copy one epoch out as a release file (same tensors; provenance and the "
                                       "series' verdict as it stands in its metadata) with a model card")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--epoch", required=True, type=int, help="the epoch (or step, for step-numbered files)")
    s.add_argument("--series")
    s.add_argument("--to", required=True, help="the folder the release file and its card go to")
    s.add_argument("--name", help="the release name (default: the series name)")
    s.add_argument("--note", default="", help="why this epoch; goes into the metadata and the card")
    s.add_argument("--grid", help="a grid output folder: its grid image, settings and image measures go into the card")
    s.add_argument("--base", help="the base model the LoRA was judged on (default: the grid's, else the metadata's)")
    s.add_argument("--layout", choices=("hub", "flat"), default="hub",
                   help="hub (default): the folder is a Hugging Face repository: the card is README.md, this epoch's "
                        "renders from --grid go to images/ as its examples; flat: NAME.md beside other releases")
    s.add_argument("--license", help="the license for the card's front matter, a hub license id such as openrail++ "
                                     "(default: the config's license, else the file's modelspec.license; none otherwise, "
                                     "and the card says so)")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--ratings-dir", help="where the votes are (default: the config's ratings_dir)")
    s.add_argument("--push", metavar="REPO_ID",
                   help="then upload the release to this Hugging Face Hub model repository (namespace/name; created "
                        "when missing, else updated in one commit): exactly the files promote wrote, the card as "
                        "README.md. The token is huggingface_hub's: HF_TOKEN, else `hf auth login`")
    s.add_argument("--private", action="store_true", help="with --push: create the repository private (an existing "
                                                           "public one is refused, never changed)")
    s.add_argument("--endpoint", help="with --push: the hub to push to (default: the config's hub_endpoint, else "
                                      "HF_ENDPOINT, else https://huggingface.co)")
    _verdict_arguments(s)

    s = sub.add_parser("push", help="upload a release folder that promote wrote to a Hugging Face Hub model "
                                    "repository (again, after a push that failed): exactly its release files")
    s.add_argument("folder", help="the folder promote wrote the release to (--to)")
    s.add_argument("repo_id", metavar="REPO_ID", help="namespace/name; created when missing, else updated")
    s.add_argument("--name", help="the release's name, when the folder holds several (flat layout)")
    s.add_argument("--private", action="store_true", help="create the repository private (an existing public one "
                                                           "is refused, never changed)")
    s.add_argument("--endpoint", help="the hub to push to (default: the config's hub_endpoint, else HF_ENDPOINT, "
                                      "else https://huggingface.co)")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")

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
    from lora_spectrum.errors import CatalogError
    from lora_spectrum.loras.catalog import Catalog

    if not Path(folder).is_dir():
        raise CatalogError(f"{folder}: loras folder does not exist")
    catalog = Catalog(Path(folder).resolve())
    catalog.scan()
    return catalog


def _same_folder(a, b) -> bool:
    return bool(a) and Path(a).expanduser().resolve() == Path(b).resolve()


def _probe_measurers(catalog, args, settings) -> tuple[str | None, str | None]:
    """(CLIP, style references) for --probe's folder, as ``insight --probe`` picks them: the config's clip_model,
    else on the demo (its loras, or a probe rendered on its base) the demo's own CLIP and style set; else none."""
    from lora_spectrum import demo
    from lora_spectrum.render.probe_runs import read_probe

    if not args.probe:
        return settings.clip_model or None, None
    _folder, record = read_probe(args.probe)  # not a probe folder: one line naming it, before anything is measured
    on_demo = (_same_folder(catalog.folder, demo.ASSETS_DIR / demo.LORAS_DIRNAME)
               or _same_folder(record.get("base"), demo.ASSETS_DIR / demo.BASE_DIRNAME))
    clip = settings.clip_model or (demo.assets.demo_clip_dir() if on_demo else None)
    references = args.references or (demo.assets.demo_style_dir() if on_demo else None)
    return (str(clip) if clip else None), (str(references) if references else None)


def _judge(catalog, series: str, args, ranking: dict, grid: str | None = None) -> dict:
    """``series_insight`` with what its verdict weighs: the votes, --probe's measures, the training log (and the
    grid's image measures for the card). A --probe that cannot be measured is an error, never left out."""
    from lora_spectrum import measures
    from lora_spectrum.errors import ConfigError
    from lora_spectrum.settings import load_settings
    from lora_spectrum.workbench import logs_folder

    settings = load_settings(args.config)
    clip, references = _probe_measurers(catalog, args, settings)
    insight = measures.series_insight(
        catalog, series=series, logs=args.logs or logs_folder(catalog.folder), grid=grid, clip_model=clip,
        allow_download=not settings.local_files_only, probe=args.probe, references=references,
        ratings=ranking if ranking.get("votes") else None, preference=args.preference, lenient=True)
    if args.probe and insight["probe"] is None:
        raise ConfigError(_("{folder}: the probe could not be measured ({why})").format(
            folder=args.probe, why="; ".join(insight["notes"])))
    return insight


def _cmd_ratings(args) -> int:
    from lora_spectrum.decision.votes import format_ratings, series_ratings
    from lora_spectrum.measures.report import verdict_lines

    catalog = _catalog(args.loras)
    summary = series_ratings(catalog, args.series, _ratings_dir(args))
    verdict = _judge(catalog, summary["series"], args, summary)["verdict"]
    if args.json:
        print(json.dumps({**summary, "verdict": verdict}, indent=2, ensure_ascii=False))
    else:
        print("\n".join([format_ratings(summary), "", *verdict_lines(verdict)]))
    return 0


def _cmd_promote(args) -> int:
    from lora_spectrum.decision.promotion import promote
    from lora_spectrum.decision.votes import series_ratings
    from lora_spectrum.errors import LoraSpectrumError
    from lora_spectrum.measures.report import verdict_lines
    from lora_spectrum.records.grid_files import read_manifest

    # 1. The folder as it is now, and what is known about the series: the votes, the grid, the measures and the
    #    verdict they give now (recorded as it stood when shipping). A push that could not start (no token, a bad
    #    repo id) is refused before anything is written.
    _check_push(args)
    catalog = _catalog(args.loras)
    series, _entries = catalog.choose_series(args.series)
    ranking = series_ratings(catalog, series, _ratings_dir(args))
    manifest = read_manifest(args.grid)[1] if args.grid else {}
    try:
        insight = _judge(catalog, series, args, ranking, grid=args.grid)
    except LoraSpectrumError as exc:
        if args.probe:  # asked for a probe's judgement: never shipped without it
            raise
        # the measures only enrich the card: a log or grid that cannot be read leaves them out, with a word
        print(_("lora-spectrum promote: measures left out of the card: {error}").format(error=current().error(exc)),
              file=sys.stderr)
        insight = None
    base = args.base or (manifest.get("settings") or {}).get("base")
    # 2. The copy and its card; the source is never modified, an existing target never overwritten.
    done = promote(catalog, args.epoch, args.to, series=series, name=args.name, note=args.note,
                   ranking=ranking if ranking.get("votes") else None, insight=insight, grid=args.grid,
                   base_id=base, layout=args.layout, license=args.license or _settings_license(args))
    print("\n".join([
        _("promoted {source} (epoch {epoch}, sha256 {sha256}) to {path}").format(
            source=done.source, epoch=done.epoch, sha256=done.sha256[:12], path=done.path),
        _("model card: {path}").format(path=done.card),
        *([_("grid image: {path}").format(path=done.grid_image)] if done.grid_image else []),
        *(verdict_lines(insight["verdict"]) if insight else [])]), flush=True)
    # 3. The release onto the hub, when asked: what was written stays, whatever the hub answers.
    if args.push:
        _push(done, args)
    return 0


def _check_push(args) -> None:
    """--private and --endpoint go with --push; a push needs a token and a repo id the hub takes."""
    from lora_spectrum.decision.hub_push import check_repo_id, hub_token
    from lora_spectrum.errors import ConfigError

    if not args.push:
        if args.private or args.endpoint:
            raise ConfigError(_("--private and --endpoint go with --push REPO_ID"))
        return
    check_repo_id(args.push)
    hub_token()


def _push(done, args) -> None:
    """Upload the promotion's files (``hub_push``), progress on stderr, the repo's address last on stdout."""
    from lora_spectrum.decision.hub_push import commit_message, published_files, push_release
    from lora_spectrum.settings import load_settings

    def progress(files: int, total: int, done_bytes: int, nbytes: int) -> None:
        print(_("[push] {files} / {total} files, {done} / {all} MB").format(
            files=files, total=total, done=f"{done_bytes / MB:.1f}", all=f"{nbytes / MB:.1f}"), file=sys.stderr,
            flush=True)

    endpoint = args.endpoint or load_settings(args.config).hub_endpoint or None
    pushed = push_release(published_files(done), args.push, private=args.private, endpoint=endpoint,
                          message=commit_message(done), progress=progress)
    print(_("pushed to {url}").format(url=pushed.url))


def _cmd_push(args) -> int:
    from lora_spectrum.decision.hub_push import check_repo_id, hub_token, release_in

    check_repo_id(args.repo_id)
    hub_token()
    done = release_in(args.folder, args.name)
    args.push = args.repo_id
    _push(done, args)
    return 0


def _settings_license(args) -> str | None:
    from lora_spectrum.settings import load_settings

    return load_settings(args.config).license or None


def _cmd_report(args) -> int:
    from lora_spectrum.decision.html_report import write_report
    from lora_spectrum.records.grid_files import read_manifest

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


COMMANDS = {"ratings": _cmd_ratings, "promote": _cmd_promote, "push": _cmd_push, "report": _cmd_report}
