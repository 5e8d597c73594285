"""Every comparison rendered in the app, kept as an output folder (``grid_files.write_outputs``: manifest, cells,
grid) under a bounded ``runs_dir``: saved, listed newest first, reopened without rendering, deleted, each under a lock
shared by every process. Nothing here renders or imports streamlit."""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock
from PIL import Image

from lora_spectrum.errors import ConfigError, LoraSpectrumError
from lora_spectrum.file_locks import held
from lora_spectrum.language import _
from lora_spectrum.loras.catalog import Catalog, LoraEntry
from lora_spectrum.records.grid_files import read_manifest, write_outputs
from lora_spectrum.render.plan import BASE_LABEL, Cell, Plan
from lora_spectrum.render.sampling import Sampling

_RUN_ID = re.compile(r"^\d{8}-\d{6}-\d{6}-[0-9a-f]{4}$")
ARCHIVED = "archived"  # the state of a reopened column whose file is no longer the one rendered
LOCK_FILE = ".history.lock"  # in runs_dir; kept there (removing a lock file another process waits on breaks it)
LOCK_TIMEOUT_S = 60  # a save holds the lock while it writes one run's images; longer means a process is stuck


@dataclass(frozen=True)
class RunRecord:
    """One kept comparison, as History lists it."""

    id: str
    folder: Path
    made_at: str  # ISO 8601, UTC
    files: list[str]  # the columns' files ("base" for the base column)
    prompt: str  # the first prompt
    seeds: list[int]
    strengths: list[float]
    cells: int
    failed: int
    base: str
    prompts: tuple[str, ...] = ()  # every prompt, one row each (older manifests: the one prompt)


class RunHistory:
    """The ``runs_dir`` folder: one sub-folder per run, named ``YYYYmmdd-HHMMSS-<microseconds>-<4 hex>`` (sorts
    by time, unique).

    Saving, listing, reopening, pruning and deleting hold ``runs_dir/.history.lock``, a lock between processes,
    not only threads: a team may run several app processes on one ``runs_dir`` (or the CLI beside the app), and
    one process pruning or deleting while another writes or reads a run would leave a half-written run behind,
    delete the run being written, or read a run half deleted."""

    def __init__(self, folder: str | Path, max_runs: int = 50, max_mb: float = 2048):
        self.folder = Path(folder)
        self.max_runs = max(1, int(max_runs))
        self.max_bytes = int(max_mb * 2**20)
        # One lock object per history: re-entered by the same thread (``save`` prunes under it).
        self._file_lock = FileLock(self.folder / LOCK_FILE, timeout=LOCK_TIMEOUT_S)

    def save(self, plan: Plan, cells: list[Cell], base: str, family: str) -> RunRecord:
        """Write one run (manifest, cells, grid) and drop the oldest runs beyond ``max_runs``."""
        with self._locked(create=True):  # no other process lists, prunes or deletes a half-written run
            # Named under the lock: runs sort in the order they were saved, so the bound drops the oldest.
            now = datetime.now(UTC)
            run_id = f"{now:%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}"  # sorts by time, to the microsecond
            out = self.folder / run_id
            manifest = write_outputs(out, plan, cells, base, family,
                                     extra={"run": {"id": run_id, "made_at": now.isoformat(timespec="seconds")}})
            self.prune()
        return self._record(out, manifest)

    def list(self) -> list[RunRecord]:
        """The kept runs, newest first; a folder whose manifest cannot be read is left out (and left alone)."""
        out = []
        with self._locked():
            for path in sorted(self._folders(), reverse=True):
                with contextlib.suppress(ConfigError, KeyError, TypeError):
                    out.append(self._record(path, read_manifest(path)[1]))
        return out

    def reopen(self, run_id: str, catalog: Catalog | None = None) -> tuple[Plan, list[Cell], dict]:
        """The plan, cells (with their images) and manifest of a kept run, without rendering anything.

        A column whose file is still in ``catalog`` with the same sha256 is that entry (so it can be rendered again);
        otherwise it is an ``archived`` stand-in carrying the name, series and epoch the run recorded. A manifest
        that does not hold together (edited, cut short) is a ``ConfigError`` naming the run."""
        with self._locked():  # no other process deletes it while its images are read
            folder, manifest = read_manifest(self._folder(run_id))
            try:
                return self._rebuild(folder, manifest, catalog)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{run_id}: its manifest is incomplete ({type(exc).__name__}: {exc}); delete "
                                  f"it") from exc

    def _rebuild(self, folder: Path, manifest: dict, catalog: Catalog | None) -> tuple[Plan, list[Cell], dict]:
        # 1. The settings.
        s = manifest["settings"]
        sampling = Sampling(negative_prompt=s["negative_prompt"], steps=s["steps"], guidance=s["guidance"],
                            width=s["width"], height=s["height"], sampler=s["sampler"])
        records = manifest["cells"]
        # 2. The columns: live entries where the file is unchanged, stand-ins otherwise.
        sha_of = {r["file"]: r.get("sha256") for r in records if r.get("file")}
        columns = [None if name == BASE_LABEL else _column(name, sha_of.get(name), records, catalog)
                   for name in s["columns"]]
        plan = Plan(columns=columns, seeds=s["seeds"], strengths=s["strengths"], prompts=s["prompts"],
                    sampling=sampling)
        # 3. The cells, each at its column, with its PNG read back.
        index = {name: i for i, name in enumerate(s["columns"])}
        fields = set(Cell.__dataclass_fields__) - {"column", "image", "png", "image_path", "cancelled"}
        cells = []
        for r in records:
            cell = Cell(column=index[r.get("file") or BASE_LABEL], **{k: v for k, v in r.items() if k in fields})
            if r.get("image") and (folder / r["image"]).resolve().is_relative_to(folder.resolve()):
                with contextlib.suppress(OSError):
                    cell.png = (folder / r["image"]).read_bytes()
                    cell.image = Image.open(folder / r["image"]).convert("RGB")
                    cell.image_path = r["image"]
            if cell.png is None and not cell.error:
                cell.error = "image missing from the kept run"
            cells.append(cell)
        return plan, cells, manifest

    def delete(self, run_id: str) -> None:
        with self._locked():
            shutil.rmtree(self._folder(run_id), ignore_errors=True)

    def prune(self) -> None:
        """Delete the oldest runs until at most ``max_runs`` are kept and they fit in ``max_mb`` (the newest run is
        always kept, however big)."""
        with self._locked():
            runs = sorted(self._folders())
            drop = runs[: max(0, len(runs) - self.max_runs)]
            kept = runs[len(drop):]
            sizes = {p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in kept}
            total = sum(sizes.values())
            for path in kept[:-1]:
                if total <= self.max_bytes:
                    break
                drop.append(path)
                total -= sizes[path]
            for path in drop:
                shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self, create: bool = False):
        """Hold the history's lock (between processes); ``ConfigError`` when it cannot be had. Without ``create``,
        a ``runs_dir`` that does not exist yet is left uncreated (there is nothing to read or delete)."""
        if not create and not self.folder.is_dir():
            yield
            return
        with held(self._file_lock, self.folder,
                  lambda: ConfigError(_("{folder}: another process has held the run history for {seconds} s; try "
                                        "again later").format(folder=self.folder, seconds=LOCK_TIMEOUT_S)),
                  lambda exc: ConfigError(_("{folder}: cannot lock the run history ({reason})").format(
                      folder=self.folder, reason=exc.strerror or exc))):
            yield

    def _folders(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in self.folder.iterdir() if p.is_dir() and _RUN_ID.match(p.name)]

    def _folder(self, run_id: str) -> Path:
        if not _RUN_ID.match(run_id or "") or not (self.folder / run_id).is_dir():
            raise ConfigError(f"{run_id!r}: no such run in {self.folder}")
        return self.folder / run_id

    @staticmethod
    def _record(folder: Path, manifest: dict) -> RunRecord:
        s, cells, run = manifest["settings"], manifest["cells"], manifest.get("run") or {}
        made = run.get("made_at") or datetime.fromtimestamp(folder.stat().st_mtime, UTC).isoformat(
            timespec="seconds")
        return RunRecord(id=folder.name, folder=folder, made_at=made, files=list(s["columns"]), prompt=s["prompt"],
                         seeds=list(s["seeds"]), strengths=list(s["strengths"]), cells=len(cells),
                         failed=sum(1 for c in cells if c.get("error")), base=s["base"],
                         prompts=tuple(s.get("prompts") or [s["prompt"]]))


def _column(name: str, sha: str | None, records: list[dict], catalog: Catalog | None) -> LoraEntry:
    if catalog is not None:
        with contextlib.suppress(LoraSpectrumError):  # a file gone, renamed or unhashable: the stand-in below
            entry = catalog.get(name)
            if sha and catalog.sha256(entry) == sha:
                return entry
    epoch = next((r.get("epoch") for r in records if r.get("file") == name), None)
    return LoraEntry(name=name, path="", series="", epoch=epoch, step=None, state=ARCHIVED,
                     reason="this run's file has changed or is gone")
