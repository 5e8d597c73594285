"""Two sessions at once on one shared engine (two AppTest instances on one config share it through
st.cache_resource): a base switch while the other renders is refused and the render finishes unharmed; a History
entry deleted while the other has it open is said, without a crash; a release shipped while the other votes keeps
both. One session is held at a gate inside the core while the test drives the other."""

from __future__ import annotations

import json
import shutil
import threading

from streamlit.runtime import Runtime

from lora_spectrum.decision.votes import file_name
from lora_spectrum.ui import ship
from lora_spectrum.ui.resources import get_workbench
from lora_spectrum.ui.state import RANK
from tests.ui.apptest import start

EPOCHS = ["jimeng_20.safetensors", "jimeng_300.safetensors"]
EXPECTED = {"base · seed 1", "epoch 20 · strength 1 · seed 1", "epoch 300 · strength 1 · seed 1"}


def hold_first_call(obj, name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Hold the first call of ``obj.name`` (then the real one runs): (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    real = getattr(obj, name)

    def held(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            assert release.wait(120), "the test never released the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, held)
    return entered, release


class Held:
    """One session's run in a thread, stopped at a gate, while the test drives another session. AppTest points
    Streamlit's one Runtime at the session that ran last and clears it when a run ends: the held session's is put
    back before it goes on."""

    def __init__(self, at, entered: threading.Event):
        self.at, self.error = at, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert entered.wait(120), "the session never reached the gate"
        self.runtime = Runtime._instance

    def _run(self):
        try:
            self.at.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by finish()
            self.error = exc

    def finish(self, release: threading.Event):
        Runtime._instance = self.runtime
        release.set()
        self.thread.join(120)
        assert not self.thread.is_alive() and self.error is None, self.error
        assert not self.at.exception, self.at.exception
        return self.at


def captions(at) -> set[str]:
    """The grid's captions as read aloud (their labels keep together with non-breaking spaces)."""
    return {c.replace("\u00a0", " ") for im in at.main.image for c in im.captions}


def base_caption(at) -> str:
    return next(c.value.replace("\\", "") for c in at.caption if c.value.replace("\\", "").startswith("Base: "))


def runs(tmp_path) -> list:
    return sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())  # beside them: History's lock file


def test_a_switch_while_another_session_renders_is_refused_and_the_render_finishes(app_config, demo_dir, tmp_path,
                                                                                   monkeypatch):
    config, _ = app_config
    shutil.copytree(demo_dir / "base-sdxl", tmp_path / "models" / "alt-sdxl")
    config.write_text(config.read_text(encoding="utf-8") + f"models_dir: {tmp_path / 'models'}\nfuse: off\n",
                      encoding="utf-8")
    renderer, switcher = start(), start()
    _, choice, _ = get_workbench(str(config))
    engine = choice.engine
    before = base_caption(renderer)
    # 1. One session renders; it is held inside the engine's first render (admitted: it holds a slot).
    entered, release = hold_first_call(engine, "render", monkeypatch)
    renderer.sidebar.multiselect(key="epochs").set_value(EPOCHS)
    renderer.button(key="render").click()
    held = Held(renderer, entered)
    # 2. The other presses Load on another base: refused at once, with why; the base stays.
    switcher.sidebar.selectbox(key="base_pick").set_value(str(tmp_path / "models" / "alt-sdxl")).run()
    switcher.button(key="base_load").click().run()
    assert not switcher.exception, switcher.exception
    said = [e.value.replace("\\", "") for e in switcher.sidebar.error]
    assert said == ["renders are running (here or in another tab): switch when they finish"], said
    assert choice.engine is engine and base_caption(switcher) == before
    # 3. The render goes on and finishes on the same engine, whole.
    renderer = held.finish(release)
    assert EXPECTED <= captions(renderer), captions(renderer)
    assert not renderer.main.error and choice.engine is engine
    # 4. Once it finished, the same switch goes through.
    switcher.button(key="base_load").click().run()
    assert base_caption(switcher).startswith(f"Base: {tmp_path / 'models' / 'alt-sdxl'} (sdxl")


def test_a_run_deleted_while_another_session_has_it_open_is_said_without_a_crash(app_config, tmp_path):
    deleter, viewer = start(), start()
    deleter.button(key="render").click().run()
    [run] = runs(tmp_path)
    # The other session opens it from History.
    viewer.segmented_control(key="view").set_value("History").run()
    viewer.button(key=f"hist_open_{run.name}").click().run()
    shown = captions(viewer)
    assert shown and any("Reopened from History" in i.value for i in viewer.info)
    # The first deletes it; the other is told once, and its grid stays.
    deleter.segmented_control(key="view").set_value("History").run()
    deleter.button(key=f"hist_del_{run.name}").click().run()
    assert not run.exists()
    viewer.run()
    assert not viewer.exception, viewer.exception
    assert any("was deleted from History" in i.value for i in viewer.info), [i.value for i in viewer.info]
    assert captions(viewer) == shown
    viewer.run()
    assert not any("was deleted from History" in i.value for i in viewer.info), "told once"
    # A History list drawn before another session deleted its run: Open and Delete say so, or do nothing.
    deleter.segmented_control(key="view").set_value("Compare").run()
    deleter.button(key="render").click().run()
    [second] = runs(tmp_path)
    viewer.segmented_control(key="view").set_value("History").run()
    deleter.segmented_control(key="view").set_value("History").run()
    deleter.button(key=f"hist_del_{second.name}").click().run()
    viewer.button(key=f"hist_open_{second.name}").click().run()
    assert not viewer.exception, viewer.exception
    said = [e.value.replace("\\", "") for e in viewer.error]
    assert said == ["This comparison is no longer in History: it was deleted in another tab or session."], said
    viewer.segmented_control(key="view").set_value("Compare").run()
    assert captions(viewer) == shown, "the grid it had open stays"


def test_a_release_shipped_while_another_session_votes_keeps_both(app_config, tmp_path, monkeypatch):
    voter, shipper = start(), start()
    # The voter's blind pair (renders in the background).
    voter.sidebar.multiselect(key="epochs").set_value(EPOCHS)
    voter.segmented_control(key="view").set_value("Rank").run()
    voter.button(key="rank_start").click().run()
    assert voter.session_state[RANK]["pool"].wait(120), "the background renders finish"
    voter.run()
    pair = voter.session_state[RANK]["pair"]
    assert pair is not None
    # The shipper presses Ship; it is held inside the promotion while the voter votes.
    shipper.segmented_control(key="view").set_value("Insight").run()
    shipper.selectbox(key="ship_epoch").set_value(20).run()
    entered, release = hold_first_call(ship, "promote", monkeypatch)
    shipper.button(key="ship_go").click()
    held = Held(shipper, entered)
    voter.button(key=f"vote_left_{voter.session_state[RANK]['shown']}").click().run()
    assert not voter.exception, voter.exception
    shipper = held.finish(release)
    # Both kept: the vote in the series' votes file, the release and its card, each said in its session.
    votes = json.loads((tmp_path / "ratings" / file_name("jimeng")).read_text(encoding="utf-8"))["votes"]
    assert [(v["a"], v["b"], v["result"]) for v in votes] == [(pair["left"].key, pair["right"].key, 1.0)]
    assert (tmp_path / "shipped" / "jimeng.safetensors").is_file() and (tmp_path / "shipped" / "jimeng.md").is_file()
    assert any("Shipped" in s.value for s in shipper.success)
    voter.run()
    assert "1 vote(s) this session" in " ".join(c.value for c in voter.main.caption).replace("\\", "")
