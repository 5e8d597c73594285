"""The recommended strength of a release from an epoch x strength sweep: the verdict's trade-off over the sweep's
image measures, ordered by preference, and said plainly when the sweep cannot support one."""

from __future__ import annotations

from lora_spectrum.decision.strengths import strength_advice, strength_lines


def sweep(effects, scores, base_score=30.0, file="ink-000006.safetensors"):
    rows = [{"file": file, "epoch": 6, "strength": s, "distance_from_base": e, "clip_score": c}
            for s, e, c in zip((0.4, 0.6, 0.8, 1.0, 1.2), effects, scores, strict=True)]
    rows.append({"file": "ink-000004.safetensors", "epoch": 4, "strength": 1.0, "distance_from_base": 0.9,
                 "clip_score": 31.0})  # another epoch: never part of this file's sweep
    return {"measure": "clip", "base": {"images": 2, "clip_score": base_score}, "rows": rows}


def test_the_recommendation_weighs_style_against_fidelity_as_the_preference_does():
    # The style's effect grows with strength; the prompt's CLIP score falls once the LoRA dominates.
    image = sweep([0.05, 0.2, 0.35, 0.45, 0.5], [30.0, 29.5, 27.0, 20.0, 12.0])
    picks = {p: strength_advice(image, "ink-000006.safetensors", p)["recommended"]
             for p in ("fidelity", "balanced", "style")}
    assert picks["fidelity"] <= picks["balanced"] <= picks["style"]
    assert picks["fidelity"] < picks["style"], picks  # the preference matters on a real trade-off
    advice = strength_advice(image, "ink-000006.safetensors", "balanced")
    assert [t["strength"] for t in advice["strengths"]] == [0.4, 0.6, 0.8, 1.0, 1.2]
    # The pick is the sweep's best on the harmonic mean of style gained and fidelity kept (checked by hand here).
    def score(e, c, w=0.5):
        s, k = e / 0.5, min(c / 30.0, 1.0)
        return 1 / (w / s + (1 - w) / k)
    best = max(advice["strengths"], key=lambda t: score(t["change_from_base"], t["clip_score"]))
    assert advice["recommended"] == best["strength"]
    lines = strength_lines(advice, "Ink v1", "balanced")
    assert f"<lora:Ink v1:{best['strength']:g}>" in lines[0] and "**←**" in lines[1]


def test_no_sweep_no_advice_and_no_prompt_score_no_pick():
    assert strength_advice(sweep([0.1] * 5, [30.0] * 5), "other.safetensors") is None
    assert strength_advice(None, "ink-000006.safetensors") is None
    pixel = sweep([0.05, 0.2, 0.35, 0.45, 0.5], [None] * 5)
    advice = strength_advice(pixel, "ink-000006.safetensors")
    assert advice["recommended"] is None and "no prompt score" in advice["why_none"]
    lines = strength_lines(advice, "Ink v1", "balanced")
    assert "no strength is recommended" in lines[0] and "—" in lines[1] and "**←**" not in lines[1]
