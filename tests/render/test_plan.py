"""Plans: validation, cells and their labels, and the one place cells are grouped into swaps, jobs and calls."""

from __future__ import annotations

import shutil

import pytest

from lora_spectrum import language
from lora_spectrum.errors import PlanError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.render.plan import Group, GroupKey, calls, groups, jobs, make_plan, plan_cells
from lora_spectrum.settings import load_family_defaults


def test_plan_validation_messages():
    d = load_family_defaults("sdxl")
    with pytest.raises(PlanError, match="steps"):
        make_plan(d, [None], [1], prompts=["p"], sampling=d.sampling.override(steps=0))
    with pytest.raises(PlanError, match="at least one epoch"):
        make_plan(d, [], [1], prompts=["p"])
    plan = make_plan(d, [None], [1, 2], prompts=["p"])
    s = plan.sampling
    assert (s.steps, s.guidance, s.width, s.sampler) == (30, 7.0, 1024, "DPM++ 2M Karras")


def test_step_checkpoints_are_labelled_by_step(tmp_path, demo_dir):
    for n in (500, 1000):
        shutil.copy(demo_dir / "loras" / "jimeng_20.safetensors", tmp_path / f"run-step{n}.safetensors")
    catalog = Catalog(tmp_path)
    entries = catalog.scan()
    d = load_family_defaults("sdxl")
    plan = make_plan(d, [None, *entries], [1], prompts=["p"], sampling=d.sampling.override(width=64, height=64))
    # The demo file's kohya metadata says ss_epoch 20: a step save carries the epoch it was made in.
    assert [c.label for c in plan_cells(plan, catalog)] == ["base", "step 500 (epoch 20)", "step 1000 (epoch 20)"]


def test_groups_are_epoch_major_one_per_column_strength_and_prompt(tmp_path, demo_dir):
    catalog = Catalog(demo_dir / "loras")
    entries = catalog.scan()[:2]
    d = load_family_defaults("sdxl")
    plan = make_plan(d, [None, *entries], [1, 2], [0.5, 1.0], ["p", "q"], d.sampling.override(width=64, height=64))
    grouped = groups(plan_cells(plan))
    assert all(isinstance(k, GroupKey) for k in grouped), "named: column, strength, prompt"
    assert [k.prompt for k in grouped][:2] == ["p", "q"] and list(grouped)[2].strength == 0.5
    assert list(grouped) == [(0, 0.0, "p"), (0, 0.0, "q"),
                             (1, 0.5, "p"), (1, 0.5, "q"), (1, 1.0, "p"), (1, 1.0, "q"),
                             (2, 0.5, "p"), (2, 0.5, "q"), (2, 1.0, "p"), (2, 1.0, "q")]
    assert all([c.seed for c in cells] == [1, 2] for cells in grouped.values())


def test_jobs_pack_the_groups_of_one_prompt_up_to_mix():
    keys = [GroupKey(*k) for k in [(0, 0.0, "p"), (0, 0.0, "q"), (1, 1.0, "p"), (1, 1.0, "q"), (2, 1.0, "p"),
                                   (2, 1.0, "q")]]
    assert jobs(keys, 1) == [[k] for k in keys]
    assert jobs(keys, 2) == [[(0, 0.0, "p"), (1, 1.0, "p")], [(2, 1.0, "p")],
                             [(0, 0.0, "q"), (1, 1.0, "q")], [(2, 1.0, "q")]]
    assert jobs(keys, 8) == [[(0, 0.0, "p"), (1, 1.0, "p"), (2, 1.0, "p")],
                             [(0, 0.0, "q"), (1, 1.0, "q"), (2, 1.0, "q")]]


def test_calls_put_groups_with_as_many_seeds_left_together_in_first_seen_order():
    a, b, c, d = (GroupKey(i, 1.0, "p") for i in range(4))
    todos = [Group(a, ["s1"]), Group(b, ["s1", "s2"]), Group(c, ["s2"]), Group(d, ["s1", "s2"])]
    assert calls(todos) == [[(a, ["s1"]), (c, ["s2"])], [(b, ["s1", "s2"]), (d, ["s1", "s2"])]]
    assert [g.key.column for g in calls(todos)[1]] == [1, 3]
    assert calls([(a, ["s1"])]) == [[(a, ["s1"])]]


def test_manifest_settings_keep_their_keys_and_order():
    d = load_family_defaults("z-image")
    settings = make_plan(d, [None], [3], prompts=["p"]).settings("base-id", "z-image")
    assert list(settings) == ["base", "family", "prompts", "prompt", "negative_prompt", "seeds", "strengths",
                              "steps", "guidance", "width", "height", "sampler", "columns"]
    assert settings["columns"] == ["base"] and settings["steps"] == 8 and settings["sampler"] == "Euler (flow)"


def test_a_bad_value_is_named_in_the_active_language():
    d = load_family_defaults("sdxl")
    zh = language.translator("zh_CN")
    with language.using(zh), pytest.raises(PlanError) as caught:
        make_plan(d, [None], [], prompts=["p"])
    assert str(caught.value) == zh.gettext("give at least one seed") != "give at least one seed"
    with language.using(zh), pytest.raises(PlanError) as caught:
        make_plan(d, [None], [1], prompts=["p"], sampling=d.sampling.override(width=1001))
    assert "1001" in str(caught.value) and zh.gettext("width") in str(caught.value)
