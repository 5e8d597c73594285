"""The one exception root of LoRA Spectrum and its few subclasses.

Library errors (safetensors, diffusers, peft, torch) are translated into these at the module boundary that
called the library, so that callers (CLI, UI) catch one root and show one plain message.
"""

from __future__ import annotations


class LoraSpectrumError(Exception):
    """Root of every error this package raises on purpose. The message is meant for the user."""


class ConfigError(LoraSpectrumError):
    """A configuration file or a command-line value is wrong."""


class CatalogError(LoraSpectrumError):
    """The loras folder or one file in it cannot be listed or read."""


class LoraLoadError(LoraSpectrumError):
    """A LoRA file could not be swapped in. The previously active adapter stays active.

    ``path`` names the file; ``cause`` is a short plain-language reason.
    """

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class BaseLoadError(LoraSpectrumError):
    """The configured base model could not be loaded."""


class PlanError(LoraSpectrumError):
    """A comparison plan has a bad value; nothing was rendered."""


class RenderError(LoraSpectrumError):
    """A render failed (out of memory, cancelled, ...). The engine stays usable."""


class BusyError(LoraSpectrumError):
    """The shared engine already has as many renders queued as allowed."""


class CancelledError(LoraSpectrumError):
    """The user cancelled a run between two images."""
