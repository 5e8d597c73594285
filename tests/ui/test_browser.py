"""End to end in a real browser: ``streamlit run app.py`` on a free local port, driven by Playwright in Debian's
headless Chromium; renders demo epochs side by side and checks images and captions are on the page."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    # What a newcomer gets offline: the shipped trained demo (its own epochs and training log).
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ncache_dir: {tmp_path / 'cache'}\nloras: {tmp_path / 'none'}\n"
                      f"device: cpu\nruns_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\n", encoding="utf-8")
    port = free_port()
    env = {**os.environ, "LORA_SPECTRUM_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {proc.stdout.read()}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_render_demo_epochs_side_by_side_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/test.sh installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server, timeout=120_000)
        page.wait_for_selector("[data-testid='stApp']", timeout=120_000)
        page.get_by_text("Demo mode").first.wait_for(timeout=180_000)
        seeds = page.get_by_label("Seeds")
        seeds.fill("1")
        seeds.press("Enter")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Render").click()
        page.get_by_text("epoch 18 · strength 1 · seed 1").first.wait_for(timeout=240_000)
        images = page.locator("[data-testid='stMain'] [data-testid='stImage'] img")
        assert images.count() >= 7  # base + six demo epochs
        body = page.inner_text("[data-testid='stMain']")
        for caption in ("base · seed 1", "epoch 3 · strength 1 · seed 1", "epoch 12 · strength 1 · seed 1"):
            assert caption in body
        page.get_by_role("button", name="Grid PNG").wait_for(timeout=60_000)
        shot = tmp_path / "workbench.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        # The Insight view: curves, the training loss of the run that made these epochs, a suggestion.
        page.locator("[data-testid='stMain']").get_by_text("Insight", exact=True).first.click()
        page.get_by_text("Suggestion").first.wait_for(timeout=120_000)
        page.get_by_text("Training loss").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "insight.png"), full_page=True)
        # Cancel: a long render stopped after two cells keeps those cells, says so, and the engine renders again.
        main = page.locator("[data-testid='stMain']")
        main.get_by_text("Compare", exact=True).first.click()
        page.get_by_text("Sampling").first.click()
        steps = page.get_by_label("Steps")
        steps.fill("200")  # the most the Steps box allows
        steps.press("Enter")
        page.wait_for_timeout(1500)
        assert steps.input_value() == "200"
        page.get_by_role("button", name="Render").click()
        page.get_by_text("epoch 6: step").first.wait_for(timeout=240_000)  # the base and epoch 3 are done
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("Cancelled; showing the cells that finished.").wait_for(timeout=60_000)
        main.get_by_text("not rendered").first.wait_for(timeout=60_000)
        # Streamlit removes the previous run's elements only when a run ends: count once the page holds still.
        images, counts = main.locator("[data-testid='stImage'] img:visible"), []  # not the Closer looks ones
        for _ in range(60):
            page.wait_for_timeout(1000)
            counts.append((images.count(), main.get_by_text("not rendered").count()))
            if len(counts) >= 3 and counts[-1] == counts[-2] == counts[-3]:
                break
        kept, missing = counts[-1]
        assert 2 <= kept < 7 and kept + missing == 7, counts
        steps.fill("3")  # not cached: the engine must really render after the cancel
        steps.press("Enter")
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Render").click()
        page.get_by_text("epoch 18 · strength 1 · seed 1").first.wait_for(timeout=240_000)
        assert main.get_by_text("Cancelled; showing").count() == 0
        for _ in range(60):  # an image counts as visible once its file has loaded
            if images.count() >= 7:
                break
            page.wait_for_timeout(1000)
        assert images.count() >= 7
        browser.close()
