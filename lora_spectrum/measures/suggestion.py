"""The suggested epoch: which epoch file to look at first, from the weight curves (and a validation loss when the
log has one), with a one-sentence reason and the numbers behind it. Plain rules over plain data; see
``suggest_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_spectrum.errors import ConfigError
from lora_spectrum.measures.image_measures import image_row_for
from lora_spectrum.measures.numbers import percent, rounded

SETTLED_CHANGE = 0.05  # relative change to the previous epoch below which the weights count as settled
NEAR_LAST = 0.10  # relative distance to the last epoch within which an epoch counts as "nearly there"
VALIDATION_TAG = "loss/validation/epoch_average"
VALIDATION_RISE = 0.05  # a validation loss this much above its minimum means the later epochs overfit
RULES = ("only one epoch", "settled", "near the last epoch", "still moving", "validation loss")
LABEL = "suggestion"


@dataclass(frozen=True)
class Suggestion:
    """Which epoch file to look at first, the rule that chose it and why, with the numbers behind it.

    ``to_json()`` is the ``suggestion`` block of the insight JSON and of a grid manifest; ``from_json`` reads one
    back. No epoch (an empty series): ``epoch``, ``file`` and ``rule`` are None and ``reason`` says so.
    """

    epoch: int | None
    file: str | None
    rule: str | None  # one of RULES, or None when there was nothing to choose from
    reason: str  # one sentence, starts with "Suggestion:"
    numbers: dict = field(default_factory=dict)  # thresholds and measures the reason quotes; plain JSON values

    def to_json(self) -> dict:
        return {"label": LABEL, "epoch": self.epoch, "file": self.file, "rule": self.rule, "reason": self.reason,
                "numbers": dict(self.numbers)}

    @classmethod
    def from_json(cls, data: dict) -> Suggestion:
        """Read a ``suggestion`` block back; ``ConfigError`` naming what is wrong when it is not one."""
        keys = {"label", "epoch", "file", "rule", "reason", "numbers"}
        if not isinstance(data, dict) or set(data) != keys or data["label"] != LABEL:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"not a suggestion block (expected label {LABEL!r} and keys {sorted(keys)}, got {got})")
        if data["rule"] is not None and data["rule"] not in RULES:
            raise ConfigError(f"suggestion rule {data['rule']!r} is not one of: {', '.join(RULES)}")
        return cls(epoch=data["epoch"], file=data["file"], rule=data["rule"], reason=data["reason"],
                   numbers=dict(data["numbers"]))


def _name(row: dict) -> str:
    return row["label"] if row.get("label") else (f"epoch {row['epoch']}" if row.get("epoch") is not None
                                                  else row["file"])


def suggest_epoch(epochs: list[dict], image: dict | None = None, loss: dict | None = None,
                  settled: float = SETTLED_CHANGE, near_last: float = NEAR_LAST) -> Suggestion:
    """A suggested epoch from the weight curves, with a one-sentence reason and the numbers behind it.

    Rules, in order (``r_i`` is the relative change of epoch i to the epoch before it):
    1. One epoch: that one; there is nothing to compare.
    2. Settled: the earliest epoch after which every ``r_i`` stays below ``settled`` (5%): later epochs add little.
    3. Still moving, 3+ epochs: the earliest epoch within ``near_last`` (10%) of the last one
       (``relative_change_to_last``): nearly the end state, with less risk of over-training; compare it by eye.
    4. Otherwise the last epoch, the most trained one; the reason says that training had not settled.
    5. Then early stopping: when the log has a validation loss per epoch (kohya's
       ``loss/validation/epoch_average``) and it was lowest at an earlier epoch file than the pick, and the pick's
       is more than ``VALIDATION_RISE`` (5%) above that minimum, the later epochs are fitting the training set
       rather than the task: the epoch with the lowest validation loss is suggested instead, and the reason says
       what the weights alone would have picked.
    The image measures (distance from base, spread across seeds) and the training loss are quoted when known;
    they do not change the choice. It is a suggestion for where to look first, not a verdict.
    """
    if not epochs:
        return Suggestion(epoch=None, file=None, rule=None, reason="Suggestion: none, no readable epoch file in "
                          "this series.")
    n = len(epochs)
    changes = [e["relative_change"] for e in epochs]

    # 1. Pick the epoch.
    if n == 1:
        pick, rule = 0, "only one epoch"
    else:
        pick, rule = None, None
        for k in range(n - 1):
            later = changes[k + 1:]
            if all(c is not None and c < settled for c in later):
                pick, rule = k, "settled"
                break
        if pick is None and n >= 3:
            for k in range(n - 1):
                d = epochs[k]["relative_change_to_last"]
                if d is not None and d <= near_last:
                    pick, rule = k, "near the last epoch"
                    break
        if pick is None:
            pick, rule = n - 1, "still moving"
    weights_pick = pick
    val = {int(s): v for s, v in (loss or {}).get("series", {}).get(VALIDATION_TAG, [])}
    files_val = [(k, val[e["epoch"]]) for k, e in enumerate(epochs) if e.get("epoch") in val]
    if files_val and epochs[pick].get("epoch") in val:
        best, best_v = min(files_val, key=lambda kv: (kv[1], kv[0]))
        if best < pick and best_v > 0 and val[epochs[pick]["epoch"]] > (1 + VALIDATION_RISE) * best_v:
            pick, rule = best, "validation loss"
    row = epochs[pick]
    last = epochs[-1]
    name = _name(row)
    norm_fraction = (row["weight_norm"] / last["weight_norm"]) if last["weight_norm"] else None
    later = [c for c in changes[pick + 1:] if c is not None]
    numbers = {
        "threshold_settled": settled, "threshold_near_last": near_last,
        "relative_change": row["relative_change"], "max_later_relative_change": rounded(max(later)) if later else None,
        "last_relative_change": changes[-1] if n > 1 else None,
        "relative_change_to_last": row["relative_change_to_last"], "cosine_to_last": row["cosine_to_last"],
        "norm_fraction_of_last": rounded(norm_fraction),
    }

    # 2. Say why, with the numbers.
    if rule == "validation loss":
        rise = val[epochs[weights_pick]["epoch"]] / val[row["epoch"]] - 1
        numbers.update({"validation_loss": rounded(val[row["epoch"]]), "validation_rise_after": rounded(rise),
                        "weights_rule_pick": epochs[weights_pick].get("epoch")})
        why = (f"{name}: the validation loss was lowest there ({val[row['epoch']]:.4g}) and is {percent(rise)} higher "
               f"at {_name(epochs[weights_pick])}, which the weight curves alone would suggest; the later epochs "
               f"likely fit the training images more than the task")
    elif rule == "only one epoch":
        why = f"{name} is the only readable epoch of the series, so there is nothing to compare it with"
    elif rule == "settled":
        why = (f"{name}: every later epoch changed the weights by less than {percent(settled)} from the one before "
               f"(at most {percent(numbers['max_later_relative_change'])}), so training had settled there"
               if later else f"{name}: it changed the weights by less than {percent(settled)} from the one before")
        if pick < n - 1:
            why += f"; its update is {percent(norm_fraction)} of the last epoch's in size"
    elif rule == "near the last epoch":
        why = (f"{name}: the weights were still moving ({percent(changes[-1])} between the last two epochs, above "
               f"{percent(settled)}), and {name} is the earliest epoch within {percent(near_last)} of the last one "
               f"({percent(row['relative_change_to_last'])} away, {percent(norm_fraction)} of its size, cosine "
               f"{row['cosine_to_last']:.3f}); compare it with {_name(last)} by eye")
    elif n == 2:
        why = (f"{name}: only two epochs, and they differ by {percent(changes[-1])} (above {percent(settled)}), so the "
               "later, more trained one; a weak suggestion")
    else:
        why = (f"{name}: the weights were still changing {percent(changes[-1])} between the last two epochs and no "
               f"earlier epoch is within {percent(near_last)} of the last, so the most trained one; training longer "
               "may still change the style")

    # 3. Quote the image and loss numbers where known.
    img = image_row_for(image, row["file"])
    if img and img["distance_from_base"] is not None:
        numbers.update({"image_measure": img["measure"], "distance_from_base": img["distance_from_base"],
                        "seed_spread": img["seed_spread"]})
        why += (f"; its images are {img['distance_from_base']:.3g} from the base ({img['measure']} measure)"
                + (f" with a spread of {img['seed_spread']:.2g} across seeds" if img["seed_spread"] is not None
                   else ""))
    if loss and row.get("epoch") is not None and rule != "validation loss":
        for tag in (VALIDATION_TAG, "loss/epoch_average", "loss/epoch"):
            points = dict((int(s), v) for s, v in loss.get("series", {}).get(tag, []))
            if row["epoch"] in points:
                numbers["epoch_loss"] = {"tag": tag, "value": rounded(points[row["epoch"]])}
                why += f"; {tag} there is {points[row['epoch']]:.4g}"
                break
    return Suggestion(epoch=row.get("epoch"), file=row["file"], rule=rule, reason=f"Suggestion: {why}.",
                      numbers=numbers)
