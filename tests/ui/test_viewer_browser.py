"""The viewer in a real browser: a small grid of the shipped demo (two seeds, two strengths), an image clicked
opens its slide full size, the arrow keys and the buttons step to the right neighbour (checked against the
``parameters`` inside the PNG on the screen, not only the label), epochs as rows, and small renders drawn at a
whole multiple of their size. Screenshots are written as artifacts (the folder is printed)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from lora_spectrum.records.grid_files import parse_parameters
from tests.ui.test_browser import CHROMIUM, enter, server  # noqa: F401  (server: the fixture, one app per test)

pytestmark = pytest.mark.browser
NBSP = "\u00a0"
GRID = "[data-testid='stMain'] .st-key-lsv_grid [data-testid='stImage'] img"
SLIDE = ".lsv-overlay:not([hidden]) .lsv-slide:not([hidden])"


def label(column: str, strength: str | None, seed: int) -> str:
    parts = [column] + ([f"strength {strength}"] if strength else []) + [f"seed {seed}"]
    return " · ".join(p.replace(" ", NBSP) for p in parts)


def shown(page) -> dict:
    """The slide on the screen: its label, and what the PNG it shows says of itself (its ``parameters``)."""
    slide = page.locator(SLIDE)
    slide.wait_for(timeout=10_000)
    src = slide.locator(".lsv-stage img").get_attribute("src")
    png = base64.b64decode(src.split(",", 1)[1])
    params = parse_parameters(Image.open(io.BytesIO(png)).info["parameters"])
    box = slide.locator(".lsv-stage img").bounding_box()
    return {"label": slide.locator(".lsv-label").inner_text(), "epoch": params.get("Lora epoch"),
            "strength": params.get("Lora strength"), "seed": params["Seed"], "width": box["width"],
            "scale": slide.locator(".lsv-scale").inner_text()}


def expect(page, column: str, epoch: str | None, strength: str | None, seed: int) -> None:
    want = label(column, strength, seed)
    _wait(page, lambda: page.locator(SLIDE).locator(".lsv-label").inner_text() == want, f"the slide of {want}", 10_000)
    now = shown(page)
    assert now["label"] == want, now
    assert (now["epoch"], now["strength"], now["seed"]) == (epoch, strength, str(seed)), now


def test_viewer_steps_through_epochs_and_seeds_with_keys_and_buttons(server, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("LORA_SPECTRUM_TEST_ARTIFACTS", tmp_path)) / "viewer"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nviewer screenshots: {shots}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(server, timeout=120_000)
        page.get_by_text("Demo mode").first.wait_for(timeout=180_000)
        # 1. A small grid: base and six epochs, two seeds, two strengths, three steps.
        for name, value in (("Seeds", "1, 2"), ("Strengths", "0.6, 1")):
            enter(page.get_by_role("textbox", name=name), value, settle_ms=800)
        page.get_by_text("Sampling").first.click()
        enter(page.get_by_label("Steps"), "3", settle_ms=800)
        page.get_by_role("button", name="Render").click()
        page.get_by_role("button", name="Grid PNG").wait_for(timeout=120_000)
        grid = page.locator(GRID)
        _wait(page, lambda: grid.count() == 28 and page.evaluate(COMPLETE), "the 28 images of the grid")
        grid_shot(page, shots / "grid-epochs-as-columns.png")

        # 2. Small renders at a whole multiple of their size, drawn at exactly that size; captions unbroken.
        sizes = page.evaluate(f"""[...document.querySelectorAll("{GRID}")].map(i =>
            [i.naturalWidth, i.getBoundingClientRect().width])""")
        factor = sizes[0][0] // 64
        assert sizes[0][0] % 64 == 0 and all(n == sizes[0][0] and abs(w - n) < 0.5 for n, w in sizes), sizes
        main = page.inner_text("[data-testid='stMain']")
        if factor > 1:
            assert f"64×64 px renders shown ×{factor}" in main
        assert label("epoch 9", "0.6", 2) in main and label("base", None, 1) in main

        # 3. A click on an image opens that image.
        page.locator(f"{GRID}[alt='{label('epoch 9', '0.6', 1)}']").click()
        expect(page, "epoch 9", "9", "0.6", 1)
        first = shown(page)
        assert first["scale"].startswith("×") and first["width"] == 64 * int(first["scale"][1:]), first
        page.screenshot(path=str(shots / "viewer-epoch9.png"))
        # 4. Keys: Up/Down the adjacent epoch at the same seed and strength, Left/Right the next seed, then strength.
        for key, want in (("ArrowUp", ("epoch 6", "6", "0.6", 1)), ("ArrowDown", ("epoch 9", "9", "0.6", 1)),
                          ("ArrowDown", ("epoch 12", "12", "0.6", 1)), ("ArrowRight", ("epoch 12", "12", "0.6", 2)),
                          ("ArrowRight", ("epoch 12", "12", "1", 1)), ("ArrowLeft", ("epoch 12", "12", "0.6", 2))):
            page.keyboard.press(key)
            expect(page, *want)
        page.screenshot(path=str(shots / "viewer-epoch12-seed2.png"))
        # 5. Buttons name where they lead and go there; the base has no strength; the edges stop.
        page.locator(SLIDE).get_by_role("button", name="↑ epoch 9").click()
        expect(page, "epoch 9", "9", "0.6", 2)
        for _ in range(3):
            page.keyboard.press("ArrowUp")
        expect(page, "base", None, None, 2)
        assert page.locator(SLIDE).locator("button[data-key='ArrowUp']").is_disabled()
        page.keyboard.press("ArrowUp")  # nothing above the base column
        expect(page, "base", None, None, 2)
        page.screenshot(path=str(shots / "viewer-base.png"))
        page.keyboard.press("Escape")
        page.locator(".lsv-overlay").first.wait_for(state="hidden", timeout=5_000)

        # 6. Epochs as rows: the same images, another order; a click still opens the image clicked.
        page.get_by_role("radio", name="rows", exact=True).click()
        _wait(page, lambda: page.locator(GRID).first.get_attribute("alt") == label("base", None, 1)
              and page.locator(GRID).nth(1).get_attribute("alt") == label("base", None, 2)
              and page.locator(GRID).nth(2).get_attribute("alt") == label("epoch 3", "0.6", 1), "epochs as rows")
        _wait(page, lambda: page.evaluate(COMPLETE), "the images")
        grid_shot(page, shots / "grid-epochs-as-rows.png")
        page.locator(GRID).nth(5).click()  # row epoch 6, second image: seed 2
        expect(page, "epoch 6", "6", "0.6", 2)
        page.keyboard.press("ArrowDown")
        expect(page, "epoch 9", "9", "0.6", 2)
        page.screenshot(path=str(shots / "viewer-from-rows.png"))
        browser.close()
    for shot in shots.iterdir():
        assert shot.stat().st_size > 5_000, shot


def grid_shot(page, path: Path) -> None:
    """The whole grid: the main area scrolls inside the page, so the page is made tall for the picture."""
    page.set_viewport_size({"width": 1500, "height": 3000})
    page.wait_for_timeout(500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1500, "height": 1100})
    page.wait_for_timeout(300)


COMPLETE = f"""() => [...document.querySelectorAll("{GRID}")].every(i => i.complete && i.naturalWidth > 0)
    && document.querySelector("[data-testid='stApp']").dataset.testScriptState === 'notRunning'"""


def _wait(page, ready, what: str, timeout_ms: int = 60_000) -> None:
    for _ in range(timeout_ms // 250):
        if ready():
            return
        page.wait_for_timeout(250)
    pytest.fail(f"timed out waiting for {what}")

