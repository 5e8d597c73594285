"""The verdict's rule on synthetic measure tables (flat, monotone, interior optimum, noisy), its preferences,
its uncertainty, the votes, and the stop advice: plain numbers in, one ``Verdict`` out."""

from __future__ import annotations

import numpy as np
import pytest

from lora_spectrum.errors import ConfigError
from lora_spectrum.measures.verdict import Verdict, decide

EPOCHS = (3, 6, 9, 12, 15, 18, 21, 24)


def probe_table(style, fidelity, *, noise=0.0, prompts=8, seeds=6, seed=0, references=1) -> dict:
    """A probe result as ``probe_measures`` returns it, with per-image style and fidelity around the given
    per-epoch means (index 0 is the base) on new-context prompts."""
    rng = np.random.default_rng(seed)
    cells, epochs = [], []
    for k, (s, f) in enumerate(zip(style, fidelity, strict=True)):
        file = None if k == 0 else f"run_{EPOCHS[k - 1]}.safetensors"
        epoch = None if k == 0 else EPOCHS[k - 1]
        for p in range(prompts):
            for sd in range(seeds):
                cells.append({"file": file, "epoch": epoch, "prompt": f"prompt {p}, trigger", "kind": "new_context",
                              "seed": sd, "style": float(s + noise * rng.normal()),
                              "fidelity": float(np.clip(f + noise * rng.normal(), 0, 1))})
        if file:
            epochs.append({"epoch": epoch, "file": file})
    return {"probe_set": "synthetic", "measure": "clip", "references": references, "fidelity_kinds": ["new_context"],
            "epochs": epochs, "cells": cells}


def verdict(style, fidelity, **kw) -> Verdict:
    preference = kw.pop("preference", "balanced")
    ratings = kw.pop("ratings", None)
    return decide("run", [], probe_table(style, fidelity, **kw), ratings=ratings, preference=preference)


def test_before_a_probe_the_weight_curves_never_pick():
    rows = [{"epoch": e, "file": f"run_{e}.safetensors", "relative_change": c} for e, c in
            zip(EPOCHS, (None, 0.5, 0.2, 0.04, 0.03, 0.02, 0.01, 0.01), strict=True)]
    loss = {"series": {"loss/validation/epoch_average": [[e, 1.0 + abs(e - 9) / 10] for e in EPOCHS]}}
    v = decide("run", rows, None, loss)
    assert v.epoch is None and v.state == "needs probe" and "probe" in v.missing
    assert v.context["settled_epoch"] == 9 and v.context["validation_lowest_epoch"] == 9
    assert "epoch 9" in v.reason and "probe" in v.reason


def test_an_interior_optimum_is_picked_and_reported_on_the_front():
    style = [0, .3, .6, .8, .9, .95, 1, 1, 1]
    fid = [.8, .8, .79, .78, .74, .6, .45, .35, .3]
    v = verdict(style, fid)
    assert v.epoch == 12 and v.state == "measures"
    assert 12 in v.front and 24 not in v.front
    assert "epoch 12" in v.reason.split(":")[0] or v.reason.startswith("epoch 12")


def test_a_run_that_never_overfits_is_not_stopped_early():
    style = [0, .1, .25, .4, .55, .7, .8, .9, 1.0]
    fid = [.8] * 9
    v = verdict(style, fid)
    assert v.epoch == 24 and not v.stop
    assert "training longer" in v.reason


def test_a_flat_run_picks_the_earliest_of_equals():
    v = verdict([0] + [1.0] * 8, [.8] * 9)
    assert v.epoch == 3


def test_no_style_means_no_pick():
    v = verdict([0.2] * 9, [.8] * 9)
    assert v.epoch is None and v.state == "no style"


def test_noise_widens_the_tie_and_lowers_the_confidence():
    style = [0, .3, .6, .8, .9, .95, 1, 1, 1]
    fid = [.8, .8, .79, .78, .74, .6, .45, .35, .3]
    quiet, noisy = verdict(style, fid, noise=0.01), verdict(style, fid, noise=0.4, prompts=2, seeds=3)
    assert quiet.confidence > noisy.confidence
    assert len(noisy.tied) > len(quiet.tied)
    assert quiet.epoch in noisy.tied or noisy.epoch in quiet.tied


def test_preferences_move_along_the_front_in_order():
    style = [0, .2, .45, .65, .8, .9, .96, 1, 1]
    fid = [.8, .8, .78, .74, .68, .6, .52, .44, .36]
    picks = {p: verdict(style, fid, preference=p).epoch for p in ("fidelity", "balanced", "style")}
    assert picks["fidelity"] <= picks["balanced"] <= picks["style"]
    assert picks["fidelity"] < picks["style"]
    assert "style first" in verdict(style, fid, preference="style").reason
    with pytest.raises(ConfigError):
        verdict(style, fid, preference="ink")


def test_the_reason_never_argues_against_its_pick():
    style = [0, .3, .6, .8, .9, .95, 1, 1, 1]
    fid = [.8, .8, .79, .78, .74, .6, .45, .35, .3]
    reason = verdict(style, fid).reason
    assert "weighs against" not in reason and "but" not in reason


def test_the_run_has_passed_its_best_once_two_later_saves_are_clearly_worse():
    style = [0, .3, .6, .8, .9, .95, 1, 1, 1]
    fid = [.8, .8, .79, .78, .74, .6, .45, .35, .3]
    v = verdict(style, fid, noise=0.05)
    assert v.stop and "passed its best" in v.stop_reason
    rising = verdict([0, .3, .6, .8, .9, .95, 1, 1, 1][:6], [.8, .8, .79, .78, .74, .7], noise=0.05)
    assert not rising.stop


def ratings_for(top_epoch: int, z: float, votes: int = 20) -> dict:
    items = [{"key": f"k{top_epoch}", "file": f"run_{top_epoch}.safetensors", "epoch": top_epoch, "rank": 1},
             {"key": "k3", "file": "run_3.safetensors", "epoch": 3, "rank": 2}]
    return {"votes": votes, "items": items, "separation": {"a": f"k{top_epoch}", "b": "k3", "z": z}}


def test_votes_that_separate_the_epochs_decide_and_the_reason_says_so():
    style = [0, .3, .6, .8, .9, .95, 1, 1, 1]
    fid = [.8, .8, .79, .78, .74, .6, .45, .35, .3]
    v = verdict(style, fid, ratings=ratings_for(18, z=3.0))
    assert v.epoch == 18 and v.state == "votes" and "blind votes" in v.reason and "epoch 12" in v.reason
    unsure = verdict(style, fid, ratings=ratings_for(18, z=0.8))
    assert unsure.epoch == 12 and unsure.votes["agree"] is False and "not yet beyond" in unsure.reason
    agree = verdict(style, fid, ratings=ratings_for(12, z=0.8))
    assert agree.votes["agree"] and "agree" in agree.reason


def test_the_verdict_reads_back_from_json():
    v = verdict([0, .3, .6, .8, .9, .95, 1, 1, 1], [.8, .8, .79, .78, .74, .6, .45, .35, .3])
    assert Verdict.from_json(v.to_json()) == v
    with pytest.raises(ConfigError):
        Verdict.from_json({"label": "suggestion"})


def test_step_numbered_files_are_judged_by_file():
    """ai-toolkit's ``name_000000250.safetensors`` carry a step, no epoch: the pick is the file."""
    probe = probe_table([0, .3, .6, .8, .9, .95, 1, 1, 1], [.8, .8, .79, .78, .74, .6, .45, .35, .3])
    names = {f"run_{e}.safetensors": f"my_lora_{e * 250:09d}.safetensors" for e in EPOCHS}
    for row in probe["epochs"]:
        row["file"], row["epoch"] = names[row["file"]], None
    for c in probe["cells"]:
        c["file"], c["epoch"] = names.get(c["file"]), None
    v = decide("my_lora", [], probe)
    assert v.judged and v.epoch is None and v.file == "my_lora_000003000.safetensors"
    assert v.reason.startswith("my_lora_000003000.safetensors has the best balance")
