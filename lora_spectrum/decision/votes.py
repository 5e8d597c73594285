"""The blind-ranking votes of each series, kept as one JSON file per series under a ratings folder, and their summary.

Owns the votes file (its format, atomic writes under a lock that every process shares, setting an unreadable
file aside) and which votes still describe the files as they are now (items are keyed by the file's sha256, the
base by ``base``): a vote about a file that was replaced or removed is kept in the file but set aside from the
fit. The maths is ``ranking.py``'s; the ratings folder is never inside the loras folder. JSON only, never a pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from lora_spectrum.decision.ranking import RESULTS, fit
from lora_spectrum.errors import CatalogError, RatingsError
from lora_spectrum.file_locks import held
from lora_spectrum.language import _
from lora_spectrum.render.plan import column_label

BASE = "base"  # the base model's item key; epochs are keyed by their file's sha256
VERSION = 1
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_SHA = re.compile(r"[0-9a-f]{64}")
_WRITE_LOCK = threading.Lock()  # the app's sessions queue here, not by polling the file lock below
LOCK_TIMEOUT_S = 30  # a vote holds the votes file's lock for milliseconds; longer means a process is stuck


FIELDS = ("a", "b", "a_name", "b_name", "result", "prompt", "seed", "time")  # one vote, as in the file


def checked_vote(data) -> dict:
    """A vote as the file holds it (keys ``FIELDS``; ``result`` 1.0 = a won, 0.0 = b won, 0.5 = tie; ``time``
    ISO 8601 UTC), checked and as a fresh dict; ``RatingsError`` saying what is wrong otherwise."""
    if not isinstance(data, dict):
        raise RatingsError("a vote is not a JSON object")
    missing = [k for k in FIELDS if k not in data]
    if missing:
        raise RatingsError(f"a vote lacks {', '.join(missing)}")
    for key in (data["a"], data["b"]):
        if not (key == BASE or (isinstance(key, str) and _SHA.fullmatch(key))):
            raise RatingsError(f"a vote's item {key!r} is neither a sha256 nor {BASE!r}")
    if data["a"] == data["b"]:
        raise RatingsError("a vote compares an item with itself")
    if isinstance(data["result"], bool) or data["result"] not in RESULTS:
        raise RatingsError(f"a vote's result must be 1.0, 0.0 or 0.5, not {data['result']!r}")
    if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
        raise RatingsError(f"a vote's seed must be an integer, not {data['seed']!r}")
    if not all(isinstance(data[k], str) for k in ("a_name", "b_name", "prompt", "time")):
        raise RatingsError("a vote's names, prompt and time must be strings")
    return {**{k: data[k] for k in FIELDS}, "result": float(data["result"])}


def file_name(series: str) -> str:
    """The votes file's name for ``series``: the name itself when file-safe, else a safe form + a short hash."""
    if _SAFE.fullmatch(series) and not series.endswith("."):
        return f"{series}.json"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", series).strip("._-")[:60] or "series"
    return f"{safe}-{hashlib.sha256(series.encode('utf-8')).hexdigest()[:8]}.json"


class VoteBook:
    """The votes of one series in ``ratings_dir/<series>.json``, read when made; ``add`` writes atomically.

    An unreadable file is renamed aside (``<name>.json.unreadable-<time>``), never overwritten: the book starts
    empty and ``notice`` says so in one line. ``loras_folder``: refuse a ratings folder inside it.

    Every read-modify-write holds ``.<name>.json.lock`` beside the file, a lock between processes, not only
    threads: a team may run several app processes on one ratings folder, or the CLI beside the app, and two
    processes each reading the file, adding their vote and replacing it would keep only one of the two votes.
    The lock file stays (removing a lock file while another process waits on it would let two writers in)."""

    def __init__(self, ratings_dir: str | Path, series: str, loras_folder: str | Path | None = None):
        self.dir = Path(ratings_dir)
        if loras_folder is not None and self.dir.resolve().is_relative_to(Path(loras_folder).resolve()):
            raise RatingsError(f"{self.dir}: the ratings folder must not be inside the loras folder "
                               f"{loras_folder}; choose another ratings_dir")
        if not isinstance(series, str) or not series:
            raise RatingsError(f"{series!r}: a series needs a name")
        self.series = series
        self.path = self.dir / file_name(series)
        self.notice: str | None = None
        # One lock object per book: re-entered by the same thread (``add`` reads under it), separate per thread.
        self._file_lock = FileLock(self.dir / f".{self.path.name}.lock", timeout=LOCK_TIMEOUT_S)
        self._votes: tuple[dict, ...] = self._load()

    @property
    def votes(self) -> list[dict]:
        """Every vote in the file (dicts as ``checked_vote`` gives them), oldest first, set-aside ones included."""
        return [dict(v) for v in self._votes]

    def reload(self) -> list[dict]:
        """Read the file again (another session may have voted)."""
        self._votes = self._load()
        return self.votes

    def add(self, a_sha: str, a_name: str, b_sha: str, b_name: str, result: float, prompt: str,
            seed: int) -> dict:
        """Record one vote and write the file (temp file + ``os.replace``: a crash leaves the old file whole),
        under the votes file's lock, so that the votes other sessions and processes cast meanwhile are kept."""
        vote = checked_vote({"a": a_sha, "b": b_sha, "a_name": a_name, "b_name": b_name, "result": result,
                             "prompt": prompt, "seed": seed, "time": datetime.now(UTC).isoformat(timespec="seconds")})
        with _WRITE_LOCK, self._locked():
            votes = (*self._load(), vote)  # what is on disk now, under the lock: no other writer can come between
            self._write(votes)
            self._votes = votes
        return dict(vote)

    def split(self, current: dict[str, str]) -> tuple[list[dict], list[dict]]:
        """(active, set aside): a vote is active when both its items are the base or a sha256 in ``current``
        (sha256 -> file name, the series' files as they are now); others were about a replaced or removed file."""
        active, aside = [], []
        for v in self._votes:
            (active if all(k == BASE or k in current for k in (v["a"], v["b"])) else aside).append(dict(v))
        return active, aside

    def _locked(self):
        """Hold the votes file's lock (between processes); ``RatingsError`` when it cannot be had."""
        return held(self._file_lock, self.dir,
                    lambda: RatingsError(_("{path}: another process has held the votes file for {seconds} s; try "
                                           "again later").format(path=self.path, seconds=LOCK_TIMEOUT_S)),
                    lambda exc: RatingsError(_("{path}: cannot lock the votes file ({reason})").format(
                        path=self.path, reason=exc.strerror or exc)))

    def _load(self) -> tuple[dict, ...]:
        """The votes on disk. Reading needs no lock (the file is only ever replaced whole); setting an unreadable
        file aside does: another process may be setting the same file aside, or voting into a new one, meanwhile."""
        votes, problem = self._parse(self._read())
        if problem is None:
            return votes
        with self._locked():
            votes, problem = self._parse(self._read())  # what is there now that no other process can change it
            if problem is not None:
                self._set_aside(problem)
        return votes

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RatingsError(f"{self.path}: cannot read the votes file ({exc.strerror or exc})") from exc

    def _parse(self, raw: bytes | None) -> tuple[tuple[dict, ...], Exception | None]:
        """(votes, None); or ((), why) when ``raw`` is no votes file (it is to be set aside). A file holding
        another series' votes is a ``RatingsError``: it is someone's votes, never moved."""
        if raw is None:
            return (), None
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise RatingsError(f"not a version {VERSION} votes file")
            if not isinstance(data.get("votes"), list):
                raise RatingsError("no list of votes")
            votes = tuple(checked_vote(v) for v in data["votes"])
        except (UnicodeDecodeError, json.JSONDecodeError, RatingsError) as exc:
            return (), exc
        if data.get("series") != self.series:
            raise RatingsError(f"{self.path}: holds the votes of series {data.get('series')!r}, not "
                               f"{self.series!r}; move it or choose another ratings_dir")
        return votes, None

    def _set_aside(self, exc: Exception) -> None:
        """Rename the unreadable file to a free ``.unreadable-<time>`` name (its bytes kept) and say so."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.unreadable-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{n}")
            n += 1
        try:
            os.rename(self.path, target)
        except OSError as err:
            raise RatingsError(f"{self.path}: unreadable, and cannot be set aside ({err.strerror or err})") from err
        why = "not JSON" if isinstance(exc, ValueError) else str(exc)
        self.notice = (f"{self.path.name} could not be read ({why}); it was kept as {target.name} and the "
                       f"votes start afresh")

    def _write(self, votes: tuple[dict, ...]) -> None:
        text = json.dumps({"version": VERSION, "series": self.series, "votes": list(votes)},
                          indent=1, ensure_ascii=False)
        tmp = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise RatingsError(f"{self.path}: cannot write the votes ({exc.strerror or exc})") from exc


def current_files(catalog, entries) -> dict[str, str]:
    """sha256 -> file name for ``entries`` as they are on disk now (a file removed since the scan is left out;
    of two identical files the first keeps the key)."""
    out: dict[str, str] = {}
    for entry in entries:
        try:
            out.setdefault(catalog.sha256(entry), entry.name)
        except CatalogError:
            continue
    return out


def series_ratings(catalog, series: str | None, ratings_dir: str | Path, base: bool = True) -> dict:
    """The blind ranking of one series so far, as plain JSON-able values (CLI ``ratings``, Reveal, model card).

    Items are every file of the series (``catalog`` already scanned) plus, with ``base``, the base; votes about
    files replaced or removed since are counted in ``set_aside`` and left out of the fit (and so, without
    ``base``, are votes about the base). Scores are centred; ``items`` come best first with a 1-based ``rank``,
    then the items without a vote (``rank`` None: not judged yet).
    """
    name, entries = catalog.choose_series(series)
    book = VoteBook(ratings_dir, name, loras_folder=catalog.folder)
    current = current_files(catalog, entries)
    active, aside = book.split(current)
    if not base:
        active = [v for v in active if BASE not in (v["a"], v["b"])]
    named = {e.name: e for e in entries}
    by_key = {sha: named[file] for sha, file in current.items()}
    keys = [*by_key, *([BASE] if base else [])]
    ranking = fit(keys, [(v["a"], v["b"], v["result"]) for v in active])
    # An item nobody has judged sits at the prior (score 0) and could outrank judged ones: it gets no rank.
    rows, rank = [], 0
    judged = [k for k in ranking.order if ranking.wins[k] + ranking.losses[k] + ranking.ties[k]]
    for key in [*judged, *(k for k in ranking.order if k not in judged)]:
        entry = by_key.get(key)
        rank = rank + 1 if key in judged else rank
        rows.append({"key": key, "file": entry.name if entry else None, "label": column_label(entry, translate=_),
                     "epoch": entry.epoch if entry else None, "score": ranking.scores[key],
                     "stderr": ranking.stderr[key], "rank": rank if key in judged else None,
                     "wins": ranking.wins[key], "losses": ranking.losses[key], "ties": ranking.ties[key]})
    return {"series": name, "votes": len(active), "set_aside": len(aside), "notice": book.notice,
            "path": str(book.path), "items": rows, "separation": _separation(ranking, rows)}


def _separation(ranking, rows: list[dict]) -> dict:
    """How far the top-ranked epoch file is ahead of the next one: their score difference over its standard error
    (``z``), from the fit's covariance. The verdict lets the votes decide once ``z`` is large enough."""
    files = [r for r in rows if r["rank"] is not None and r["file"] is not None]
    if len(files) < 2:
        return {}
    mean, var = ranking.difference(files[0]["key"], files[1]["key"])
    return {"a": files[0]["key"], "b": files[1]["key"], "z": round(mean / math.sqrt(var), 3) if var > 0 else None}


def format_ratings(summary: dict) -> str:
    """``series_ratings``' summary as a plain text table for the terminal."""
    lines = [_("Blind ranking of {series}: {n} vote(s)").format(series=summary["series"], n=summary["votes"])
             + (_(", {n} set aside (their files changed or were removed)").format(n=summary["set_aside"])
                if summary.get("set_aside") else "")]
    if summary.get("notice"):
        lines.append(_("note: {note}").format(note=summary["notice"]))
    if not summary["votes"]:
        lines.append(_("No votes yet: vote in the app's Rank view; the order below is only the prior."))
    lines.append(f"{'rank':>4}  {'item':<24} {'score':>6} {'± se':>5} {'wins':>5} {'losses':>6} {'ties':>5}  file")
    for row in summary["items"]:
        if row["rank"] is None:
            unjudged = _("not judged yet")
            lines.append(f"{'-':>4}  {row['label'][:24]:<24} {unjudged:>33}  {row['file'] or '-'}")
            continue
        lines.append(f"{row['rank']:>4}  {row['label'][:24]:<24} {row['score']:>+6.2f} {row['stderr']:>5.2f} "
                     f"{row['wins']:>5} {row['losses']:>6} {row['ties']:>5}  {row['file'] or '-'}")
    return "\n".join(lines)
