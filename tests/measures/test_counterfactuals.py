"""Counterfactual prompts: one word swapped within its slot, the set's own words first, the set's other prompts
when no word is known, never the prompt itself."""

from __future__ import annotations

from lora_spectrum.measures.counterfactuals import VOCABULARY, counterfactuals, set_words, variants

SHAPES = ["a red circle on a white background", "a blue square on a cream background",
          "a green triangle on a gray background"]


def test_swaps_stay_in_their_slot_and_use_the_sets_own_words():
    own = set_words(SHAPES)
    out = variants(SHAPES[0], own)
    assert "a blue circle on a white background" in out and "a red square on a white background" in out
    assert "a red circle on a gray background" in out
    assert "a white circle on a white background" not in out, "a fill colour is swapped for fill colours only"
    assert all(v != SHAPES[0] for v in out) and len(out) == len(set(out)) == 6


def test_unknown_sets_fall_back_to_the_vocabulary_and_then_to_the_other_prompts():
    out = variants("a red sports car on a rainy street")
    assert out and all(v != "a red sports car on a rainy street" for v in out)
    assert any(w in v for v in out for w in VOCABULARY["colour"] if w != "red")
    assert counterfactuals("zyx qwv", others=["abc def", "zyx qwv"]) == ["abc def"]
    assert counterfactuals("a cat", given=["a dog", "a cat"]) == ["a dog"]
