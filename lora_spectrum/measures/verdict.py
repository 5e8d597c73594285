"""The verdict of a series: which epoch to ship, the epochs on the style/fidelity front, the epochs the measures cannot
tell apart from the pick, what evidence is missing, and one reason. Computed here and only here; Insight, Rank,
Ship, the model card, the HTML report and the CLI all show this object.

Plain data in (a probe's measures, a training log's validation loss, the blind ranking, weight curves as context),
plain data out: no files, no torch, no streamlit. The sentences are in ``verdict_reason.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lora_spectrum.errors import ConfigError
from lora_spectrum.measures import verdict_reason
from lora_spectrum.measures.numbers import rounded

LABEL = "verdict"
PREFERENCES = {"fidelity": 0.3, "balanced": 0.5, "style": 0.7}  # the weight of style in the weighted harmonic mean
DEFAULT_PREFERENCE = "balanced"
RESAMPLES = 200  # bootstrap resamples of the probe's (prompt, seed) pairs
TIE_SHARE = 0.10  # an epoch the resamples pick this often cannot be told apart from the pick
CLEAR = 2.0  # "clearly worse": a drop of this many standard errors of the difference
VOTE_Z = 2.0  # the votes separate two epochs when their score difference is this many standard errors
MIN_STYLE = 1e-6  # below this the probe saw no style at all
SETTLED_CHANGE = 0.05  # weight-curve context: relative change below which the weights count as settled
VALIDATION_TAG = "loss/validation/epoch_average"
STATES = ("empty", "needs probe", "no style", "measures", "votes")
NEIGHBOURS = 0.5  # smoothing: the weight of each neighbouring save in an epoch's mean (0: none)


@dataclass(frozen=True)
class Verdict:
    """One series' verdict. ``epoch``/``file`` is the pick (None before a probe: weight curves never pick).

    ``points``: per probed epoch its ``style`` (0..1 of the run's most), ``fidelity`` (kept, 0..1 of the base's),
    their standard errors, ``score`` at the preference and whether it is on the ``front``. ``tied``: epochs the
    resamples could not tell from the pick; ``confidence``: the share of resamples that made the same pick.
    ``stop``: the run has passed its best (two later saves clearly less faithful, style no longer rising)."""

    series: str | None
    state: str
    epoch: int | None = None
    file: str | None = None
    preference: str = DEFAULT_PREFERENCE
    reason: str = ""
    front: tuple[int, ...] = ()
    tied: tuple[int, ...] = ()
    confidence: float | None = None
    missing: tuple[str, ...] = ()
    points: tuple[dict, ...] = ()
    picks: dict = field(default_factory=dict)  # the pick at each preference
    votes: dict = field(default_factory=dict)  # {"votes", "top", "agree", "decided"}
    context: dict = field(default_factory=dict)  # weight curves and validation loss: where they point, not a pick
    stop: bool = False
    stop_reason: str = ""

    def to_json(self) -> dict:
        return {"label": LABEL, "series": self.series, "state": self.state, "epoch": self.epoch, "file": self.file,
                "preference": self.preference, "reason": self.reason, "front": list(self.front),
                "tied": list(self.tied), "confidence": self.confidence, "missing": list(self.missing),
                "points": [dict(p) for p in self.points], "picks": dict(self.picks), "votes": dict(self.votes),
                "context": dict(self.context), "stop": self.stop, "stop_reason": self.stop_reason}

    @classmethod
    def from_json(cls, data: dict) -> Verdict:
        """Read a ``verdict`` block back (a manifest, a release's metadata); ``ConfigError`` when it is not one."""
        if not isinstance(data, dict) or data.get("label") != LABEL or data.get("state") not in STATES:
            raise ConfigError("not a verdict block (expected label 'verdict' and a known state)")
        tuples = {"front", "tied", "missing", "points"}
        known = {k: (tuple(v) if k in tuples else v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def judged(self) -> bool:
        return self.file is not None


def _context(epochs: list[dict], loss: dict | None) -> dict:
    """What the weight curves and the validation loss show: where the weights settle, where validation is lowest."""
    out: dict = {"settled_epoch": None, "validation_lowest_epoch": None, "last_epoch": None, "files": len(epochs)}
    if epochs:
        out["last_epoch"] = epochs[-1].get("epoch")
        changes = [e.get("relative_change") for e in epochs]
        for k in range(len(epochs)):
            later = changes[k + 1:]
            if later and all(c is not None and c < SETTLED_CHANGE for c in later):
                out["settled_epoch"] = epochs[k].get("epoch")
                break
    val = {int(s): v for s, v in (loss or {}).get("series", {}).get(VALIDATION_TAG, [])}
    files = [e.get("epoch") for e in epochs if e.get("epoch") in val]
    if files:
        out["validation_lowest_epoch"] = min(files, key=lambda ep: (val[ep], ep))
    return out


def _units(probe: dict) -> tuple[list[str], list[int | None], dict, dict]:
    """The probe's cells as arrays over (prompt, seed) units: style and fidelity per epoch file and for the base."""
    kinds = set(probe.get("fidelity_kinds") or ("style", "new_context"))
    files = [e["file"] for e in probe.get("epochs", [])]
    epochs = [e["epoch"] for e in probe.get("epochs", [])]
    style: dict = {f: {} for f in [None, *files]}
    fid: dict = {f: {} for f in [None, *files]}
    for c in probe.get("cells", []):
        if c.get("file") not in style or c.get("kind") not in ("style", "new_context"):
            continue
        unit = (c["prompt"], c["seed"])
        if c.get("style") is not None:
            style[c["file"]][unit] = c["style"]
        if c.get("kind") in kinds and c.get("fidelity") is not None:
            fid[c["file"]][unit] = c["fidelity"]
    s_units = sorted(set.intersection(*(set(v) for v in style.values())), key=str) if style else []
    f_units = sorted(set.intersection(*(set(v) for v in fid.values())), key=str) if fid else []
    s = {f: np.array([style[f][u] for u in s_units]) for f in style}
    d = {f: np.array([fid[f][u] for u in f_units]) for f in fid}
    return files, epochs, s, d


def _terms(s_means: np.ndarray, s_base: float, f_means: np.ndarray, f_base: float,
           errors: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(style gained 0..1 of the run's most, fidelity kept 0..1 of the base's) per epoch; with ``errors`` (the
    standard errors of the means) each mean is first shrunk toward its neighbours as far as its noise allows."""
    if errors is not None:
        s_means, f_means = _smooth(s_means, errors[0]), _smooth(f_means, errors[1])
    gain = np.maximum(s_means - s_base, 0.0)
    top = gain.max()
    style = gain / top if top > MIN_STYLE else np.zeros_like(gain)
    kept = np.clip(f_means / f_base, 0.0, 1.0) if f_base > 0 else np.zeros_like(f_means)
    return style, kept


def _smooth(values: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Each epoch's mean shrunk toward the mean of its neighbouring saves, as far as its noise allows: adjacent saves
    of one run differ little in truth while their probe noise is independent, so a deviation the size of the noise
    is mostly noise (shrunk by up to ``NEIGHBOURS``), one well beyond it is a real change (kept), in the manner of
    James-Stein shrinkage."""
    if not NEIGHBOURS or len(values) < 3:
        return values
    out = values.copy()
    for i in range(len(values)):
        near = [j for j in (i - 1, i + 1) if 0 <= j < len(values)]
        target = float(np.mean(values[near]))
        noise = float(errors[i] ** 2 + np.mean(errors[near] ** 2) / len(near))
        excess = max((values[i] - target) ** 2 - noise, 0.0)
        out[i] = values[i] + NEIGHBOURS * noise / (noise + excess) * (target - values[i]) if noise > 0 else values[i]
    return out


def trade_off(style: np.ndarray, kept: np.ndarray, weight: float) -> np.ndarray:
    """The weighted harmonic mean of style gained and fidelity kept (0 where either is 0)."""
    with np.errstate(divide="ignore"):
        out = 1.0 / (weight / style + (1 - weight) / kept)
    return np.where((style > 0) & (kept > 0), out, 0.0)


def _front(style: np.ndarray, kept: np.ndarray) -> list[int]:
    """Indices not dominated on (style, fidelity): no other epoch is at least as good on both and better on one."""
    out = []
    for i in range(len(style)):
        dominated = any(style[j] >= style[i] and kept[j] >= kept[i] and (style[j] > style[i] or kept[j] > kept[i])
                        for j in range(len(style)))
        if not dominated:
            out.append(i)
    return out


def _argmax(values: np.ndarray) -> int:
    """The first index of the largest value (the earlier epoch on a tie: less training, same judgement)."""
    return int(np.flatnonzero(values == values.max())[0])


def _stop(style: np.ndarray, kept: np.ndarray, boot_style: np.ndarray, boot_kept: np.ndarray,
          pick: int) -> tuple[bool, int]:
    """Whether the run has passed its best: at least two saves after ``pick`` keep clearly less fidelity (the drop
    is ``CLEAR`` bootstrap standard errors of the paired difference) and style is no longer rising (the last save
    has not clearly more style, and not a tenth of the run's most more, than the save two before it). Returns
    (stop, how many later saves are clearly worse)."""
    worse = []
    for k in range(pick + 1, len(kept)):
        se = float(np.std(boot_kept[:, pick] - boot_kept[:, k]))
        if kept[pick] - kept[k] > CLEAR * max(se, 1e-9):
            worse.append(k)
    before = max(len(style) - 3, 0)
    gain = style[-1] - style[before]
    rising = gain > CLEAR * max(float(np.std(boot_style[:, -1] - boot_style[:, before])), 1e-9) and gain > 0.1
    return len(worse) >= 2 and not rising, len(worse)


def _errors(s: dict, d: dict, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The standard error of each epoch's mean style and mean fidelity over the probe's units."""
    def se(values: np.ndarray) -> float:
        return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return np.array([se(s[f]) for f in files]), np.array([se(d[f]) for f in files])


def _bootstrap(s: dict, d: dict, files: list[str], weight: float, rng: np.random.Generator):
    """Resampled (style, kept) per epoch: the same (prompt, seed) pairs drawn for every epoch and the base."""
    n_s, n_f = len(s[None]), len(d[None])
    errors = _errors(s, d, files)
    style_b, kept_b = [], []
    for _ in range(RESAMPLES):
        i_s, i_f = rng.integers(0, n_s, n_s), rng.integers(0, n_f, n_f)
        sm = np.array([s[f][i_s].mean() for f in files])
        fm = np.array([d[f][i_f].mean() for f in files])
        st, kp = _terms(sm, float(s[None][i_s].mean()), fm, float(d[None][i_f].mean()), errors)
        style_b.append(st)
        kept_b.append(kp)
    return np.array(style_b), np.array(kept_b)


def decide(series: str | None, epochs: list[dict], probe: dict | None = None, loss: dict | None = None,
           ratings: dict | None = None, preference: str = DEFAULT_PREFERENCE) -> Verdict:
    """The verdict of one series from what is known; see the module docstring and docs/decision.md."""
    # 1. Context from the weight curves and the log, and what evidence is missing.
    if preference not in PREFERENCES:
        raise ConfigError(f"preference must be one of {', '.join(PREFERENCES)}, not {preference!r}")
    context = _context(epochs, loss)
    missing = [m for m, absent in (("probe", not probe), ("votes", not (ratings or {}).get("votes")),
                                   ("validation loss", context["validation_lowest_epoch"] is None),
                                   ("references", bool(probe) and not probe.get("references")))
               if absent]
    common = {"series": series, "preference": preference, "context": context}
    if not epochs and not (probe or {}).get("epochs"):
        return Verdict(state="empty", missing=tuple(missing), reason=verdict_reason.empty(), **common)
    if not probe or not probe.get("epochs"):
        return Verdict(state="needs probe", missing=tuple(missing), reason=verdict_reason.needs_probe(context),
                       **common)

    # 2. The probe's measures as (prompt, seed) units; the terms of the trade-off per epoch.
    files, epochs_of, s, d = _units(probe)
    # An epoch's number where the file has one, else its name (step-numbered files carry no epoch).
    numbers = [e if e is not None else f for e, f in zip(epochs_of, files, strict=True)]
    if not len(s[None]) or not len(d[None]) or not len(files):
        return Verdict(state="needs probe", missing=tuple(missing), reason=verdict_reason.needs_probe(context),
                       **common)
    style, kept = _terms(np.array([s[f].mean() for f in files]), float(s[None].mean()),
                         np.array([d[f].mean() for f in files]), float(d[None].mean()), _errors(s, d, files))
    if style.max() <= 0:
        return Verdict(state="no style", missing=tuple(missing), reason=verdict_reason.no_style(probe), **common)

    # 3. The pick at every preference (ordered: fidelity-first never later, style-first never earlier), the
    #    front, and the resamples: which epochs they pick, how often the same.
    picks = {name: _argmax(trade_off(style, kept, w)) for name, w in PREFERENCES.items()}
    picks["fidelity"] = min(picks["fidelity"], picks["balanced"])
    picks["style"] = max(picks["style"], picks["balanced"])
    pick = picks[preference]
    rng = np.random.default_rng(0)  # fixed: the same probe always gives the same verdict
    boot_style, boot_kept = _bootstrap(s, d, files, PREFERENCES[preference], rng)
    chosen = np.array([_argmax(trade_off(bs, bk, PREFERENCES[preference])) for bs, bk in zip(boot_style, boot_kept,
                                                                                           strict=True)])
    share = np.bincount(chosen, minlength=len(files)) / RESAMPLES
    score = trade_off(style, kept, PREFERENCES[preference])
    equal = np.flatnonzero(np.isclose(score, score[pick], rtol=0, atol=1e-12)).tolist()  # the same score: a tie
    tied = sorted({pick, *equal, *np.flatnonzero(share >= TIE_SHARE).tolist()})
    front = _front(style, kept)
    points = tuple({"epoch": epochs_of[k], "file": files[k], "style": rounded(float(style[k])),
                    "style_se": rounded(float(boot_style[:, k].std())), "fidelity": rounded(float(kept[k])),
                    "fidelity_se": rounded(float(boot_kept[:, k].std())), "score": rounded(float(score[k])),
                    "front": k in front, "share": rounded(float(share[k]))} for k in range(len(files)))
    stop, worse = _stop(style, kept, boot_style, boot_kept, pick)

    # 4. The votes: once they separate the epochs beyond their uncertainty, they decide.
    votes = _votes(ratings, numbers, files, tied)
    state = "measures"
    if votes.get("decided"):
        state, pick = "votes", files.index(votes["top_file"])
    measures_pick = picks[preference]
    verdict = Verdict(
        epoch=epochs_of[pick], file=files[pick], state=state, front=tuple(numbers[k] for k in front),
        tied=tuple(numbers[k] for k in tied), confidence=rounded(float(share[measures_pick])), missing=tuple(missing),
        points=points, picks={name: numbers[k] for name, k in picks.items()}, votes=votes, stop=stop, **common)
    reason = verdict_reason.judged(verdict, probe, measures_pick=epochs_of[measures_pick], worse=worse)
    return Verdict(**{**verdict.__dict__, "reason": reason,
                      "stop_reason": verdict_reason.stop(verdict, worse) if stop else ""})


def _votes(ratings: dict | None, numbers: list, files: list[str], tied: list[int]) -> dict:
    """What the blind votes say: their top epoch, whether it is separated from the next (``VOTE_Z`` standard
    errors), and whether it agrees with the measures (it is among the epochs they cannot tell apart)."""
    if not ratings or not ratings.get("votes"):
        return {}
    ranked = [r for r in ratings.get("items", []) if r.get("rank") is not None and r.get("file") in files]
    if not ranked:
        return {"votes": ratings["votes"]}
    top = ranked[0]
    gap = ratings.get("separation") or {}
    decided = bool(gap.get("z") is not None and gap["z"] >= VOTE_Z and gap.get("a") == top.get("key"))
    return {"votes": ratings["votes"], "top": top.get("epoch"), "top_file": top["file"], "decided": decided,
            "z": gap.get("z"), "agree": files.index(top["file"]) in tied}
