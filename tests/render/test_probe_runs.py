"""Probe runs (lora_spectrum.render.probe_runs) on the shipped trained demo: every epoch and the base over a probe set,
through the plan, engine and cache; a re-run served from the cache; a cancel that keeps what finished; a kohya
prompt file with per-prompt seeds split into parts."""

from __future__ import annotations

import json
import threading

import pytest

from lora_spectrum.probes import ProbePrompt, ProbeSet, load_kohya_prompts
from lora_spectrum.records.grid_files import read_manifest
from lora_spectrum.render.probe_runs import read_probe, run_probe
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.settings import Settings
from lora_spectrum.workbench import open_engine

# 4 steps, not the demo's 20: these tests follow cells through the plan, engine and cache, not their looks.
SMALL = ProbeSet("small", (ProbePrompt("a blue triangle on a gray background", "new_context", steps=4),
                           ProbePrompt("a green circle on a cream background", "leak", steps=4)), (11,))


@pytest.fixture(scope="module")
def demo_choice(tmp_path_factory):
    settings = Settings(base="demo", demo="trained", device="cpu",
                        cache_dir=str(tmp_path_factory.mktemp("cache")))
    choice = open_engine(settings)
    assert choice.is_demo and choice.engine.family.name == "sdxl"
    return choice


def _files(choice):
    catalog = choice.catalog()
    catalog.scan()
    return catalog, [e.name for e in catalog.entries if e.series == "jimeng"]


def test_a_probe_renders_every_epoch_and_the_base_and_a_rerun_comes_from_the_cache(demo_choice, tmp_path):
    catalog, files = _files(demo_choice)
    cache = RenderCache(tmp_path / "cache")
    seen = []
    run = run_probe(demo_choice.engine, catalog, SMALL, tmp_path / "probe", cache=cache,
                    on_progress=lambda done, total, cell: seen.append((done, total)))
    assert len(files) >= 8
    assert len(run.cells) == (len(files) + 1) * 2 and run.failed == 0 and run.cancelled == 0
    assert seen[-1] == (len(run.cells), len(run.cells)) and [d for d, _ in seen] == list(range(1, len(seen) + 1))
    folder, record = read_probe(tmp_path / "probe")
    assert record["trigger_words"] == ["jimeng style"] and record["complete"] and record["files"] == files
    kinds = {p["kind"]: p for p in record["prompts"]}
    assert kinds["new_context"]["prompt"] == "a blue triangle on a gray background, jimeng style"
    assert kinds["new_context"]["plain"] == "a blue triangle on a gray background"
    assert kinds["leak"]["prompt"] == kinds["leak"]["plain"] == "a green circle on a cream background"
    _, manifest = read_manifest(folder / record["parts"][0])
    assert {c["file"] for c in manifest["cells"]} == {None, *files}
    assert all((folder / record["parts"][0] / c["image"]).is_file() for c in manifest["cells"])
    again = run_probe(demo_choice.engine, catalog, SMALL, tmp_path / "probe2", cache=cache)
    assert all(c.cached for c in again.cells)
    assert [c.png for c in again.cells] == [c.png for c in run.cells]


def test_a_cancelled_probe_keeps_what_finished(demo_choice, tmp_path):
    catalog, files = _files(demo_choice)
    cache = RenderCache(tmp_path / "cache")
    cancel = threading.Event()

    def progress(done, total, cell):
        if done >= 6:
            cancel.set()

    run = run_probe(demo_choice.engine, catalog, SMALL, tmp_path / "probe", cache=cache, on_progress=progress,
                    cancel=cancel)
    finished = [c for c in run.cells if c.image is not None]
    assert 6 <= len(finished) < len(run.cells) and run.cancelled == len(run.cells) - len(finished)
    _, record = read_probe(tmp_path / "probe")
    assert record["complete"] is False and record["cancelled"] == run.cancelled
    again = run_probe(demo_choice.engine, catalog, SMALL, tmp_path / "probe", cache=cache)
    assert sum(c.cached for c in again.cells) == len(finished) and again.cancelled == 0


def test_a_kohya_prompt_file_with_its_own_seeds_runs_in_parts(demo_choice, tmp_path):
    catalog, files = _files(demo_choice)
    prompts = tmp_path / "sample_prompts.txt"
    prompts.write_text("# kohya sample prompts\n"
                       "a red circle on a white background, jimeng style --d 5 --s 3 --l 4\n"
                       "a blue square on a white background --d 6 --s 3 --l 4\n", encoding="utf-8")
    probe_set = load_kohya_prompts(prompts, ["jimeng style"])
    run = run_probe(demo_choice.engine, catalog, probe_set, tmp_path / "probe")
    _, record = read_probe(tmp_path / "probe")
    assert len(record["parts"]) == 2 and len(run.cells) == 2 * (len(files) + 1)
    assert [p["kind"] for p in record["prompts"]] == ["style", "leak"]
    seeds = [json.loads((tmp_path / "probe" / part / "manifest.json").read_text())["settings"]["seeds"]
             for part in record["parts"]]
    steps = {json.loads((tmp_path / "probe" / part / "manifest.json").read_text())["settings"]["steps"]
             for part in record["parts"]}
    assert seeds == [[5], [6]] and steps == {3}
