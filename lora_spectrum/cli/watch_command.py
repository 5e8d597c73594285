"""The ``watch`` command: follow a folder a trainer is writing into, judge each epoch file once it is complete, and
print one line per happening (one JSON object per line with ``--json``). Parsing and printing only: the folder is
followed by ``watcher.py``, each file judged by ``live_judge.py``."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from lora_spectrum.cli.arguments import quiet_libraries
from lora_spectrum.errors import ConfigError
from lora_spectrum.language import _

DEFAULT_INTERVAL = 5.0  # seconds between looks at the folder


def add_parsers(sub) -> None:
    s = sub.add_parser("watch", help="follow a folder a trainer writes into: probe each new epoch as it lands and "
                                     "say when the run has passed its best")
    s.add_argument("--loras", required=True, help="the folder the trainer saves its epoch files into")
    s.add_argument("--series", help="the series to follow (default: the only one, or the newest)")
    s.add_argument("--base", help="repo id, diffusers folder or single file; 'demo' for the demo (default: the "
                                  "config's base)")
    s.add_argument("--probe", default="auto", metavar="SET",
                   help="the probe set (a name from configs/probes/, a .yaml set or a kohya .txt; default: the "
                        "config's probe_set, shapes on the demo)")
    s.add_argument("--config", help="settings file (default configs/default.yaml)")
    s.add_argument("--logs", help="the training log folder (its validation loss is context for the verdict)")
    s.add_argument("--references", help="a folder of training images for the style measure")
    s.add_argument("--preference", choices=("fidelity", "balanced", "style"), default="balanced")
    s.add_argument("--probe-out", help="where the probe's renders go (default: .cache/probes/<series>-<set>)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="cpu, or cuda: the first visible GPU (CUDA_VISIBLE_DEVICES=1 puts the watcher on a second "
                        "GPU while the trainer holds the first)")
    s.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between looks (default 5)")
    s.add_argument("--settle", type=int, default=None, help="polls a file must stay unchanged before it is judged "
                                                            "(default 2; --once: 1)")
    s.add_argument("--tensorboard", nargs="?", const="auto", metavar="DIR",
                   help="also write style, fidelity, leak and the pick as TensorBoard scalars (default folder: "
                        "<logs>/lora_spectrum, beside the trainer's log)")
    s.add_argument("--once", action="store_true", help="judge what is there now and exit (for trainer hooks)")
    s.add_argument("--json", action="store_true", help="one JSON object per line")


def _print(event: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(event, ensure_ascii=False), flush=True)
        return
    name = event.get("file") or ""
    if event["event"] == "skipped":
        line = _("skipped {file}: {reason}").format(file=name, reason=event["reason"])
    elif event["event"] == "judged":
        m = event["measures"]
        line = _("judged {file}: style {style}, fidelity kept {kept}, leak {leak}").format(
            file=name, style=_num(m.get("style")), kept=_num(m.get("fidelity_kept")), leak=_num(m.get("leak")))
    else:
        v = event["verdict"]
        line = _("verdict after {n} file(s): {reason}").format(n=event["files"], reason=v.get("reason") or "")
        if v.get("stop"):
            line += " " + _("STOP: {advice}").format(advice=v["stop_reason"])
    print(line, flush=True)


def _progress(done, total, cell) -> None:
    from lora_spectrum.cli.render_commands import _state

    print(_("[probe {done}/{total}] {label} seed {seed}: {state}").format(
        done=done, total=total, label=cell.label, seed=cell.seed, state=_state(cell)), file=sys.stderr, flush=True)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _cmd_watch(args) -> int:
    from lora_spectrum.execution.startup import open_workbench
    from lora_spectrum.measures.training_log import read_loss
    from lora_spectrum.probes import find_probe_set
    from lora_spectrum.render.render_cache import RenderCache
    from lora_spectrum.settings import load_settings
    from lora_spectrum.watch.live_judge import ProbeJudge, ScalarWriter
    from lora_spectrum.watch.watcher import Watcher

    # 1. The base, once, and the folder being written.
    quiet_libraries()
    if not Path(args.loras).is_dir():
        raise ConfigError(f"{args.loras}: loras folder does not exist")
    settings = load_settings(args.config)
    if args.base:
        settings.base, settings.family = args.base, "auto"
    if args.device:
        settings.device = args.device
    settings.loras = str(Path(args.loras).resolve())
    choice = open_workbench(settings, allow_demo=settings.base == "demo", loras_given=True,
                            say=lambda msg: print(msg, file=sys.stderr, flush=True))
    catalog = choice.catalog()
    catalog.scan()
    watcher = Watcher(catalog, args.series, settle_polls=args.settle or (1 if args.once else 2))

    # 2. The judge: the probe set, its output folder, the cache, the CLIP model and the log (context only).
    triggers = [w for e in catalog.entries for w in e.trigger_words]
    probe_set = find_probe_set(args.probe, settings, demo=choice.is_demo, trigger_words=triggers)
    logs = choice.logs_folder(settings, args.logs)
    loss = None
    if logs:
        try:
            loss = read_loss(logs)
        except ConfigError as exc:
            print(_("training log not used: {error}").format(error=exc), file=sys.stderr)
    series = args.series or (catalog.choose_series(None)[0] if catalog.entries else "run")
    cancel = threading.Event()
    judge = ProbeJudge(choice.engine, catalog, probe_set,
                       Path(args.probe_out or settings.path(".cache/probes") / f"{series}-{probe_set.name}-watch"),
                       series=args.series, cache=RenderCache(settings.path(settings.cache_dir), settings.cache_max_mb),
                       clip_model=choice.clip_model(settings), references=args.references or choice.references,
                       loss=loss, preference=args.preference, cancel=cancel, on_progress=_progress)
    scalars = None
    if args.tensorboard:
        folder = (Path(args.tensorboard) if args.tensorboard != "auto"
                  else (Path(logs) if logs else Path(args.loras) / "logs") / "lora_spectrum")
        scalars = ScalarWriter(folder)

    # 3. Poll until Ctrl-C (or once). A Ctrl-C inside a render stops it; what finished is kept and cached.
    try:
        while True:
            events = watcher.poll(judge)
            for event in events:
                _print(event, args.json)
            if scalars is not None:
                scalars.write(events)
            if args.once and not watcher.pending():
                return 0
            time.sleep(args.interval if not args.once else 0.2)
    except KeyboardInterrupt:
        cancel.set()
        print(_("watch stopped"), file=sys.stderr, flush=True)
        return 0
    finally:
        if scalars is not None:
            scalars.close()


COMMANDS = {"watch": _cmd_watch}
