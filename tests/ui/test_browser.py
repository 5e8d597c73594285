"""End to end in a real browser: ``streamlit run app.py`` on a free local port, driven by Playwright in Debian's
headless Chromium; renders demo epochs side by side and checks images and captions are on the page, marks the grid
stale when the sidebar changes, opens grids from a probe, Insight and History (each time the sidebar says what the
grid shows), then ranks the rendered epochs blind (buttons and keys, the pair named after each vote), reveals the
ranking and checks the votes file. Screenshots of every view go to ``$LORA_SPECTRUM_SCREENSHOTS`` (else the test's
temporary folder; the path is printed): look at them."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_spectrum import language

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser
LABEL = re.compile(r"\bepoch[ _-]?\d+|\bbase\b|\.safetensors", re.IGNORECASE)  # what names a column
SHA256 = re.compile(r"[0-9a-f]{64}")


def main_captions(page) -> list[str]:
    """The texts of the images in the main area (their captions), as the browser lays them out."""
    return [t for t in page.locator("[data-testid='stMain'] [data-testid='stImage']").all_inner_texts() if t.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where the screenshots go: ``$LORA_SPECTRUM_SCREENSHOTS``, else the test's temporary folder."""
    folder = Path(os.environ.get("LORA_SPECTRUM_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture
def server(tmp_path):
    # What a newcomer gets offline: the shipped trained demo (its own epochs and training log).
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ncache_dir: {tmp_path / 'cache'}\nloras: {tmp_path / 'none'}\n"
                      f"device: cpu\nruns_dir: {tmp_path / 'runs'}\nratings_dir: {tmp_path / 'ratings'}\n"
                      f"shipped_dir: {tmp_path / 'shipped'}\n"
                      # Insight probes the series by itself: a small set at 4 steps keeps that to a few dozen
                      # quick renders (what is checked is the page, not the verdict's numbers).
                      "probe_set: quick\nprobes:\n  quick:\n    seeds: [11]\n"
                      "    style: [{prompt: a red circle on a white background, steps: 4}]\n"
                      "    new_context: [{prompt: a blue triangle on a gray background, steps: 4},\n"
                      "                  {prompt: a cyan square on a cream background, steps: 4}]\n"
                      "    leak: [{prompt: a green circle on a cream background, steps: 4}]\n", encoding="utf-8")
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


def test_render_demo_epochs_side_by_side_in_chromium(server, tmp_path, shots):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/test.sh installs it)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        sent: list[float] = []  # the times the page sent a message to the server (a rerun, a widget's value)
        page.on("websocket", lambda ws: ws.on("framesent", lambda _: sent.append(time.monotonic())))
        page.goto(server, timeout=120_000)
        page.wait_for_selector("[data-testid='stApp']", timeout=120_000)
        page.get_by_text("Demo mode").first.wait_for(timeout=180_000)
        enter(page.get_by_label("Seeds"), "1", settle_ms=1500)
        page.locator(".st-key-render button").click()  # the top one (the stale marker has its own)
        page.get_by_text("epoch 18 · strength 1 · seed 1").filter(visible=True).first.wait_for(timeout=240_000)
        images = page.locator("[data-testid='stMain'] [data-testid='stImage'] img")
        assert images.count() >= 7  # base + six demo epochs
        # No caption wraps inside a label: "epoch 3", "strength 1", "seed 1" hold non-breaking spaces.
        captions = main_captions(page)
        assert captions and not any(re.search(r"\b(epoch|strength|seed) \d", c) for c in captions), captions
        assert any("epoch\u00a03" in c for c in captions) and any("seed\u00a01" in c for c in captions), captions
        page.get_by_role("button", name="Grid PNG").wait_for(timeout=60_000)
        shot = shots / "workbench.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        stale_marker(page, shots)
        switch_to_chinese_and_back(page, shots)
        # The Insight view: curves, the training loss of the run that made these epochs, and the verdict once the
        # probe it starts by itself has run.
        page.locator("[data-testid='stMain']").get_by_text("Insight", exact=True).first.click()
        page.get_by_text("has the best balance of style and prompt fidelity").first.wait_for(timeout=240_000)
        page.get_by_text("Training loss").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "insight.png"), full_page=True)
        # Open in Compare from a probe and from Insight, then History's Open back to the first grid: each time the
        # sidebar says what the grid shows.
        open_paths(page, shots)
        # Cancel: a long render stopped after two cells keeps those cells, says so, and the engine renders again.
        main = page.locator("[data-testid='stMain']")
        main.get_by_text("Compare", exact=True).first.click()
        page.get_by_text("Sampling").first.click()
        steps = enter(page.get_by_label("Steps"), "200", settle_ms=1500)  # the most the Steps box allows
        assert steps.input_value() == "200"
        page.locator(".st-key-render button").click()  # the top one (the stale marker has its own)
        page.get_by_text("epoch 6: step").first.wait_for(timeout=240_000)  # the base and epoch 3 are done
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("Cancelled; showing the cells that finished.").wait_for(timeout=60_000)
        main.get_by_text("not rendered").filter(visible=True).first.wait_for(timeout=60_000)
        # Streamlit removes the previous run's elements only when a run ends: count once the page holds still.
        images, counts = main.locator("[data-testid='stImage'] img:visible"), []  # not the Closer looks ones
        for _ in range(60):
            page.wait_for_timeout(1000)
            counts.append((images.count(), main.get_by_text("not rendered").filter(visible=True).count()))
            if len(counts) >= 3 and counts[-1] == counts[-2] == counts[-3]:
                break
        kept, missing = counts[-1]
        assert 2 <= kept < 7 and kept + missing == 7, counts
        enter(steps, "3", settle_ms=1500)  # not cached: the engine must really render after the cancel
        page.locator(".st-key-render button").click()  # the top one (the stale marker has its own)
        page.get_by_text("epoch 18 · strength 1 · seed 1").filter(visible=True).first.wait_for(timeout=240_000)
        assert main.get_by_text("Cancelled; showing").count() == 0
        for _ in range(60):  # an image counts as visible once its file has loaded
            if images.count() >= 7:
                break
            page.wait_for_timeout(1000)
        assert images.count() >= 7
        # Rank: the seven columns just rendered (served from the render cache), ten blind votes, then Reveal.
        rank_blind(page, main, sent, tmp_path, shots)
        inspector_and_base(page, main, shots)
        stale_pair_press(browser, server, tmp_path)
        browser.close()


def choose_language(page, name: str) -> None:
    page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").filter(has_text="Language").first.click()
    page.get_by_role("option", name=name, exact=True).click()


MARKER = ".st-key-stale_marker"  # the stale marker's container


def _no_marker(page) -> None:
    _poll(lambda: page.locator(MARKER).count(), lambda n: n == 0, 60, "the grid to be what the sidebar says")


def enter(box, value: str, settle_ms: int = 0):
    """Type ``value`` into a sidebar box and press Enter (Streamlit takes a text or number input's value then);
    ``settle_ms``: wait that long for the rerun it starts. The box, for more."""
    box.fill(value)
    box.press("Enter")
    if settle_ms:
        box.page.wait_for_timeout(settle_ms)
    return box


def _sidebar_value(page, label: str) -> str:
    return page.locator("[data-testid='stSidebar']").get_by_label(label, exact=True).input_value()


def stale_marker(page, shots: Path) -> None:
    """The sidebar moves on: the grid stays, marked stale with what differs; Set the sidebar to this grid puts it
    back and the marker goes."""
    enter(page.get_by_label("Seeds"), "1, 2")
    marker = page.locator(MARKER)
    marker.wait_for(timeout=60_000)
    _poll(marker.inner_text, lambda t: "seeds: the grid has 1, the sidebar 1, 2" in t, 30, "what differs")
    marker.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "stale.png"), full_page=True)
    marker.get_by_role("button", name="Set the sidebar to this grid").click()
    _poll(lambda: _sidebar_value(page, "Seeds"), lambda v: v == "1", 30, "the sidebar's seeds")
    _no_marker(page)


def _open_shows(page, shots: Path, name: str, caption: str) -> None:
    """After an Open path: Compare shows ``caption``, nothing is marked stale; a screenshot."""
    main = page.locator("[data-testid='stMain']")
    main.get_by_text(caption).filter(visible=True).first.wait_for(timeout=240_000)
    _settle(page)
    _no_marker(page)
    page.screenshot(path=str(shots / name), full_page=True)


def open_paths(page, shots: Path) -> None:
    main = page.locator("[data-testid='stMain']")
    # 1. A probe's Open in Compare: the base and the epoch at the probe prompt over its seed, as the probe drew them.
    page.locator(".st-key-probe_open button").first.click()
    _open_shows(page, shots, "probe-open.png", "seed 11")
    prompt = _sidebar_value(page, "Prompt")
    assert prompt.endswith("jimeng style") and _sidebar_value(page, "Seeds") == "11", prompt  # the probe's
    assert main.get_by_text(prompt, exact=True).filter(visible=True).count() >= 1, "the grid is of that prompt"
    # 2. Insight's Open in Compare: the chosen epoch, with the sidebar's prompt and seeds.
    main.get_by_text("Insight", exact=True).first.click()
    page.locator(".st-key-insight_open button").first.wait_for(timeout=240_000)
    page.locator(".st-key-insight_open button").first.click()
    _open_shows(page, shots, "insight-open.png", "seed 11")
    # 3. The sidebar moves on; History's Open of the first grid sets it back (six epochs, seed 1).
    page.get_by_label("Prompt", exact=True).fill("a blue triangle")
    enter(page.get_by_label("Seeds"), "3")
    page.locator(MARKER).wait_for(timeout=60_000)
    main.get_by_text("History", exact=True).first.click()
    opens = main.get_by_role("button", name="Open", exact=True)
    _poll(opens.count, lambda n: n >= 3, 60, "History to list the three grids")  # the first, the two opened
    _settle(page)
    opens.last.click()  # newest first: the last is the first grid
    _open_shows(page, shots, "history-open.png", "epoch 18 · strength 1 · seed 1")
    assert main.get_by_text("Reopened from History").count() == 1
    assert _sidebar_value(page, "Seeds") == "1" and _sidebar_value(page, "Prompt") != "a blue triangle"


def inspector_and_base(page, main, shots: Path) -> None:
    """The Inspector's fields as a list (the algorithm, the whole sha256), and the Base section's full names."""
    page.set_viewport_size({"width": 1500, "height": 1100})
    main.get_by_text("Inspector", exact=True).first.click()
    fields = page.locator(".st-key-inspector_fields")
    fields.wait_for(timeout=60_000)
    # The page may still show the previous view's elements in it for a moment (Streamlit replaces them as the run
    # goes): wait for the Inspector's own words.
    text = _poll(fields.inner_text, lambda t: "algorithm:" in t, 60, "the Inspector's fields")
    assert "algorithm: lora" in text and SHA256.search(text) and "None" not in text, text
    _settle(page)
    page.screenshot(path=str(shots / "inspector.png"), full_page=True)
    page.locator("[data-testid='stSidebar']").get_by_text("Base", exact=True).first.click()
    page.get_by_text("Running now:").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)  # the expander's opening animation
    page.screenshot(path=str(shots / "base.png"), full_page=True)


def switch_to_chinese_and_back(page, tmp_path: Path) -> None:
    """The sidebar's picker: the Render button, the column captions and the sidebar read Chinese; the grid just
    rendered stays (nothing is rendered again); English again after."""
    zh = language.translator("zh_CN").gettext
    choose_language(page, "简体中文")
    page.get_by_role("button", name=zh("Render"), exact=True).wait_for(timeout=60_000)
    caption = " · ".join([zh("epoch {epoch}").format(epoch=12), zh("strength {strength}").format(strength=1),
                          zh("seed {seed}").format(seed=1)])
    page.get_by_text(caption, exact=True).filter(visible=True).first.wait_for(timeout=60_000)
    body = page.inner_text("[data-testid='stMain']").replace("\u00a0", " ")
    assert " · ".join([zh("base"), zh("seed {seed}").format(seed=1)]) in body
    assert zh("Epochs to compare") in page.inner_text("[data-testid='stSidebar']")
    page.screenshot(path=str(tmp_path / "workbench-zh.png"), full_page=True)
    choose_language(page, "English")
    page.get_by_role("button", name="Render", exact=True).wait_for(timeout=60_000)
    page.get_by_text("epoch 12 · strength 1 · seed 1").filter(visible=True).first.wait_for(timeout=60_000)


def _count_votes(tmp_path: Path) -> int:
    path = tmp_path / "ratings" / "jimeng.json"
    return len(json.loads(path.read_text(encoding="utf-8"))["votes"]) if path.exists() else 0


def _after(text: str, heading: str) -> str:
    assert heading in text, text[-2000:]
    return text[text.index(heading):]


def _poll(read, want, timeout_s: float = 60, what: str = ""):
    """Streamlit reruns asynchronously: read the page until ``want(value)``, else fail with the last value."""
    deadline, value = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        value = read()
        if want(value):
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}: {value!r}")


SETTLED = """() => document.querySelector("[data-testid='stApp']").dataset.testScriptState === 'notRunning'
    && ![...document.querySelectorAll("[data-testid='stMain'] [data-testid='stImage'] img")].some(i => !i.complete)
    && !document.querySelector("[data-testid='stMain'] [data-stale='true']")"""  # the rerun is over, all drawn


def _settle(page) -> None:
    """Wait until the page shows the last rerun in full: a vote is meant for the pair on the screen."""
    _poll(lambda: page.evaluate(SETTLED), bool, 30, "the rerun to finish")


def rank_blind(page, main, sent: list[float], tmp_path: Path, shots: Path) -> None:
    heading = "Rank jimeng blind"
    main.get_by_text("Rank", exact=True).first.click()
    page.get_by_role("button", name="Start blind ranking").click()
    pair = main.locator("[data-testid='stImage']")
    pair.filter(has_text="Right").first.wait_for(timeout=60_000)

    def panel() -> str:  # the Rank view's text, from its heading on (not the sidebar, not the page's header)
        return _after(main.inner_text(), heading)

    def cast() -> int:
        m = re.search(r"(\d+) vote\(s\) this session", panel())
        return int(m.group(1)) if m else -1

    # Everything is cached: once the pool says it is done the panel must stop polling the server.
    _poll(panel, lambda t: "Rendering in the background" not in t, 30, "the pool to finish")
    page.wait_for_timeout(1500)
    before = len(sent)
    page.wait_for_timeout(3000)
    assert len(sent) == before, f"the vote panel still reruns itself: {len(sent) - before} message(s) in 3 s idle"

    # Blind: two images captioned only Left and Right; nothing in the panel's text or markup names a column.
    assert pair.count() == 2 and [pair.nth(i).inner_text().strip() for i in range(2)] == ["Left", "Right"]
    assert cast() == 0
    text = panel()
    assert not LABEL.search(text), text
    markup = _after(main.inner_html(), heading)
    assert not LABEL.search(markup), LABEL.search(markup)

    # Ten votes and two skips, by button and by key (a Streamlit button's ``shortcut``), on the page's body.
    actions = [("button", "Left is better", 1.0), ("key", "ArrowRight", 0.0), ("button", "Tie", 0.5),
               ("button", "Skip", None), ("key", "ArrowDown", 0.5), ("button", "Right is better", 0.0),
               ("key", "ArrowLeft", 1.0), ("key", "s", None), ("button", "Left is better", 1.0),
               ("key", "ArrowRight", 0.0), ("key", "ArrowDown", 0.5), ("button", "Tie", 0.5)]

    def shown() -> list[str | None]:
        return [img.get_attribute("src") for img in main.locator("[data-testid='stImage'] img").all()]

    # The images' toolbar shows above an image on hover: it must not cover the text above the pair.
    pair.nth(1).hover()
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "rank-vote.png"), full_page=True)
    toolbar = page.locator("[data-testid='stElementToolbar']:visible").last.bounding_box()
    question = main.get_by_text("Which is better?").bounding_box()
    assert toolbar is None or question["y"] + question["height"] <= toolbar["y"], (question, toolbar)

    def toast() -> str:
        return " ".join(page.locator("[data-testid='stToast']").all_inner_texts())

    results, count = [], 0
    for kind, name, result in actions:
        before = shown()
        if kind == "button":
            page.get_by_role("button", name=name).click()  # its name ends in the key
        else:
            page.locator("body").press(name)
        if result is None:  # a skip: the next pair, and the count stays
            _poll(shown, lambda now, was=before: len(now) == 2 and now != was, 30, f"{name} to draw the next pair")
            _settle(page)
            assert cast() == count, f"{name} counted as a vote"
        else:
            count += 1
            results.append(result)
            _poll(cast, lambda n, want=count: n == want, 30, f"{name} to count vote {count}")
            # The pair just voted on is named, briefly (a toast): which side was which column.
            said = _poll(toast, lambda t: "That pair: left was" in t, 30, "the toast naming the pair")
            assert len(LABEL.findall(said.split("That pair:")[-1])) >= 2, said
            _settle(page)
        # The next pair is as blind as the first, and nothing says what the vote just cast was about.
        text = panel().split("Reveal")[0]
        for said in page.locator("[data-testid='stToast']").all_inner_texts():
            text = text.replace(said, "")  # the toast names the pair just voted on, not the one on screen
        assert not LABEL.search(text), text
    assert count == 10

    # Reveal: the ranking of the ten votes, now with the columns' names.
    page.get_by_text("Reveal", exact=True).click()
    page.get_by_text("The ranking", exact=True).wait_for(timeout=60_000)
    _poll(lambda: _after(main.inner_text(), "The ranking"), lambda t: "10 vote(s)" in t, 30,
          "the ranking to count ten votes")
    table = main.locator("[data-testid='stDataFrame']").first
    table.wait_for(timeout=30_000)

    def rows() -> list[dict[str, str]]:  # the table is drawn on a canvas; its cells are in a hidden <table>
        cells = [row.locator("th, td").all_text_contents() for row in table.locator("tr").all()]
        return [dict(zip(cells[0], row, strict=False)) for row in cells[1:]] if cells else []

    shown = {"base", *(f"epoch {n}" for n in range(3, 19, 3))}  # the columns voted on (the series has more)
    ranked = _poll(rows, lambda r: shown <= {row.get("column") for row in r}, 30, "the table to name the columns")
    # Each decisive vote is one win and one loss, a tie is a tie on both sides.
    decisive, ties = sum(r != 0.5 for r in results), sum(r == 0.5 for r in results)
    assert sum(int(r["won"]) for r in ranked) == sum(int(r["lost"]) for r in ranked) == decisive, ranked
    assert sum(int(r["tied"]) for r in ranked) == 2 * ties, ranked
    page.set_viewport_size({"width": 1500, "height": 2600})  # the main area scrolls inside the page: make room
    page.get_by_text("The ranking", exact=True).scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    shot = shots / "rank.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # The votes file: one per series under ratings_dir, JSON, ten votes with what each button or key meant.
    files = sorted((tmp_path / "ratings").glob("*.json"))
    assert [f.name for f in files] == ["jimeng.json"], files
    data = json.loads(files[0].read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["series"] == "jimeng"
    votes = data["votes"]
    assert len(votes) == 10
    for vote in votes:
        for key in (vote["a"], vote["b"]):
            assert key == "base" or SHA256.fullmatch(key), vote
        assert vote["a"] != vote["b"] and vote["seed"] == 1, vote
        assert vote["result"] in (0, 0.5, 1), vote
    assert [v["result"] for v in votes] == results  # "a" is the left image: left 1, right 0, tie 0.5


def stale_pair_press(browser, server: str, tmp_path: Path) -> None:
    """A key pressed while the page still shows the pair just voted on must not vote on the next pair, which the
    server has drawn but the page has not shown yet. Made certain here by holding the server's replies back."""
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    link: dict = {"ws": None, "hold": False, "held": [], "sent": 0.0}

    def relay(ws) -> None:
        def up(message) -> None:
            link["sent"] = time.monotonic()
            server.send(message)

        link["ws"], server = ws, ws.connect_to_server()
        ws.on_message(up)
        server.on_message(lambda m: (link["held"].append if link["hold"] else ws.send)(m))

    page.route_web_socket(re.compile(r"/_stcore/stream"), relay)
    page.goto(server, timeout=120_000)
    page.get_by_text("Demo mode").first.wait_for(timeout=180_000)
    # This new session: the cached seed and steps, so the pool is instant.
    enter(page.get_by_label("Seeds"), "1", settle_ms=1000)
    page.get_by_text("Sampling").first.click()
    enter(page.get_by_label("Steps"), "3", settle_ms=1000)
    main = page.locator("[data-testid='stMain']")
    main.get_by_text("Rank", exact=True).first.click()
    page.get_by_role("button", name="Start blind ranking").click()
    images = main.locator("[data-testid='stImage'] img")
    images.nth(1).wait_for(timeout=60_000)
    # Until the pool is done the panel reruns itself each second; a held press would meet that: wait it out
    # (on a fresh machine some of this session's cells may still be rendering).
    _poll(lambda: main.inner_text(), lambda t: "Rendering in the background" not in t, 180, "the pool to finish")
    _poll(lambda: time.monotonic() - link["sent"], lambda quiet: quiet > 2.5, 30, "the page to stop polling")
    _settle(page)

    def shown():
        return [images.nth(i).get_attribute("src") for i in range(images.count())]

    def release() -> None:
        link["hold"] = False
        for message in link["held"]:
            link["ws"].send(message)
        link["held"].clear()

    for _attempt in range(3):  # a first press lost in the page's own traffic is retried, not the check
        first, before = shown(), _count_votes(tmp_path)
        link["hold"] = True  # the server hears the page, the page hears nothing back
        page.locator("body").press("ArrowLeft")
        deadline = time.monotonic() + 10
        while _count_votes(tmp_path) == before and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        if _count_votes(tmp_path) == before + 1:
            break
        release()
        _poll(lambda: time.monotonic() - link["sent"], lambda quiet: quiet > 2.5, 30, "the page to be quiet")
        _settle(page)
    else:
        pytest.fail("the server never recorded a key pressed in the Rank view")
    page.wait_for_timeout(500)
    assert shown() == first  # the page still shows the pair just voted on, and its buttons
    page.locator("body").press("ArrowLeft")  # a second press on that pair, or a key meant for it
    page.wait_for_timeout(2000)
    recorded = _count_votes(tmp_path)
    release()
    text = _poll(lambda: main.inner_text(), lambda t: "vote(s) this session" in t and shown() != first, 30,
                 "the next pair")
    page.close()
    assert recorded == before + 1, (f"a key pressed on a pair already voted on cast a vote on the next pair, "
                                    f"which was never on the screen ({recorded - before} votes recorded)")
    assert "vote(s) this session" in text and LABEL.search(_after(text, "Rank jimeng blind").split("Reveal")[0]) \
        is None, "the next pair is drawn, blind"
