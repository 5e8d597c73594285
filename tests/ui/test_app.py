"""The app as a whole: one plain message for a bad config (AppTest), and the server and code promises of
docs/SECURITY.md."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamlit.testing.v1 import AppTest

from lora_spectrum.ui.resources import CONFIG_ENV
from tests.ui.apptest import APP

ROOT = Path(__file__).resolve().parents[2]


def test_a_bad_config_is_one_plain_message(tmp_path, monkeypatch):
    config = tmp_path / "bad.yaml"
    config.write_text("device: gpu\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(config))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("device must be auto, cpu, cuda" in e.value for e in at.error)


FORBIDDEN = {
    "file_uploader": "no uploads: LoRAs come from the configured folder only",
    "unsafe_allow_html": "text from files is never rendered as HTML",
    "st.html(": "text from files is never rendered as HTML",
    "components.v1": "no custom HTML/JS components",
    "torch.load(": "no pickle: safetensors only",
    "pickle.load": "no pickle: safetensors only",
}
ALLOWED = {("lora_spectrum/ui/grid.py", "st.html(")}  # the viewer: see below


def test_server_defaults_are_local_xsrf_protected_and_without_uploads():
    """The promises of docs/SECURITY.md that live in configuration and in what the code never calls."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    server = config["server"]
    assert server["address"] == "127.0.0.1", "listens on this machine only"
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    assert server["maxUploadSize"] <= 1 and server["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none", "tracebacks (paths, code) are not sent to browsers"
    sources = [ROOT / "app.py", *sorted((ROOT / "lora_spectrum").rglob("*.py"))]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for needle, promise in FORBIDDEN.items():
            if (path.relative_to(ROOT).as_posix(), needle) in ALLOWED:
                continue
            assert needle not in text, f"{path.relative_to(ROOT)} uses {needle}: {promise}"
    # The one exception (docs/SECURITY.md): the grid's viewer, one st.html call, fed only by viewer_html, which
    # escapes every text it takes (tests/ui/test_lightbox.py) and adds one fixed script of ours.
    grid = (ROOT / "lora_spectrum" / "ui" / "grid.py").read_text(encoding="utf-8")
    assert grid.count("st.html(") == 1 and "viewer = viewer_html(" in grid
    assert "st.html(_grid_style(factor > 1) + viewer, unsafe_allow_javascript=True)" in grid
