"""Operators through AppTest (docs/SECURITY.md, "Operators"): on a server that listens on 0.0.0.0 with a token, a
viewer is refused switching the base, downloading one, Ship and deleting History, each with one sentence and
nothing done (also when a click arrives on the disabled button); the right token makes the same session the
operator; a wrong one is refused without a hint; on 127.0.0.1 everyone is the operator."""

from __future__ import annotations

import shutil

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from lora_spectrum.access import TOKEN_ENV
from lora_spectrum.ui.operator import BOX, TYPED
from tests.hub_server import HubServer, Repo
from tests.ui.apptest import APP, start

TOKEN = "correct-horse-battery-staple-42"
REPO = "tiny-lab/sdxl-demo"
REFUSAL = "Only the operator can do this: type the operator token under Operator in the sidebar."
ACTIONS = ("base_load", "base_download", "ship_go", "hist_del")  # switch, download, Ship, delete


@pytest.fixture
def address():
    """Set Streamlit's ``server.address`` for the test (the app reads it with ``st.get_option``)."""
    old = st_config.get_option("server.address")
    yield lambda value: st_config.set_option("server.address", value)
    st_config.set_option("server.address", old)


@pytest.fixture
def shared(app_config, demo_dir, tmp_path, address, monkeypatch):
    """A server on 0.0.0.0 with an operator token file, a second base in models_dir and a repo on a local hub."""
    config, _ = app_config
    address("0.0.0.0")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    (tmp_path / "operator.txt").write_text(TOKEN + "\n", encoding="utf-8")
    shutil.copytree(demo_dir / "base-sdxl", tmp_path / "models" / "alt-sdxl")
    hub = HubServer()
    hub.repos[REPO] = Repo(demo_dir / "base-sdxl")
    config.write_text(config.read_text(encoding="utf-8") + f"operator_token_file: {tmp_path / 'operator.txt'}\n"
                      f"models_dir: {tmp_path / 'models'}\nbases: [{REPO}]\nlocal_files_only: false\n"
                      f"hf_cache: {tmp_path / 'hf'}\nhub_endpoint: {hub.url}\nfuse: off\n"
                      # Insight would fetch CLIP where downloads are allowed: a folder that is not there instead.
                      f"clip_model: {tmp_path / 'no-clip'}\n", encoding="utf-8")
    yield config, tmp_path, hub
    hub.close()


def page_text(at) -> str:
    parts = [e.value for kind in ("warning", "error", "info", "success", "caption", "markdown") for e in at.get(kind)]
    parts += [e.value for e in at.sidebar.get("warning")] + [e.value for e in at.sidebar.get("error")]
    return " ".join(parts).replace("\\", "")


def warnings(at) -> list[str]:
    """The page's warnings about the operator (the demo's own warning aside)."""
    return [w.value.replace("\\", "") for w in [*at.main.warning, *at.sidebar.warning] if "operator" in w.value]


def base_caption(at) -> str:
    return next(c.value.replace("\\", "") for c in at.caption if c.value.replace("\\", "").startswith("Base: "))


def kept_runs(tmp_path) -> list:
    return [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]  # beside them: History's lock file


def buttons(at, tmp_path) -> dict:
    """Each operator action's button, drawn as a visitor reaches it: a render first (History needs a run), then the
    Base section on the second base and on the hub's repo, Insight with an epoch to ship, History."""
    out = {}
    at.sidebar.selectbox(key="base_pick").set_value(str(tmp_path / "models" / "alt-sdxl")).run()
    out["base_load"] = at.button(key="base_load")
    at.sidebar.selectbox(key="base_pick").set_value(REPO).run()
    out["base_download"] = at.button(key="base_download")
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    out["ship_go"] = at.button(key="ship_go")
    at.segmented_control(key="view").set_value("History").run()
    [run] = kept_runs(tmp_path)
    out["hist_del"] = at.button(key=f"hist_del_{run.name}")
    return out


def test_a_viewer_is_refused_every_operator_action_with_one_sentence(shared):
    config, tmp_path, hub = shared
    at = start()
    assert any("You are a viewer" in c.value for c in at.sidebar.caption)
    at.button(key="render").click().run()  # a viewer renders (and compares, probes, votes, downloads)
    assert not at.exception, at.exception
    assert at.main.image
    for key, button in buttons(at, tmp_path).items():
        assert button.disabled and button.help == REFUSAL, (key, button.disabled, button.help)
    assert hub.log == [], "the hub is never asked"
    assert not at.exception, at.exception
    assert TOKEN not in page_text(at)


def test_a_click_that_arrives_for_a_viewer_is_refused_when_it_runs(shared):
    """A press can arrive for a button drawn enabled in the previous run: here the token changes between drawing
    the button and the click. Streamlit discards the press of a button drawn disabled in this run; Delete's
    callback (run before the page, with the previous run's widgets) checks the role itself and says why."""
    config, tmp_path, hub = shared
    at = start()
    at.button(key="render").click().run()
    at.sidebar.text_input(key=BOX).set_value(TOKEN).run()
    [run] = kept_runs(tmp_path)
    token_file = tmp_path / "operator.txt"

    def click_after_rotation(key: str) -> None:
        assert not at.button(key=key).disabled, key
        token_file.write_text("another-token-of-the-operator\n", encoding="utf-8")
        at.button(key=key).click().run()
        assert not at.exception, at.exception
        assert warnings(at) == ([REFUSAL] if key.startswith("hist_del") else []), (key, warnings(at))
        assert at.button(key=key).disabled and at.button(key=key).help == REFUSAL, key
        token_file.write_text(TOKEN + "\n", encoding="utf-8")

    at.segmented_control(key="view").set_value("History").run()
    click_after_rotation(f"hist_del_{run.name}")
    assert run.is_dir()
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    click_after_rotation("ship_go")
    assert not (tmp_path / "shipped").exists()
    at.sidebar.selectbox(key="base_pick").set_value(REPO).run()
    click_after_rotation("base_download")
    assert hub.log == []
    at.sidebar.selectbox(key="base_pick").set_value(str(tmp_path / "models" / "alt-sdxl")).run()
    before = base_caption(at)
    click_after_rotation("base_load")
    assert base_caption(at) == before, "still the demo"


def test_the_right_token_makes_the_same_session_the_operator(shared, caplog):
    config, tmp_path, hub = shared
    at = start()
    at.button(key="render").click().run()
    at.sidebar.text_input(key=BOX).set_value(TOKEN).run()
    assert not at.exception, at.exception
    assert any("You are the operator in this session." in c.value for c in at.sidebar.caption)
    assert all(t.key != BOX for t in at.sidebar.text_input), "no box once the operator"
    assert isinstance(at.session_state[TYPED], bytes) and TOKEN.encode() not in at.session_state[TYPED]
    for key, button in buttons(at, tmp_path).items():
        assert not button.disabled and button.help != REFUSAL, key
    # Delete, Ship, Download (its size from the hub), Load: each done.
    [run] = kept_runs(tmp_path)
    at.button(key=f"hist_del_{run.name}").click().run()
    assert not run.exists()
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    at.button(key="ship_go").click().run()
    assert (tmp_path / "shipped" / "jimeng.safetensors").is_file()
    at.sidebar.selectbox(key="base_pick").set_value(REPO).run()
    at.button(key="base_download").click().run()
    assert hub.log and at.button(key="base_download_go").label.startswith("Download ")
    at.sidebar.selectbox(key="base_pick").set_value(str(tmp_path / "models" / "alt-sdxl")).run()
    at.button(key="base_load").click().run()
    assert base_caption(at).startswith(f"Base: {tmp_path / 'models' / 'alt-sdxl'} (sdxl")
    assert not at.exception and not warnings(at), warnings(at)
    # The token is never shown, logged or written: not in the page, the log, nor any file the app wrote (a render
    # of the operator's, its manifest, the release and its card, the render cache) but the token file itself.
    at.segmented_control(key="view").set_value("Compare").run()
    at.button(key="render").click().run()
    assert kept_runs(tmp_path) and not at.exception
    assert TOKEN not in page_text(at) and TOKEN not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "operator.txt"]
    assert len(written) > 10 and not [p for p in written if TOKEN.encode() in p.read_bytes()]
    # Stop being the operator: a viewer again.
    at.button(key="operator_leave").click().run()
    assert any("You are a viewer" in c.value for c in at.sidebar.caption)


def test_a_wrong_token_is_refused_without_a_hint(shared, caplog):
    at = start()
    for wrong in (TOKEN[:-1], TOKEN + "x", "x" + TOKEN[1:], " "):
        at.sidebar.text_input(key=BOX).set_value(wrong).run()
        assert not at.exception, at.exception
        said = [e.value for e in at.sidebar.error]
        assert said == (["That is not the operator token."] if wrong.strip() else []), said
        assert TYPED not in at.session_state and at.sidebar.text_input(key=BOX).value == ""
        assert any("You are a viewer" in c.value for c in at.sidebar.caption)
    at.run()
    assert not at.sidebar.error, "said once"
    assert TOKEN[:-1] not in caplog.text and TOKEN[:-1] not in page_text(at)


def test_on_127_0_0_1_without_a_token_everyone_is_the_operator(app_config, address, monkeypatch, tmp_path):
    address("127.0.0.1")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    at = start()
    assert not at.sidebar.expander or all(e.label != "Operator" for e in at.sidebar.expander), "no box at all"
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    assert not at.button(key="ship_go").disabled
    at.button(key="ship_go").click().run()
    assert not warnings(at), warnings(at)
    assert (tmp_path / "shipped" / "jimeng.safetensors").is_file()


def test_nobody_is_the_operator_on_0_0_0_0_without_a_token_and_the_sidebar_says_how(app_config, address,
                                                                                     monkeypatch):
    address("0.0.0.0")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    at = start()
    [note] = [i.value.replace("\\", "") for i in at.sidebar.info]
    assert "Nobody is the operator" in note and "LORA_SPECTRUM_OPERATOR_TOKEN" in note
    assert not at.sidebar.get("text_input") or all(t.key != BOX for t in at.sidebar.text_input)
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    assert at.button(key="ship_go").disabled and "names none" in at.button(key="ship_go").help


def test_a_token_applies_on_127_0_0_1_too(app_config, address, monkeypatch):
    """A reverse proxy on this machine makes every visitor local: a configured token is asked for there too."""
    address("127.0.0.1")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    at = start()
    at.segmented_control(key="view").set_value("Insight").run()
    at.selectbox(key="ship_epoch").set_value(20).run()
    assert at.button(key="ship_go").help == REFUSAL
    at.sidebar.text_input(key=BOX).set_value(TOKEN).run()
    assert not at.button(key="ship_go").disabled


def test_streamlit_login_with_an_address_on_the_operators_list_is_the_operator(app_config, address, monkeypatch):
    """``st.user`` as Streamlit's login fills it (``is_logged_in`` is there only with an identity provider)."""
    config, _ = app_config
    address("0.0.0.0")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config.write_text(config.read_text(encoding="utf-8") + "operators: [Alice@Example.com]\n", encoding="utf-8")
    for user, operator in (({"is_logged_in": True, "email": "alice@example.com"}, True),
                           ({"is_logged_in": True, "email": "alice@example.com", "email_verified": False}, False),
                           ({"is_logged_in": True, "email": "eve@example.com"}, False),
                           ({"is_logged_in": False}, False),
                           ({"email": "alice@example.com"}, False)):  # no identity provider: an e-mail is no login
        at = AppTest.from_file(APP, default_timeout=240)
        at.user = user
        at.run()
        assert not at.exception, at.exception
        at.segmented_control(key="view").set_value("Insight").run()
        at.selectbox(key="ship_epoch").set_value(20).run()
        button = at.button(key="ship_go")
        assert button.disabled is not operator, user
        if operator:
            assert any("logged in as alice@example.com" in c.value.replace("\\", "") for c in at.sidebar.caption)
        elif "is_logged_in" in user:
            assert button.help.startswith("Only the operator can do this: log in under Operator"), button.help
            assert {b.key for b in at.sidebar.button} & {"operator_login", "operator_logout"}
        else:
            assert "this server names none" in button.help
