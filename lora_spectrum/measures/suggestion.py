"""The suggested epoch: which epoch file to look at first, from the weight curves (and a validation loss when the
log has one), with a one-sentence reason and the numbers behind it. Plain rules over plain data; see
``suggest_epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lora_spectrum.epoch_names import label
from lora_spectrum.errors import ConfigError
from lora_spectrum.language import _
from lora_spectrum.measures.image_measures import image_row_for
from lora_spectrum.measures.numbers import percent, rounded

SETTLED_CHANGE = 0.05  # relative change to the previous epoch below which the weights count as settled
NEAR_LAST = 0.10  # relative distance to the last epoch within which an epoch counts as "nearly there"
VALIDATION_TAG = "loss/validation/epoch_average"
VALIDATION_RISE = 0.05  # a validation loss this much above its minimum means the later epochs overfit
RULES = ("only one epoch", "settled", "near the last epoch", "still moving", "validation loss", "style against fidelity")
FIDELITY_SCALE = 0.20  # a fidelity drop is weighed against the run's largest drop, or this share of the base's
LEAK_WEIGHT = 0.25  # an epoch that changes prompts without the trigger as much as those with it loses this share
#                     (a quarter: a LoRA that leaks tends to leak at every epoch, so it tilts the choice, not sets it)
VALIDATION_WEIGHT = 0.5  # an epoch whose validation loss is VALIDATION_SCALE above the run's lowest loses this share
VALIDATION_SCALE = 0.20
MIN_STYLE = 1e-6  # below this the probe saw no style at all and the weight curves decide
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
    """An epoch as the reason names it: ``epoch 20`` / ``step 250`` in the active language, else its label."""
    if row.get("epoch") is not None or row.get("step") is not None:
        return label(row.get("file") or "", row.get("epoch"), row.get("step"), translate=_)
    return row.get("label") or row["file"]


def trade_off(probe: dict, loss: dict | None = None) -> list[dict]:
    """Per probed epoch, how it weighs: ``style_gained`` (its style over the run's most, 0..1), ``fidelity_term``
    (1 = as faithful to the prompts as the base, 0 = the run's worst or a drop of ``FIDELITY_SCALE`` of the base's,
    whichever is larger), the leak penalty (``leak_ratio``: how much prompts without the trigger changed, over how
    much those with it did), the validation-loss penalty (its rise over the run's lowest, for epochs after it), and ``score``: the
    harmonic mean of style gained and fidelity kept, times the penalties. Empty without style or fidelity numbers."""
    rows = [e for e in probe.get("epochs", []) if e.get("style") is not None and e.get("fidelity") is not None]
    base_fid = (probe.get("base") or {}).get("fidelity")
    if not rows or not base_fid:
        return []
    top = max(e["style"] for e in rows)
    drops = [max(base_fid - e["fidelity"], 0.0) / abs(base_fid) for e in rows]
    scale = max(max(drops), FIDELITY_SCALE)
    leaks = [e.get("leak_ratio") for e in rows]
    # The validation loss counts against an epoch only after its lowest point: before it, a higher loss means the
    # style was still being learned, not overfitting.
    val = {int(s): v for s, v in (loss or {}).get("series", {}).get(VALIDATION_TAG, [])}
    known = [(val[e["epoch"]], e["epoch"]) for e in rows if e.get("epoch") in val]
    val_min, val_at = min(known) if known else (None, None)
    out = []
    for e, drop, leak in zip(rows, drops, leaks, strict=True):
        style = max(e["style"], 0.0) / top if top > MIN_STYLE else 0.0
        kept = 1.0 - drop / scale
        balance = 2 * style * kept / (style + kept) if style + kept > 0 else 0.0
        leak_pen = LEAK_WEIGHT * min(max(leak, 0.0), 1.0) if leak is not None else 0.0
        v = val.get(e.get("epoch"))
        val_pen = (VALIDATION_WEIGHT * min((v / val_min - 1) / VALIDATION_SCALE, 1.0)
                   if v is not None and val_min and e["epoch"] > val_at else 0.0)
        out.append({"epoch": e.get("epoch"), "file": e["file"], "style_gained": rounded(style),
                    "fidelity_term": rounded(kept), "fidelity_drop": rounded(drop), "leak_penalty": rounded(leak_pen),
                    "validation_penalty": rounded(val_pen),
                    "score": rounded(balance * (1 - leak_pen) * (1 - val_pen))})
    return out


def _probe_pick(epochs: list[dict], probe: dict, loss: dict | None) -> Suggestion | None:
    """The suggestion from a probe run: the epoch with the best balance of style gained and fidelity kept."""
    weighed = trade_off(probe, loss)
    if len(weighed) < 2 or max(w["style_gained"] for w in weighed) <= 0:
        return None
    best = max(range(len(weighed)), key=lambda k: (weighed[k]["score"], -k))
    w = weighed[best]
    rows = {e["file"]: e for e in probe["epochs"]}
    strongest = max(weighed, key=lambda x: (x["style_gained"], x["epoch"] or 0))
    later = weighed[best + 1:]
    name = _name(next((e for e in epochs if e["file"] == w["file"]), rows[w["file"]]))
    measure = probe.get("measure", "clip")
    why = _("{name} has {style} of the most style the run reached ({strongest}) and keeps {kept} of the base's "
            "prompt fidelity ({measure} measure, probe set {probe_set})").format(
        name=name, style=percent(w["style_gained"]), strongest=_name(rows[strongest["file"]]),
        kept=percent(rows[w["file"]]["fidelity_kept"]), measure=measure, probe_set=probe.get("probe_set"))
    if later:
        worst = min(later, key=lambda x: x["fidelity_term"])
        gain = max(x["style_gained"] for x in later) - w["style_gained"]
        why += _("; later epochs add at most {gain} more style but fidelity falls to {kept} of the base's at "
                 "{worst}").format(gain=percent(max(gain, 0.0)), kept=percent(rows[worst["file"]]["fidelity_kept"]),
                                   worst=_name(rows[worst["file"]]))
    elif best > 0:
        why += _("; no later epoch was probed, so training longer might still add style")
    ratio = rows[w["file"]].get("leak_ratio")
    if ratio is not None:
        why += (_("; prompts without the trigger change {ratio} as much as those with it (leak)").format(
            ratio=percent(ratio)) + (_(", which weighs against it") if w["leak_penalty"] >= 0.1 else ""))
    if w["validation_penalty"]:
        why += _("; its validation loss is above the run's lowest (penalty {penalty})").format(
            penalty=percent(w["validation_penalty"]))
    numbers = {"rule_inputs": weighed, "fidelity_scale": FIDELITY_SCALE, "leak_weight": LEAK_WEIGHT,
               "validation_weight": VALIDATION_WEIGHT, "measure": measure, "probe_set": probe.get("probe_set"),
               "score": w["score"], "style_gained": w["style_gained"], "fidelity_term": w["fidelity_term"]}
    return Suggestion(epoch=w["epoch"], file=w["file"], rule="style against fidelity", reason=_sentence(why),
                      numbers=numbers)


def suggest_epoch(epochs: list[dict], image: dict | None = None, loss: dict | None = None,
                  settled: float = SETTLED_CHANGE, near_last: float = NEAR_LAST,
                  probe: dict | None = None) -> Suggestion:
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

    With a probe run (``probe``: ``probe_measures``' result) that saw style, the rules above give way to the trade-off
    the probe measures: the epoch with the best ``trade_off`` score (style gained against prompt fidelity kept, less
    the leak and validation-loss penalties), explained with both sides.
    """
    if not epochs:
        return Suggestion(epoch=None, file=None, rule=None,
                          reason=_("Suggestion: none, no readable epoch file in this series."))
    if probe:
        picked = _probe_pick(epochs, probe, loss)
        if picked is not None:
            return picked
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
        why = _("{name}: the validation loss was lowest there ({loss}) and is {rise} higher at {other}, which the "
                "weight curves alone would suggest; the later epochs likely fit the training images more than the "
                "task").format(name=name, loss=f"{val[row['epoch']]:.4g}", rise=percent(rise),
                               other=_name(epochs[weights_pick]))
    elif rule == "only one epoch":
        why = _("{name} is the only readable epoch of the series, so there is nothing to compare it with").format(
            name=name)
    elif rule == "settled":
        why = (_("{name}: every later epoch changed the weights by less than {settled} from the one before (at "
                 "most {most}), so training had settled there").format(
            name=name, settled=percent(settled), most=percent(numbers["max_later_relative_change"]))
            if later else _("{name}: it changed the weights by less than {settled} from the one before").format(
                name=name, settled=percent(settled)))
        if pick < n - 1:
            why += _("; its update is {fraction} of the last epoch's in size").format(fraction=percent(norm_fraction))
    elif rule == "near the last epoch":
        why = _("{name}: the weights were still moving ({change} between the last two epochs, above {settled}), "
                "and {name} is the earliest epoch within {near} of the last one ({away} away, {fraction} of its "
                "size, cosine {cosine}); compare it with {last} by eye").format(
            name=name, change=percent(changes[-1]), settled=percent(settled), near=percent(near_last),
            away=percent(row["relative_change_to_last"]), fraction=percent(norm_fraction),
            cosine=f"{row['cosine_to_last']:.3f}", last=_name(last))
    elif n == 2:
        why = _("{name}: only two epochs, and they differ by {change} (above {settled}), so the later, more "
                "trained one; a weak suggestion").format(name=name, change=percent(changes[-1]),
                                                          settled=percent(settled))
    else:
        why = _("{name}: the weights were still changing {change} between the last two epochs and no earlier "
                "epoch is within {near} of the last, so the most trained one; training longer may still change the "
                "style").format(name=name, change=percent(changes[-1]), near=percent(near_last))

    # 3. Quote the image and loss numbers where known.
    img = image_row_for(image, row["file"])
    if img and img["distance_from_base"] is not None:
        numbers.update({"image_measure": img["measure"], "distance_from_base": img["distance_from_base"],
                        "seed_spread": img["seed_spread"]})
        why += (_("; its images are {distance} from the base ({measure} measure)").format(
            distance=f"{img['distance_from_base']:.3g}", measure=img["measure"])
            + (_(" with a spread of {spread} across seeds").format(spread=f"{img['seed_spread']:.2g}")
               if img["seed_spread"] is not None else ""))
    if loss and row.get("epoch") is not None and rule != "validation loss":
        for tag in (VALIDATION_TAG, "loss/epoch_average", "loss/epoch"):
            points = dict((int(s), v) for s, v in loss.get("series", {}).get(tag, []))
            if row["epoch"] in points:
                numbers["epoch_loss"] = {"tag": tag, "value": rounded(points[row["epoch"]])}
                why += _("; {tag} there is {value}").format(tag=tag, value=f"{points[row['epoch']]:.4g}")
                break
    return Suggestion(epoch=row.get("epoch"), file=row["file"], rule=rule, reason=_sentence(why),
                      numbers=numbers)


def _sentence(why: str) -> str:
    return _("Suggestion: {why}.").format(why=why)
