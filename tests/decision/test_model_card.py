"""The model card as text: front matter the hub reads, every section, values from files kept as plain text."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from lora_spectrum import language
from lora_spectrum.decision.model_card import (
    code_block,
    epoch_measures,
    grid_command,
    model_card,
    ranking_row,
    summary,
    text,
    verdict_of,
)
from lora_spectrum.demo.synthetic_epochs import kohya_metadata
from lora_spectrum.measures.numbers import percent
from lora_spectrum.measures.verdict import decide
from tests.measures.test_verdict import probe_table, ratings_for

SOURCE = "inkstyle-000006.safetensors"
SHA = "ab" * 32


def trainer_metadata(**extra) -> dict[str, str]:
    """What kohya sd-scripts writes into an SDXL epoch file (the demo's writer plus the keys it leaves out)."""
    meta = kohya_metadata("inkstyle", 6, 10, 4, 4.0, "sdxl", 10)
    meta.update({
        "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit", "ss_lr_scheduler": "cosine_with_restarts",
        "ss_unet_lr": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_max_train_steps": "100",
        "ss_num_train_images": "40", "ss_resolution": "(1024, 1024)", "ss_mixed_precision": "bf16",
        "ss_seed": "42", "ss_training_started_at": "1712345678.25", "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
        "ss_dataset_dirs": json.dumps({"10_inkstyle": {"n_repeats": 10, "img_count": 40}}),
        "ss_tag_frequency": json.dumps({"10_inkstyle": {f"tag{i}": 100 - i for i in range(300)}}),
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "ss_session_id": "123456",
    })
    meta.update(extra)
    return meta


def inkstyle_verdict(style, fidelity, ratings=None, **kw) -> dict:
    """The verdict ``series_insight`` gives for a probe of epochs 3, 6, 9, ... of inkstyle with these per-epoch
    style and fidelity means (index 0: the base), and ``ratings`` (``ratings_for``), as its JSON block."""
    probe = probe_table(style, fidelity, **kw)
    rename = {f"run_{e['epoch']}.safetensors": f"inkstyle-{e['epoch']:06d}.safetensors" for e in probe["epochs"]}
    for row in (*probe["epochs"], *probe["cells"], *(ratings or {}).get("items", [])):
        row["file"] = rename.get(row["file"], row["file"])
    return decide("inkstyle", [], probe, ratings=ratings).to_json()


PICKS_6 = inkstyle_verdict([0, .3, .9, 1, 1, 1, 1, 1, 1], [.8, .8, .78, .5, .45, .4, .35, .3, .3])
PICKS_12 = inkstyle_verdict([0, .3, .6, .8, .9, .95, 1, 1, 1], [.8, .8, .79, .78, .74, .6, .45, .35, .3])
INSIGHT = {
    "series": "inkstyle",
    "epochs": [{"epoch": 4, "file": "inkstyle-000004.safetensors", "weight_norm": 1.0},
               {"epoch": 6, "file": SOURCE, "weight_norm": 1.2345678, "relative_change": 0.031,
                "cosine_to_last": 0.99, "style": 0.4, "fidelity": None, "image": {
                    "measure": "pixel", "distance_from_base": 0.12, "seed_spread": 0.01, "clip_score": None},
                "epoch_loss": {"loss/epoch": 0.081}}],
    "verdict": PICKS_6,
}
RANKING = {"series": "inkstyle", "votes": 30,
           "epochs": [{"file": SOURCE, "epoch": 6, "rank": 1, "score": 0.8123, "stderr": 0.21, "votes": 14},
                      {"file": "inkstyle-000004.safetensors", "epoch": 4, "rank": 2, "score": -0.8, "stderr": 0.2,
                       "votes": 12}]}
GRID = {"settings": {"base": "/home/someone/models/sdxl-base", "family": "sdxl", "prompts": ["ink fox, ```quoted```"],
                     "prompt": "ink fox, ```quoted```", "negative_prompt": "blurry", "seeds": [1, 2],
                     "strengths": [0.8, 1.0], "steps": 20, "guidance": 5.5, "width": 64, "height": 64,
                     "sampler": "Euler", "columns": ["base", "inkstyle-000004.safetensors", SOURCE]},
        "cells": [{"epoch": None, "file": None}, {"epoch": 4, "file": "inkstyle-000004.safetensors"},
                  {"epoch": 6, "file": SOURCE}]}


def card(**kw) -> str:
    args = dict(source=SOURCE, sha256=SHA, epoch=6, metadata=trainer_metadata(), trigger_words=["inkstyle style"],
                family="sdxl", base_id="stabilityai/stable-diffusion-xl-base-1.0", note="crisp lines, no halo",
                ranking=RANKING, insight=INSIGHT, grid=GRID, grid_image="inkstyle.grid.png", series="inkstyle",
                loras="loras", promoted_at="2025-01-02T03:04:05+00:00")
    name = kw.pop("name", "inkstyle")
    args.update(kw)
    return model_card(name, **args)


def front_matter(md: str) -> dict:
    assert md.startswith("---\n")
    return yaml.safe_load(md.split("---\n")[1])


def test_the_front_matter_is_what_the_hub_reads_for_a_lora():
    front = front_matter(card())
    assert front["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert front["tags"][:2] == ["lora", "text-to-image"] and "stable-diffusion-xl" in front["tags"]
    assert front["instance_prompt"] == "inkstyle style"
    assert "license" not in front  # the file names none
    assert front["widget"][0]["output"]["url"] == "inkstyle.grid.png"
    # Without a base named, the metadata's base version maps to its hub id; a license in the metadata is kept.
    meta = trainer_metadata(**{"modelspec.license": "openrail++"})
    front = front_matter(card(base_id=None, metadata=meta))
    assert front["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0" and front["license"] == "openrail++"
    front = front_matter(card(metadata=trainer_metadata(**{"modelspec.license": "my own: no resale"})))
    assert front["license"] == "other" and front["license_name"] == "my own: no resale"


def test_the_card_has_every_section_with_the_facts_it_promises():
    md = card()
    for heading in ("# inkstyle", "## Trigger words", "## Base model", "## Why this epoch", "## The epochs compared",
                    "## Reproduce the grid", "## Training metadata", "## Files"):
        assert f"\n{heading}\n" in md, heading
    assert "**inkstyle style**" in md
    assert "stabilityai/stable\\-diffusion" not in md and "judged on: stabilityai/stable-diffusion-xl-base-1.0" in md
    assert "ss\\_base\\_model\\_version: sdxl\\_base\\_v1-0" in md
    assert "epoch 6 (inkstyle-000006.safetensors)" in md and "Note: crisp lines, no halo" in md
    assert "#1 of 2 (score 0.8123 ± 0.21, 14 vote(s) on this epoch of 30 cast" in md
    assert PICKS_6["epoch"] == 6 and PICKS_6["file"] == SOURCE
    assert "Verdict when shipped (this epoch): " + text(PICKS_6["reason"], 1000) in md
    assert "Preference: balanced. Front (" in md and "Suggestion" not in md
    assert "| weight\\_norm | 1.235 |" in md and "| image\\_distance\\_from\\_base | 0.12 |" in md
    assert "| loss:loss/epoch | 0.081 |" in md and "| fidelity |" not in md  # a measure not taken is no row
    assert "![The grid of epochs compared](inkstyle.grid.png)" in md
    assert SHA in md and "2025-01-02T03:04:05+00:00" in md


def test_reproduce_settings_and_the_exact_command_line():
    md = card()
    section = md.split("## Reproduce the grid")[1].split("\n## ")[0]
    for row in ("| negative prompt | blurry |", "| seeds | 1, 2 |", "| strengths | 0.8, 1 |", "| steps | 20 |",
                "| cfg (guidance) | 5.5 |", "| sampler | Euler |", "| size | 64x64 |", "| base | sdxl-base |"):
        assert row in section, row
    assert "/home/someone" not in md  # a local base is named by its folder only
    command = section.split("````bash\n")[1].split("\n````")[0]  # the prompt's backticks lengthen the fence
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "lora_spectrum", "grid"]
    opts = dict(zip(argv[4::1], argv[5::1], strict=False))
    assert opts["--base"] == "sdxl-base" and opts["--series"] == "inkstyle" and opts["--epochs"] == "4,6"
    assert opts["--prompt"] == "ink fox, ```quoted```" and opts["--seeds"] == "1,2" and opts["--strengths"] == "0.8,1"
    assert opts["--cfg"] == "5.5" and opts["--steps"] == "20" and opts["--negative"] == "blurry"
    assert "--include-base" in argv and opts["--loras"] == "loras"


def test_a_grid_of_several_prompts_gets_one_command_per_prompt():
    settings = dict(GRID["settings"], prompts=["a", "b c"], prompt="a", columns=[SOURCE])
    lines = [grid_command(settings, p, "inkstyle", "loras", "6") for p in settings["prompts"]]
    assert [shlex.split(line)[shlex.split(line).index("--prompt") + 1] for line in lines] == ["a", "b c"]
    assert "--include-base" not in lines[0]
    md = card(grid=dict(GRID, settings=settings))
    assert "| prompt 1 | a |" in md and "| prompt 2 | b c |" in md


def test_training_metadata_is_a_short_table_with_large_keys_summarised():
    md = card()
    section = md.split("## Training metadata")[1].split("\n## ")[0]
    for row in ("| optimizer | bitsandbytes.optim.adamw.AdamW8bit | ss\\_optimizer |",
                "| rank (network dim) | 4 | ss\\_network\\_dim |", "| seed | 42 | ss\\_seed |",
                "| training started | 2024-04-05T19:34:38+00:00 | ss\\_training\\_started\\_at |",
                "| dataset folders | 10\\_inkstyle: 40 images x 10 | ss\\_dataset\\_dirs |"):
        assert row in section, row
    assert "tag0 (100), tag1 (99)" in section and "(300 tags)" in section and "tag299" not in md
    assert "more metadata key(s) are kept in the file" in section
    assert len(md) < 12_000  # 300 tags never dumped whole


def test_an_ai_toolkit_file_shows_its_training_info():
    meta = {"training_info": json.dumps({"step": 250, "epoch": 1}), "ss_base_model_version": "z_image_turbo"}
    md = card(metadata=meta, base_id=None, family="z-image", ranking=None, insight=None, grid=None, grid_image=None,
              trigger_words=[], note="")
    assert "| training info (ai-toolkit) | step 250, epoch 1 | training\\_info |" in md
    assert front_matter(md)["base_model"] == "Tongyi-MAI/Z-Image-Turbo" and "instance_prompt" not in front_matter(md)
    assert "## Reproduce the grid" not in md and "## The epochs compared" not in md and "Blind" not in md
    assert "The file names no trigger words" in md


def test_markdown_and_html_from_a_file_stay_plain_text():
    evil = '<script>alert(1)</script> **bold** [click](javascript:x) ![i](http://t/x.png) | `code` # h'
    meta = trainer_metadata(ss_optimizer=evil, ss_sd_model_name=evil)
    md = card(metadata=meta, trigger_words=[evil], note=evil + "\n\n# injected heading",
              insight=dict(INSIGHT, verdict=dict(PICKS_6, reason=evil)))
    body = md.split("---\n", 2)[2]
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert not re.search(r"(?<!\\)\]\(", body.replace("](inkstyle.grid.png)", "")) and "**bold**" not in body
    assert "\n# injected" not in body and "\\# injected heading" in body
    assert "\\| \\`code\\`" in body  # a pipe cannot open a table cell, a backtick no code span
    assert front_matter(md)["instance_prompt"] == evil  # YAML holds it verbatim, quoted by the dumper


def test_text_and_code_block_helpers():
    assert text("a_b*c [d](e) <i> & |") == "a\\_b\\*c \\[d\\](e) &lt;i&gt; &amp; \\|"
    assert text("line one\nline two") == "line one line two"
    assert len(text("x" * 1000)) <= 200
    assert code_block("has ``` inside").startswith("````\n") and code_block("plain") == "```\nplain\n```"


@pytest.mark.parametrize("ranking", [
    RANKING,
    {"series": "inkstyle", "votes": 30, "set_aside": 0, "items": [  # votes.series_ratings
        {"key": "s6", "file": SOURCE, "label": "epoch 6", "epoch": 6, "score": 0.8123, "stderr": 0.21, "rank": 1,
         "wins": 10, "losses": 2, "ties": 2},
        {"key": "base", "file": None, "label": "base", "epoch": None, "score": -0.8, "stderr": 0.2, "rank": 2,
         "wins": 2, "losses": 10, "ties": 2}]},
    {"votes": 30, "items": ["s6", "s4"], "order": ["s6", "s4"], "scores": {"s6": 0.8123, "s4": -0.8},
     "stderr": {"s6": 0.21, "s4": 0.2}, "wins": {"s6": 10, "s4": 2}, "losses": {"s6": 2, "s4": 10},
     "ties": {"s6": 2, "s4": 0}},
])
def test_this_epochs_ranking_is_found_in_a_summary_or_a_fitted_ranking(ranking):
    row = ranking_row(ranking, SOURCE, 6, sha256="s6")
    assert row == {"rank": 1, "of": 2, "score": 0.8123, "stderr": 0.21, "votes": 14, "total_votes": 30}
    assert ranking_row(ranking, "other.safetensors", 9, sha256="s9") is None
    assert ranking_row(None, SOURCE, 6) is None


def test_this_epochs_measures_are_flat_numbers_only():
    m = epoch_measures(INSIGHT, SOURCE, 6)
    assert m == {"weight_norm": 1.2345678, "relative_change": 0.031, "cosine_to_last": 0.99, "style": 0.4,
                 "image_distance_from_base": 0.12, "image_seed_spread": 0.01, "image_measure": "pixel",
                 "loss:loss/epoch": 0.081}
    json.dumps(m)
    assert epoch_measures({"error": "no log"}, SOURCE, 6) == {} and epoch_measures(None, SOURCE, 6) == {}


def test_summaries_of_timestamps_and_blobs():
    assert summary("ss_training_started_at", "0") == "1970-01-01T00:00:00+00:00"
    assert summary("ss_training_started_at", "not a time") == "not a time"
    assert summary("ss_datasets", json.dumps([{"subsets": [{}, {}]}])) == "1 dataset(s), 2 subset(s)"
    assert summary("ss_tag_frequency", "{broken") == "{broken"


def test_an_epoch_nobody_judged_says_so_instead_of_a_rank():
    ranking = {"votes": 9, "items": [
        {"file": "inkstyle-000004.safetensors", "epoch": 4, "rank": 1, "score": 0.5, "stderr": 0.4, "wins": 6,
         "losses": 3, "ties": 0},
        {"file": SOURCE, "epoch": 6, "rank": None, "score": 0.0, "stderr": 2.0, "wins": 0, "losses": 0, "ties": 0}]}
    md = card(ranking=ranking)
    assert "Blind A/B ranking: this epoch was not judged (9 vote(s) on others)." in md and "#None" not in md
    assert ranking_row(ranking, "inkstyle-000004.safetensors", 4)["of"] == 1, "only judged files are ranked"


def test_the_card_in_chinese_translates_the_words_and_keeps_the_facts_and_front_matter():
    zh = language.translator("zh_CN")
    with language.using(zh):
        md = card()
    english = card()
    assert front_matter(md) == front_matter(english)  # what the hub reads never changes with the language
    for heading in ("Trigger words", "Base model", "Why this epoch", "Reproduce the grid", "Training metadata"):
        assert f"\n## {zh.gettext(heading)}\n" in md and f"\n## {heading}\n" not in md
    assert "**inkstyle style**" in md and SOURCE in md and SHA in md  # names, trigger words and hashes as they are
    assert zh.gettext("epoch {epoch}").format(epoch=6) in md and "Note: " not in md
    assert "crisp lines, no halo" in md and "ink fox, ```quoted```" in md  # the user's note and the prompt
    assert "| ss\\_optimizer |" in md and "bitsandbytes.optim.adamw.AdamW8bit" in md  # metadata keys and values


def why(md: str) -> str:
    return md.split("## Why this epoch\n")[1].split("\n## ")[0]


def test_the_card_quotes_the_verdict_as_it_stood_for_the_epoch_it_picked():
    md = card(source="inkstyle-000012.safetensors", epoch=12, insight=dict(INSIGHT, verdict=PICKS_12))
    section, v = why(md), PICKS_12
    assert v["epoch"] == 12 and v["state"] == "measures"
    assert "- Verdict when shipped (this epoch): " + text(v["reason"], 1000) + "\n" in section
    front = ", ".join(f"epoch {e}" for e in v["front"])
    assert v["tied"] == [12], "the quiet measures tell their pick apart"
    assert f"- Preference: balanced. Front (no other epoch has more style and more prompt fidelity): {front}. " \
           "The measures tell their pick apart from every other epoch.\n" in section
    p = next(p for p in v["points"] if p["epoch"] == 12)
    assert (f"- This epoch on the probe: {percent(p['style'])} ± {percent(p['style_se'])} of the run's most style, "
            f"{percent(p['fidelity'])} ± {percent(p['fidelity_se'])} of the base's prompt fidelity kept; on the front.") \
        in section
    assert "- Evidence missing when shipped: votes, validation loss." in section


def test_a_card_of_another_epoch_than_the_pick_says_so_and_never_takes_its_reason():
    md = card(insight=dict(INSIGHT, verdict=PICKS_12))  # epoch 6 shipped; the verdict picks 12
    section = why(md)
    assert "- Shipped epoch 6 by choice; the verdict picks epoch 12: " + text(PICKS_12["reason"], 1000) in section
    assert "(this epoch)" not in section and section.count(text(PICKS_12["reason"], 1000)) == 1
    p = next(p for p in PICKS_12["points"] if p["epoch"] == 6)
    where = "on the front" if p["front"] else "not on the front"
    assert (f"- This epoch on the probe: {percent(p['style'])} ± {percent(p['style_se'])} of the run's most style, "
            f"{percent(p['fidelity'])} ± {percent(p['fidelity_se'])} of the base's prompt fidelity kept; {where}.\n"
            in section)
    # An epoch the measures cannot tell from the pick (noisy measures) says that too, and still is not the pick.
    noisy = inkstyle_verdict([0, .3, .6, .8, .9, .95, 1, 1, 1], [.8, .8, .79, .78, .74, .6, .45, .35, .3], noise=.4,
                             prompts=2, seeds=3)
    tied = [e for e in noisy["tied"] if e != noisy["epoch"]]
    assert tied, noisy["tied"]
    section = why(card(source=f"inkstyle-{tied[0]:06d}.safetensors", epoch=tied[0], insight=dict(INSIGHT,
                                                                                                 verdict=noisy)))
    assert f"- Shipped epoch {tied[0]} by choice; the verdict picks epoch {noisy['epoch']}: " in section
    assert f"; the measures cannot tell it apart from epoch {noisy['epoch']}.\n" in section
    assert "The measures cannot tell apart: " + ", ".join(f"epoch {e}" for e in noisy["tied"]) + ".\n" in section
    # Votes that decide pick another epoch than the measures: the measures' own pick, shipped, says so.
    voted = inkstyle_verdict([0, .3, .6, .8, .9, .95, 1, 1, 1], [.8, .8, .79, .78, .74, .6, .45, .35, .3],
                             ratings=ratings_for(18, z=3.0))
    assert voted["state"] == "votes" and voted["epoch"] == 18 and voted["picks"]["balanced"] == 12
    section = why(card(source="inkstyle-000012.safetensors", epoch=12, insight=dict(INSIGHT, verdict=voted)))
    assert "- Shipped epoch 12 by choice; the verdict picks epoch 18: " + text(voted["reason"], 1000) in section
    assert "; the measures alone pick this epoch.\n" in section


def test_before_a_probe_the_card_says_no_probe_judged_it_and_suggests_nothing():
    rows = [{"epoch": e, "file": f"inkstyle-{e:06d}.safetensors", "relative_change": c}
            for e, c in ((2, None), (4, 0.3), (6, 0.02))]
    needs = decide("inkstyle", rows, None).to_json()
    assert needs["state"] == "needs probe" and needs["epoch"] is None
    section = why(card(insight=dict(INSIGHT, verdict=needs)))
    assert ("- Verdict when shipped: no probe judged these epochs, so none was picked. " + text(needs["reason"], 1000)
            in section)
    assert "Preference" not in section and "(this epoch)" not in section and "by choice" not in section
    assert "- Evidence missing when shipped: probe, votes, validation loss." in section
    # An insight of before the verdict (a suggestion from weight curves) is never quoted.
    old = {"epochs": INSIGHT["epochs"], "suggested_epoch": 6,
           "suggestion": {"label": "suggestion", "epoch": 6, "file": SOURCE, "reason": "Suggestion: epoch 6, settled"}}
    assert verdict_of(old) is None and "uggest" not in card(insight=old)
    assert "Verdict" not in card(insight=None)
