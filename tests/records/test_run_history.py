"""Run history: every app render kept as an output folder under a bounded runs_dir, listed newest first, reopened
without rendering (pixels and parameters as rendered), deleted; the oldest go first at the bound; several processes
saving, listing and deleting at once lose and break nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from lora_spectrum.errors import ConfigError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.records import run_history
from lora_spectrum.records.grid_files import parse_parameters
from lora_spectrum.records.run_history import ARCHIVED, LOCK_FILE, RunHistory
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.runs import run_plan
from tests.processes import together
from tests.tiny import new_engine
from tests.tiny import request as tiny_request


@pytest.fixture(scope="module")
def rendered(demo_loras, tmp_path_factory):
    """A real tiny render: base + two epochs x two seeds, with the engine, catalog and plan."""
    folder = tmp_path_factory.mktemp("loras")
    for p in demo_loras["sdxl"][:2]:
        shutil.copy(p, folder)
    catalog = Catalog(folder)
    catalog.scan()
    _, entries = catalog.choose_series()
    engine = new_engine("sdxl")
    plan = make_plan(engine.defaults, [None, *entries], [1, 2], [1.0], ["a red circle"],
                     tiny_request("sdxl").sampling)
    cells = run_plan(engine, plan, catalog)
    return engine, catalog, plan, cells


def test_a_saved_run_reopens_without_rendering_with_the_same_pixels(rendered, tmp_path):
    engine, catalog, plan, cells = rendered
    runs = RunHistory(tmp_path / "runs", max_runs=5)
    record = runs.save(plan, cells, engine.base_id, engine.family.name)
    [listed] = runs.list()
    assert listed.id == record.id and listed.cells == len(cells) == 6 and listed.failed == 0
    assert listed.files == ["base", *(e.name for e in plan.columns[1:])]
    assert listed.prompt == "a red circle" and listed.seeds == [1, 2] and listed.made_at.endswith("+00:00")
    before = len(engine.hotswap.history)
    plan2, cells2, manifest = runs.reopen(record.id, catalog)
    assert len(engine.hotswap.history) == before, "reopening never swaps or renders"
    assert [c.label for c in plan2.columns if c is not None] == [e.label for e in plan.columns[1:]]
    assert plan2.columns[1] is plan.columns[1], "an unchanged file is the live catalog entry again"
    by_key = {(c.file, c.seed): c for c in cells}
    for c in cells2:
        old = by_key[(c.file, c.seed)]
        assert c.png == old.png and c.column == old.column and c.label == old.label
        assert c.image.size == old.image.size
        assert parse_parameters(_text(c.png))["Seed"] == str(c.seed)
    assert manifest["run"]["id"] == record.id


def _text(png: bytes) -> str:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png)).text["parameters"]


def test_a_changed_file_reopens_as_an_archived_column(rendered, tmp_path):
    engine, catalog, plan, cells = rendered
    runs = RunHistory(tmp_path / "runs")
    record = runs.save(plan, cells, engine.base_id, engine.family.name)
    other = Catalog(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    other.scan()
    plan2, cells2, _ = runs.reopen(record.id, other)
    stand_in = plan2.columns[1]
    assert stand_in.state == ARCHIVED and stand_in.label == plan.columns[1].label
    assert all(c.png is not None for c in cells2), "the images were kept even though the file is gone"


def test_the_oldest_runs_go_first_at_the_bound_and_delete_removes_one(rendered, tmp_path):
    engine, _, plan, cells = rendered
    runs = RunHistory(tmp_path / "runs", max_runs=3)
    ids = [runs.save(plan, cells, engine.base_id, engine.family.name).id for _ in range(5)]
    kept = [r.id for r in runs.list()]
    assert kept == sorted(ids)[-3:][::-1], "newest first, the two oldest dropped"
    runs.delete(kept[0])
    assert [r.id for r in runs.list()] == kept[1:]
    with pytest.raises(ConfigError, match="no such run"):
        runs.reopen("../../etc")
    (tmp_path / "runs" / "20990101-000000-000000-abcd").mkdir()  # a broken folder is left out of the list
    assert [r.id for r in runs.list()] == kept[1:]


def test_a_broken_manifest_is_one_plain_error(rendered, tmp_path):
    engine, catalog, plan, cells = rendered
    runs = RunHistory(tmp_path / "runs")
    record = runs.save(plan, cells, engine.base_id, engine.family.name)
    manifest = record.folder / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["cells"][0]["file"] = "not-a-column.safetensors"
    data["cells"][1]["image"] = "../../../../etc/hostname"
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{record.id}: its manifest is incomplete"):
        runs.reopen(record.id, catalog)
    data["cells"][0]["file"] = cells[0].file
    manifest.write_text(json.dumps(data), encoding="utf-8")
    _, cells2, _ = runs.reopen(record.id, catalog)
    assert cells2[1].png is None and "missing" in cells2[1].error, "no file outside the run is read"


def test_the_size_bound_drops_the_oldest_and_keeps_the_newest(rendered, tmp_path):
    engine, _, plan, cells = rendered
    one = RunHistory(tmp_path / "probe").save(plan, cells, engine.base_id, engine.family.name).folder
    size = sum(f.stat().st_size for f in one.rglob("*") if f.is_file())
    runs = RunHistory(tmp_path / "runs", max_runs=10, max_mb=2.5 * size / 2**20)  # room for two and a half
    ids = [runs.save(plan, cells, engine.base_id, engine.family.name).id for _ in range(4)]
    assert [r.id for r in runs.list()] == ids[-2:][::-1]
    tiny = RunHistory(tmp_path / "tiny", max_runs=10, max_mb=0.0001)
    last = [tiny.save(plan, cells, engine.base_id, engine.family.name).id for _ in range(2)][-1]
    assert [r.id for r in tiny.list()] == [last], "the newest run stays, whatever its size"


ROOT = Path(__file__).resolve().parents[2]
USER = """
import json, sys
from PIL import Image
from lora_spectrum.errors import ConfigError
from lora_spectrum.records.grid_files import encode_png, parameters_text
from lora_spectrum.render.plan import Plan, plan_cells
from lora_spectrum.records.run_history import RunHistory
from lora_spectrum.render.sampling import Sampling

folder, k, saves, max_runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
plan = Plan(columns=[None], seeds=[1, 2, 3], strengths=[1.0], prompts=[f"process {k}"], sampling=Sampling())
cells = plan_cells(plan)
for c in cells:  # solid colours as rendered cells (nothing is rendered here)
    c.image = Image.new("RGB", (64, 64), (40 * k, 30 * c.seed, 90))
    c.png = encode_png(c.image, parameters_text(c, plan.sampling, "sdxl-base"))
runs = RunHistory(folder, max_runs=max_runs)
print("ready", flush=True)
sys.stdin.readline()  # all start together
saved, deleted = [], []
for i in range(saves):
    saved.append(runs.save(plan, cells, "sdxl-base", "sdxl").id)
    runs.list()  # as the History view does on every rerun
    if i % 3 == 2:  # and a user deletes one of their own (unless another process's save dropped it at the bound)
        try:
            runs.delete(saved[-2])
            deleted.append(saved[-2])
        except ConfigError as exc:
            assert "no such run" in str(exc) and max_runs < 27, exc
print(json.dumps({"saved": saved, "deleted": deleted}))
"""




@pytest.mark.parametrize("max_runs", [100, 5])
def test_processes_saving_listing_and_deleting_at_once_lose_and_break_nothing(tmp_path, max_runs):
    # Several app processes on one runs_dir: one's prune or delete must not pull a run from under another's save
    # or list, and every run kept must be whole.
    folder = tmp_path / "runs"
    done = together(USER, [[str(folder), str(k), "9", str(max_runs)] for k in range(3)])
    assert [d.returncode for d in done] == [0, 0, 0], [d.stderr[-2000:] for d in done]
    logs = [json.loads(d.stdout) for d in done]
    saved = {i for log in logs for i in log["saved"]}
    deleted = {i for log in logs for i in log["deleted"]}
    assert len(saved) == 27 and deleted < saved and (len(deleted) == 9 or max_runs < 27)
    runs = RunHistory(folder, max_runs=max_runs)
    listed = [r.id for r in runs.list()]
    assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_FILE, *listed]), "no half-written run left"
    assert set(listed) <= saved - deleted and len(listed) <= max_runs
    # Every run neither deleted nor kept was dropped at the bound, so is older than every run kept.
    assert all(i < min(listed) for i in saved - deleted - set(listed))
    if max_runs >= 27:
        assert set(listed) == saved - deleted, "nothing lost"
    for run_id in listed:
        _, cells, manifest = runs.reopen(run_id)
        assert manifest["run"]["id"] == run_id and len(cells) == 3
        assert all(c.png is not None and c.error is None for c in cells), "every image of a kept run is there"


def test_a_history_locked_too_long_by_another_process_is_one_plain_error(rendered, tmp_path, monkeypatch):
    engine, _, plan, cells = rendered
    monkeypatch.setattr(run_history, "LOCK_TIMEOUT_S", 0.2)
    runs = RunHistory(tmp_path / "runs")
    kept = runs.save(plan, cells, engine.base_id, engine.family.name)
    with FileLock(tmp_path / "runs" / LOCK_FILE):  # a process stuck inside a save
        for act in (runs.list, lambda: runs.delete(kept.id),
                    lambda: runs.save(plan, cells, engine.base_id, engine.family.name)):
            with pytest.raises(ConfigError, match="another process has held the run history for 0.2 s"):
                act()
    assert [r.id for r in runs.list()] == [kept.id]
