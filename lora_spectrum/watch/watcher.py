"""Following a loras folder while a trainer writes into it: which epoch files are complete, which are new or
replaced, and one event per happening (``skipped``, ``judged``, ``verdict``) for the CLI's lines and the app's Live view.

A file counts once it is complete: the catalog reads its header and finds all its tensor data, and its size and
time have stayed the same over ``settle_polls`` polls. Judging is the caller's ``judge(files)`` (render the probe
for those files, measure, decide): this module renders nothing and never imports streamlit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from lora_spectrum.loras.catalog import INCOMPLETE, READY, Catalog

PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".incomplete")  # names trainers and copiers write
SETTLE_POLLS = 2  # a ready file must look the same on this many polls in a row before it is judged

Judge = Callable[[list[str]], dict]  # complete file names (epoch order) -> {"verdict": {...}, "epochs": [...]}


@dataclass
class _Seen:
    stamp: tuple[int, int]  # (size, mtime_ns) at the last poll
    polls: int = 1  # polls in a row with that stamp


@dataclass
class Watcher:
    """One series of one folder, followed poll by poll. ``poll()`` returns the events of that poll."""

    catalog: Catalog
    series: str | None = None
    settle_polls: int = SETTLE_POLLS
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _judged: dict[str, tuple[int, int]] = field(default_factory=dict)
    _skipped: set[tuple[str, str]] = field(default_factory=set)

    def complete(self) -> list[str]:
        """The series' files judged complete at the last poll, in epoch order."""
        return [e.name for e in self._entries() if self._is_complete(e)]

    def pending(self) -> list[str]:
        """Complete files not yet judged at their current size and time (new, or replaced under the same name)."""
        return [e.name for e in self._entries()
                if self._is_complete(e) and self._judged.get(e.name) != (e.size, e.mtime_ns)]

    def poll(self, judge: Judge) -> list[dict]:
        """One look at the folder: note partial files once, judge what became complete, report the verdict."""
        # 1. List the folder again; remember each file's stamp and how long it has held.
        self.catalog.scan()
        events = self._partials()
        entries = self._entries()
        for e in entries:
            stamp = (e.size, e.mtime_ns)
            seen = self._seen.get(e.name)
            self._seen[e.name] = _Seen(stamp, seen.polls + 1 if seen and seen.stamp == stamp else 1)
            if e.state != READY and (e.name, e.reason) not in self._skipped:
                self._skipped.add((e.name, e.reason))
                events.append({"event": "skipped", "file": e.name, "epoch": e.epoch, "step": e.step,
                               "reason": e.reason, "state": e.state})
        # 2. Judge when a complete file is new or replaced; every complete file takes part (earlier ones come
        #    from the render cache), only the new ones get a "judged" line.
        new = self.pending()
        if not new:
            return events
        files = self.complete()
        result = judge(files)
        rows = {r["file"]: r for r in result.get("epochs", [])}
        summary = verdict_summary(result.get("verdict") or {})
        last = None
        for e in entries:
            if e.name in new:
                self._judged[e.name] = (e.size, e.mtime_ns)
                last = e
                # One line per new file: its measures and the verdict as it stands with it.
                events.append({"event": "judged", "file": e.name, "epoch": e.epoch, "step": e.step,
                               "measures": {k: (rows.get(e.name) or {}).get(k) for k in
                                            ("style", "style_se", "fidelity", "fidelity_se", "fidelity_kept",
                                             "leak", "consistency")},
                               "verdict": summary})
        events.append({"event": "verdict", "file": last.name if last else None, "epoch": last.epoch if last else None,
                       "step": last.step if last else None, "files": len(files), "verdict": summary})
        return events

    def _entries(self):
        """The series' entries, or none while the trainer has not saved it yet."""
        groups = self.catalog.series()
        if self.series is None and len(groups) > 1:
            return self.catalog.choose_series(None)[1]  # raises, naming the series to choose from
        return groups.get(self.series, []) if self.series else next(iter(groups.values()), [])

    def _is_complete(self, entry) -> bool:
        seen = self._seen.get(entry.name)
        return (entry.state == READY and seen is not None and seen.stamp == (entry.size, entry.mtime_ns)
                and seen.polls >= self.settle_polls)

    def _partials(self) -> list[dict]:
        """A ``skipped`` event, once each, for files a trainer or a copy is still writing under a temporary name."""
        out = []
        try:
            names = sorted(os.listdir(self.catalog.folder))
        except OSError:
            return out
        for name in names:
            if name.lower().endswith(PARTIAL_SUFFIXES) and (name, "partial") not in self._skipped:
                self._skipped.add((name, "partial"))
                out.append({"event": "skipped", "file": name, "epoch": None, "step": None, "state": INCOMPLETE,
                            "reason": "a temporary name: the file is still being written"})
        return out


def verdict_summary(verdict: dict) -> dict:
    """The part of a verdict a watcher line carries: the pick, ``stop``, and what the advice rests on."""
    points = verdict.get("points") or []
    pick = next((p for p in points if p.get("file") == verdict.get("file")), {})
    later = [p for p in points if pick and p.get("epoch") is not None and pick.get("epoch") is not None
             and p["epoch"] > pick["epoch"]]
    return {"epoch": verdict.get("epoch"), "file": verdict.get("file"), "state": verdict.get("state"),
            "stop": bool(verdict.get("stop")), "reason": verdict.get("reason"),
            "stop_reason": verdict.get("stop_reason") or None, "tied": verdict.get("tied", []),
            "confidence": verdict.get("confidence"), "saves": len(points), "saves_after_pick": len(later),
            "fidelity_drop": (round(pick["fidelity"] - min(p["fidelity"] for p in later), 4)
                              if later and pick.get("fidelity") is not None else None)}
