"""Compare through AppTest: a grid with the base column, captions and downloads; routed batches; busy."""

from __future__ import annotations

import contextlib

from lora_spectrum.ui.resources import get_workbench
from tests.ui.apptest import start


def test_render_a_grid_with_base_column_captions_and_downloads(app_config):
    at = start()
    assert any("Demo mode" in w.value for w in at.warning)
    assert any(c.value.replace("\\", "").startswith("Base: ") and "· fuse auto ·" in c.value for c in at.caption)
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    captions = [c for im in at.main.image for c in im.captions]
    for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"):
        assert expected in captions, captions
    labels = {b.label for b in at.get("download_button")}
    assert {"Grid PNG", "Manifest", "All cells (zip)"} <= labels
    assert any("swap" in c.value for c in at.main.caption)
    # fuse: auto says what it decided from the renders it measured (the rule itself: tests/test_fuse_policy.py);
    # the caption above the grid is drawn before the render, so the next run shows it.
    at.run()
    assert any("· fuse auto (" in c.value.replace("\\", "") for c in at.caption), [c.value for c in at.caption]


def test_epochs_per_batch_renders_the_same_grid_in_routed_batches(app_config, tmp_path):
    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "batch_epochs: 3\n", encoding="utf-8")
    at = start()
    assert at.number_input(key="batch_epochs").value == 3, "the config sets the starting value"
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_150.safetensors",
                                                      "jimeng_300.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    captions = [c for im in at.main.image for c in im.captions]
    for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"):
        assert expected in captions, captions
    _, choice, _ = get_workbench(str(config))
    kinds = [r.kind for r in choice.engine.hotswap.history]
    assert kinds.count("routed") == 1, kinds  # base + 3 epochs in calls of 3 and 1
    assert choice.engine.hotswap.get_active_adapter()[0].endswith("jimeng_300.safetensors")


def test_busy_workbench_says_so_instead_of_queueing(app_config):
    config, _ = app_config
    _, choice, _ = get_workbench(str(config))
    engine = choice.engine
    with contextlib.ExitStack() as held:  # two runs of other sessions hold the engine (max_queued_renders: 2)
        for _ in range(2):
            held.enter_context(engine.admit())
        at = start()
        at.button(key="render").click().run()
        assert any("busy" in w.value for w in at.warning), [w.value for w in at.warning]
        assert not at.main.image
    at.button(key="render").click().run()
    assert at.main.image, "renders again once the others finished"


def test_with_executor_ray_the_app_renders_on_its_workers_and_says_so(app_config, tmp_path):
    import json

    config, _ = app_config
    config.write_text(config.read_text(encoding="utf-8") + "executor: ray\nworkers: 2\nfuse: off\n", encoding="utf-8")
    try:
        at = start()
        assert any(c.value.replace("\\", "").startswith("ray: 2 worker(s): worker-0 (") for c in at.caption)
        at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors", "jimeng_150.safetensors"])
        at.button(key="render").click().run()
        assert not at.exception, at.exception
        captions = [c for im in at.main.image for c in im.captions]
        for expected in ("base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 150 · strength 1 · seed 1"):
            assert expected in captions, captions
        manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
        assert {c["worker"] for c in manifest["cells"]} == {"worker-0", "worker-1"}
    finally:
        get_workbench(str(config))[1].engine.executor.close()
