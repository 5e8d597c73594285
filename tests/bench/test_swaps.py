"""The swaps measured are the swaps named (cold, warm, fused), the base comes back bit for bit, and a plan
encodes its prompt once.

No timing thresholds: timings belong to the benchmark, not to tests. The run is the shared ``result`` fixture.
"""

from __future__ import annotations


def test_swaps_really_happened_and_the_base_came_back(result):
    assert set(result["swap_kinds_seen"]) == {"cold", "warm"}, "cold and warm timings measure what they say"
    assert result["fast_path"] == "learned"
    assert result["adapter_changes_output"] is True
    assert result["base_bit_exact_after_swaps"] is True
    assert result["fused_merged"] is True, "fused mode merged the adapter (no unfused fallback)"
    assert result["base_bit_exact_after_fused_swaps"] is True
    # The fused forward is the unfused one up to rounding, far closer to it than the adapter is to the base.
    assert result["fused_vs_unfused_max_abs"] < 0.01 * result["unfused_vs_base_max_abs"]


def test_prompt_encoded_once_for_the_plan(result):
    te = result["text_encoder"]
    assert te["cells"] == 10 and te["distinct_prompts"] == 1 and te["prompt_encodings"] == 1
    assert te["text_encoder_forwards_per_encoder"] == te["distinct_prompts"]
    assert te["text_encoder_forwards"] == te["text_encoders"] * te["distinct_prompts"]
