"""Rank through AppTest: blind pairs (sides only, no labels until the vote), votes by button into the series' votes
file (left image = "a"), the pair's labels in a toast after each vote (not after a skip), skip not counted, images
without their parameters text, the last pair opened in Compare, Reveal with the ranking (unjudged files unranked),
the series' verdict with these votes and how certain the ranking is, and Ship this epoch (at the verdict's pick)
writing the release and its card."""

from __future__ import annotations

import io
import json

from PIL import Image

from lora_spectrum.decision.votes import file_name
from lora_spectrum.ui.insight import CACHE
from lora_spectrum.ui.state import RANK, RESULT
from lora_spectrum.ui.text import md_escape
from tests.ui.apptest import start

EPOCHS = ["jimeng_20.safetensors", "jimeng_150.safetensors", "jimeng_300.safetensors"]
LABELS = ("epoch 20", "epoch 150", "epoch 300", "base")
# A probe small enough for the random demo (14 renders of two steps): Insight runs it by itself on the way.
PROBES = """auto_probe: true
probe_set: tiny
probes:
  tiny:
    seeds: [11]
    style: [{prompt: a red circle on a white background, steps: 2}]
    new_context: [{prompt: a blue triangle on a gray background, steps: 2}]
"""


def _vote_panel_text(at) -> str:
    """The Rank view's captions (not the page's "Base: ..." line above every view) and image captions."""
    return " ".join([c.value for c in at.main.caption if not c.value.startswith("Base")]
                    + [c for im in at.main.image for c in im.captions]).replace("\\", "")


def test_blind_votes_go_to_the_votes_file_and_reveal_ranks_them(app_config, tmp_path):
    config, loras = app_config
    config.write_text(config.read_text(encoding="utf-8").replace("auto_probe: false\n", "") + PROBES,
                      encoding="utf-8")
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(EPOCHS)
    at.segmented_control(key="view").set_value("Rank").run()
    assert not at.exception, at.exception
    at.button(key="rank_start").click().run()
    assert not at.exception, at.exception
    assert at.session_state[RANK]["pool"].wait(240), "the background renders finish"
    at.run()
    # 1. Two images, captioned Left and Right only: nothing tells which epoch is which.
    captions = [c for im in at.main.image for c in im.captions]
    assert captions == ["Left", "Right"], captions
    # Sent as PNG, enlarged (if at all) by a whole multiple with nearest-neighbour (``grid_layout.shown_whole``).
    assert all(im.proto.imgs[0].url.endswith(".png") for im in at.main.image), "never a JPEG that smears pixels"
    assert not any(label in _vote_panel_text(at) for label in LABELS), _vote_panel_text(at)
    # The images shown are pixels only: the cells' own PNGs name the LoRA and its epoch in their parameters.
    pair = at.session_state[RANK]["pair"]
    for side in ("left", "right"):
        assert not Image.open(io.BytesIO(pair[side].png)).info, "no text chunk in a blind image"
    # 2. Votes: three decisive, one tie, a skip that does not count; each stored with the left image as "a".
    expected = []
    for key, result in (("vote_left", 1.0), ("vote_right", 0.0), ("vote_tie", 0.5), ("vote_skip", None),
                        ("vote_left", 1.0)):
        pair = at.session_state[RANK]["pair"]
        if result is not None:
            expected.append((pair["left"].key, pair["right"].key, result, pair["seed"]))
        names = {side: pair[side].label for side in ("left", "right")}
        at.button(key=f"{key}_{at.session_state[RANK]['shown']}").click().run()
        assert not at.exception, at.exception
        # The pair just voted on is named once, briefly (a toast); the next pair is as blind as the first.
        toasts = [t.value.replace("\\", "") for t in at.toast]
        if result is None:
            assert not toasts, "a skip is not a vote: the pair stays unnamed"
        else:
            assert toasts == [f"That pair: left was {names['left']}, right was {names['right']} "
                              f"(seed {pair['seed']})."], toasts
        assert not any(label in _vote_panel_text(at) for label in LABELS), "the next pair is drawn blind"
        at.run()
        assert not at.toast, "said once"
    assert "4 vote(s) this session" in _vote_panel_text(at)
    votes = json.loads((tmp_path / "ratings" / file_name("jimeng")).read_text(encoding="utf-8"))["votes"]
    assert [(v["a"], v["b"], v["result"], v["seed"]) for v in votes] == expected
    assert all(v["prompt"] == at.sidebar.text_area(key="prompt").value and v["seed"] == 1 for v in votes)
    assert all(v["a"] != v["b"] for v in votes)
    # 3. Reveal: the ranking with labels beside Insight's measures of this series (Insight probed it by itself on
    #    the way), the verdict with these votes, and the epoch to ship.
    at.segmented_control(key="view").set_value("Insight").run()
    at.segmented_control(key="view").set_value("Rank").run()
    assert at.session_state[RANK]["cast"] == 4, "the ranking session survives a visit to Insight"
    at.toggle(key="rank_reveal").set_value(True).run()
    assert not at.exception, at.exception
    assert all(v is not None for v in at.main.dataframe[0].value["won"]), "every column has its counts"
    table = at.main.dataframe[0].value
    # The ranking is the series' (every epoch file and the base); files nobody judged get no rank.
    judged = table[table["rank"].notna()]
    assert set(judged["column"]) <= set(LABELS) and sorted(judged["rank"]) == list(range(1, len(judged) + 1))
    assert (judged["won"] + judged["lost"] + judged["tied"]).sum() == 8, "each of the 4 votes counted on both sides"
    assert set(table["column"]) - set(LABELS) and table[~table["column"].isin(LABELS)]["rank"].isna().all()
    assert "4 vote(s)" in _vote_panel_text(at)
    epochs = table[table["column"] != "base"]
    assert "weight norm" in table and epochs["weight norm"].notna().all(), "Insight's measures beside the ranking"
    assert "style" in table and epochs["style"].notna().all(), "the probe's measures too"
    # The verdict, the same one Insight shows, now with the votes: whether they agree, how far apart the top two.
    verdict = at.session_state[CACHE][1]["verdict"]
    assert verdict["state"] in ("measures", "votes") and verdict["votes"]["votes"] == 4
    assert [s.value for s in at.success] == [md_escape(verdict["reason"])]
    assert "blind votes" in verdict["reason"]
    said = _vote_panel_text(at)
    assert ("The votes agree with the measures" in said) is bool(verdict["votes"]["agree"]), said
    # How certain: the top two's distance in standard errors and as a chance; while the votes cannot separate
    # them, Ship offers the verdict's pick (the measures'), with a button that puts it back in the box.
    assert "likely to be truly better" in said or "Too few epochs judged" in said, said
    if "likely to be truly better" in said and not verdict["votes"].get("decided"):
        [offer] = [i.value.replace("\\", "") for i in at.info if "cannot yet separate" in i.value]
        assert f"Ship offers the verdict's pick, epoch {verdict['epoch']}" in offer, offer
        other = next(n for n in at.selectbox(key="ship_epoch").options if n != f"epoch {verdict['epoch']}")
        at.selectbox(key="ship_epoch").set_value(int(other.split()[1])).run()
        at.button(key="rank_ship_pick").click().run()
        assert at.selectbox(key="ship_epoch").value == verdict["epoch"]
    elif verdict["votes"].get("decided"):
        assert any("The votes separate" in s.value for s in at.success)
    # Ship starts at the verdict's pick (the votes' top only once they are separated), not the ranking's top.
    assert at.selectbox(key="ship_epoch").value == verdict["epoch"], "Ship starts at the verdict's pick"
    top = next(lab for lab in judged.sort_values("rank")["column"] if lab != "base")
    at.selectbox(key="ship_epoch").set_value(int(top.split()[1])).run()  # a person ships the blind winner
    at.text_input(key="ship_note").set_value("the blind winner").run()
    at.button(key="ship_go").click().run()
    assert not at.exception, at.exception
    shipped = tmp_path / "shipped"
    assert (shipped / "jimeng.safetensors").is_file() and (shipped / "jimeng.md").is_file()
    card = (shipped / "jimeng.md").read_text(encoding="utf-8")
    assert "the blind winner" in card and "Blind A/B ranking: #" in card
    assert any("Shipped" in s.value for s in at.success)
    # 4. Shipping again never overwrites: one plain message.
    at.button(key="ship_go").click().run()
    assert any("exists" in e.value for e in at.error), [e.value for e in at.error]


def test_rank_needs_two_columns(app_config):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(["jimeng_20.safetensors"])
    at.sidebar.toggle(key="include_base").set_value(False)
    at.segmented_control(key="view").set_value("Rank").run()
    assert not at.exception, at.exception
    assert any("at least two columns" in i.value for i in at.info)


def test_the_last_pair_opens_in_compare_as_it_was_shown(app_config):
    at = start()
    at.sidebar.multiselect(key="epochs").set_value(EPOCHS[:2])
    at.segmented_control(key="view").set_value("Rank").run()
    at.button(key="rank_start").click().run()
    assert at.session_state[RANK]["pool"].wait(240), "the background renders finish"
    at.run()
    pair = at.session_state[RANK]["pair"]
    at.button(key=f"vote_left_{at.session_state[RANK]['shown']}").click().run()
    at.button(key="rank_open_last").click().run()
    assert not at.exception, at.exception
    assert at.segmented_control(key="view").value == "Compare"
    shown = {pair["left"].file, pair["right"].file}
    assert set(at.sidebar.multiselect(key="epochs").value) == shown - {None}
    assert at.sidebar.toggle(key="include_base").value == (None in shown)
    assert at.sidebar.text_input(key="seeds").value == str(pair["seed"])
    cells = at.session_state[RESULT]["cells"]
    assert {c.file for c in cells} == shown and {c.seed for c in cells} == {pair["seed"]}
    assert all(c.cached for c in cells), "the pair's renders, from the render cache"
    assert not any("not what the sidebar says" in w.value for w in at.main.warning)
