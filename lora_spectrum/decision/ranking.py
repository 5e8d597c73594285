"""Blind-ranking maths: Bradley-Terry scores with their uncertainty from pairwise votes, and the pair to ask next.

Pure maths on item keys (any strings: the votes use a file's sha256 or ``base``): no files, no catalog, no torch,
no streamlit. ``fit`` turns (a, b, result) comparisons into a ``Ranking`` (choix finds the optimum, the Laplace
uncertainty is computed here); ``next_pair`` chooses the comparison that would teach the ranking most. Where the
votes are kept is ``votes.py``'s business.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import choix
import numpy as np

from lora_spectrum.errors import RatingsError

DEFAULT_PRIOR = 2.0  # prior standard deviation of a log-strength: weak (2 apart = 88 % wins), yet never infinite
RESULTS = (0.0, 0.5, 1.0)  # b won, tie, a won
ADJACENT_BONUS = 1.2  # next_pair: neighbours in the current order decide the order, so they are preferred
JITTER = 0.05  # next_pair: a small random tie-break (relative), so equal pairs do not always come in one order


@dataclass(frozen=True)
class Ranking:
    """Fitted Bradley-Terry log-strengths. ``scores`` are centred (mean 0) or relative to ``reference``;
    ``stderr`` is the standard error of each score as reported (so the reference's is 0); ``order`` is best
    first. ``covariance`` holds the scores' covariance in ``items`` order (used for pair uncertainty)."""

    items: tuple[str, ...]
    scores: dict[str, float]
    stderr: dict[str, float]
    order: tuple[str, ...]
    wins: dict[str, int]
    losses: dict[str, int]
    ties: dict[str, int]
    votes: int
    reference: str | None = None
    prior: float = DEFAULT_PRIOR
    covariance: tuple[tuple[float, ...], ...] = field(default=(), repr=False, compare=False)

    def prob(self, a: str, b: str) -> float:
        """P(a beats b) at the fitted scores (a tie counts as half a win)."""
        return _sigmoid(self._score(a) - self._score(b))

    def difference(self, a: str, b: str) -> tuple[float, float]:
        """(score a - score b, its variance). An item the ranking does not know counts as unrated: score 0,
        variance ``prior**2`` (so a new file can be asked about before it has a vote)."""
        index = {k: i for i, k in enumerate(self.items)}
        mean = self.scores.get(a, 0.0) - self.scores.get(b, 0.0)
        i, j = index.get(a), index.get(b)
        cov = self.covariance
        var = (cov[i][i] if i is not None else self.prior ** 2) + (cov[j][j] if j is not None else self.prior ** 2)
        if i is not None and j is not None:
            var -= 2 * cov[i][j]
        return mean, max(var, 0.0)

    def to_json(self) -> dict:
        """A plain dict (JSON-able) of everything but the covariance."""
        return {"items": list(self.items), "scores": dict(self.scores), "stderr": dict(self.stderr),
                "order": list(self.order), "wins": dict(self.wins), "losses": dict(self.losses),
                "ties": dict(self.ties), "votes": self.votes, "reference": self.reference, "prior": self.prior}

    def _score(self, key: str) -> float:
        if key not in self.scores:
            raise RatingsError(f"{key!r} is not an item of this ranking")
        return self.scores[key]


def fit(items: list[str], comparisons: list[tuple[str, str, float]], prior: float = DEFAULT_PRIOR,
        reference: str | None = None) -> Ranking:
    """Bradley-Terry scores of ``items`` from ``comparisons`` (a, b, result: 1.0 a won, 0.0 b won, 0.5 tie).

    The scores are the maximum a posteriori log-strengths under an independent Gaussian prior of standard
    deviation ``prior`` (weak: it only keeps an item with no votes, or only wins, finite), with a tie counted as
    half a win each way. ``reference``: report scores relative to that item (e.g. ``base``) instead of centred.
    """
    keys = tuple(dict.fromkeys(items))
    index = {k: i for i, k in enumerate(keys)}
    if not prior > 0:
        raise RatingsError(f"prior must be a positive standard deviation, not {prior!r}")
    if reference is not None and reference not in index:
        raise RatingsError(f"reference {reference!r} is not one of the items")
    pairs, results = _checked(comparisons, index)
    theta = _map_estimate(len(keys), pairs, results, prior)
    cov = np.linalg.inv(_hessian(len(keys), theta, pairs, prior))
    # Scores and their covariance in the frame asked for: centred (which drops the common level, known from the
    # prior alone, from each stderr), or minus the reference. Differences between items are the same in both.
    n = len(keys)
    frame = np.eye(n)
    if reference is None:
        frame -= 1.0 / max(n, 1)
    else:
        frame[:, index[reference]] -= 1.0
    scores, cov = frame @ theta, frame @ cov @ frame.T
    stderr = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    counts = _counts(keys, pairs, results)
    score_of = {k: float(scores[i]) for i, k in enumerate(keys)}
    return Ranking(
        items=keys, scores=score_of, stderr={k: float(stderr[i]) for i, k in enumerate(keys)},
        order=tuple(sorted(keys, key=lambda k: -score_of[k])),  # stable: equal scores keep the items' order
        wins=counts[0], losses=counts[1], ties=counts[2], votes=len(results), reference=reference,
        prior=float(prior), covariance=tuple(tuple(float(x) for x in row) for row in cov))


def next_pair(ranking: Ranking, candidates: list[tuple[str, str]] | None = None, rng: random.Random | None = None,
              recent: Iterable[tuple[str, str]] = ()) -> tuple[str, str] | None:
    """The pair whose vote would teach the ranking most, in random left/right order; None when there is none.

    Each pair is worth its expected information about the score difference (Gaussian approximation):
    ``0.5 * log(1 + p * (1 - p) * var)`` with ``p`` = P(a beats b) and ``var`` the variance of the difference,
    so close, uncertain pairs come first. The top of the order decides which epoch ships, so a pair counts
    ``1 / (1 + the better position)`` of that; neighbours in the current order get a small bonus, and a little
    randomness breaks ties. ``candidates`` restricts the choice (e.g. to pairs whose renders are ready; items
    unknown to the ranking count as unrated); pairs in ``recent`` (the last few shown) are skipped when others
    remain.
    """
    rng = rng or random.Random()
    pool = itertools.combinations(ranking.items, 2) if candidates is None else candidates
    pairs = list({frozenset((a, b)): (a, b) for a, b in pool if a != b}.values())
    if not pairs:
        return None
    shown = {frozenset(p) for p in recent}
    pairs = [p for p in pairs if frozenset(p) not in shown] or pairs
    position = {k: i for i, k in enumerate(ranking.order)}

    def worth(pair: tuple[str, str]) -> float:
        mean, var = ranking.difference(*pair)
        p = _sigmoid(mean)
        gain = 0.5 * math.log1p(p * (1 - p) * var)
        i, j = position.get(pair[0], len(position)), position.get(pair[1], len(position))
        gain /= 1 + min(i, j)
        if abs(i - j) == 1:
            gain *= ADJACENT_BONUS
        return gain * (1 + JITTER * rng.random())

    a, b = max(pairs, key=worth)
    return (a, b) if rng.random() < 0.5 else (b, a)


def _checked(comparisons, index: dict[str, int]) -> tuple[list[tuple[int, int]], list[float]]:
    pairs, results = [], []
    for a, b, result in comparisons:
        if a not in index or b not in index:
            raise RatingsError(f"a vote compares {a!r} with {b!r}, which are not both items of the ranking")
        if a == b:
            raise RatingsError(f"a vote compares {a!r} with itself")
        if result not in RESULTS:
            raise RatingsError(f"a vote's result must be 1.0 (a won), 0.0 (b won) or 0.5 (tie), not {result!r}")
        pairs.append((index[a], index[b]))
        results.append(float(result))
    return pairs, results


def _map_estimate(n: int, pairs: list[tuple[int, int]], results: list[float], prior: float) -> np.ndarray:
    """The MAP log-strengths, found by ``choix.opt_pairwise``, which takes only (winner, loser) pairs.

    We want the minimum of the negative log posterior
        L(t) = sum_v [ r_v * softplus(-(t_a - t_b)) + (1 - r_v) * softplus(t_a - t_b) ] + |t|^2 / (2 prior^2).
    choix minimises sum_pairs softplus(-(t_w - t_l)) + alpha * |t|^2 (its code: ``penalty * sum(params**2)``).
    Writing each decisive vote as two identical pairs and a tie as one pair each way makes choix's sum twice
    ours, so with alpha = 1 / prior^2 its objective is exactly 2 L: the same minimum.
    """
    if not pairs:
        return np.zeros(n)  # the prior alone: every item at 0
    data = []
    for (i, j), r in zip(pairs, results, strict=True):
        data += [(i, j), (i, j)] if r == 1.0 else [(j, i), (j, i)] if r == 0.0 else [(i, j), (j, i)]
    theta = choix.opt_pairwise(n, data, alpha=1.0 / prior ** 2, method="BFGS", tol=1e-6)  # tol: gradient norm
    return np.asarray(theta, dtype=float)


def _hessian(n: int, theta: np.ndarray, pairs: list[tuple[int, int]], prior: float) -> np.ndarray:
    """The Hessian of L at ``theta`` (the Laplace approximation: covariance = its inverse).

    Written here because choix returns point estimates only. Each vote adds p(1 - p) on the diagonal of both
    items and -p(1 - p) between them, whatever its result (a tie included); the prior adds 1 / prior^2.
    """
    h = np.eye(n) / prior ** 2
    if pairs:
        i, j = (np.asarray(x, dtype=int) for x in zip(*pairs, strict=True))
        p = 1.0 / (1.0 + np.exp(-(theta[i] - theta[j])))
        w = p * (1.0 - p)
        np.add.at(h, (i, i), w)
        np.add.at(h, (j, j), w)
        np.add.at(h, (i, j), -w)
        np.add.at(h, (j, i), -w)
    return h


def _counts(keys, pairs, results) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    wins, losses, ties = ({k: 0 for k in keys} for _ in range(3))
    for (i, j), r in zip(pairs, results, strict=True):
        a, b = keys[i], keys[j]
        if r == 0.5:
            ties[a] += 1
            ties[b] += 1
        else:
            winner, loser = (a, b) if r == 1.0 else (b, a)
            wins[winner] += 1
            losses[loser] += 1
    return wins, losses, ties


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
