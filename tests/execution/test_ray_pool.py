"""The ``ray`` executor on a real local Ray cluster with 2 CPU workers and the tiny demo base: the same grid as a
local run cell for cell, epoch-major placement, a worker killed mid-plan, cancel, a worker that cannot load the
base, the CLI's ``--executor ray``, and Ray missing. Renders are unfused (``fuse: auto`` decides from each
process's own timings, which would make any two runs differ, local ones too)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from lora_spectrum.errors import ClusterError
from lora_spectrum.execution import Batch
from lora_spectrum.execution.ray_pool import RayPool
from lora_spectrum.execution.startup import open_workbench
from lora_spectrum.render.engine import RenderRequest
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.render_cache import RenderCache
from lora_spectrum.render.runs import run_plan
from lora_spectrum.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red circle", "a blue square"]
STEPS = 4  # of the tiny demo's 8: the grids compare cell for cell, at any step count


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (8 logical CPUs, so that several pools fit at once). No idle workers are
    started ahead: every actor here asks for its own runtime env (``OMP_WAIT_POLICY``), which they lack."""
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,
             _system_config={"prestart_worker_first_driver": False})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bench_settings(tmp_path_factory, demo_dir):
    folder = tmp_path_factory.mktemp("ray")
    loras = folder / "loras"
    shutil.copytree(demo_dir / "loras", loras)
    config = folder / "config.yaml"
    config.write_text(f"base: demo\ndemo: random\ndemo_dir: {demo_dir}\ncache_dir: {folder / 'cache'}\n"
                      f"device: cpu\nfuse: off\nloras: {loras}\n", encoding="utf-8")
    return load_settings(config)


@pytest.fixture(scope="module")
def local(bench_settings):
    """The local engine and catalog: the reference every pool's grid must equal."""
    choice = open_workbench(bench_settings, loras_given=True)
    catalog = choice.catalog()
    catalog.scan()
    return choice, catalog


@pytest.fixture(scope="module")
def reference(local):
    """The local grid of ``grid_plan``: base and every epoch, 2 seeds, 2 prompts."""
    choice, catalog = local
    return run_plan(choice.engine, grid_plan(choice, catalog), catalog)


class SharedPool:
    """The module's pool of 2 workers, shared by its tests (starting one costs two processes that each load the
    base); started again only for a test that finds it no longer whole (a worker killed, or the pool closed)."""

    def __init__(self, settings):
        self.settings, self.current = settings, None

    def whole(self) -> RayPool:
        if self.current is None or len(self.current.alive) < 2:
            self.close()
            self.current = RayPool(replace(self.settings, executor="ray", workers=2), loras_given=True)
            self.current.start()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


@pytest.fixture(scope="module")
def shared_pool(cluster, bench_settings):
    shared = SharedPool(bench_settings)
    yield shared
    shared.close()


@pytest.fixture
def pool(shared_pool):
    """The shared pool, with both its workers alive."""
    return shared_pool.whole()


def grid_plan(choice, catalog, steps=STEPS, seeds=(1, 2), prompts=PROMPTS):
    entries = [e for e in catalog.scan() if e.state == "ready"]
    sampling = choice.engine.defaults.sampling.override(steps=steps)
    return make_plan(choice.engine.defaults, [None, *entries], list(seeds), [1.0], prompts, sampling)


def pixels(cells) -> list[np.ndarray]:
    return [np.asarray(c.image) for c in cells]


def assert_same_grid(cells, reference):
    assert [(c.label, c.prompt, c.seed) for c in cells] == [(c.label, c.prompt, c.seed) for c in reference]
    for c, r in zip(cells, reference, strict=True):
        assert c.error is None, (c.label, c.error)
        assert np.array_equal(np.asarray(c.image), np.asarray(r.image)), (c.label, c.prompt, c.seed)


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_two_workers_render_the_local_grid_cell_for_cell_each_epoch_on_one_worker(pool, local, reference, tmp_path):
    choice, catalog = local
    plan = grid_plan(choice, catalog)
    cache = RenderCache(tmp_path / "cache", 256)
    seen, before = [], pool.files_read()
    cells = run_plan(pool.engine, plan, catalog, cache, on_progress=lambda d, t, c: seen.append(d))
    assert_same_grid(cells, reference)
    assert seen == list(range(1, len(cells) + 1)), "progress counts every cell once, as locally"
    # Epoch-major: every column rendered by one worker, both workers used, each file read by one worker once.
    by_column = {}
    for c in cells:
        by_column.setdefault(c.label, set()).add(c.worker)
    assert all(len(w) == 1 for label, w in by_column.items() if label != "base"), by_column  # base: no file
    assert {w for ws in by_column.values() for w in ws} == {"worker-0", "worker-1"}
    after = pool.files_read()
    reads = {w: {f: n - before.get(w, {}).get(f, 0) for f, n in files.items() if n > before.get(w, {}).get(f, 0)}
             for w, files in after.items()}
    read_by = [(f, name) for name, files in reads.items() for f in files]
    assert sorted(f for f, _ in read_by) == sorted(str(e.path) for e in plan.columns if e is not None)
    assert all(n == 1 for files in reads.values() for n in files.values()), reads
    # The cache keys are the local engine's: a local run of the same plan finds every cell.
    again = run_plan(choice.engine, plan, catalog, cache)
    assert all(c.cached for c in again)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(reference), strict=True))
    # Routed batches (several epochs in one call) stay whole on one worker and match local routed renders.
    one = grid_plan(choice, catalog, seeds=(1,), prompts=PROMPTS[:1])
    routed_ref = run_plan(choice.engine, one, catalog, mix=3)
    routed = run_plan(pool.engine, one, catalog, mix=3)
    assert_same_grid(routed, routed_ref)
    assert any(c.routed for c in routed)


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_cancel_stops_every_worker_within_a_step_and_the_next_run_is_whole(pool, local):
    choice, catalog = local
    plan = grid_plan(choice, catalog, steps=160, seeds=(3,), prompts=PROMPTS[:1])
    cancel, busy = threading.Event(), {}

    def on_step(i, n, label):
        busy[label.rsplit(" on ", 1)[1]] = (i, n)
        # Both workers inside a render with many steps to go: each must stop there, not at its end.
        if len(busy) == 2 and all(2 <= i <= n - 60 for i, n in busy.values()):
            cancel.set()

    cells = run_plan(pool.engine, plan, catalog, cancel=cancel, on_step=on_step)
    assert cancel.is_set(), "both workers were seen rendering"
    assert any(c.cancelled for c in cells) and all(c.image is not None or c.cancelled for c in cells)
    states = ray.get([w.actor.step.remote() for w in pool.alive])
    assert all(step < steps for _, step, steps, _ in states), f"a worker ran its render to the end: {states}"
    assert all(step <= busy[w.name][0] + 30 for w, (_, step, _, _) in zip(pool.alive, states, strict=True)), \
        (states, busy)
    whole = run_plan(pool.engine, replace(plan, sampling=plan.sampling.override(steps=4)), catalog)
    assert all(c.image is not None for c in whole), "the cancel belonged to its own run only"


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_a_worker_refuses_a_file_changed_since_the_driver_checked_it(pool, local):
    choice, catalog = local
    entry = next(e for e in catalog.scan() if e.state == "ready")
    batch = Batch(0, RenderRequest("p", (1,), choice.engine.defaults.sampling), (((str(entry.path), 1.0, (1,)),),),
                  False, entry.label)
    st = os.stat(entry.path)
    worker = pool.alive[0]
    [changed] = ray.get(worker.actor.run.remote("stale", batch, {str(entry.path): (st.st_size, st.st_mtime_ns - 1)}))
    assert changed.images is None and changed.error == f"{entry.name} changed on disk during the run (render " \
                                                       "again to use the new file)"
    [same] = ray.get(worker.actor.run.remote("fresh", batch, {str(entry.path): (st.st_size, st.st_mtime_ns)}))
    assert same.error is None and len(same.images) == 1 and same.worker == worker.name


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_a_worker_killed_mid_plan_has_its_cells_rendered_by_the_other(pool, local, reference):
    """On the shared pool, which it leaves closed (the next test that needs the pool starts a whole one)."""
    choice, catalog = local
    plan = grid_plan(choice, catalog)  # 14 batches of 2 seeds: worker-1 has work left when killed
    victim = next(w for w in pool.workers if w.name == "worker-1")
    killed = []

    def on_progress(done, total, cell):
        if cell.worker == "worker-1" and not killed:
            os.kill(victim.info["pid"], signal.SIGKILL)
            killed.append(done)

    try:
        cells = run_plan(pool.engine, plan, catalog, on_progress=on_progress)
    finally:
        pool.close()
    assert killed, "worker-1 rendered something before it was killed"
    assert_same_grid(cells, reference)
    by_victim = sum(c.worker == "worker-1" for c in cells)
    assert 1 <= by_victim < len(cells) / 4, "what worker-1 finished is kept; the rest went to worker-0"
    assert any("worker-1 died mid-plan" in why for why in pool.problems), pool.problems
    # With no worker left (closed), a run fails its cells with the reason instead of raising.
    after = run_plan(pool.engine, grid_plan(choice, catalog, seeds=(1,), prompts=PROMPTS[:1]), catalog)
    assert all(c.image is None and "no Ray worker left" in c.error for c in after)


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_a_worker_that_cannot_load_the_base_is_named_and_the_others_render(cluster, bench_settings, local,
                                                                          tmp_path):
    choice, catalog = local
    s = replace(bench_settings, executor="ray", workers=2)
    missing = replace(s, base=str(tmp_path / "no-such-base"))
    p = RayPool(s, loras_given=True, worker_settings=[s, missing])
    p.start()
    try:
        assert [w.name for w in p.alive] == ["worker-0"]
        assert len(p.problems) == 1 and p.problems[0].startswith("worker-1 could not load the base: ")
        assert "no-such-base" in p.problems[0] and len(p.problems[0]) < 400
        plan = grid_plan(choice, catalog, steps=2, prompts=PROMPTS[:1])
        cells = run_plan(p.engine, plan, catalog)
        assert all(c.worker == "worker-0" and c.error is None for c in cells)
    finally:
        p.close()
    nobody = RayPool(replace(missing, workers=1), loras_given=True)
    with pytest.raises(ClusterError, match="no Ray worker could load the base: worker-0 could not load the base"):
        nobody.start()


def test_without_ray_the_executor_says_how_to_install_it(bench_settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra looks like to import
    with pytest.raises(ClusterError, match=r"pip install -e \.\[cluster\]"):
        open_workbench(replace(bench_settings, executor="ray", workers=2))


@pytest.mark.slow  # a Ray cluster and worker processes that each load the base
def test_the_grid_command_on_two_ray_workers_writes_the_local_grid(bench_settings, local, tmp_path):
    """The README's command, in a process of its own: it starts a local cluster and stops it (even where
    RAY_ADDRESS names another, unreachable one: only --ray-address joins a cluster). It computes with
    one thread, as this process does (on a CPU the thread count changes pixels; the workers take the driver's)."""
    choice, catalog = local
    config = Path(bench_settings.loras).parent / "config.yaml"
    run = subprocess.run([sys.executable, "-m", "lora_spectrum", "grid", "--config", str(config), "--include-base",
                          "--seeds", "1,2", "--epochs", "20,80,300", "--prompt", "p", "--steps", "2", "--no-cache",
                          "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"],
                         capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "starting 2 Ray worker(s)" in run.stderr
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["engine"]["executor"] == "ray" and manifest["engine"]["left_out"] == []
    assert [w.split(" ")[0] for w in manifest["engine"]["workers"]] == ["worker-0", "worker-1"]
    assert {c["worker"] for c in manifest["cells"]} == {"worker-0", "worker-1"}
    entries = {e.epoch: e for e in catalog.scan()}
    plan = make_plan(choice.engine.defaults, [None, entries[20], entries[80], entries[300]], [1, 2], [1.0], ["p"],
                     choice.engine.defaults.sampling.override(steps=2))
    reference = run_plan(choice.engine, plan, catalog)
    for r, c in zip(reference, manifest["cells"], strict=True):
        assert (r.epoch, r.seed) == (c["epoch"], c["seed"])
        assert np.array_equal(np.asarray(r.image), np.asarray(Image.open(tmp_path / "ray" / c["image"]))), c["image"]
