"""Fetching a base from a hub: huggingface_hub against a real local HTTP server in the hub's URL layout
(``tests/hub_server.py``) serving the tiny demo pipeline: the size first, progress in bytes and rate, only what a
load needs, a transfer cut off and resumed with a range request, a cancel that leaves no half snapshot and resumes
from the finished files, gated and missing repos in one sentence, a hub that cannot be reached (refused, silent,
503, no such name, no TLS) in one sentence naming the repo and the endpoint, and ``fetch-base`` on the command
line."""

from __future__ import annotations

import gettext
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lora_spectrum import language
from lora_spectrum.bases.downloads import BackgroundFetch, fetch_base, remote_base, wanted
from lora_spectrum.errors import BaseLoadError, Cancelled, NetworkError
from lora_spectrum.render.engine import Engine, RenderRequest
from tests.hub_server import DeadEnds, HubServer, Repo

ROOT = Path(__file__).resolve().parents[2]
REPO = "tiny-lab/sdxl-demo"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, demo_dir):
    """The random demo base as a hub repo, with files a load never needs beside it."""
    folder = tmp_path_factory.mktemp("hub") / "repo"
    shutil.copytree(demo_dir / "base-sdxl", folder)
    (folder / "whole-model.safetensors").write_bytes(b"x" * 1000)  # a single-file copy at the root
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"y" * 1000)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    server = HubServer()
    server.repos[REPO] = Repo(folder)
    server.repos["tiny-lab/gated"] = Repo(folder, gated=True)
    yield server
    server.close()


def needed(hub) -> dict[str, bytes]:
    return {f: b for f, b in hub.repos[REPO].files.items() if wanted(f)}


def test_the_size_comes_first_and_counts_only_what_a_load_needs(hub):
    remote = remote_base(REPO, endpoint=hub.url)
    files = needed(hub)
    assert set(remote.files) == set(files) and remote.nbytes == sum(len(b) for b in files.values())
    assert "model_index.json" in remote.files and "unet/diffusion_pytorch_model.safetensors" in remote.files
    for skipped in ("whole-model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                    "unet/diffusion_pytorch_model.bin"):
        assert skipped not in remote.files


def test_a_fetch_reports_bytes_and_rate_and_the_snapshot_loads_and_renders(hub, tmp_path):
    seen = []
    path = fetch_base(REPO, cache_dir=tmp_path, endpoint=hub.url, progress=lambda *a: seen.append(a))
    total = remote_base(REPO, endpoint=hub.url).nbytes
    assert seen[-1][:2] == (total, total) and all(s[1] == total for s in seen)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen) and any(s[2] > 0 for s in seen)
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == needed(hub), "exactly the needed files, byte for byte"
    engine = Engine.load(str(path), family="sdxl", device="cpu", fuse="off")
    request = RenderRequest("a red circle", (1,), engine.defaults.sampling.override(steps=2, width=64, height=64))
    assert engine.render(request).images[0].size == (64, 64)


def test_a_transfer_cut_off_halfway_resumes_with_a_range_request(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes in 10 MiB chunks and resumes from what it wrote: 1 MiB chunks, so that the 8 MB
    # demo UNet has written some when the server hangs up halfway.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 20)
    weights = "unet/diffusion_pytorch_model.safetensors"
    hub.cut_once.add(weights)
    start = len(hub.log)
    path = fetch_base(REPO, cache_dir=tmp_path, endpoint=hub.url)
    ranges = [rng for method, p, rng in hub.log[start:] if method == "GET" and p.endswith(weights)]
    size = len(hub.repos[REPO].files[weights])
    assert ranges[0] == "" and ranges[-1].startswith("bytes=") and 0 < int(ranges[-1][6:-1]) < size, ranges
    assert (path / weights).read_bytes() == hub.repos[REPO].files[weights]


def test_a_cancel_leaves_no_half_snapshot_and_the_next_fetch_resumes(hub, tmp_path):
    cancel = threading.Event()
    start = len(hub.log)
    with pytest.raises(Cancelled):
        fetch_base(REPO, cache_dir=tmp_path, endpoint=hub.url, cancel=cancel, progress=lambda *a: cancel.set())
    repo_dir = tmp_path / f"models--{REPO.replace('/', '--')}"
    assert not (repo_dir / "snapshots").exists() or not any((repo_dir / "snapshots").iterdir())
    assert not (repo_dir / "refs" / "main").exists(), "no ref to a snapshot that is not there"
    assert not list(repo_dir.rglob("*.incomplete"))
    kept = [p for p in (repo_dir / "blobs").iterdir()]
    assert kept, "the files finished before the cancel stay for the next fetch"
    first = sum(1 for m, p, _ in hub.log[start:] if m == "GET" and "/resolve/" in p)
    again = len(hub.log)
    path = fetch_base(REPO, cache_dir=tmp_path, endpoint=hub.url)
    second = sum(1 for m, p, _ in hub.log[again:] if m == "GET" and "/resolve/" in p)
    assert second <= len(needed(hub)) - len(kept) and first + second >= len(needed(hub))
    got = {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert got == needed(hub)


@pytest.mark.parametrize("repo, words", [
    ("tiny-lab/gated", "tiny-lab/gated is gated: accept its terms on https://huggingface.co/tiny-lab/gated, then "
                       "log in with `hf auth login` (or set HF_TOKEN)"),
    ("tiny-lab/nothing", "tiny-lab/nothing was not found on the hub"),
])
def test_gated_and_missing_repos_are_one_sentence(hub, tmp_path, repo, words):
    with pytest.raises(BaseLoadError) as err:
        fetch_base(repo, cache_dir=tmp_path, endpoint=hub.url, token=False)
    assert str(err.value).startswith(words) and len(str(err.value)) < 300
    assert not list(tmp_path.rglob("snapshots/*"))


def test_fetch_base_on_the_command_line_follows_hf_endpoint(hub, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub")}
    run = subprocess.run([sys.executable, "-m", "lora_spectrum", "fetch-base", REPO], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{REPO}: {len(needed(hub))} files, " in run.stderr and " MB/s" in run.stderr
    path = Path(run.stdout.strip().splitlines()[-1])
    assert path.is_dir() and (path / "model_index.json").is_file() and str(tmp_path / "hub") in str(path)
    gated = subprocess.run([sys.executable, "-m", "lora_spectrum", "fetch-base", "tiny-lab/gated"],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert gated.returncode == 2 and "is gated" in gated.stderr and "Traceback" not in gated.stderr


# ---------------------------------------------------------------- a hub that cannot be reached
UNREACHABLE = "Tongyi-MAI/Z-Image-Turbo"
ADVICE = "; check the network or hub_endpoint (HF_ENDPOINT)"


@pytest.fixture(scope="module")
def down():
    """The ways a hub fails, on loopback or a .invalid name: case -> (endpoint, the sentence's words after the
    repo). The 503 server holds no repo: every request gets 503."""
    ends, failing = DeadEnds(), HubServer()
    failing.fail_with = 503
    tls = "https" + failing.url[len("http"):]  # https to a plain-HTTP port: the TLS handshake fails
    yield {
        "refused": (ends.refused_url, f"cannot reach {ends.refused_url} (connection refused){ADVICE}"),
        "silent": (ends.silent_url, f"cannot reach {ends.silent_url} (timed out){ADVICE}"),
        "503": (failing.url, f"{failing.url} answered HTTP 503 (a server error); try again later or check "
                             f"hub_endpoint (HF_ENDPOINT)"),
        "dns": ("http://nonexistent.invalid", f"cannot reach http://nonexistent.invalid (name not resolved){ADVICE}"),
        "tls": (tls, f"cannot reach {tls} (TLS handshake failed){ADVICE}"),
    }
    failing.close()
    ends.close()


@pytest.mark.parametrize("case", ["refused", "silent", "503", "dns", "tls"])
def test_an_unreachable_hub_is_one_sentence_naming_the_repo_and_the_endpoint(down, tmp_path, case):
    endpoint, words = down[case]
    with pytest.raises(NetworkError) as err:
        fetch_base(UNREACHABLE, cache_dir=tmp_path, endpoint=endpoint, timeout=0.5)
    assert str(err.value) == f"{UNREACHABLE}: {words}" and err.value.endpoint == endpoint
    assert isinstance(err.value, BaseLoadError) and err.value.__cause__ is not None
    assert not list(tmp_path.rglob("snapshots/*"))


def test_a_hub_that_fails_after_its_file_list_is_one_sentence_and_leaves_no_half_snapshot(hub, tmp_path):
    """The file list answers, then the hub goes down: snapshot_download wraps the 503 in a cache miss of its own,
    and the sentence still names the 503."""
    start = len(hub.log)
    hub.fail_with, hub.fail_after = 503, start + 1
    try:
        with pytest.raises(NetworkError, match=rf"^{REPO}: {hub.url} answered HTTP 503 \(a server error\)"):
            fetch_base(REPO, cache_dir=tmp_path, endpoint=hub.url)
    finally:
        hub.fail_with = None
    assert len(hub.log) > start + 1, "the second call reached the hub and got 503"
    assert not list(tmp_path.rglob("snapshots/*")) and not list(tmp_path.rglob("refs/main"))


class Marked(gettext.NullTranslations):
    """A catalog that marks every message it was asked for: text written in its language shows it."""

    def gettext(self, message):
        return f"«{message}»"


def test_the_background_fetch_of_the_base_section_keeps_the_same_sentence_in_the_callers_language(down, tmp_path):
    endpoint, words = down["refused"]
    fetch = BackgroundFetch(UNREACHABLE, tmp_path, endpoint)
    assert fetch.wait(30), "a refused connection fails at once"
    assert fetch.path is None and isinstance(fetch.failure, NetworkError)
    assert fetch.error == str(fetch.failure) == f"{UNREACHABLE}: {words}"
    with language.using(language.Translator("en", Marked())):  # the Streamlit session's language (ui.active)
        fetch = BackgroundFetch(UNREACHABLE, tmp_path, endpoint)
    assert fetch.wait(30) and fetch.error.startswith(f"«{UNREACHABLE}: cannot reach {endpoint} («connection refused»)")


def test_fetch_base_on_the_command_line_says_one_line_when_the_hub_cannot_be_reached(down, tmp_path):
    """Each way down through ``python -m lora_spectrum fetch-base``: exit 2, one line naming the repo and the
    endpoint, no traceback. The endpoint comes from --endpoint, or HF_ENDPOINT (the DNS case); the five run at
    once, each waiting at most HF_HUB_ETAG_TIMEOUT (1 s) for an answer."""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_ETAG_TIMEOUT": "1", "LANGUAGE": "en"}
    runs = {}
    for case, (endpoint, _words) in down.items():
        command = [sys.executable, "-m", "lora_spectrum", "fetch-base", UNREACHABLE]
        via_env = case == "dns"
        runs[case] = subprocess.Popen(command if via_env else [*command, "--endpoint", endpoint], cwd=ROOT,
                                      env={**env, "HF_ENDPOINT": endpoint} if via_env else env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for case, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 2, (case, err[-2000:])
        assert err.splitlines() == [f"lora-spectrum fetch-base: {UNREACHABLE}: {down[case][1]}"], (case, err[-2000:])
        assert out == "" and "Traceback" not in err
