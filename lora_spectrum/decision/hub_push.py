"""A release pushed to a Hugging Face Hub model repository: exactly the files one promotion wrote (never anything
else in its folder), the repo created when missing (public, or private when asked) and updated in one commit with
huggingface_hub, progress in files and bytes, the repo's address at the end. The token is huggingface_hub's own
(HF_TOKEN, else the saved ``hf auth login``); it is never printed. Nothing here knows about Streamlit.

The hub's errors become one sentence each in ``_push_errors``: no token, a token the hub refuses (401), a repo the
token may not write (403: someone else's, gated), any other refusal (``PushError``); a hub that cannot be reached
or answers 5xx (``NetworkError``, from ``downloads.network_error``, the mapping the base's fetch uses)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.bases.downloads import client_errors, hub_endpoint, hub_timeout, network_error
from lora_spectrum.errors import PushError, reason
from lora_spectrum.language import _

Progress = Callable[[int, int, int, int], None]  # (files done, files in all, bytes done, bytes in all)
CARD = "README.md"  # the card's name in a hub repository, whatever the release folder calls it


@dataclass(frozen=True)
class Pushed:
    """What ``push_release`` did: the repo's page, its id as the hub names it, the commit, the paths pushed."""

    url: str
    repo_id: str
    commit: str
    files: tuple[str, ...]


def published_files(promotion) -> dict[str, Path]:
    """What a promotion (``promotion.Promotion``) published, by path in the repo: the release file, its card as
    ``README.md`` (the hub layout's own, or the flat layout's NAME.md), the grid image and the hub layout's
    ``images/``. Exactly the files it wrote: nothing else that lies in the folder (other releases, lock files)."""
    folder = Path(promotion.card).parent
    files = {Path(promotion.path).name: Path(promotion.path), CARD: Path(promotion.card)}
    if promotion.grid_image:
        files[Path(promotion.grid_image).name] = Path(promotion.grid_image)
    for image in promotion.images:
        files[Path(image).relative_to(folder).as_posix()] = Path(image)
    return files


def release_in(folder: str | Path, name: str | None = None):
    """The release a promotion left in ``folder`` (to push it again after a failed push), as a ``Promotion``: the
    ``.safetensors`` file that carries our provenance keys (``name`` picks one when the folder holds several), its
    card (``NAME.md`` beside it, else the folder's ``README.md``), ``NAME.grid.png`` when there, and the example
    images the card's widget names inside the folder. ``PushError`` saying why when there is none to push."""
    from huggingface_hub import ModelCard
    from safetensors import SafetensorError, safe_open

    from lora_spectrum.decision.promotion import PREFIX, Promotion

    # 1. The release files: ours by their provenance keys, never anything else in the folder.
    root = Path(folder)
    found = {}
    for path in sorted(root.glob("*.safetensors")) if root.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (OSError, SafetensorError):
            continue
        if meta.get(f"{PREFIX}source_sha256"):
            found[path.stem] = (path, meta)
    if name is not None:
        found = {k: v for k, v in found.items() if k == name}
    if len(found) != 1:
        raise PushError(_("{folder}: {why}").format(folder=root, why=(
            _("no release of LoRA Spectrum here (promote one first)") if not found else
            _("several releases ({names}): choose one with --name").format(names=", ".join(sorted(found))))))
    stem, (path, meta) = next(iter(found.items()))
    # 2. Its card, grid image and the card's own example images.
    card = root / f"{stem}.md" if (root / f"{stem}.md").is_file() else root / CARD
    if not card.is_file():
        raise PushError(_("{folder}: no model card for {name} ({name}.md or README.md)").format(folder=root,
                                                                                            name=stem))
    grid = root / f"{stem}.grid.png"
    widget = ModelCard(card.read_text(encoding="utf-8")).data.to_dict().get("widget") or []
    images = [root / str(w.get("output", {}).get("url", "")) for w in widget if isinstance(w, dict)]
    images = tuple(p for p in images if p.is_file() and p.resolve().is_relative_to(root.resolve()))
    epoch = meta.get(f"{PREFIX}source_epoch") or meta.get(f"{PREFIX}source_step") or ""
    return Promotion(path=path, card=card, grid_image=grid if grid.is_file() else None,
                     sha256=meta[f"{PREFIX}source_sha256"], source=meta.get(f"{PREFIX}source_file", path.name),
                     epoch=int(epoch) if epoch.isdigit() else None, images=images)


def commit_message(promotion) -> str:
    """The commit's summary: the release, the file and epoch it came from (a record on the hub, in English)."""
    return f"Release {Path(promotion.path).stem}: {promotion.source} (epoch {promotion.epoch}), via LoRA Spectrum"


def hub_token() -> str:
    """The token huggingface_hub sends (HF_TOKEN, else the saved login); ``PushError`` when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError(_("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a token with write "
                          "access), then push again"))
    return token


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` as the hub takes it (``namespace/name``, or ``name`` in the token's own namespace), else
    ``PushError`` saying why, before anything is sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(_("{repo}: not a hub repository id (namespace/name: letters, digits, '-', '_', '.'; no "
                          "'--' or '..')").format(repo=repr(repo_id))) from exc
    return repo_id


def push_release(files: dict[str, Path], repo_id: str, *, private: bool = False, endpoint: str | None = None,
                 message: str = "Release via LoRA Spectrum", progress: Progress | None = None,
                 timeout: float | None = None) -> Pushed:
    """Create ``repo_id`` on the hub if it is missing (``private`` then), and commit ``files`` (path in the repo ->
    local file, ``published_files``) to it in one commit: files of the same path are replaced, others in the repo
    stay. ``progress`` hears each file once its content is on its way (large files are uploaded before the commit,
    small ones go inside it), then the commit. The local files are only read.

    ``PushError`` (one sentence): no token, a refused token (401), a repo the token may not write (403), an existing
    public repo when ``private`` was asked (it is never made public by a push, nor silently left public), another
    refusal. ``NetworkError``: the hub cannot be reached or answered 5xx. ``timeout``: seconds to wait for the
    hub's first answer (default ``HF_HUB_ETAG_TIMEOUT``, 10 s)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    # 1. What goes up: a token, a valid repo id, each file still there; nothing is sent before all three hold.
    token = hub_token()
    check_repo_id(repo_id)
    sizes = {rel: _size(path) for rel, path in files.items()}
    total, nbytes = len(files), sum(sizes.values())
    api = HfApi(endpoint=endpoint or None, token=token)
    with _push_errors(repo_id, endpoint):
        # 2. The hub's first answer within the timeout (huggingface_hub's own calls wait forever on a hub that
        #    accepts and never answers): the repo as it is, kept; or created when missing.
        try:
            info = api.model_info(repo_id, timeout=timeout or hub_timeout())
        except GatedRepoError:
            raise
        except RepositoryNotFoundError:
            info = None  # not there yet (or not visible to this token): create_repo says which
        if info is not None and private and not info.private:
            raise PushError(_("{repo}: exists and is public; a push never changes a repository's visibility: make "
                              "it private on the hub first, or push it as a public one").format(repo=repo_id))
        if info is None:
            created = api.create_repo(repo_id, private=private or None, exist_ok=True)
            repo_id, url = created.repo_id, str(created)  # a name without namespace lands in the token's own
        else:
            repo_id, url = info.id, f"{hub_endpoint(endpoint)}/{info.id}"
        # 3. Each file prepared and, when the hub keeps it in LFS or Xet, uploaded now: counted as it goes.
        operations, done, done_bytes = [], 0, 0
        if progress is not None:
            progress(0, total, 0, nbytes)
        for rel, path in files.items():
            operation = CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
            api.preupload_lfs_files(repo_id, additions=[operation], free_memory=False)
            operations.append(operation)
            done, done_bytes = done + 1, done_bytes + sizes[rel]
            if progress is not None:
                progress(done, total, done_bytes, nbytes)
        # 4. One commit with every file (files the repo already holds unchanged are left out by huggingface_hub).
        commit = api.create_commit(repo_id, operations, commit_message=message)
    if progress is not None:
        progress(total, total, nbytes, nbytes)
    return Pushed(url=url, repo_id=repo_id, commit=commit.oid, files=tuple(files))


def _size(path: Path) -> int:
    """A file to push, in bytes; ``PushError`` when it is gone or no plain file (removed since it was shipped)."""
    if not path.is_file():
        raise PushError(_("{path}: not there any more; ship the release again, then push").format(path=path))
    return path.stat().st_size


@contextlib.contextmanager
def _push_errors(repo_id: str, endpoint: str | None) -> Iterator[None]:
    """The hub's errors during a push as one sentence each, naming the repo: unreachable or 5xx (``NetworkError``,
    naming the endpoint too: ``downloads.network_error``); 401, 403 and any other refusal (``PushError``). Our own
    errors go through."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except (HfHubHTTPError, OSError, ValueError, *client_errors(0)) as exc:
        raise (network_error(repo_id, endpoint, exc) or _refusal(repo_id, endpoint, exc)) from exc


def _refusal(repo_id: str, endpoint: str | None, exc: BaseException) -> PushError:
    """A push the hub refused, by its status: the token (401), the repo (403, gated), or else its reason."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    status = response.status_code if response is not None else None
    where = hub_endpoint(endpoint)
    if status == 403 or isinstance(exc, GatedRepoError):
        return PushError(_("{repo}: {endpoint} refused to write to it (HTTP 403): the token may not write there (a "
                           "repository of someone else, or gated); push to a namespace of your own or use a token "
                           "with write access to it").format(repo=repo_id, endpoint=where))
    if status == 401:
        return PushError(_("{repo}: {endpoint} did not accept the token (HTTP 401); log in again with `hf auth "
                           "login` or set HF_TOKEN to a token with write access").format(repo=repo_id,
                                                                                        endpoint=where))
    return PushError(_("{repo}: cannot push to {endpoint} ({why}); the release on disk is unchanged").format(
        repo=repo_id, endpoint=where, why=reason(exc)))
