"""The renders a blind ranking draws its pairs from: every column (epochs, the base) of one prompt over some seeds,
served from the render cache and rendered in a background thread through ``runs.run_plan`` (so the same cache,
file checks, batching and cancel as a grid). Which pair to show and what a vote means live in ``ranking`` and
``votes``; nothing here imports streamlit."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

from PIL import Image

from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.render.plan import Cell, Plan, make_plan
from lora_spectrum.render.runs import run_plan

BASE_KEY = "base"  # the base column's item key (epochs are keyed by their file's sha256)


@dataclass(frozen=True)
class Render:
    """One render of the pool: the item it shows (sha256 or ``base``), its file and label, seed and PNG. ``png``
    holds the pixels only: the cell's own PNG carries its ``parameters`` text (the LoRA's name and epoch), which a
    blind vote must not be able to read from the image it is shown."""

    key: str
    file: str | None
    label: str
    epoch: int | None
    seed: int
    png: bytes


def _pixels_only(png: bytes) -> bytes:
    """The image re-encoded without any text chunk."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class RankPool:
    """Renders of ``columns`` (catalog entries, ``None`` for the base) x ``seeds`` for one prompt and sampling.

    ``start()`` renders what the cache lacks in a daemon thread; ``ready()`` lists what is rendered so far, so
    voting can begin before the last epoch is drawn. ``stop()`` cancels within one denoising step."""

    def __init__(self, engine, catalog, columns: list, prompt: str, seeds: list[int], sampling=None,
                 cache=None, mix: int = 1):
        self.engine, self.catalog, self.cache, self.mix = engine, catalog, cache, mix
        self.plan: Plan = make_plan(engine.defaults, columns, seeds, [1.0], [prompt], sampling)
        self.total = len(self.plan.columns) * len(self.plan.seeds)
        self.done = 0
        self.error: str | None = None  # why the background run stopped early (busy engine, a bad file...)
        self._renders: dict[tuple[str, int], Render] = {}
        self._failed: list[str] = []
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ rendering
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rank-pool", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the background run ends (tests, the CLI); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def _run(self) -> None:
        try:
            run_plan(self.engine, self.plan, self.catalog, self.cache, self._add, cancel=self._cancel, mix=self.mix)
        except LoraSpectrumError as exc:  # busy, or a file that changed: said in the view, votes so far kept
            self.error = str(exc)

    def _add(self, done: int, total: int, cell: Cell) -> None:
        with self._lock:
            self.done = done
            if cell.png is not None and not cell.error:
                key = cell.sha256 if cell.file else BASE_KEY
                self._renders[(key, cell.seed)] = Render(key, cell.file, cell.label, cell.epoch, cell.seed,
                                                         _pixels_only(cell.png))
            elif cell.error and not cell.cancelled:
                self._failed.append(f"{cell.label}, seed {cell.seed}: {cell.error}")

    # ------------------------------------------------------------------ what can be shown
    @property
    def failed(self) -> list[str]:
        with self._lock:
            return list(self._failed)

    def ready(self) -> dict[tuple[str, int], Render]:
        """What is rendered so far, by (item key, seed)."""
        with self._lock:
            return dict(self._renders)

    def pairs(self) -> list[tuple[str, str]]:
        """Item pairs (sorted keys) that have at least one seed rendered on both sides."""
        by_seed: dict[int, set[str]] = {}
        for key, seed in self.ready():
            by_seed.setdefault(seed, set()).add(key)
        out = {tuple(sorted((a, b))) for keys in by_seed.values() for a in keys for b in keys if a != b}
        return sorted(out)

    def seeds_for(self, a: str, b: str) -> list[int]:
        """The seeds rendered for both ``a`` and ``b``."""
        ready = self.ready()
        return [s for s in self.plan.seeds if (a, s) in ready and (b, s) in ready]
