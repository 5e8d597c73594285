"""Pushing a release to a Hugging Face Hub model repository: huggingface_hub's own client against a real local HTTP
server in the hub's layout (``tests/hub_server.py``, which takes uploads). ``promote --push`` end to end on the demo:
exactly the release's files in one commit, progress in files and MB, the repo's address last, the card read back by
``ModelCard.load``; a second push of the same files makes no commit; private repos; and every way a push fails
(no token, a refused token, a repo it may not write, a gated one, a bad id, a hub refused, silent or failing) in
one sentence that never holds the token, the release on disk unchanged."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError

from lora_spectrum.cli import main
from lora_spectrum.decision.hub_push import commit_message, published_files, push_release
from lora_spectrum.decision.promotion import promote
from lora_spectrum.errors import NetworkError, PushError
from lora_spectrum.loras.catalog import Catalog
from tests.decision.test_promotion import write_grid
from tests.hub_server import DeadEnds, HubServer, Repo

TOKEN = "hf_local_write_token_0123456789"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
ADVICE = "; check the network or hub_endpoint (HF_ENDPOINT)"


@pytest.fixture(scope="module")
def hub():
    """A hub that takes uploads with ``TOKEN``; a gated repo and a public repo of someone else beside."""
    server = HubServer()
    server.token = TOKEN
    server.repos["someone/gated"] = Repo(gated=True)
    server.repos["someone/theirs"] = Repo()
    server.forbidden.add("someone/theirs")
    yield server
    server.close()


@pytest.fixture
def logged_in(hub, monkeypatch, tmp_path):
    """huggingface_hub's token is ``TOKEN`` (HF_TOKEN; no saved login of this machine is read) and its downloads
    (``ModelCard.load``, ``hf_hub_download``) go to the local hub, into a cache of this test's own."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-login"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    return hub


@pytest.fixture(scope="module")
def release(tmp_path_factory, demo_dir):
    """Epoch 150 of the demo promoted in the hub layout (README.md, images/ of its renders, the grid image)."""
    folder = tmp_path_factory.mktemp("release")
    catalog = Catalog(demo_dir / "loras")
    catalog.scan()
    grid = write_grid(folder / "grid", catalog)
    return promote(catalog, 150, folder / "ship", name="jimeng-v1", grid=grid, layout="hub", license="openrail++",
                   base_id=SDXL)


def digest(files) -> dict[str, str]:
    return {rel: hashlib.sha256(path.read_bytes()).hexdigest() for rel, path in files.items()}


def test_promote_push_uploads_exactly_the_release_in_one_commit_and_the_hub_serves_its_card(setup, logged_in,
                                                                                            tmp_path, capsys):
    hub = logged_in
    config, loras, _out = setup
    config.write_text(config.read_text(encoding="utf-8") + f"hub_endpoint: {hub.url}\n", encoding="utf-8")
    catalog = Catalog(loras)
    catalog.scan()
    grid = write_grid(tmp_path / "grid", catalog)
    ship = tmp_path / "ship"
    ship.mkdir()
    (ship / "notes.txt").write_text("mine, not the release's", encoding="utf-8")  # never pushed
    repo, commits = "tiny-lab/jimeng-lora", len(hub.commits)
    assert main(["promote", "--loras", str(loras), "--epoch", "150", "--to", str(ship), "--name", "jimeng-v1",
                 "--grid", str(grid), "--license", "openrail++", "--base", SDXL, "--config", str(config),
                 "--ratings-dir", str(tmp_path / "ratings"), "--push", repo]) == 0
    out, err = capsys.readouterr()
    # 1. The repo's address last; the token nowhere.
    url = f"{hub.url}/{repo}"
    assert out.splitlines()[-1] == f"pushed to {url}" and TOKEN not in out + err
    # 2. Exactly the files promote wrote, byte for byte, in one commit (the lock file lives outside the folder;
    #    a file of the person's own there stays home).
    local = {p.relative_to(ship).as_posix(): p.read_bytes() for p in ship.rglob("*") if p.is_file()}
    del local["notes.txt"]
    assert {"README.md", "jimeng-v1.safetensors", "jimeng-v1.grid.png"} < set(local) and \
        any(rel.startswith("images/") for rel in local)
    assert hub.repos[repo].files == local and not hub.repos[repo].private
    assert len(hub.commits) == commits + 1
    assert hub.commits[-1] == (repo, "Release jimeng-v1: jimeng_150.safetensors (epoch 150), via LoRA Spectrum",
                               sorted(local))
    # 3. Progress in files and MB, from none to all.
    steps = [line for line in err.splitlines() if line.startswith("[push]")]
    total_mb = f"{sum(map(len, local.values())) / 1024 / 1024:.1f}"
    assert steps[0] == f"[push] 0 / {len(local)} files, 0.0 / {total_mb} MB"
    assert steps[-1] == f"[push] {len(local)} / {len(local)} files, {total_mb} / {total_mb} MB"
    assert [int(s.split()[1]) for s in steps] == sorted(int(s.split()[1]) for s in steps)
    # 4. The card as the hub serves it: its front matter parses, with the license, the base and the widget, whose
    #    images the hub serves too.
    data = ModelCard.load(repo, ignore_metadata_errors=False).data.to_dict()
    assert data["license"] == "openrail++" and data["base_model"] == SDXL
    assert data["widget"] and all(w["output"]["url"].startswith("images/") for w in data["widget"])
    for w in data["widget"]:
        path = hf_hub_download(repo, w["output"]["url"])
        assert Path(path).read_bytes() == local[w["output"]["url"]]


def test_a_push_creates_a_private_repo_updates_it_and_never_makes_a_commit_of_nothing(logged_in, release):
    hub = logged_in
    files = published_files(release)
    before = digest(files)
    seen = []
    # 1. A name without namespace lands in the token's own, private when asked.
    pushed = push_release(files, "jimeng-private", private=True, endpoint=hub.url, message=commit_message(release),
                          progress=lambda *a: seen.append(a))
    repo = f"{hub.user}/jimeng-private"
    assert pushed.url == f"{hub.url}/{repo}" and pushed.repo_id == repo and hub.repos[repo].private
    nbytes = sum(f.stat().st_size for f in files.values())
    assert set(pushed.files) == set(files) and seen[0] == (0, len(files), 0, nbytes)
    assert seen[-1] == (len(files), len(files), nbytes, nbytes)
    with pytest.raises(RepositoryNotFoundError):  # hidden from whoever has no token
        HfApi(endpoint=hub.url, token=False).model_info(repo)
    # 2. The same files again: the repo is kept, huggingface_hub leaves out what it already holds, no empty commit.
    commits = len(hub.commits)
    again = push_release(files, repo, private=True, endpoint=hub.url)
    assert again.url == pushed.url and again.commit == hub.repos[repo].commit and len(hub.commits) == commits
    # 3. A changed file is one more commit; what the repo held beside it stays.
    card = files["README.md"].read_text(encoding="utf-8")
    edited = files["README.md"].parent.parent / "edited" / "README.md"
    edited.parent.mkdir(exist_ok=True)
    edited.write_text(card + "\nEdited.\n", encoding="utf-8")
    push_release({"README.md": edited}, repo, endpoint=hub.url)
    assert hub.commits[-1][2] == ["README.md"] and hub.repos[repo].files["README.md"].endswith(b"Edited.\n")
    assert set(hub.repos[repo].files) == set(files)
    # 4. private asked for a repo that exists public: refused, nothing sent (a push never changes visibility).
    push_release(files, "tiny-lab/public-one", endpoint=hub.url)
    commits = len(hub.commits)
    with pytest.raises(PushError, match=r"^tiny-lab/public-one: exists and is public; a push never changes"):
        push_release(files, "tiny-lab/public-one", private=True, endpoint=hub.url)
    assert len(hub.commits) == commits and not hub.repos["tiny-lab/public-one"].private
    assert digest(files) == before, "the release on disk is only read"


@pytest.fixture(scope="module")
def down():
    """A hub that refuses connections, one that never answers, one that answers 503 to everything."""
    ends, failing = DeadEnds(), HubServer()
    failing.fail_with = 503
    yield {"refused": ends.refused_url, "silent": ends.silent_url, "503": failing.url}
    failing.close()
    ends.close()


CASES = {  # case -> (repo, the error, the sentence after "{repo}: ", with {endpoint})
    "no token": ("tiny-lab/a", PushError, "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a "
                                          "token with write access), then push again"),
    "refused token": ("tiny-lab/b", PushError, "{repo}: {endpoint} did not accept the token (HTTP 401); log in "
                                               "again with `hf auth login` or set HF_TOKEN to a token with write "
                                               "access"),
    "someone else's": ("someone/theirs", PushError, "{repo}: {endpoint} refused to write to it (HTTP 403): the "
                                                    "token may not write there (a repository of someone else, or "
                                                    "gated); push to a namespace of your own or use a token with "
                                                    "write access to it"),
    "gated": ("someone/gated", PushError, "{repo}: {endpoint} refused to write to it (HTTP 403): the token may "
                                          "not write there (a repository of someone else, or gated); push to a "
                                          "namespace of your own or use a token with write access to it"),
    "bad id": ("tiny-lab/a/b", PushError, "'tiny-lab/a/b': not a hub repository id (namespace/name: letters, "
                                          "digits, '-', '_', '.'; no '--' or '..')"),
    "refused": ("tiny-lab/c", NetworkError, "{repo}: cannot reach {endpoint} (connection refused)" + ADVICE),
    "silent": ("tiny-lab/d", NetworkError, "{repo}: cannot reach {endpoint} (timed out)" + ADVICE),
    "503": ("tiny-lab/e", NetworkError, "{repo}: {endpoint} answered HTTP 503 (a server error); try again later "
                                        "or check hub_endpoint (HF_ENDPOINT)"),
    "commit fails": ("tiny-lab/f", NetworkError, "{repo}: {endpoint} answered HTTP 500 (a server error); try "
                                                 "again later or check hub_endpoint (HF_ENDPOINT)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_way_a_push_fails_is_one_sentence_without_the_token(logged_in, release, down, monkeypatch, case):
    hub = logged_in
    repo, error, words = CASES[case]
    endpoint = down.get(case, hub.url)
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
    if case == "refused token":
        monkeypatch.setenv("HF_TOKEN", "hf_not_the_one")
    if case == "commit fails":
        monkeypatch.setattr(hub, "fail_commit", 500)
    files = published_files(release)
    before, requests, commits = digest(files), len(hub.log), len(hub.commits)
    with pytest.raises(error) as err:
        push_release(files, repo, endpoint=endpoint, timeout=0.5)
    assert str(err.value) == words.format(repo=repo, endpoint=endpoint) and type(err.value) is error
    assert TOKEN not in str(err.value) and "hf_not_the_one" not in str(err.value)
    assert len(hub.commits) == commits and digest(files) == before
    if case in ("no token", "bad id"):
        assert len(hub.log) == requests, "refused before anything was sent"
    else:
        assert err.value.__cause__ is not None, "the hub's own error stays chained, for a traceback"
    if case == "commit fails":
        assert hub.repos[repo].files == {}, "created, and nothing committed"


def test_promote_push_refuses_in_one_line_before_writing_or_after_it_keeping_the_release(setup, logged_in, down,
                                                                                         monkeypatch, tmp_path,
                                                                                         capsys):
    config, loras, _out = setup
    ship = tmp_path / "ship"
    args = ["promote", "--loras", str(loras), "--epoch", "150", "--to", str(ship), "--config", str(config),
            "--ratings-dir", str(tmp_path / "ratings"), "--push", "tiny-lab/cli"]
    # 1. No token: refused before anything is written.
    monkeypatch.delenv("HF_TOKEN")
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["lora-spectrum promote: no Hugging Face token: log in with `hf auth login` or set "
                                "HF_TOKEN (a token with write access), then push again"] and out == ""
    assert not ship.exists()
    assert main([*args[:-2], "--private"]) == 2 and "go with --push" in capsys.readouterr().err
    # 2. A hub that cannot be reached: one line, and the release stays as promote wrote it.
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main([*args, "--endpoint", down["refused"]]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"lora-spectrum promote: tiny-lab/cli: cannot reach {down['refused']} (connection "
                                f"refused){ADVICE}"]
    assert f"to {ship / 'jimeng.safetensors'}" in out and (ship / "README.md").is_file()
    # 3. `push FOLDER REPO_ID` pushes the release promote left there, once the hub is back: exactly its files.
    (ship / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["push", str(ship), "tiny-lab/cli", "--endpoint", logged_in.url, "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"pushed to {logged_in.url}/tiny-lab/cli"
    local = {p.relative_to(ship).as_posix(): p.read_bytes() for p in ship.rglob("*") if p.is_file()}
    del local["notes.txt"]
    assert logged_in.repos["tiny-lab/cli"].files == local and set(local) == {"README.md", "jimeng.safetensors"}
    assert main(["push", str(tmp_path), "tiny-lab/cli", "--endpoint", logged_in.url]) == 2
    assert capsys.readouterr().err.strip() == f"lora-spectrum push: {tmp_path}: no release of LoRA Spectrum here " \
        "(promote one first)"
    shutil.rmtree(ship)


def test_the_release_a_folder_holds_is_the_one_promote_wrote(release, tmp_path):
    from lora_spectrum.decision.hub_push import release_in

    again = release_in(Path(release.card).parent)
    assert published_files(again) == published_files(release) and again.images  # card, grid, file, examples
    assert (again.source, again.epoch, again.sha256) == (release.source, release.epoch, release.sha256)
    with pytest.raises(PushError, match="no release of LoRA Spectrum here"):
        release_in(Path(release.card).parent, name="another")
