"""Probe sets: the shipped sets, the trigger put in or left out, kohya sample-prompt files, and the refusals."""

from __future__ import annotations

import pytest

from lora_spectrum.errors import ConfigError
from lora_spectrum.probes import (
    DEFAULT_SEEDS,
    KINDS,
    ProbePrompt,
    ProbeSet,
    find_probe_set,
    load_kohya_prompts,
    load_probe_file,
    probe_sets,
)
from lora_spectrum.settings import Settings, load_settings

TRIGGER = ["jimeng style"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def one(text, kind="style", **values):
    return ProbeSet("t", (ProbePrompt(text, kind, **values),), (5, 6))


def test_both_shipped_sets_load_with_every_kind_and_their_seeds():
    sets = probe_sets()
    shapes, general = sets["shapes"], sets["general"]
    assert shapes.seeds == tuple(range(11, 19)) and general.seeds == (1, 2, 3, 4)
    count = {kind: [p.kind for p in shapes.prompts].count(kind) for kind in KINDS}
    assert count == {"style": 2, "new_context": 6, "leak": 2}
    count = {kind: [p.kind for p in general.prompts].count(kind) for kind in KINDS}
    assert count == {"style": 4, "new_context": 4, "leak": 3}
    assert "a red circle on a white background" in [p.text for p in shapes.prompts]
    assert find_probe_set(None, demo=True).name == "shapes" and find_probe_set("auto").name == "general"


def test_trigger_goes_last_without_a_placeholder_and_in_place_with_one():
    [last] = one("a cat on a sofa").resolve(TRIGGER)
    assert (last.prompt, last.plain, last.seeds) == ("a cat on a sofa, jimeng style", "a cat on a sofa", (5, 6))
    [first] = one("{trigger}, a cat on a sofa").resolve(["jimeng style", "ink"])
    assert (first.prompt, first.plain) == ("jimeng style, ink, a cat on a sofa", "a cat on a sofa")
    [middle] = one("a cat, {trigger}, at night").resolve(TRIGGER)
    assert (middle.prompt, middle.plain) == ("a cat, jimeng style, at night", "a cat, at night")
    assert middle.source_text == "a cat, {trigger}, at night"


def test_no_trigger_known_renders_the_prompt_as_written_without_the_placeholder():
    [probe] = one("a {trigger} painting of a cat").resolve([])
    assert probe.prompt == probe.plain == "a painting of a cat"
    [probe] = one("a cat on a sofa").resolve([])
    assert probe.prompt == probe.plain == "a cat on a sofa"


def test_plain_never_holds_the_trigger():
    texts = ["a cat", "{trigger} a cat", "a cat, {trigger}", "1girl, jimeng style, smiling", "Jimeng Style, a dog"]
    for text in texts:
        for probe in one(text).resolve(TRIGGER):
            assert "jimeng" not in probe.plain.lower() and "jimeng style" in probe.prompt.lower()
            assert ",," not in probe.plain and "  " not in probe.plain and probe.plain == probe.plain.strip(" ,")


def test_a_trigger_already_in_the_text_is_kept_and_taken_out_of_plain():
    [probe] = one("masterpiece, 1girl, jimeng style, looking at viewer").resolve(TRIGGER)
    assert probe.prompt == "masterpiece, 1girl, jimeng style, looking at viewer"
    assert probe.plain == "masterpiece, 1girl, looking at viewer"


def test_leak_prompts_never_get_the_trigger_and_a_placeholder_there_is_refused(tmp_path):
    [probe] = one("a bowl of fruit", "leak").resolve(TRIGGER)
    assert probe.prompt == probe.plain == "a bowl of fruit"
    with pytest.raises(ConfigError, match=r"probe set 't'.*a \{trigger\} bowl"):
        one("a {trigger} bowl", "leak").resolve(TRIGGER)
    path = write(tmp_path / "bad.yaml", "seeds: [1]\nleak:\n  - a {trigger} bowl\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*leak prompt"):
        load_probe_file(path)


def test_yaml_mappings_give_options_and_a_prompt_seed_overrides_the_set_seeds(tmp_path):
    path = write(tmp_path / "mine.yaml", "seeds: [7, 8]\nstyle:\n  - a cat\n"
                 "  - {prompt: a dog, negative: blurry, width: 768, height: 512, steps: 20, guidance: 4, seed: 99}\n")
    probes = load_probe_file(path)
    assert probes.name == "mine" and probes.source == str(path)
    cat, dog = probes.resolve(TRIGGER)
    assert cat.seeds == (7, 8) and dog.seeds == (99,)
    assert (dog.negative, dog.width, dog.height, dog.steps, dog.guidance) == ("blurry", 768, 512, 20, 4.0)


KOHYA = """# sample prompts for jimeng
masterpiece, best quality, 1girl, jimeng style, looking at viewer --n lowres, bad anatomy --w 1024 --h 1024 --d 42 --l 7.5 --s 28

a cozy cafe interior, jimeng style --w 832 --h 1216 --ss euler_a --q unknown
a plain photo of a coffee mug --d 7
"""


def test_a_kohya_prompt_file_imports_with_its_options_kinds_and_seeds(tmp_path):
    probes = load_kohya_prompts(write(tmp_path / "sample_prompts.txt", KOHYA), TRIGGER)
    assert probes.name == "sample_prompts" and len(probes.prompts) == 3
    girl, cafe, mug = probes.prompts
    assert girl == ProbePrompt("masterpiece, best quality, 1girl, jimeng style, looking at viewer", "style",
                               "lowres, bad anatomy", 1024, 1024, 28, 7.5, 42)
    assert (cafe.kind, cafe.text, cafe.width, cafe.height, cafe.seed, cafe.negative) == (
        "style", "a cozy cafe interior, jimeng style", 832, 1216, None, None)
    assert (mug.kind, mug.text, mug.seed) == ("leak", "a plain photo of a coffee mug", 7)
    assert probes.seeds == DEFAULT_SEEDS  # the cafe line has no --d
    girl_r, cafe_r, mug_r = probes.resolve(TRIGGER)
    assert girl_r.seeds == (42,) and cafe_r.seeds == DEFAULT_SEEDS and mug_r.seeds == (7,)
    assert girl_r.prompt == girl.text and girl_r.plain == "masterpiece, best quality, 1girl, looking at viewer"


def test_kohya_seeds_are_the_d_values_when_every_line_has_one_and_no_trigger_means_style(tmp_path):
    probes = load_kohya_prompts(write(tmp_path / "p.txt", "a cat --d 3\na dog --d 4\na fox --d 3\n"))
    assert probes.seeds == (3, 4) and {p.kind for p in probes.prompts} == {"style"}


def test_a_bad_number_in_a_kohya_file_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path / "prompts.txt", "# header\n\na cat, jimeng style --w 1024\na dog --w big --h 512\n")
    with pytest.raises(ConfigError, match=r"prompts\.txt, line 4: --w needs a number, not 'big'"):
        load_kohya_prompts(path, TRIGGER)
    write(path, "a cat --l high\n")
    with pytest.raises(ConfigError, match=r"prompts\.txt, line 1: --l"):
        find_probe_set(str(path), trigger_words=TRIGGER)


def test_config_sets_override_file_sets_and_paths_are_read(tmp_path):
    write(tmp_path / "shapes.yaml", "seeds: [1]\nstyle: [a red circle]\n")
    write(tmp_path / "extra.yml", "seeds: [2]\nleak: [a plain mug]\n")
    settings = Settings(probes={"shapes": {"seeds": [9], "style": ["a square"]}}, probe_set="extra")
    sets = probe_sets(settings, tmp_path)
    assert sorted(sets) == ["extra", "shapes"]
    assert sets["shapes"].seeds == (9,) and sets["shapes"].prompts[0].text == "a square"
    assert sets["shapes"].source == "settings probes.shapes"
    assert find_probe_set(None, settings, folder=tmp_path).name == "extra"  # settings.probe_set
    assert find_probe_set(str(tmp_path / "extra.yml")).seeds == (2,)
    with pytest.raises(ConfigError, match=r"settings probes\.bad: seeds must be"):
        probe_sets(Settings(probes={"bad": {"style": ["a cat"]}}), tmp_path)


def test_an_unknown_name_lists_the_known_names():
    with pytest.raises(ConfigError, match=r"unknown probe set 'nope'; known: general, shapes"):
        find_probe_set("nope")


@pytest.mark.parametrize("text, words", [
    ("seeds: [1\nstyle: [a]\n", "not valid YAML"),
    ("seeds: [1]\nstyle: [a]\ncolour: red\n", "unknown key(s) colour"),
    ("seeds: [1]\nstyles: [a]\n", "unknown key(s) styles"),
    ("seeds: [1]\nstyle:\n  - {prompt: a, size: 3}\n", "unknown key(s) size"),
    ("style: [a]\n", "seeds must be a non-empty list"),
    ("seeds: []\nstyle: [a]\n", "seeds must be a non-empty list"),
    ("seeds: [1, two]\nstyle: [a]\n", "seeds must be whole numbers"),
    ("seeds: [1]\n", "no prompts"),
    ("seeds: [1]\nstyle: []\n", "style must be a non-empty list"),
    ("seeds: [1]\nstyle:\n  - {prompt: a, width: wide}\n", "width must be a positive whole number"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_files_are_named_with_the_cause(tmp_path, text, words):
    path = write(tmp_path / "broken.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_probe_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


def test_a_settings_file_carries_probe_sets(tmp_path):
    path = write(tmp_path / "config.yaml", "probe_set: mine\nprobes:\n  mine:\n    seeds: [3]\n    leak: [a mug]\n")
    settings = load_settings(path)
    assert find_probe_set("", settings).prompts == (ProbePrompt("a mug", "leak"),)
