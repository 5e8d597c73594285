"""Judging the complete epoch files of a run as they land: the probe rendered for them (epochs already rendered come
from the render cache, so a new file costs one epoch of renders), measured, and the verdict decided; and the
measures written as TensorBoard scalars beside the trainer's own log. Used by ``watch`` and the app's Live view.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.measures.probe_measures import probe_measures
from lora_spectrum.measures.verdict import DEFAULT_PREFERENCE, decide
from lora_spectrum.probes import ProbeSet
from lora_spectrum.render.probe_runs import run_probe

SCALAR_PREFIX = "lora_spectrum"  # the TensorBoard tag group: lora_spectrum/style, .../fidelity, .../leak, .../pick


@dataclass
class ProbeJudge:
    """``judge(files)`` for a ``Watcher``: renders ``probe_set`` over ``files`` and the base, measures, decides."""

    engine: object
    catalog: Catalog
    probe_set: ProbeSet
    out_dir: Path
    series: str | None = None
    cache: object = None
    clip_model: str | tuple | None = None
    references: str | Path | None = None
    loss: dict | None = None
    preference: str = DEFAULT_PREFERENCE
    cancel: threading.Event | None = None
    on_progress: object = None
    last: dict = field(default_factory=dict)  # the last result: {"probe", "epochs", "verdict"}

    def __call__(self, files: list[str]) -> dict:
        # 1. Render what is not cached yet (the base and the earlier epochs normally are).
        run_probe(self.engine, self.catalog, self.probe_set, self.out_dir, series=self.series, cache=self.cache,
                  cancel=self.cancel, on_progress=self.on_progress, files=files)
        # 2. Measure; the CLIP model is loaded once and kept for the next file.
        clip = self._clip()
        probe = probe_measures(self.out_dir, clip_model=clip, references=self.references)
        # 3. Decide.
        verdict = decide(self.series, [], probe, self.loss, preference=self.preference)
        self.last = {"probe": probe, "epochs": probe["epochs"], "verdict": verdict.to_json()}
        return self.last

    def _clip(self):
        if isinstance(self.clip_model, tuple):
            return self.clip_model
        from lora_spectrum.errors import ClipUnavailable
        from lora_spectrum.measures.clip import load_clip

        try:
            self.clip_model = load_clip(self.clip_model)
        except ClipUnavailable:
            return self.clip_model  # probe_measures says why and falls back to pixels
        return self.clip_model


class ScalarWriter:
    """Each judged epoch's style, fidelity and leak, and the verdict's pick, as TensorBoard scalars (the tensorboard
    package's own writer, step = the epoch, as kohya logs its per-epoch tags) in ``folder``."""

    def __init__(self, folder: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self._writer = SummaryWriter(str(self.folder))

    def write(self, events: list[dict]) -> None:
        for ev in events:
            number = ev.get("epoch") if ev.get("epoch") is not None else ev.get("step")
            if ev["event"] == "judged" and number is not None:
                for key in ("style", "fidelity_kept", "leak"):
                    value = ev["measures"].get(key)
                    if value is not None:
                        self._writer.add_scalar(f"{SCALAR_PREFIX}/{key}", value, number)
            elif ev["event"] == "verdict" and ev["verdict"].get("epoch") is not None:
                last = max((e.get("epoch") or 0 for e in events if e["event"] == "judged"), default=None)
                if last is not None:
                    self._writer.add_scalar(f"{SCALAR_PREFIX}/pick", ev["verdict"]["epoch"], last)
                    self._writer.add_scalar(f"{SCALAR_PREFIX}/stop", float(ev["verdict"]["stop"]), last)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
