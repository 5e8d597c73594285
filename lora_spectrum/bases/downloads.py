"""A base fetched from the Hugging Face Hub: what it weighs first (the hub's file list), then its files with
huggingface_hub, progress in bytes and rate, a cancel between chunks that leaves no half-made snapshot. Only what
``bases.load_pipeline`` loads is fetched (configs, tokenizers, safetensors weights; never pickles, never the
fp16 variants or root-level single-file copies). Nothing here loads a model or knows about Streamlit.

The hub's errors become one sentence each in ``_hub_errors``, the one mapping at this boundary: gated, missing or
private repos (``BaseLoadError``); a hub that cannot be reached or answers 5xx (``NetworkError``, naming the repo
and the endpoint: ``network_error``, which ``decision/hub_push`` shares for a push, as it shares ``hub_endpoint``
and ``hub_timeout``)."""

from __future__ import annotations

import contextlib
import contextvars
import shutil
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.errors import BaseLoadError, Cancelled, LoraSpectrumError, NetworkError, reason
from lora_spectrum.language import N_, _

# Files of a diffusers pipeline that from_pretrained(use_safetensors=True) reads, by suffix.
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".jinja")
VARIANTS = (".fp16.", ".bf16.", ".fp32.", ".non_ema.", ".ema.")
Progress = Callable[[int, int, float], None]  # (bytes done, bytes in all, bytes per second)


@dataclass(frozen=True)
class RemoteBase:
    """A repo on the hub as we would fetch it: its commit, the files we need and their bytes in all."""

    repo_id: str
    commit: str
    files: tuple[str, ...]
    nbytes: int


def wanted(path: str) -> bool:
    """Whether a repo file is one ``load_pipeline`` needs: configs anywhere, safetensors in a component folder."""
    name = path.rsplit("/", 1)[-1]
    if any(v in name for v in VARIANTS):
        return False
    if name.endswith(".safetensors"):
        return "/" in path  # a root-level .safetensors is a single-file copy of the whole model
    return name.endswith(CONFIG_SUFFIXES)


def remote_base(repo_id: str, endpoint: str | None = None, token: str | bool | None = None,
                timeout: float | None = None) -> RemoteBase:
    """What fetching ``repo_id`` would download, from one call to the hub's file list. ``BaseLoadError`` with one
    sentence on a gated, private or missing repo; ``NetworkError`` when the hub cannot be reached or fails.
    ``timeout``: seconds to wait for the hub (default huggingface_hub's ``HF_HUB_ETAG_TIMEOUT``, 10 s)."""
    from huggingface_hub import HfApi

    with _hub_errors(repo_id, endpoint):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, files_metadata=True,
                                                               timeout=timeout or hub_timeout())
    files = [s for s in info.siblings or [] if wanted(s.rfilename)]
    if not any(s.rfilename == "model_index.json" for s in files):
        raise BaseLoadError(f"{repo_id} is not a diffusers pipeline (it has no model_index.json)")
    return RemoteBase(repo_id, info.sha, tuple(s.rfilename for s in files), sum(s.size or 0 for s in files))


def fetch_base(repo_id: str, cache_dir: str | Path | None = None, endpoint: str | None = None,
               progress: Progress | None = None, cancel: threading.Event | None = None,
               token: str | bool | None = None, timeout: float | None = None) -> Path:
    """Download ``repo_id`` into the Hugging Face cache; the snapshot folder (load it by repo id or this path).

    Files already in the cache are not fetched again, so a fetch that was cancelled or cut off resumes from the
    files it finished (and a transfer cut off mid-file resumes with a range request). On cancel (``Cancelled``)
    or failure (``BaseLoadError``) the snapshot of this commit is removed if it was not complete before: finished
    files stay in the cache's blobs for the next try, and no half snapshot is left that a load would trip on.
    A hub that cannot be reached, or fails, is a ``NetworkError`` (a ``BaseLoadError``) naming the endpoint.
    """
    from huggingface_hub import snapshot_download

    # 1. What to fetch, and where it lands.
    remote = remote_base(repo_id, endpoint, token, timeout)
    root, repo_dir = hub_cache(cache_dir), repo_folder(repo_id, cache_dir)
    snapshot, ref = repo_dir / "snapshots" / remote.commit, repo_dir / "refs" / "main"
    had_snapshot = all((snapshot / f).is_file() for f in remote.files)
    had_ref = ref.is_file()
    # 2. Fetch with a progress class of our own (huggingface_hub's tqdm hook), which also carries the cancel.
    meter = _meter(remote.nbytes, progress, cancel)
    try:
        with _hub_errors(repo_id, endpoint):
            # The branch, not the commit: then huggingface_hub also writes refs/main, by which loads find it.
            path = snapshot_download(repo_id, cache_dir=str(root), endpoint=endpoint,
                                     allow_patterns=list(remote.files), tqdm_class=meter, token=token,
                                     etag_timeout=timeout or hub_timeout())
    except (Cancelled, BaseLoadError):
        # 3. No half snapshot: its links go (the blobs stay, for the next try); the ref too, if it was ours.
        if not had_snapshot:
            shutil.rmtree(snapshot, ignore_errors=True)
            if not had_ref:
                ref.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(remote.nbytes, remote.nbytes, 0.0)
    return Path(path)


def hub_cache(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face cache: ``cache_dir``, else huggingface_hub's (HF_HUB_CACHE, HF_HOME)."""
    if cache_dir:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(repo_id: str, cache_dir: str | Path | None = None) -> Path:
    """Where the cache keeps ``repo_id`` (its refs, snapshots, blobs and trees), as huggingface_hub lays it out."""
    return hub_cache(cache_dir) / f"models--{repo_id.replace('/', '--')}"


def _meter(total: int, progress: Progress | None, cancel: threading.Event | None):
    """A tqdm class for ``snapshot_download``: it counts the bytes of its transfer bar, reports them with the rate,
    and raises ``Cancelled`` from the next chunk once ``cancel`` is set. Hand-written because huggingface_hub's
    only progress and cancel hook is this class."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    state = {"done": 0, "t0": time.monotonic(), "said": 0.0}

    class Meter(hub_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # nothing drawn on a terminal: the caller shows progress
            super().__init__(*args, **kwargs)
            self._bytes = kwargs.get("unit") == "B" and str(kwargs.get("desc", "")).startswith("Downloading")

        def update(self, n=1):
            if cancel is not None and cancel.is_set():
                raise Cancelled("download cancelled")
            if self._bytes and n:
                state["done"] += int(n)
                now = time.monotonic()
                if progress is not None and (now - state["said"] > 0.2 or state["done"] >= total):
                    state["said"] = now
                    progress(min(state["done"], total), total, state["done"] / max(now - state["t0"], 1e-6))
            return super().update(n)

    return Meter


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub's address as huggingface_hub calls it: ``endpoint``, else ``HF_ENDPOINT``, else huggingface.co."""
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def hub_timeout() -> float:
    """Seconds to wait for the hub's answer: huggingface_hub's ``HF_HUB_ETAG_TIMEOUT`` (10 s unless set). Its
    file-list call would otherwise wait forever on a hub that accepts and never answers."""
    from huggingface_hub import constants

    return float(constants.HF_HUB_ETAG_TIMEOUT)


# Why a hub could not be reached, by the exceptions along the chain of causes, the first match winning: the root
# causes (the standard library's, whatever HTTP client huggingface_hub talks through) before the client's own.
_UNREACHABLE: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    (N_("TLS certificate not trusted"), (ssl.SSLCertVerificationError,)),
    (N_("TLS handshake failed"), (ssl.SSLError,)),
    (N_("name not resolved"), (socket.gaierror,)),
    (N_("connection refused"), (ConnectionRefusedError,)),
    (N_("timed out"), (TimeoutError,)),
    (N_("connection lost"), (ConnectionError,)),
)
# The HTTP clients huggingface_hub has talked through (httpx2 in 2.x, httpx in 1.x; requests before, whose errors
# are OSErrors): module -> (its error for a failed transport, its timeout). Looked up in sys.modules, never
# imported: the client that raised is loaded.
_CLIENTS = {"httpx2": ("TransportError", "TimeoutException"), "httpx": ("TransportError", "TimeoutException"),
            "requests": ("ConnectionError", "Timeout")}


def client_errors(index: int) -> tuple[type[BaseException], ...]:
    """The loaded HTTP clients' transport errors (``index`` 0) or timeouts (1)."""
    found = (getattr(sys.modules.get(module), names[index], None) for module, names in _CLIENTS.items())
    return tuple(t for t in found if isinstance(t, type))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling (huggingface_hub wraps the client's error)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def network_error(repo_id: str, endpoint: str | None, exc: BaseException) -> NetworkError | None:
    """``exc`` as one sentence naming the repo and the endpoint when the hub could not be reached or answered 5xx;
    None for any other failure (a full disk, a 4xx)."""
    from huggingface_hub.errors import HfHubHTTPError

    causes = list(_causes(exc))
    where = hub_endpoint(endpoint)
    rules = (*_UNREACHABLE, (N_("timed out"), client_errors(1)), (N_("connection failed"), client_errors(0)))
    for why, types in rules:
        if types and any(isinstance(c, types) for c in causes):
            return NetworkError(_("{repo}: cannot reach {endpoint} ({why}); check the network or hub_endpoint "
                                  "(HF_ENDPOINT)").format(repo=repo_id, endpoint=where, why=_(why)), where)
    for c in causes:
        response = c.response if isinstance(c, HfHubHTTPError) else None
        if response is not None and response.status_code >= 500:
            return NetworkError(_("{repo}: {endpoint} answered HTTP {status} (a server error); try again later or "
                                  "check hub_endpoint (HF_ENDPOINT)").format(
                repo=repo_id, endpoint=where, status=response.status_code), where)
    return None


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str | None = None) -> Iterator[None]:
    """The hub's errors as one sentence each, naming the repo: gated, missing or private (``BaseLoadError``); a
    hub that cannot be reached or answers 5xx (``NetworkError``, naming the endpoint too); any other failure of
    the transfer (``BaseLoadError``). Our own errors (``Cancelled``) go through."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    r = repo_id
    try:
        yield
    except GatedRepoError as exc:
        raise BaseLoadError(f"{r} is gated: accept its terms on https://huggingface.co/{r}, then log in with "
                            f"`hf auth login` (or set HF_TOKEN) and fetch again") from exc
    except RepositoryNotFoundError as exc:
        raise BaseLoadError(f"{r} was not found on the hub (if it is private, log in with `hf auth login` "
                            f"or set HF_TOKEN)") from exc
    except (HfHubHTTPError, OSError, *client_errors(0)) as exc:
        raise (network_error(r, endpoint, exc) or BaseLoadError(
            f"cannot fetch {r} ({reason(exc)}); check the network, then fetch again: files already fetched are "
            f"kept")) from exc


class BackgroundFetch:
    """``fetch_base`` in a daemon thread, for a page that redraws while it runs: ``done``/``total``/``rate``,
    ``cancel()``, and once finished ``path``, or ``failure`` (the ``LoraSpectrumError``) and ``error`` (its one
    sentence; "download cancelled" after a cancel). The thread writes its sentences in the language active where
    it was started (``language.using``)."""

    def __init__(self, repo_id: str, cache_dir=None, endpoint: str | None = None):
        self.repo_id = repo_id
        self.done = self.total = 0
        self.rate = 0.0
        self.path: Path | None = None
        self.failure: LoraSpectrumError | None = None
        self.error: str | None = None
        self._cancel = threading.Event()
        context = contextvars.copy_context()  # the caller's language (a new thread starts with an empty context)
        self._thread = threading.Thread(target=context.run, args=(self._run, cache_dir, endpoint), daemon=True,
                                        name=f"fetch {repo_id}")
        self._thread.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.finished

    def _progress(self, done: int, total: int, rate: float) -> None:
        self.done, self.total, self.rate = done, total, rate

    def _run(self, cache_dir, endpoint) -> None:
        try:
            self.path = fetch_base(self.repo_id, cache_dir, endpoint, self._progress, self._cancel)
        except LoraSpectrumError as exc:
            self.failure, self.error = exc, str(exc)
