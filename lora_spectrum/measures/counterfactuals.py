"""Counterfactual prompts: the same prompt with one subject, colour or attribute swapped, against which an image is
asked "which of these were you drawn from?" (the discriminative prompt fidelity of ``probe_measures``).

Plain text in, plain text out: no CLIP, no files. A probe entry may list its own ``variants``; otherwise they are
made here from a small vocabulary, preferring the words the probe set itself uses (a tiny or specialised CLIP
knows those), and, where a prompt has no word of the vocabulary, the set's other prompts stand in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Word groups a swap stays within: a colour for a colour, a subject for a subject. Small on purpose: a swap must be
# a plausible prompt that a CLIP model can read, and each group's words must be mutually exclusive.
VOCABULARY: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "pink", "brown", "black",
               "white", "gray", "cream"),
    "shape": ("circle", "square", "triangle", "star", "heart", "hexagon"),
    "subject": ("woman", "man", "girl", "boy", "child", "cat", "dog", "horse", "bird", "fish", "car", "bicycle",
                "house", "tree", "flower", "robot", "astronaut", "dragon"),
    "place": ("room", "street", "forest", "beach", "mountain", "city", "kitchen", "desert", "lake", "garden"),
    "time": ("morning", "noon", "dusk", "night"),
    "material": ("wooden", "metal", "glass", "stone", "paper", "plastic"),
}
MAX_VARIANTS = 12  # per prompt: enough for a stable probability, few enough to embed quickly
_WORD = re.compile(r"[A-Za-z]+")


def _group_of(word: str) -> str | None:
    w = word.lower()
    return next((g for g, words in VOCABULARY.items() if w in words), None)


def _slot(words: list[str], i: int) -> str:
    """Where a word stands: its group and what follows it (the next word's group, or the word itself), so that the
    fill colour of "a red circle" and the background of "a white background" are swapped only among their own."""
    following = words[i + 1].lower() if i + 1 < len(words) else ""
    return f"{_group_of(words[i])}:{_group_of(following) or following}"


def set_words(prompts: Iterable[str]) -> dict[str, list[str]]:
    """The vocabulary words that ``prompts`` use, by slot (group and what follows), in first-seen order."""
    found: dict[str, list[str]] = {}
    for text in prompts:
        words = _WORD.findall(text)
        for i, w in enumerate(words):
            if _group_of(w) and w.lower() not in found.setdefault(_slot(words, i), []):
                found[_slot(words, i)].append(w.lower())
    return found


def variants(prompt: str, own_words: dict[str, list[str]] | None = None, limit: int = MAX_VARIANTS) -> list[str]:
    """``prompt`` with one vocabulary word swapped for another of its group, each swap once, at most ``limit``.

    The swaps come from ``own_words`` (the probe set's words in the same slot) when the set uses two or more there,
    else from the whole group: a set about coloured shapes is asked about its own fill colours and shapes."""
    out: list[str] = []
    matches = list(_WORD.finditer(prompt))
    words = [m.group() for m in matches]
    for i, m in enumerate(matches):
        group = _group_of(m.group())
        if group is None:
            continue
        pool = (own_words or {}).get(_slot(words, i), [])
        pool = pool if len(pool) >= 2 else list(VOCABULARY[group])
        for other in pool:
            if other == m.group().lower():
                continue
            swapped = prompt[:m.start()] + other + prompt[m.end():]
            if swapped not in out and swapped != prompt:
                out.append(swapped)
    return _spread(out, limit)


def _spread(items: list[str], limit: int) -> list[str]:
    """At most ``limit`` of ``items``, taken evenly across the list (so every swapped word keeps some variants)."""
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(k * step)] for k in range(limit)]


def counterfactuals(prompt: str, given: Sequence[str] = (), own_words: dict[str, list[str]] | None = None,
                    others: Sequence[str] = ()) -> list[str]:
    """The prompts an image of ``prompt`` is told apart from: ``given`` when the probe entry lists some, else the
    vocabulary swaps, else the set's ``others`` (distinct prompts of the same set). Never ``prompt`` itself."""
    chosen = list(given) or variants(prompt, own_words) or list(others)
    return [p for p in dict.fromkeys(chosen) if p != prompt]
