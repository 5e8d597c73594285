"""The sidebar's Base section through AppTest: the base running now named in full, the bases under models_dir
listed with family and size (the chosen one's full name below the box), a switch
that frees the first base and renders on the second, another tab told, and a failed switch that keeps the base
it had (loaded back) with one sentence on why."""

from __future__ import annotations

import gc
import shutil
import time
import weakref

import pytest
from streamlit.testing.v1 import AppTest

from lora_spectrum.bases.downloads import wanted
from lora_spectrum.bases.listing import size_text
from lora_spectrum.ui.resources import get_workbench
from tests.hub_server import HubServer, Repo
from tests.ui.apptest import APP, start

REPO = "tiny-lab/sdxl-demo"


def models(app_config, demo_dir):
    """models_dir with a second tiny SDXL base (a copy of the demo's) and one whose UNet weights are garbage."""
    config, _ = app_config
    folder = config.parent / "models"
    shutil.copytree(demo_dir / "base-sdxl", folder / "alt-sdxl")
    shutil.copytree(demo_dir / "base-sdxl", folder / "broken-sdxl")
    (folder / "broken-sdxl" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    config.write_text(config.read_text(encoding="utf-8") + f"models_dir: {folder}\nfuse: off\n", encoding="utf-8")
    return config, folder


def caption(at) -> str:
    return next(c.value.replace("\\", "") for c in at.caption if c.value.replace("\\", "").startswith("Base: "))


def render(at) -> list[str]:
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors"])
    at.button(key="render").click().run()
    assert not at.exception, at.exception
    return [c.replace("\u00a0", " ") for im in at.main.image for c in im.captions]


def test_switching_to_a_folder_frees_the_demo_renders_and_tells_the_other_tab(app_config, demo_dir):
    config, folder = models(app_config, demo_dir)
    at = start()
    pick = at.sidebar.selectbox(key="base_pick")
    alt = str(folder / "alt-sdxl")
    size = size_text(sum(p.stat().st_size for p in (folder / "alt-sdxl").rglob("*") if p.is_file()))
    assert pick.options[0] == f"alt-sdxl · sdxl · {size}" and pick.options[2] == "● demo (tiny, offline)"
    assert pick.options[1].startswith("broken-sdxl · sdxl · "), "its header is read only when it loads"
    assert pick.value == "demo"
    # The base running now, and the chosen one, by their full names (the box may cut them), marked.
    said = [m.value.replace("\\", "") for m in at.sidebar.markdown]
    assert "Running now: demo (tiny, offline)" in said and "**demo (tiny, offline) (running now)**" in said, said
    assert "● marks the base running now" in pick.help
    pick.set_value(alt).run()
    said = [m.value.replace("\\", "") for m in at.sidebar.markdown]
    assert f"**alt-sdxl · sdxl · {size} (not loaded)**" in said, said
    pick = at.sidebar.selectbox(key="base_pick")
    other = AppTest.from_file(APP, default_timeout=240)
    other.run()  # a second tab on the same shared engine
    _, choice, _ = get_workbench(str(config))
    first = weakref.ref(choice.engine.pipe)
    pick.set_value(alt).run()
    at.button(key="base_load").click().run()
    assert not at.exception, at.exception
    assert any(s.value.replace("\\", "").startswith("Base: ") for s in at.sidebar.success)
    assert caption(at).startswith(f"Base: {alt} (sdxl, cpu,") and not any("Demo mode" in w.value for w in at.warning)
    gc.collect()
    assert first() is None, "the demo's pipeline was freed"
    assert "epoch 20 · strength 1 · seed 1" in render(at), "the second base renders"
    said = [m.value.replace("\\", "") for m in at.sidebar.markdown]
    assert f"Running now: alt-sdxl · sdxl · {size}" in said, said
    other.run()
    assert any("The base was switched to" in i.value and "alt-sdxl" in i.value.replace("\\", "") for i in other.info)
    other.run()
    assert not any("The base was switched" in i.value for i in other.info), "told once"


def test_a_failed_switch_keeps_the_base_it_had_and_says_why(app_config, demo_dir):
    config, folder = models(app_config, demo_dir)
    at = start()
    before = caption(at)
    at.sidebar.selectbox(key="base_pick").set_value(str(folder / "broken-sdxl")).run()
    at.button(key="base_load").click().run()
    assert not at.exception, at.exception
    [error] = [e.value.replace("\\", "") for e in at.sidebar.error]
    assert "broken-sdxl could not be loaded, so demo is back" in error and len(error) < 700, error
    assert caption(at) == before
    assert "epoch 20 · strength 1 · seed 1" in render(at), "the base it had still renders"


@pytest.fixture
def hub_config(app_config, demo_dir, tmp_path):
    """The app allowed to download, from a local hub serving the tiny demo base, into a cache of its own."""
    config, _ = app_config
    server = HubServer()
    server.repos[REPO] = Repo(demo_dir / "base-sdxl")
    config.write_text(config.read_text(encoding="utf-8") + f"bases: [{REPO}]\nlocal_files_only: false\n"
                      f"hf_cache: {tmp_path / 'hf'}\nhub_endpoint: {server.url}\nfuse: off\n", encoding="utf-8")
    yield config, server
    server.close()


def run_until(at, done, seconds=60.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out: {[e.value for e in at.sidebar.error]}")


def test_download_shows_the_size_then_fetches_with_progress_and_the_base_loads(hub_config):
    config, server = hub_config
    at = start()
    pick = at.sidebar.selectbox(key="base_pick")
    assert pick.options[0] == f"{REPO} · not downloaded"
    pick.set_value(REPO).run()
    assert at.button(key="base_load").disabled
    at.button(key="base_download").click().run()
    size = size_text(sum(len(b) for f, b in server.repos[REPO].files.items() if wanted(f)))
    assert any(f"to download (commit {server.repos[REPO].commit[:10]})" in c.value.replace("\\", "")
               for c in at.sidebar.caption)
    assert at.button(key="base_download_go").label == f"Download {size}"
    assert not server.gets(".safetensors"), "nothing fetched before it is asked for"
    server.slow = 0.002
    at.button(key="base_download_go").click().run()
    run_until(at, lambda a: any("downloaded" in s.value for s in a.sidebar.success))  # the bar drawn meanwhile
    assert server.gets("unet/diffusion_pytorch_model.safetensors")
    pick = at.sidebar.selectbox(key="base_pick")
    assert pick.options[0].startswith(f"{REPO} · sdxl · ")
    at.button(key="base_load").click().run()
    assert caption(at).startswith(f"Base: {REPO} (sdxl, cpu,")
    assert "epoch 20 · strength 1 · seed 1" in render(at), "the downloaded base renders"


def test_local_files_only_never_downloads_and_the_button_says_so(hub_config):
    config, server = hub_config
    config.write_text(config.read_text(encoding="utf-8").replace("local_files_only: false", "local_files_only: true"),
                      encoding="utf-8")
    at = start()
    at.sidebar.selectbox(key="base_pick").set_value(REPO).run()
    button = at.button(key="base_download")
    assert button.disabled and "local_files_only: true" in button.help and "fetch-base" in button.help
    assert server.log == [], "not one request"


def test_cancel_stops_the_download_and_leaves_the_base_absent(hub_config, tmp_path):
    config, server = hub_config
    at = start()
    at.sidebar.selectbox(key="base_pick").set_value(REPO).run()
    at.button(key="base_download").click().run()
    server.slow = 0.05  # about 7 s for the demo UNet: time to press Cancel
    at.button(key="base_download_go").click().run()
    run_until(at, lambda a: bool(a.get("progress")))
    at.button(key="base_download_cancel").click().run()
    run_until(at, lambda a: any("download cancelled" in e.value for e in a.sidebar.error))
    assert at.sidebar.selectbox(key="base_pick").options[0] == f"{REPO} · not downloaded"
    repo_dir = tmp_path / "hf" / f"models--{REPO.replace('/', '--')}"
    assert not list(repo_dir.glob("snapshots/*")) and not list(repo_dir.rglob("*.incomplete"))
