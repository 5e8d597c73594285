"""The watcher against a stand-in trainer process: each complete epoch file judged exactly once, never a partial
one, a replaced file judged again; the ``watch`` command's lines, ``--once``, TensorBoard scalars and Ctrl-C."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_spectrum.demo import assets
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.probes import probe_set_from_mapping
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.settings import Settings
from lora_spectrum.watch.live_judge import ProbeJudge
from lora_spectrum.watch.watcher import Watcher
from lora_spectrum.workbench import demo_engine
from tests import stand_in_trainer

REPO = Path(__file__).resolve().parents[2]
SMALL = {"seeds": [11], "style": ["a red circle on a white background"],
         "new_context": ["a blue triangle on a gray background"], "leak": ["a green circle on a cream background"]}
# SMALL in 4 steps, not the demo's 20, for the tests that look at which files are judged and when, not at what the
# verdict says (the renders, hence the measures, change with the step count).
QUICK = {k: v if k == "seeds" else [{"prompt": p, "steps": 4} for p in v] for k, v in SMALL.items()}
FINAL = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in stand_in_trainer.epoch_files()}


@pytest.fixture(scope="module")
def engine():
    return demo_engine(Settings(device="cpu")).engine


def judge_for(engine, folder: Path, tmp: Path, calls: list) -> ProbeJudge:
    real = ProbeJudge(engine, Catalog(folder), probe_set_from_mapping(QUICK, "quick", "test"), tmp / "probe",
                      cache=RenderCache(tmp / "cache"), clip_model=str(assets.demo_clip_dir()),
                      references=assets.demo_style_dir())

    def judge(files):
        # Every file handed to the judge is complete: its bytes are the final ones.
        calls.append({f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in files})
        real.catalog = watcher.catalog
        return real(files)

    watcher = Watcher(Catalog(folder))
    return watcher, judge


def test_each_complete_file_is_judged_once_and_never_a_partial_one(engine, tmp_path):
    folder = tmp_path / "loras"
    calls: list = []
    watcher, judge = judge_for(engine, folder, tmp_path, calls)
    writer = subprocess.Popen([sys.executable, "-m", "tests.stand_in_trainer", str(folder), "--pause", "0.1",
                               "--between", "0.3"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    events: list[dict] = []
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = writer.poll() is not None
        events += watcher.poll(judge)
        if done and not watcher.pending():
            events += watcher.poll(judge)
            break
        time.sleep(0.2)
    assert writer.wait(timeout=10) == 0
    judged = [e["file"] for e in events if e["event"] == "judged"]
    assert sorted(judged) == sorted(FINAL) and len(judged) == len(set(judged)), judged
    for call in calls:
        assert all(FINAL.get(f) == digest for f, digest in call.items()), "a partial file was judged"
    skipped = {e["file"] for e in events if e["event"] == "skipped"}
    assert stand_in_trainer.TEMPORARY in skipped and stand_in_trainer.TRUNCATED in skipped
    verdicts = [e for e in events if e["event"] == "verdict"]
    assert verdicts and all({"epoch", "stop", "saves"} <= set(v["verdict"]) for v in verdicts)
    assert verdicts[-1]["files"] == len(FINAL)

    # The same name replaced by other bytes is judged again, and only it.
    target = folder / "jimeng_9.safetensors"
    target.write_bytes((folder / "jimeng_12.safetensors").read_bytes())
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = watcher.poll(judge) + watcher.poll(judge)
    assert [e["file"] for e in again if e["event"] == "judged"] == ["jimeng_9.safetensors"]


def _watch(tmp_path, *extra, probe=SMALL):
    small = tmp_path / "small.yaml"
    small.write_text(json.dumps(probe), encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ndevice: cpu\ncache_dir: {tmp_path / 'cache'}\n", encoding="utf-8")
    return [sys.executable, "-m", "lora_spectrum", "watch", "--config", str(config), "--base", "demo", "--probe",
            str(small), "--probe-out", str(tmp_path / "probe"), *extra]


def test_watch_once_prints_json_lines_and_writes_tensorboard_scalars(tmp_path):
    from tbparse import SummaryReader

    loras = tmp_path / "loras"
    loras.mkdir()
    for p in stand_in_trainer.epoch_files()[:3]:
        (loras / p.name).write_bytes(p.read_bytes())
    (loras / "jimeng_9.safetensors.part").write_bytes(b"123")
    board = tmp_path / "board"
    done = subprocess.run(_watch(tmp_path, "--loras", str(loras), "--once", "--json", "--tensorboard", str(board)),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["event"] for e in lines} == {"skipped", "judged", "verdict"}
    judged = [e for e in lines if e["event"] == "judged"]
    assert [e["epoch"] for e in judged] == [3, 6, 9] and all(e["file"] and "measures" in e for e in judged)
    assert all({"epoch", "stop"} <= set(e["verdict"]) for e in judged), "each file's line carries the verdict"
    verdict = lines[-1]["verdict"]
    assert lines[-1]["event"] == "verdict" and verdict["epoch"] in (3, 6, 9) and verdict["stop"] is False
    assert lines[-1]["file"] == "jimeng_9.safetensors" and lines[-1]["epoch"] == 9
    tags = set(SummaryReader(str(board)).scalars["tag"])
    assert {"lora_spectrum/style", "lora_spectrum/fidelity_kept", "lora_spectrum/leak", "lora_spectrum/pick"} <= tags


def test_ctrl_c_stops_the_watcher_cleanly_and_leaves_no_half_written_cache_entry(tmp_path):
    loras = tmp_path / "loras"
    loras.mkdir()
    for p in stand_in_trainer.epoch_files():
        (loras / p.name).write_bytes(p.read_bytes())
    proc = subprocess.Popen(_watch(tmp_path, "--loras", str(loras), "--interval", "0.2", probe=QUICK), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:  # interrupt in the middle of the probe's renders
        seen += line.startswith("[probe ")
        if seen == 5:
            proc.send_signal(signal.SIGINT)
            break
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "watch stopped" in err
    cache = tmp_path / "cache"
    assert not list(cache.rglob("*.tmp"))
    from PIL import Image

    for png in cache.rglob("*.png"):
        with Image.open(png) as im:
            im.load()
