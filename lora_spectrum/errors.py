"""The one exception root of LoRA Spectrum, its typed subclasses, and the translation at library boundaries.

Library errors (safetensors, diffusers, peft, torch, the hub) are translated into these by one context manager
at the module boundary that called the library (``translated``), so that callers (CLI, UI) catch one root and
show one plain message. The tree::

    LoraSpectrumError                 every error raised on purpose; the message is meant for the user
    ├── ConfigError                   a config file or a command-line value is wrong
    ├── CatalogError                  the loras folder, or one file's header, cannot be listed or read
    │   └── HeaderError               a file's safetensors header is bad (``incomplete``: maybe still copying)
    ├── LoraLoadError                 a LoRA file cannot be swapped in (``path``, ``cause``); the previous adapter
    │                                 stays active
    ├── BaseLoadError                 the base model cannot be loaded
    │   └── NetworkError              ... because the hub cannot be reached (refused, no such name, timed out,
    │                                 TLS failed) or answered with a server error (5xx); ``endpoint``. A push
    │                                 that cannot reach the hub raises it too (one mapping, ``downloads``)
    ├── PlanError                     a comparison plan has a bad value; nothing was rendered
    ├── RenderError                   a render failed; the engine stays usable
    │   └── OutOfMemoryError          ... because the device ran out of memory (the caller may retry smaller)
    ├── BusyError                     the shared engine has as many runs queued as allowed
    ├── Cancelled                     the user cancelled; what finished is kept
    ├── ClusterError                  Ray is missing, its cluster cannot be reached, or no worker can render
    ├── ClipUnavailable               no CLIP model can be loaded (image measures fall back to pixels)
    ├── RatingsError                  a votes file cannot be read or written (it is set aside, never lost)
    ├── ShipError                     an epoch cannot be promoted: its target exists, or the file changed
    └── PushError                     a release cannot be pushed to the hub: no token, the token refused (401),
                                      a repo it may not write (403), a bad repo id, any other refusal
"""

from __future__ import annotations

import contextlib

from lora_spectrum.language import N_

MAX_MESSAGE = 500  # characters: a refusal is one sentence, never a wall of keys


class LoraSpectrumError(Exception):
    """Root of every error this package raises on purpose. The message is meant for the user."""

    kind = N_("Error")  # translated, shown before the message in other languages than English (language.Translator.error)


class ConfigError(LoraSpectrumError):
    """A configuration file or a command-line value is wrong."""

    kind = N_("Configuration error")


class CatalogError(LoraSpectrumError):
    """The loras folder or one file in it cannot be listed or read."""

    kind = N_("Cannot read the loras folder")


class HeaderError(CatalogError):
    """A file's safetensors header cannot be read. ``incomplete``: it may still be being copied (look again)."""

    kind = N_("Unreadable file header")

    def __init__(self, reason: str, incomplete: bool = False):
        self.reason = reason
        self.incomplete = incomplete
        super().__init__(reason)


class LoraLoadError(LoraSpectrumError):
    """A LoRA file could not be swapped in. The previously active adapter stays active.

    ``path`` names the file; ``cause`` is a short plain-language reason (cut to ``MAX_MESSAGE`` characters).
    """

    kind = N_("Cannot load the LoRA file")

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = shorten(cause)
        super().__init__(f"{self.path}: {self.cause}")


class BaseLoadError(LoraSpectrumError):
    """The configured base model could not be loaded."""

    kind = N_("Cannot load the base model")


class NetworkError(BaseLoadError):
    """The hub cannot be reached (connection refused, name not resolved, timed out, TLS failed) or answered with
    a server error (5xx). ``endpoint`` is the hub's address as it was called; the message names the repo too."""

    kind = N_("Cannot reach the hub")

    def __init__(self, message: str, endpoint: str):
        self.endpoint = endpoint
        super().__init__(message)


class PlanError(LoraSpectrumError):
    """A comparison plan has a bad value; nothing was rendered."""

    kind = N_("Nothing was rendered")


class RenderError(LoraSpectrumError):
    """A render failed. The engine stays usable."""

    kind = N_("The render failed")


class OutOfMemoryError(RenderError):
    """A render ran out of device memory; the engine freed what it could. Fewer images at once may fit."""

    kind = N_("Out of memory")


class BusyError(LoraSpectrumError):
    """The shared engine already has as many renders queued as allowed."""

    kind = N_("The workbench is busy")


class Cancelled(LoraSpectrumError):
    """The user cancelled a run; cells that finished are kept."""

    kind = N_("Cancelled")


class ClusterError(LoraSpectrumError):
    """The ``ray`` executor cannot run: Ray is not installed, the cluster cannot be reached or started, or no
    worker could load the base (each worker's reason is in the message)."""

    kind = N_("The Ray cluster cannot render")


class ClipUnavailable(LoraSpectrumError):
    """No CLIP model could be loaded (not on the machine, downloads not allowed, or broken)."""

    kind = N_("CLIP is not available")


class RatingsError(LoraSpectrumError):
    """A votes file cannot be read or written; an unreadable one is set aside, never overwritten."""

    kind = N_("Cannot read or write the votes")


class ShipError(LoraSpectrumError):
    """An epoch cannot be promoted: the target exists (never overwritten), or the source changed since the scan."""

    kind = N_("Cannot ship this epoch")


class PushError(LoraSpectrumError):
    """A release cannot be pushed to a hub repository: no token, a token the hub refuses (401), a repo the token may
    not write (403: someone else's, gated), a repo id the hub would refuse, or another refusal. A hub that cannot
    be reached or fails (5xx) is a ``NetworkError`` instead. The release on disk is never touched."""

    kind = N_("Cannot push to the hub")


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, cut to ``limit`` characters (library messages can list every key of a file)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def reason(exc: BaseException) -> str:
    """A library exception as a short reason: its type and the first line of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return shorten(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 300)


@contextlib.contextmanager
def translated(make, *passthrough: type[BaseException]):
    """Translate any non-LoraSpectrum exception raised inside into ``make(exc)`` (a ``LoraSpectrumError``).

    Our own errors and the types in ``passthrough`` go through unchanged. One such block stands at each library
    boundary instead of scattered ``except Exception`` clauses (in the spirit of httpx's
    ``map_httpcore_exceptions``).
    """
    try:
        yield
    except (LoraSpectrumError, *passthrough):
        raise
    except Exception as exc:  # noqa: BLE001 - this is the one translating boundary; the caller says into what
        raise make(exc) from exc
