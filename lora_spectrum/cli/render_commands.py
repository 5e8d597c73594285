"""The commands that look and render: ``inspect``, ``demo``, ``grid``, ``bench``, ``insight``. Parsing and printing
only; every command calls the core functions the app uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lora_spectrum.bases.families import DEMO_FAMILY, FAMILY_NAMES, REGISTRY
from lora_spectrum.cli.arguments import (
    add_executor_arguments,
    apply_executor_arguments,
    csv_floats,
    csv_ints,
    quiet_libraries,
)
from lora_spectrum.errors import ConfigError, LoraSpectrumError
from lora_spectrum.language import N_, _, current, pad, pgettext, width


def add_parsers(sub) -> None:
    s = sub.add_parser("inspect", help="list the LoRA files of a folder with their epochs, states and metadata")
    s.add_argument("--loras", required=True, help="the loras folder")
    s.add_argument("--json", action="store_true", help="print a JSON array instead of a table")

    s = sub.add_parser("demo", help="write the offline demo base and its epoch LoRAs")
    s.add_argument("--out", required=True)
    s.add_argument("--family", choices=FAMILY_NAMES, default=DEMO_FAMILY)
    s.add_argument("--random", action="store_true", help="the random-weight demo instead of the trained one")

    s = sub.add_parser("grid", help="render epochs x seeds x strengths side by side into a labelled grid")
    s.add_argument("--base", help="repo id, diffusers folder or single-file checkpoint; 'demo' for the demo base")
    s.add_argument("--loras", help="the loras folder (default: the config's, or the demo's with --base demo)")
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--family", choices=[*FAMILY_NAMES, "auto"])
    s.add_argument("--series")
    s.add_argument("--epochs", default="all", help="all, or comma-separated epoch numbers")
    s.add_argument("--include-base", action="store_true")
    s.add_argument("--seeds", type=csv_ints, default=[1])
    s.add_argument("--strengths", type=csv_floats, default=[1.0])
    s.add_argument("--prompt")
    s.add_argument("--negative")
    s.add_argument("--steps", type=int)
    s.add_argument("--cfg", type=float)
    s.add_argument("--sampler")
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--cache-dir")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--mix", type=int, metavar="N",
                   help="render up to N epochs (or strengths) in one batched call, each sample through its own "
                        "adapter; memory grows with N x seeds (default: the config's batch_epochs)")
    s.add_argument("--compile", nargs="?", const="on", choices=["off", "on", "auto"],
                   help="run the denoiser through torch.compile (--compile alone: on; default: the config's)")
    s.add_argument("--no-prefetch", action="store_true",
                   help="do not read the next epoch in the background while one renders")
    add_executor_arguments(s)

    s = sub.add_parser("bench", help="measure swap speed and memory against diffusers' ways, side by side")
    s.add_argument("--model", choices=["tiny", *(f.bench_model for f in REGISTRY if f.bench_model)], default="tiny",
                   help="tiny, or a family's real denoiser size (GPU-only ones refuse a CPU with the reason)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.add_argument("--rank", type=int, default=32)
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--swaps", type=int, default=200, help="swaps for the memory-growth figure")
    s.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="the weights' dtype (auto: float16/bfloat16 on CUDA, bfloat16 for full-size models on a CPU)")
    s.add_argument("--compile", action="store_true",
                   help="also time the denoiser through torch.compile against eager, with the compile time; the "
                        "verdict is recorded for compile: auto")
    add_executor_arguments(s)
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("insight", help="weight-space curves and the loss curve; with --probe, renders a probe set, "
                                       "weighs style against prompt fidelity and gives the verdict")
    s.add_argument("--loras", help="the loras folder (required unless --base is given: then the config's, or the "
                                   "demo's with --base demo)")
    s.add_argument("--series")
    s.add_argument("--logs", help="a training log folder with TensorBoard event files")
    s.add_argument("--grid", help="a grid output folder whose manifest.json adds image measures")
    s.add_argument("--clip-model", help="CLIP model id or folder for the image measures (default: "
                                        "$LORA_SPECTRUM_CLIP_MODEL or openai/clip-vit-base-patch32)")
    s.add_argument("--clip-download", action="store_true",
                   help="let the CLIP model download once if it is not on this machine (default: local files only)")
    s.add_argument("--base", help="with --probe: repo id, diffusers folder or single file; 'demo' for the demo")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--probe", nargs="?", const="auto", metavar="SET",
                   help="render a probe set over every epoch and the base: a name from configs/probes/, a .yaml "
                        "set or a kohya sample-prompt .txt (default: the config's probe_set; shapes on the demo, "
                        "else general)")
    add_executor_arguments(s)
    s.add_argument("--probe-out", help="where the probe's renders go (default: .cache/probes/<series>-<set>)")
    s.add_argument("--references", help="a folder of training images: style is then likeness to them (CLIP-I; "
                                        "the demo's own style set on the demo)")
    s.add_argument("--preference", choices=("fidelity", "balanced", "style"), default="balanced",
                   help="where on the style/fidelity front the verdict picks (default balanced)")
    s.add_argument("--mix", type=int, metavar="N", help="epochs per batched call for the probe (default: the "
                                                        "config's batch_epochs)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--json", action="store_true")


def _cmd_inspect(args) -> int:
    from lora_spectrum.loras.catalog import Catalog

    folder = Path(args.loras)
    if not folder.is_dir():
        print(_("lora-spectrum: {folder}: loras folder does not exist").format(folder=folder), file=sys.stderr)
        return 2
    entries = Catalog(folder).scan()
    # The state a base would see (``problem()``: the swap's own checks), so no file is listed ready that cannot render.
    listed = {e.name: e.problem() or (e.state, "") for e in entries}
    if args.json:
        print(json.dumps([{**e.to_json(), "state": listed[e.name][0], "reason": listed[e.name][1]} for e in entries],
                         indent=2, ensure_ascii=False))
        return 0
    rows = [(*(_(h) for h in (N_("file"), N_("series"), N_("epoch"), N_("step"), N_("state"), N_("format"),
                              N_("algorithm"))), pgettext("LoRA", "rank"),
             *(_(h) for h in (N_("alpha"), N_("unet/dit"), N_("te"), N_("reason"))))]
    for e in entries:
        rows.append((e.name, e.series, "" if e.epoch is None else str(e.epoch), "" if e.step is None else str(e.step),
                     _(listed[e.name][0]), e.format, e.algorithm, "" if e.rank is None else str(e.rank),
                     "" if e.alpha is None else f"{e.alpha:g}", str(e.denoiser_keys), str(e.text_encoder_keys),
                     listed[e.name][1]))
    widths = [max(width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(pad(c, w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    if not entries:
        print(_("(no LoRA files in {folder})").format(folder=folder))
    return 0


def _cmd_demo(args) -> int:
    from lora_spectrum.demo import copy_trained_demo, write_demo

    if args.random or args.family != DEMO_FAMILY:  # the trained demo is of the demo family only
        base, loras = write_demo(args.out, args.family)
        print(f"demo base: {base}\ndemo loras: {loras}")
    else:
        base, loras, logs = copy_trained_demo(args.out)
        print(f"demo base: {base}\ndemo loras: {loras}\ntraining log: {logs}")
    return 0


def _cmd_grid(args) -> int:
    """Exit 0 all rendered, 1 some cells failed, 2 bad arguments or base."""
    from lora_spectrum.execution.startup import open_workbench
    from lora_spectrum.records.grid_files import write_outputs
    from lora_spectrum.render.plan import column_label, make_plan, select_columns
    from lora_spectrum.render.render_cache import RenderCache
    from lora_spectrum.render.runs import run_plan
    from lora_spectrum.settings import load_settings

    def fail(msg: str) -> int:
        print(_("lora-spectrum grid: {message}").format(message=msg), file=sys.stderr)
        return 2

    try:
        # 1. Settings, then the command line on top.
        settings = load_settings(args.config)
        if args.base:  # a base named here is read for its own family, not the config's
            settings.base, settings.family = args.base, "auto"
        if args.family:
            settings.family = args.family
        if args.device:
            settings.device = args.device
        if args.loras:  # paths typed on the command line are relative to the current folder
            settings.loras = str(Path(args.loras).resolve())
        if args.cache_dir:
            settings.cache_dir = str(Path(args.cache_dir).resolve())
        if args.compile:
            settings.compile = args.compile
        if args.no_prefetch:
            settings.prefetch = False
        bad = apply_executor_arguments(args, settings)
        if bad:
            return fail(bad)
        # 2. Check what is cheap to check before loading a base.
        for name in ("steps", "width", "height", "mix"):
            v = getattr(args, name)
            if v is not None and v < 1:
                return fail(_("--{name} must be at least 1").format(name=name))
        # 3. The base (or the demo with --base demo) and its loras folder.
        choice = open_workbench(settings, allow_demo=settings.base == "demo", loras_given=bool(args.loras),
                                say=lambda msg: print(msg, file=sys.stderr, flush=True))
        engine = choice.engine
        catalog = choice.catalog()
        catalog.scan()
        columns, skipped = select_columns(catalog, args.series, args.epochs, args.include_base, engine.family.name)
        for name, why in skipped:
            print(_("skipped {file}: {reason}").format(file=name, reason=why), file=sys.stderr)
        sampling = engine.defaults.sampling.override(negative_prompt=args.negative, steps=args.steps,
                                                     guidance=args.cfg, width=args.width, height=args.height,
                                                     sampler=args.sampler or None)
        plan = make_plan(engine.defaults, columns, args.seeds, args.strengths,
                         [args.prompt] if args.prompt is not None else [choice.prompt], sampling)
    except LoraSpectrumError as exc:
        return fail(current().error(exc))
    cache = None if args.no_cache else RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)

    def progress(done, total, cell):
        print(_("[{done}/{total}] {label} seed {seed} strength {strength}: {state}").format(
            done=done, total=total, label=column_label(plan.columns[cell.column], translate=_), seed=cell.seed, strength=f"{cell.strength:g}",
            state=_state(cell)), file=sys.stderr, flush=True)

    # 4. Render, write, report.
    pool = engine.executor
    try:
        cells = run_plan(engine, plan, catalog, cache, progress, mix=args.mix or settings.batch_epochs)
        workers = pool.record() if pool is not None else {"executor": "local"}
    finally:
        if pool is not None:
            pool.close()
    manifest = write_outputs(args.out, plan, cells, engine.base_id, engine.family.name,
                             extra={"engine": {"fuse": engine.fuse_mode, "compiled": engine.compiled,
                                               "prefetch": engine.prefetch_enabled, **workers}})
    _add_insight(args.out, manifest, catalog, columns)
    failed = [c for c in cells if c.error]
    for c in failed:
        print(_("{label} seed {seed}: {error}").format(label=column_label(plan.columns[c.column], translate=_),
                                                      seed=c.seed, error=c.error), file=sys.stderr)
    print(_("wrote {grid} and {n} cell(s); {failed} failed").format(grid=Path(args.out) / "grid.png",
                                                                   n=len(cells) - len(failed), failed=len(failed)),
          file=sys.stdout)
    return 1 if failed else 0


def _add_insight(out_dir, manifest: dict, catalog, columns) -> None:
    """Add the epoch measures (weight and image curves, the verdict as far as they go) to the written manifest."""
    from lora_spectrum import measures

    series = next((c.series for c in columns if c is not None), None)
    try:
        catalog.scan()  # the folder as it is now: files may have changed while the grid rendered
        manifest["insight"] = measures.series_insight(catalog, series=series, grid=out_dir)
    except LoraSpectrumError as exc:
        manifest["insight"] = {"error": str(exc)}
    path = Path(out_dir) / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")


def _cmd_bench(args) -> int:
    if args.executor == "ray":  # the grid on one engine against a Ray pool (bench/cluster.py)
        from lora_spectrum.bench.cluster import format_cluster, run_cluster_benchmark

        result = run_cluster_benchmark(model=args.model, device=args.device, workers=args.workers or 0,
                                       address=args.ray_address or "", dtype=args.dtype,
                                       progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(json.dumps(result, indent=2) if args.json else format_cluster(result))
        return 0
    from lora_spectrum.bench import format_table, run_benchmark

    result = run_benchmark(model=args.model, device=args.device, rank=args.rank, epochs=args.epochs,
                           swaps=args.swaps, progress=lambda msg: print(msg, file=sys.stderr, flush=True),
                           dtype=args.dtype, compile=args.compile)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def _cmd_insight(args) -> int:
    from lora_spectrum.loras.catalog import Catalog
    from lora_spectrum.measures import format_insight, series_insight
    from lora_spectrum.workbench import logs_folder

    if args.probe is None and not args.loras:
        print(_("lora-spectrum insight: give --loras (or --base with --probe)"), file=sys.stderr)
        return 2
    probe, logs, catalog, clip_model, allow, choice = None, None, None, args.clip_model, args.clip_download, None
    if args.probe is not None:
        catalog, probe, logs, settings, choice = _run_probe(args)
        clip_model = clip_model or choice.clip_model(settings)
        allow = allow or not settings.local_files_only
    else:
        catalog = Catalog(args.loras)
        catalog.scan()
    # The log folder as the app picks it, less what only the app has (a config, the demo): --logs as typed, else
    # <loras>/logs when there is one.
    logs = args.logs or logs or logs_folder(catalog.folder)
    references = args.references or (choice.references if args.probe is not None else None)
    result = series_insight(catalog, series=args.series, logs=logs, grid=args.grid, clip_model=clip_model,
                            allow_download=allow, probe=probe, references=references,
                            ratings=_votes_of(catalog, args), preference=args.preference)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_insight(result))
    return 0


def _votes_of(catalog, args) -> dict | None:
    """The series' blind ranking when the config's ratings folder holds votes for it (the verdict weighs them)."""
    from lora_spectrum.decision.votes import series_ratings
    from lora_spectrum.settings import load_settings

    settings = load_settings(args.config)
    summary = series_ratings(catalog, args.series, settings.path(settings.ratings_dir))
    return summary if summary["votes"] else None


def _run_probe(args):
    """``insight --probe``: open the base, render the probe set over the series, return (catalog, probe folder,
    log folder, settings, the engine choice)."""
    from lora_spectrum.execution.startup import open_workbench
    from lora_spectrum.probes import find_probe_set
    from lora_spectrum.render.probe_runs import run_probe
    from lora_spectrum.render.render_cache import RenderCache
    from lora_spectrum.settings import load_settings

    quiet_libraries()
    settings = load_settings(args.config)
    if args.base:
        settings.base, settings.family = args.base, "auto"
    if args.device:
        settings.device = args.device
    if args.loras:
        settings.loras = str(Path(args.loras).resolve())
    bad = apply_executor_arguments(args, settings)
    if bad:
        raise ConfigError(bad)
    choice = open_workbench(settings, allow_demo=settings.base == "demo", loras_given=bool(args.loras),
                            say=lambda msg: print(msg, file=sys.stderr, flush=True))
    catalog = choice.catalog()
    catalog.scan()
    series, entries = catalog.choose_series(args.series)
    triggers = [w for e in entries for w in e.trigger_words]
    probe_set = find_probe_set(args.probe, settings, demo=choice.is_demo, trigger_words=triggers)
    out = Path(args.probe_out or settings.path(".cache/probes") / f"{series}-{probe_set.name}")
    cache = None if args.no_cache else RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb)

    def progress(done, total, cell):
        print(_("[probe {done}/{total}] {label} seed {seed}: {state}").format(
            done=done, total=total, label=cell.label, seed=cell.seed, state=_state(cell)), file=sys.stderr, flush=True)

    pool = choice.engine.executor
    try:
        run = run_probe(choice.engine, catalog, probe_set, out, series=series, cache=cache, on_progress=progress,
                        mix=args.mix or settings.batch_epochs)
    finally:
        if pool is not None:
            pool.close()
    print(_("probe {name}: {n} image(s) in {folder}, {failed} failed").format(
        name=probe_set.name, n=len(run.cells), folder=out, failed=run.failed), file=sys.stderr)
    return catalog, out, choice.logs_folder(settings, args.logs), settings, choice


def _state(cell) -> str:
    return _("cached") if cell.cached else (_("FAILED") if cell.error else f"{cell.seconds:.2f}s")


COMMANDS = {"inspect": _cmd_inspect, "demo": _cmd_demo, "grid": _cmd_grid, "bench": _cmd_bench,
            "insight": _cmd_insight}
