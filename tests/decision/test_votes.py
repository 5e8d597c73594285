"""The votes store on real files: it survives a restart, writes atomically, sets an unreadable file aside with its
bytes kept (never unpickled), keeps votes about a replaced or removed epoch out of the fit, never lives in the
loras folder, and keeps every vote of several processes voting at once. Epoch files are the demo's kohya-style
LoRAs."""

from __future__ import annotations

import json
import pickle
import shutil
import threading
from pathlib import Path

import pytest
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_spectrum.decision import votes
from lora_spectrum.decision.votes import BASE, VoteBook, current_files, file_name, format_ratings, series_ratings
from lora_spectrum.errors import RatingsError
from lora_spectrum.loras.catalog import Catalog
from tests.processes import together
from tests.tiny import Boom

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def run(tmp_path, demo_dir):
    """A copy of the demo's epochs (jimeng_20 ... jimeng_300), scanned, and a ratings folder beside it."""
    loras = tmp_path / "loras"
    shutil.copytree(demo_dir / "loras", loras)
    catalog = Catalog(loras)
    catalog.scan()
    return catalog, tmp_path / "ratings"


def sha(catalog: Catalog, name: str) -> str:
    return catalog.sha256(catalog.get(name))


def retrain(path) -> None:
    """Save other weights under the same name (same keys and metadata), as a re-run of the trainer would."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({k: v * 1.5 for k, v in load_file(str(path)).items()}, str(path), metadata=meta)


def test_votes_survive_a_restart_in_the_documented_format(tmp_path):
    book = VoteBook(tmp_path / "ratings", "jimeng")
    book.add(A, "jimeng_20.safetensors", B, "jimeng_50.safetensors", 1.0, "an ink fox", 7)
    book.add(B, "jimeng_50.safetensors", BASE, BASE, 0.5, "an ink fox", 8)
    again = VoteBook(tmp_path / "ratings", "jimeng")
    assert again.votes == book.votes and again.notice is None and len(again.votes) == 2
    again.votes[0]["result"] = 0.0  # a copy: the book itself is not changed from outside
    assert again.votes[0]["result"] == 1.0
    data = json.loads((tmp_path / "ratings" / "jimeng.json").read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["series"] == "jimeng"
    first = data["votes"][0]
    assert set(first) == {"a", "b", "a_name", "b_name", "result", "prompt", "seed", "time"}
    assert (first["a"], first["b_name"], first["result"], first["seed"]) == (A, "jimeng_50.safetensors", 1.0, 7)
    assert first["time"].endswith("+00:00")
    assert data["votes"][1]["b"] == BASE and data["votes"][1]["result"] == 0.5


def test_writes_are_atomic_and_two_books_lose_no_vote(tmp_path):
    ratings = tmp_path / "ratings"
    one, two = VoteBook(ratings, "jimeng"), VoteBook(ratings, "jimeng")  # two app sessions on one series
    threads = [threading.Thread(target=book.add, args=(A, "x", B, "y", 1.0, "p", seed))
               for seed, book in enumerate([one, two] * 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in ratings.iterdir()) == [".jimeng.json.lock", "jimeng.json"]  # no temp file left
    assert sorted(v["seed"] for v in VoteBook(ratings, "jimeng").votes) == list(range(20))


ROOT = Path(__file__).resolve().parents[2]
VOTER = """
import sys
from lora_spectrum.decision.votes import VoteBook
ratings, series, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
book = VoteBook(ratings, series)  # one app process (or the CLI): its own book, its own lock object
print("ready", flush=True)
sys.stdin.readline()  # all start together
for seed in range(first, first + n):
    book.add("a" * 64, "jimeng_20.safetensors", "b" * 64, "jimeng_50.safetensors", 1.0, "an ink fox", seed)
"""




def test_three_processes_voting_at_once_keep_every_vote(tmp_path):
    # Several app processes (or the CLI beside the app) on one ratings folder: a lock per process kept 128 of 180.
    ratings = tmp_path / "ratings"
    done = together(VOTER, [[str(ratings), "jimeng", str(k * 1000), "60"] for k in range(3)])
    assert [d.returncode for d in done] == [0, 0, 0], [d.stderr for d in done]
    seeds = sorted(v["seed"] for v in VoteBook(ratings, "jimeng").votes)
    assert seeds == [k * 1000 + i for k in range(3) for i in range(60)], f"{len(seeds)} of 180 votes kept"
    assert sorted(p.name for p in ratings.iterdir()) == [".jimeng.json.lock", "jimeng.json"]


def test_a_vote_while_another_process_holds_the_lock_too_long_is_one_plain_error(tmp_path, monkeypatch):
    monkeypatch.setattr(votes, "LOCK_TIMEOUT_S", 0.2)
    book = VoteBook(tmp_path, "jimeng")
    with FileLock(tmp_path / ".jimeng.json.lock"):  # a process stuck inside its write
        with pytest.raises(RatingsError, match="another process has held the votes file for 0.2 s") as exc:
            book.add(A, "x", B, "y", 1.0, "p", 1)
    assert "\n" not in str(exc.value) and not (tmp_path / "jimeng.json").exists()
    book.add(A, "x", B, "y", 1.0, "p", 1)  # free again
    assert len(VoteBook(tmp_path, "jimeng").votes) == 1


def test_an_unreadable_file_opened_by_several_at_once_is_set_aside_once(tmp_path):
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    (ratings / "jimeng.json").write_bytes(b'{"version": 1, "series": "jimeng", "votes": [')
    start, errors = threading.Barrier(4), []

    def open_book():
        start.wait()
        try:
            VoteBook(ratings, "jimeng")
        except RatingsError as exc:  # the loser of an unlocked race: "unreadable, and cannot be set aside"
            errors.append(exc)

    threads = [threading.Thread(target=open_book) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(list(ratings.glob("jimeng.json.unreadable-*"))) == 1


def test_a_bad_vote_is_refused_and_nothing_is_written(tmp_path):
    book = VoteBook(tmp_path / "ratings", "jimeng")
    for bad in [("not-a-sha", "x", B, "y", 1.0, "p", 1), (A, "x", A, "x", 1.0, "p", 1),
                (A, "x", B, "y", 0.7, "p", 1), (A, "x", B, "y", 1.0, "p", "1")]:
        with pytest.raises(RatingsError):
            book.add(*bad)
    assert not (tmp_path / "ratings").exists() and book.votes == []


@pytest.mark.parametrize("content", [b'{"version": 1, "series": "jimeng", "votes": [', b"\xff\xfe not text",
                                     b'{"version": 9, "series": "jimeng", "votes": []}',
                                     b'{"version": 1, "series": "jimeng", "votes": [{"a": "base"}]}'])
def test_an_unreadable_file_is_set_aside_with_its_bytes_and_a_notice(tmp_path, content):
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    (ratings / "jimeng.json").write_bytes(content)
    book = VoteBook(ratings, "jimeng")
    assert book.votes == []
    assert "jimeng.json" in book.notice and "\n" not in book.notice
    (aside,) = ratings.glob("jimeng.json.unreadable-*")
    assert aside.read_bytes() == content and aside.name in book.notice
    book.add(A, "x", B, "y", 0.0, "p", 1)
    assert aside.read_bytes() == content and len(VoteBook(ratings, "jimeng").votes) == 1
    (ratings / "jimeng.json").write_bytes(content)  # broken again: the first copy is not overwritten
    VoteBook(ratings, "jimeng")
    assert sorted(p.read_bytes() for p in ratings.glob("jimeng.json.unreadable-*")) == [content, content]


def test_a_pickle_in_place_of_the_votes_is_never_unpickled(tmp_path):
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    marker = tmp_path / "unpickled"
    Boom.marker = str(marker)
    (ratings / "jimeng.json").write_bytes(pickle.dumps(Boom()))
    book = VoteBook(ratings, "jimeng")
    assert not marker.exists() and book.votes == [] and book.notice


def test_odd_series_names_get_distinct_safe_files(tmp_path):
    names = {s: file_name(s) for s in ["jimeng", "my lora/v2 ✨", "my lora_v2", "../up", ".hidden", "x" * 200]}
    assert names["jimeng"] == "jimeng.json"
    assert len(set(names.values())) == len(names)
    assert all("/" not in n and not n.startswith(".") and len(n) < 100 for n in names.values())
    book = VoteBook(tmp_path, "my lora/v2 ✨")
    book.add(A, "x", B, "y", 1.0, "p", 1)
    assert book.path.parent == tmp_path and VoteBook(tmp_path, "my lora/v2 ✨").votes == book.votes


def test_a_file_holding_another_series_votes_is_refused_not_moved(tmp_path):
    (tmp_path / "jimeng.json").write_text('{"version": 1, "series": "other", "votes": []}', encoding="utf-8")
    with pytest.raises(RatingsError, match="'other'"):
        VoteBook(tmp_path, "jimeng")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jimeng.json"]


def test_a_ratings_folder_inside_the_loras_folder_is_refused(run):
    catalog, _ = run
    for inside in (catalog.folder, catalog.folder / "ratings", catalog.folder / "a" / ".." / "b"):
        with pytest.raises(RatingsError, match="inside the loras folder"):
            VoteBook(inside, "jimeng", loras_folder=catalog.folder)
    with pytest.raises(RatingsError, match="inside the loras folder"):
        series_ratings(catalog, "jimeng", catalog.folder / "votes")
    assert not (catalog.folder / "votes").exists()


def test_votes_about_a_replaced_or_removed_file_are_set_aside(run):
    catalog, ratings = run
    book = VoteBook(ratings, "jimeng", loras_folder=catalog.folder)
    s20, s150, s300 = (sha(catalog, f"jimeng_{e}.safetensors") for e in (20, 150, 300))
    for _ in range(3):
        book.add(s300, "jimeng_300.safetensors", s150, "jimeng_150.safetensors", 1.0, "an ink fox", 1)
        book.add(s150, "jimeng_150.safetensors", BASE, BASE, 1.0, "an ink fox", 2)
    book.add(s20, "jimeng_20.safetensors", BASE, BASE, 0.5, "an ink fox", 3)
    before = series_ratings(catalog, "jimeng", ratings)
    assert (before["votes"], before["set_aside"], before["notice"]) == (7, 0, None)
    assert before["items"][0]["file"] == "jimeng_300.safetensors" and before["items"][0]["label"] == "epoch 300"

    retrain(catalog.folder / "jimeng_300.safetensors")
    (catalog.folder / "jimeng_20.safetensors").unlink()
    catalog.scan()
    current = current_files(catalog, catalog.choose_series("jimeng")[1])
    assert s300 not in current and s20 not in current and current[s150] == "jimeng_150.safetensors"
    active, aside = VoteBook(ratings, "jimeng").split(current)
    assert len(active) == 3 and len(aside) == 4
    assert all(BASE in (v["a"], v["b"]) for v in active)

    after = series_ratings(catalog, "jimeng", ratings)
    assert (after["votes"], after["set_aside"]) == (3, 4)
    rows = {r["file"]: r for r in after["items"]}
    assert set(rows) == {f"jimeng_{e}.safetensors" for e in (50, 80, 150, 220, 300)} | {None}
    new300 = rows["jimeng_300.safetensors"]
    assert new300["key"] == sha(catalog, "jimeng_300.safetensors") != s300
    assert (new300["wins"], new300["losses"], new300["ties"]) == (0, 0, 0)  # the old file's wins are not its
    assert after["items"][0]["file"] == "jimeng_150.safetensors" and rows[None]["label"] == "base"
    # Only what was judged is ranked (150 and the base); the retrained 300 and the rest come after, unranked,
    # instead of sitting at the prior's score 0 above the base that lost its votes.
    assert [r["rank"] for r in after["items"]] == [1, 2, None, None, None, None]
    assert {r["file"] for r in after["items"][:2]} == {"jimeng_150.safetensors", None}
    assert len(VoteBook(ratings, "jimeng").votes) == 7  # set aside, not deleted
    json.dumps(after)


def test_the_summary_without_the_base_and_as_a_table(run):
    catalog, ratings = run
    s50, s80 = sha(catalog, "jimeng_50.safetensors"), sha(catalog, "jimeng_80.safetensors")
    book = VoteBook(ratings, "jimeng")
    book.add(s80, "jimeng_80.safetensors", s50, "jimeng_50.safetensors", 1.0, "p", 1)
    book.add(s80, "jimeng_80.safetensors", BASE, BASE, 1.0, "p", 1)
    summary = series_ratings(catalog, None, ratings, base=False)
    assert summary["votes"] == 1 and BASE not in [r["key"] for r in summary["items"]]
    assert len(summary["items"]) == 6 and summary["items"][0]["epoch"] == 80
    table = format_ratings(series_ratings(catalog, "jimeng", ratings))
    assert "jimeng" in table and "epoch 80" in table and "base" in table and "jimeng_80.safetensors" in table
    empty = format_ratings(series_ratings(catalog, "jimeng", ratings.parent / "elsewhere"))
    assert "No votes yet" in empty
