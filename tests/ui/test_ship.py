"""Ship through AppTest: the card shown as the hub shows it (its front matter as a YAML block, its body as
Markdown) with the raw file to download; Push to hub against a local hub server."""

from __future__ import annotations

import yaml

from lora_spectrum.access import TOKEN_ENV
from lora_spectrum.decision.card_front_matter import split_front_matter
from lora_spectrum.ui.operator import BOX
from lora_spectrum.ui.text import md_escape
from tests.hub_server import HubServer
from tests.ui.apptest import ship_from_insight, start


def test_the_shipped_card_is_shown_rendered_with_its_front_matter_and_offered_raw(app_config, tmp_path):
    at = ship_from_insight(start(), note="clean *lines*")
    raw = (tmp_path / "shipped" / "jimeng.md").read_text(encoding="utf-8")
    # The raw file as the download.
    assert [d.proto.label for d in at.get("download_button")].count("Model card") == 1
    # The front matter as a YAML block, the body rendered as Markdown (never the front matter inside it).
    front = [c.value for c in at.code if c.language == "yaml"]
    assert len(front) == 1 and yaml.safe_load(front[0]) == yaml.safe_load(raw.split("---\n")[1])
    body = [m.value for m in at.markdown if "## Why this epoch" in m.value]
    assert len(body) == 1 and body[0].startswith("# jimeng") and "tags:" not in body[0]
    assert "Note: clean \\*lines\\*" in body[0], "text from the person stays plain text"
    assert "![" not in body[0], "images beside the card are not served here: their alt text instead"
    assert body[0].strip() == split_front_matter(raw)[1].strip().replace("![The grid of epochs compared](jimeng.grid.png)",
                                                         "The grid of epochs compared")


def test_push_to_hub_says_one_sentence_without_a_token_keeps_the_release_then_pushes_it(app_config, tmp_path,
                                                                                        monkeypatch):
    """Push to hub after shipping, against a local hub (the config's hub_endpoint): without a token, one sentence
    and nothing lost (the release on disk, the card shown, the repository typed); with one, exactly the release
    (its card as README.md) and the repository's address shown."""
    from huggingface_hub import constants

    config, _loras = app_config
    hub = HubServer()
    hub.token = "hf_app_token_0123456789"
    try:
        config.write_text(config.read_text(encoding="utf-8") + f"hub_endpoint: {hub.url}\n", encoding="utf-8")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
        at = ship_from_insight(start())
        shipped = {p.name: p.read_bytes() for p in (tmp_path / "shipped").iterdir()}
        assert at.button(key="ship_push").disabled, "no repository typed yet"
        at.text_input(key="ship_repo").set_value("tiny-lab/jimeng").run()
        # 1. No token: one sentence, nothing sent, nothing lost.
        at.button(key="ship_push").click().run()
        assert not at.exception, at.exception
        assert [e.value for e in at.error] == [md_escape("no Hugging Face token: log in with `hf auth login` or set "
                                                         "HF_TOKEN (a token with write access), then push again")]
        assert not hub.log and not at.success[1:]
        assert {p.name: p.read_bytes() for p in (tmp_path / "shipped").iterdir()} == shipped
        assert at.success[0].value.startswith("Shipped ") and at.text_input(key="ship_repo").value == "tiny-lab/jimeng"
        assert [d.proto.label for d in at.get("download_button")] == ["Model card"]
        # 2. With a token: the release, its card as README.md, and the repository's address.
        monkeypatch.setenv("HF_TOKEN", hub.token)
        at.button(key="ship_push").click().run()
        assert not at.exception, at.exception
        url = f"{hub.url}/tiny-lab/jimeng"
        assert not at.error and at.success[-1].value == md_escape(f"Pushed to {url}")
        assert [b.proto.url for b in at.get("link_button")] == [url]
        files = hub.repos["tiny-lab/jimeng"].files
        assert files == {"README.md": shipped["jimeng.md"], **{n: b for n, b in shipped.items() if n != "jimeng.md"}}
        assert hub.token not in "".join(e.value for e in [*at.success, *at.markdown, *at.caption])
    finally:
        hub.close()


def test_only_the_operator_pushes_with_this_machines_token(app_config, tmp_path, monkeypatch):
    """The push sends this machine's Hugging Face token: the operator's action, as Ship is. An operator ships; once
    the session stops being the operator, Push to hub is disabled with the one sentence, and the hub is never
    asked."""
    config, _loras = app_config
    hub = HubServer()
    hub.token = "hf_app_token_0123456789"
    try:
        config.write_text(config.read_text(encoding="utf-8") + f"hub_endpoint: {hub.url}\n", encoding="utf-8")
        monkeypatch.setenv(TOKEN_ENV, "operator-token-of-this-test")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        at = start()
        at.sidebar.text_input(key=BOX).set_value("operator-token-of-this-test").run()
        ship_from_insight(at)
        at.text_input(key="ship_repo").set_value("tiny-lab/jimeng").run()
        assert not at.button(key="ship_push").disabled
        at.button(key="operator_leave").click().run()
        assert not at.exception, at.exception
        push = at.button(key="ship_push")
        assert push.disabled and push.help.startswith("Only the operator can do this")
        assert hub.log == [] and "tiny-lab/jimeng" not in hub.repos
    finally:
        hub.close()
