"""The suggestion (lora_spectrum.measures.suggestion): its rules, a validation loss that moves it earlier (also end
to end from event files), the demo's suggestion with its numbers, and ``Suggestion`` read back from its JSON."""

from __future__ import annotations

import json
import re

import pytest

from lora_spectrum import demo, language
from lora_spectrum.errors import ConfigError
from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.suggestion import Suggestion, suggest_epoch
from tests.measures.files import scanned


def _rows(changes, to_last):
    return [{"epoch": 10 * (i + 1), "file": f"s_{10 * (i + 1)}.safetensors", "label": f"epoch {10 * (i + 1)}",
             "weight_norm": 1.0, "relative_change": c, "relative_change_to_last": d, "cosine_to_last": 0.99}
            for i, (c, d) in enumerate(zip(changes, to_last, strict=True))]


def test_suggestion_rules():
    settled = suggest_epoch(_rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0]))
    assert (settled.epoch, settled.rule) == (30, "settled") and "at most 4.0%" in settled.reason
    moving = suggest_epoch(_rows([None, 0.5, 0.2, 0.12], [0.6, 0.3, 0.08, 0.0]))
    assert (moving.epoch, moving.rule) == (30, "near the last epoch")
    still = suggest_epoch(_rows([None, 0.5, 0.3], [0.6, 0.3, 0.0]))
    assert (still.epoch, still.rule) == (30, "still moving") and "training longer" in still.reason
    assert suggest_epoch(_rows([None, 0.5], [0.6, 0.0])).epoch == 20
    assert suggest_epoch(_rows([None, 0.01], [0.01, 0.0])).epoch == 10
    one = suggest_epoch(_rows([None], [0.0]))
    assert one.epoch == 10 and one.reason.startswith("Suggestion:") and one.to_json()["label"] == "suggestion"


def _validation(values):
    return {"series": {"loss/validation/epoch_average": [(10 * (i + 1), v) for i, v in enumerate(values)]},
            "per_epoch": ["loss/validation/epoch_average"]}


def test_a_rising_validation_loss_moves_the_suggestion_earlier():
    rows = _rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0])  # the weights alone: epoch 30
    early = suggest_epoch(rows, loss=_validation([0.30, 0.25, 0.31, 0.33, 0.35]))
    assert (early.epoch, early.rule) == (20, "validation loss")
    assert "lowest there (0.25)" in early.reason and "24.0% higher at epoch 30" in early.reason
    assert early.numbers["weights_rule_pick"] == 30
    # Within 5% of the minimum, or lowest at the pick or later: the weight rule stands.
    assert suggest_epoch(rows, loss=_validation([0.30, 0.25, 0.26, 0.33, 0.35])).epoch == 30
    assert suggest_epoch(rows, loss=_validation([0.30, 0.28, 0.27, 0.26, 0.25])).epoch == 30


def test_demo_suggestion_names_an_epoch_with_its_numbers(demo_result):
    assert demo_result["suggested_epoch"] in demo.DEMO_EPOCHS
    assert demo_result["reason"].startswith(f"Suggestion: epoch {demo_result['suggested_epoch']}")
    assert demo_result["suggestion"]["numbers"]["relative_change_to_last"] is not None
    json.dumps(demo_result, allow_nan=False)  # plain, valid JSON


def test_a_validation_loss_in_the_log_reaches_the_suggestion(demo_loras, tmp_path):
    """End to end from TensorBoard event files: the weights alone suggest epoch 220 of the demo series; a
    validation loss lowest at epoch 80 and 30% higher at 220 moves the suggestion to 80."""
    from torch.utils.tensorboard import SummaryWriter

    assert series_insight(scanned(demo_loras), use_clip=False)["suggested_epoch"] == 220
    values = {20: 0.40, 50: 0.33, 80: 0.30, 150: 0.34, 220: 0.39, 300: 0.45}
    with SummaryWriter(str(tmp_path / "logs")) as w:
        for epoch, v in values.items():
            w.add_scalar("loss/validation/epoch_average", v, epoch)
    result = series_insight(scanned(demo_loras), logs=tmp_path / "logs", use_clip=False)
    assert (result["suggested_epoch"], result["suggestion"]["rule"]) == (80, "validation loss")
    assert "30.0% higher at epoch 220" in result["reason"]


# ---------------------------------------------------------------------------------------------- the dataclass
def _every_rule() -> list[Suggestion]:
    rows = _rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0])
    return [suggest_epoch([]), suggest_epoch(_rows([None], [0.0])), suggest_epoch(rows),
            suggest_epoch(_rows([None, 0.5, 0.2, 0.12], [0.6, 0.3, 0.08, 0.0])),
            suggest_epoch(_rows([None, 0.5, 0.3], [0.6, 0.3, 0.0])),
            suggest_epoch(rows, loss=_validation([0.30, 0.25, 0.31, 0.33, 0.35]))]


def test_a_suggestion_round_trips_through_json():
    found = _every_rule()
    assert [s.rule for s in found] == [None, "only one epoch", "settled", "near the last epoch", "still moving",
                                       "validation loss"]
    for s in found:
        data = s.to_json()
        assert list(data) == ["label", "epoch", "file", "rule", "reason", "numbers"] and data["label"] == "suggestion"
        assert (data["epoch"], data["file"], data["rule"], data["reason"], data["numbers"]) == (
            s.epoch, s.file, s.rule, s.reason, s.numbers)
        assert json.loads(json.dumps(data, allow_nan=False)) == data
        assert Suggestion.from_json(data) == s
        assert Suggestion.from_json(json.loads(json.dumps(data))).to_json() == data


def test_an_empty_series_suggests_nothing_and_says_so():
    none = suggest_epoch([])
    assert (none.epoch, none.file, none.rule, none.numbers) == (None, None, None, {})
    assert none.reason == "Suggestion: none, no readable epoch file in this series."


def test_the_insight_block_is_the_suggestion_as_json(demo_result):
    block = demo_result["suggestion"]
    back = Suggestion.from_json(block)
    assert back.to_json() == block
    assert (back.epoch, back.file, back.reason) == (demo_result["suggested_epoch"], demo_result["suggested_file"],
                                                    demo_result["reason"])


def test_reading_back_something_else_is_a_clear_error():
    good = suggest_epoch(_rows([None], [0.0])).to_json()
    with pytest.raises(ConfigError, match="not a suggestion block"):
        Suggestion.from_json({**good, "extra": 1})
    with pytest.raises(ConfigError, match="not a suggestion block"):
        Suggestion.from_json({k: v for k, v in good.items() if k != "numbers"})
    with pytest.raises(ConfigError, match="not a suggestion block"):
        Suggestion.from_json({**good, "label": "verdict"})
    with pytest.raises(ConfigError, match="not a suggestion block"):
        Suggestion.from_json([good])
    with pytest.raises(ConfigError, match="rule 'gut feeling' is not one of"):
        Suggestion.from_json({**good, "rule": "gut feeling"})


# ---------------------------------------------------------------------------------------------------- probe trade-off
def _probe(styles, fidelities, leaks=None, base_fidelity=0.30):
    leaks = leaks or [None] * len(styles)
    return {"probe_set": "synthetic", "measure": "clip", "base": {"fidelity": base_fidelity},
            "epochs": [{"epoch": 10 * (i + 1), "file": f"s_{10 * (i + 1)}.safetensors", "style": s, "fidelity": f,
                        "fidelity_kept": round(f / base_fidelity, 4), "leak_ratio": v}
                       for i, (s, f, v) in enumerate(zip(styles, fidelities, leaks, strict=True))]}


def test_the_probe_trade_off_picks_the_epoch_with_style_that_still_obeys_the_prompt():
    # Style arrives by epoch 30 and keeps growing a little; fidelity holds to 30, then falls: 30 is the balance.
    weights = _rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0])  # the weights alone: epoch 30 too
    probe = _probe([0.02, 0.06, 0.09, 0.10, 0.11], [0.30, 0.29, 0.28, 0.22, 0.18])
    s = suggest_epoch(_rows([None, 0.5, 0.3, 0.2, 0.12], [0.9, 0.6, 0.4, 0.2, 0.0]), probe=probe)
    assert (s.epoch, s.rule) == (30, "style against fidelity")
    assert "of the most style" in s.reason and "prompt fidelity" in s.reason and "epoch 50" in s.reason
    assert s.numbers["rule_inputs"][2]["score"] == max(r["score"] for r in s.numbers["rule_inputs"])
    # Without the probe, the weight curves pick the most trained epoch for the same files.
    assert suggest_epoch(_rows([None, 0.5, 0.3, 0.2, 0.12], [0.9, 0.6, 0.4, 0.2, 0.0])).epoch == 50
    assert suggest_epoch(weights, probe=probe).epoch == 30


def test_no_fidelity_loss_means_the_style_decides_and_no_style_means_the_weights_decide():
    flat = suggest_epoch(_rows([None, 0.5, 0.3], [0.6, 0.3, 0.0]),
                         probe=_probe([0.02, 0.08, 0.10], [0.30, 0.30, 0.299]))
    assert flat.epoch == 30 and flat.rule == "style against fidelity"
    none = suggest_epoch(_rows([None, 0.5, 0.3], [0.6, 0.3, 0.0]), probe=_probe([0.0, -0.01, 0.0], [0.3, 0.2, 0.1]))
    assert none.rule == "still moving"


def test_leak_and_a_rising_validation_loss_weigh_against_an_epoch():
    styles, fidelities = [0.05, 0.095, 0.10], [0.30, 0.30, 0.30]
    rows = _rows([None, 0.5, 0.3], [0.6, 0.3, 0.0])
    assert suggest_epoch(rows, probe=_probe(styles, fidelities, [0.05, 0.08, 0.10])).epoch == 30
    # Epoch 30 changes the prompts without the trigger 90% as much as those with it: it leaks, 20 does not.
    leaky = suggest_epoch(rows, probe=_probe(styles, fidelities, [0.05, 0.08, 0.90]))
    assert leaky.epoch == 20 and leaky.numbers["rule_inputs"][2]["leak_penalty"] == 0.225
    assert "90.0% as much" not in leaky.reason and "leak" in leaky.reason
    rising = suggest_epoch(rows, probe=_probe(styles, fidelities), loss=_validation([0.20, 0.21, 0.26]))
    assert rising.epoch == 20 and rising.numbers["rule_inputs"][2]["validation_penalty"] == 0.5


def test_a_validation_loss_still_falling_does_not_count_against_the_earlier_epochs():
    rows = _rows([None, 0.5, 0.3], [0.6, 0.3, 0.0])
    falling = suggest_epoch(rows, probe=_probe([0.05, 0.095, 0.10], [0.30, 0.30, 0.30]),
                            loss=_validation([0.30, 0.25, 0.20]))
    assert falling.epoch == 30
    assert [r["validation_penalty"] for r in falling.numbers["rule_inputs"]] == [0.0, 0.0, 0.0]


def test_the_reason_is_written_in_the_active_language_and_the_choice_does_not_change():
    zh = language.translator("zh_CN")
    rows = _rows([None, 0.5, 0.2, 0.04, 0.03], [0.6, 0.3, 0.1, 0.05, 0.0])
    probe = _probe([0.02, 0.06, 0.09, 0.10, 0.11], [0.30, 0.29, 0.28, 0.22, 0.18])
    for kwargs in ({}, {"probe": probe}):
        english = suggest_epoch(rows, **kwargs)
        with language.using(zh):
            chinese = suggest_epoch(rows, **kwargs)
        assert (chinese.epoch, chinese.file, chinese.rule, chinese.numbers) == \
            (english.epoch, english.file, english.rule, english.numbers)
        assert chinese.reason.startswith(zh.gettext("Suggestion: {why}.").split("{why}")[0])
        assert zh.gettext("epoch {epoch}").format(epoch=30) in chinese.reason and "epoch 30" not in chinese.reason
        numbers = re.findall(r"\d+(?:\.\d+)?%", english.reason)
        assert numbers and all(n in chinese.reason for n in numbers)  # the numbers are quoted as they are
    assert suggest_epoch(rows).reason == english_reason_of(rows)  # English again outside the block


def english_reason_of(rows) -> str:
    with language.using(language.translator("en")):
        return suggest_epoch(rows).reason
