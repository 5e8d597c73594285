"""One ``Sampling`` value: overriding defaults, its validation, and how the family YAML fills it."""

from __future__ import annotations

import pytest

from lora_spectrum.errors import ConfigError, PlanError
from lora_spectrum.render.sampling import Sampling
from lora_spectrum.settings import load_family_defaults


def test_override_replaces_only_given_values_and_names_unknown_ones():
    base = Sampling("ugly", 30, 7.0, 1024, 1024, "Euler")
    assert base.override(steps=None, width=None) == base
    changed = base.override(steps=4, guidance=3, negative_prompt="")
    assert (changed.steps, changed.guidance, changed.negative_prompt, changed.width) == (4, 3.0, "", 1024)
    assert isinstance(changed.guidance, float)
    with pytest.raises(PlanError, match="cfg"):
        base.override(cfg=2.0)


@pytest.mark.parametrize("change, words", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"steps": True}, "steps"),
    ({"guidance": float("nan")}, "guidance must be a finite number"),
    ({"guidance": -1.0}, "guidance"),
    ({"width": 100}, "width 100 must be a positive multiple of 8"),
    ({"height": 0}, "height 0"),
])
def test_validate_names_the_first_bad_value(change, words):
    with pytest.raises(PlanError, match=words):
        Sampling(**{**Sampling().as_dict(), **change}).validate(8)


def test_validate_checks_the_sampler_only_against_a_list():
    s = Sampling(sampler="LMS")
    assert s.validate(8) is s
    with pytest.raises(PlanError, match="sampler 'LMS' is not offered"):
        s.validate(8, ["Euler", "DDIM"])


@pytest.mark.parametrize("family, expected", [
    ("sdxl", Sampling("", 30, 7.0, 1024, 1024, "DPM++ 2M Karras")),
    ("z-image", Sampling("", 8, 0.0, 1024, 1024, "Euler (flow)")),
])
def test_family_yaml_fills_one_sampling(family, expected):
    d = load_family_defaults(family)
    assert d.sampling == expected
    assert d.with_sampling(steps=2).sampling == expected.override(steps=2)
    assert d.sampling.validate(d.size_factor, d.samplers) is d.sampling


def test_an_unknown_key_in_a_family_yaml_is_named(tmp_path, monkeypatch):
    from lora_spectrum import settings

    (tmp_path / "sdxl.yaml").write_text((settings.CONFIG_DIR / "sdxl.yaml").read_text() + "\nsteeps: 3\n")
    monkeypatch.setattr(settings, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="unknown key.*steeps"):
        settings.load_family_defaults("sdxl")
