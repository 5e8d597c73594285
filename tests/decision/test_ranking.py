"""Blind-ranking maths: the Bradley-Terry fit recovers a known order, its uncertainty shrinks with votes, ties and
one-sided items stay sane, and active pair choice finds the best item with fewer votes than random pairs."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics

import numpy as np
import pytest
from scipy.stats import kendalltau

from lora_spectrum.decision.ranking import fit, next_pair
from lora_spectrum.errors import RatingsError

TRUE = {"e1": -2.0, "e2": -1.0, "e3": 0.0, "e4": 0.8, "e5": 1.4, "e6": 2.0}  # early epochs clearly worse
ITEMS = list(TRUE)
PAIRS = list(itertools.combinations(ITEMS, 2))


def outcome(rng: random.Random, a: str, b: str, tie_rate: float = 0.1) -> float:
    """One vote drawn from the Bradley-Terry model of ``TRUE`` (with some ties)."""
    if rng.random() < tie_rate:
        return 0.5
    return 1.0 if rng.random() < 1 / (1 + math.exp(TRUE[b] - TRUE[a])) else 0.0


def simulated(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    return [(a, b, outcome(rng, a, b)) for a, b in (rng.choice(PAIRS) for _ in range(n))]


def neg_log_posterior_gradient(scores: dict[str, float], comparisons, prior: float) -> np.ndarray:
    """d/dt of sum_v [r log(1+e^-(ta-tb)) + (1-r) log(1+e^(ta-tb))] + |t|^2 / (2 prior^2), written out."""
    t = np.array([scores[k] for k in ITEMS])
    grad = t / prior ** 2
    for a, b, r in comparisons:
        i, j = ITEMS.index(a), ITEMS.index(b)
        p = 1 / (1 + math.exp(-(t[i] - t[j])))
        grad[i] += p - r
        grad[j] -= p - r
    return grad


def test_fit_recovers_a_known_order_from_simulated_votes():
    comparisons = simulated(400)
    assert any(r == 0.5 for *_, r in comparisons)
    ranking = fit(ITEMS, comparisons)
    assert ranking.order[0] == "e6"
    tau = kendalltau([ranking.scores[k] for k in ITEMS], list(TRUE.values())).statistic
    assert tau >= 0.85
    assert abs(sum(ranking.scores.values())) < 1e-9  # centred
    assert ranking.votes == 400
    assert sum(ranking.wins.values()) + sum(ranking.ties.values()) / 2 == 400
    assert sum(ranking.wins.values()) == sum(ranking.losses.values())


def test_fit_is_the_weighted_likelihood_map_with_ties_as_half_wins():
    comparisons = simulated(60, seed=3) + [("e1", "e6", 0.5)] * 3
    ranking = fit(ITEMS, comparisons, prior=1.5)
    assert np.abs(neg_log_posterior_gradient(ranking.scores, comparisons, 1.5)).max() < 1e-4
    one_tie = fit(["a", "b"], [("a", "b", 0.5)])
    assert one_tie.scores["a"] == pytest.approx(one_tie.scores["b"]) and one_tie.ties == {"a": 1, "b": 1}


def test_uncertainty_shrinks_as_votes_grow():
    comparisons = simulated(400, seed=1)
    few, many = fit(ITEMS, comparisons[:40]), fit(ITEMS, comparisons)
    for k in ITEMS:
        assert 0 < many.stderr[k] < few.stderr[k]
    none = fit(ITEMS, [])
    assert all(none.scores[k] == 0 for k in ITEMS) and all(few.stderr[k] < none.stderr[k] for k in ITEMS)


def test_prob_is_consistent_with_the_scores():
    ranking = fit(ITEMS, simulated(200, seed=2))
    for a, b in PAIRS:
        assert ranking.prob(a, b) + ranking.prob(b, a) == pytest.approx(1.0)
        assert (ranking.prob(a, b) > 0.5) == (ranking.scores[a] > ranking.scores[b])
    assert ranking.prob("e3", "e3") == 0.5
    for better, worse in itertools.pairwise(ranking.order):
        assert ranking.prob(better, worse) >= 0.5
    with pytest.raises(RatingsError, match="not an item"):
        ranking.prob("e1", "nope")


def test_an_item_with_only_wins_or_no_votes_stays_finite():
    comparisons = [("x", other, 1.0) for other in ("y", "z") for _ in range(30)]
    ranking = fit(["x", "y", "z", "unvoted"], comparisons)
    assert ranking.order[0] == "x"
    assert all(math.isfinite(ranking.scores[k]) and math.isfinite(ranking.stderr[k]) for k in ranking.items)
    assert ranking.scores["x"] < 10 and ranking.wins["x"] == 60 and ranking.losses["y"] == 30
    assert ranking.stderr["unvoted"] > ranking.stderr["y"]


def test_scores_relative_to_a_reference_keep_every_difference():
    comparisons = simulated(120, seed=4)
    centred, relative = fit(ITEMS, comparisons), fit(ITEMS, comparisons, reference="e3")
    assert relative.scores["e3"] == 0 and relative.stderr["e3"] == 0
    for a, b in PAIRS:
        assert relative.scores[a] - relative.scores[b] == pytest.approx(centred.scores[a] - centred.scores[b])
        assert relative.difference(a, b)[1] == pytest.approx(centred.difference(a, b)[1])
    assert relative.order == centred.order
    assert json.loads(json.dumps(relative.to_json()))["reference"] == "e3"


def test_bad_comparisons_and_arguments_are_refused():
    for bad in (("e1", "zz", 1.0), ("e1", "e1", 1.0), ("e1", "e2", 0.7)):
        with pytest.raises(RatingsError):
            fit(ITEMS, [bad])
    with pytest.raises(RatingsError, match="prior"):
        fit(ITEMS, [], prior=0)
    with pytest.raises(RatingsError, match="reference"):
        fit(ITEMS, [], reference="base")


def clear_but_one() -> tuple[list[str], list[tuple[str, str, float]]]:
    """a > b ~ c > d: every pair decided by many votes, except b against c (two split votes)."""
    items = ["a", "b", "c", "d"]
    decided = [(w, l_, 1.0) for w, l_ in [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
               for _ in range(15)]
    return items, decided + [("b", "c", 1.0), ("c", "b", 1.0)]


def test_next_pair_asks_about_the_uncertain_neighbours():
    items, comparisons = clear_but_one()
    ranking = fit(items, comparisons)
    picks = [next_pair(ranking, rng=random.Random(s)) for s in range(200)]
    share = sum(set(p) == {"b", "c"} for p in picks) / len(picks)
    assert share > 0.8  # a random pair would be {b, c} one time in six
    assert {p for p in picks if set(p) == {"b", "c"}} == {("b", "c"), ("c", "b")}  # left and right both
    # ... and not again right after it was shown, while other pairs remain
    again = next_pair(ranking, rng=random.Random(0), recent=[("c", "b")])
    assert set(again) != {"b", "c"}
    assert set(next_pair(ranking, [("b", "c")], rng=random.Random(0), recent=[("b", "c")])) == {"b", "c"}


def test_next_pair_respects_the_candidates():
    items, comparisons = clear_but_one()
    ranking = fit(items, comparisons)
    ready = [("a", "d"), ("d", "b")]
    for s in range(20):
        assert set(next_pair(ranking, ready, rng=random.Random(s))) in ({"a", "d"}, {"b", "d"})
    assert next_pair(ranking, [], rng=random.Random(0)) is None
    assert next_pair(ranking, [("a", "a")], rng=random.Random(0)) is None
    assert next_pair(fit(["only"], []), rng=random.Random(0)) is None
    new = next_pair(ranking, [("a", "b"), ("new", "a")], rng=random.Random(0))  # a new file: unrated, asked
    assert set(new) == {"new", "a"}


def votes_until_top_is_right(seed: int, active: bool, budget: int = 30, every: int = 5) -> int:
    """Votes after which the fitted best item is the true one at every later check (budget + every: never)."""
    voter, chooser = random.Random(seed), random.Random(seed + 1)
    comparisons, shown, ranking, settled = [], [], fit(ITEMS, []), None
    for n in range(1, budget + 1):
        pair = next_pair(ranking, rng=chooser, recent=shown[-3:]) if active else chooser.choice(PAIRS)
        shown.append(pair)
        comparisons.append((*pair, outcome(voter, *pair)))
        if active or n % every == 0:
            ranking = fit(ITEMS, comparisons)
        if n % every == 0:
            settled = None if ranking.order[0] != "e6" else settled or n
    return settled or budget + every


def test_active_sampling_finds_the_best_item_with_fewer_votes_than_random_pairs():
    seeds = range(16)
    active = statistics.mean(votes_until_top_is_right(s, active=True) for s in seeds)
    uniform = statistics.mean(votes_until_top_is_right(s, active=False) for s in seeds)
    assert active < uniform
