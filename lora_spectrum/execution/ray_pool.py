"""The ``ray`` executor. ``RayPool`` starts a local Ray cluster (or joins one), starts one ``EngineWorker``
actor per GPU (or ``workers`` CPU actors) with the same settings, keeps the workers whose engines match, and runs
a plan's batches on them: placed epoch-major (``place``), streamed back as they finish, a dead worker's unfinished
batches re-run on the others, a cancel sent to every worker. Imported only when ``executor: ray`` is asked for."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch

from lora_spectrum.errors import ClusterError, reason, shorten
from lora_spectrum.execution.batch import Batch, Outcome, file_stamp, place, with_ahead
from lora_spectrum.execution.remote_engine import SAME_ON_EVERY_WORKER, RemoteEngine, differences

log = logging.getLogger(__name__)
INSTALL_HINT = "the ray executor needs Ray, an optional extra: pip install -e .[cluster]"
POLL_S = 0.05  # how often the driver looks for a cancel while it waits for results
STEP_POLL_S = 0.5  # how often it asks the busy workers for their step, when someone shows progress
START_TIMEOUT_S = 1800  # a worker still loading its base after this long is reported as not started


def import_ray():
    """Ray, or a ``ClusterError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(INSTALL_HINT) from exc
    return ray


@dataclass
class Worker:
    """One actor of the pool: its name, handle, and what ``EngineWorker.start`` reported (node, pid, engine)."""

    name: str
    actor: object
    info: dict = field(default_factory=dict)
    alive: bool = True

    def describe(self) -> str:
        where = ", ".join(str(x) for x in (self.info.get("node"), self.info.get("device")) if x)
        return f"{self.name} ({where})" if where else self.name


class RayPool:
    """A pool of resident engines on Ray; its ``engine`` (a ``RemoteEngine``) is what callers render with."""

    name = "ray"

    def __init__(self, settings, allow_demo: bool = False, loras_given: bool = False,
                 say: Callable[[str], None] | None = None, worker_settings: list | None = None):
        self.settings = settings
        self.allow_demo, self.loras_given = allow_demo, loras_given
        self.say = say or log.info
        self.worker_settings = worker_settings  # per worker, instead of ``settings`` (one per worker)
        self.workers: list[Worker] = []
        self.problems: list[str] = []  # workers left out or lost, by name, with why
        self.engine: RemoteEngine | None = None
        self.facts: dict = {}
        self._started_cluster = False
        self._lock = threading.Lock()

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]

    @property
    def summary(self) -> str:
        return f"ray: {len(self.alive)} worker(s): " + ", ".join(w.describe() for w in self.alive)

    def files_read(self) -> dict[str, dict[str, int]]:
        """Per live worker, the LoRA files its engine read from disk and how often."""
        ray = import_ray()
        alive = self.alive
        return dict(zip([w.name for w in alive], ray.get([w.actor.files_read.remote() for w in alive]), strict=True))

    def record(self) -> dict:
        """For a manifest: the executor, the workers that rendered (name, node, device), those left out or lost."""
        return {"executor": "ray", "workers": [w.describe() for w in self.alive], "left_out": list(self.problems)}

    # ------------------------------------------------------------------ start
    def start(self) -> dict:
        """Start the cluster and the workers; the facts of the pool's engine. Raises ``ClusterError`` when Ray is
        missing, the cluster cannot be reached, or no worker loaded the base (each worker's reason named)."""
        ray = import_ray()
        s = self.settings
        # 1. The cluster: the one at ``ray_address``, or a local one for this process (stopped by ``close``).
        if not ray.is_initialized():
            try:
                if s.ray_address:
                    ray.init(address=s.ray_address, log_to_driver=False)
                else:  # a cluster of this process's own: no dashboard, no usage report
                    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                    # address "local": a new cluster even where RAY_ADDRESS or a `ray start` names another one
                    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
                    self._started_cluster = True
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
                where = f"at {s.ray_address}" if s.ray_address else "on this machine"
                raise ClusterError(f"cannot start or reach a Ray cluster {where} ({reason(exc)}); on each machine "
                                   f"run 'ray start --head' (or --address HEAD:6379), then give its address") from exc
        try:
            return self._start_workers(ray)
        except ClusterError:
            self.close()  # the workers started, and the local cluster if this pool started it
            raise

    def _start_workers(self, ray) -> dict:
        s = self.settings
        # 2. How many workers, on what: one per GPU (or ``workers`` of them), else ``workers`` CPU workers.
        free = ray.available_resources()
        gpus, cpus = int(free.get("GPU", 0)), float(free.get("CPU", 0))
        use_gpu = int(ray.cluster_resources().get("GPU", 0)) > 0 and s.device != "cpu"
        n = s.workers or (gpus if use_gpu else 0)
        if n < 1:
            raise ClusterError("every GPU of the Ray cluster is taken" if use_gpu else
                               "no GPU to use (none in the Ray cluster, or device: cpu): give workers: N (or "
                               "--workers N) for N CPU workers")
        if use_gpu and n > gpus:
            raise ClusterError(f"{n} workers asked for, but the Ray cluster has {gpus} free GPU(s)")
        # A CPU worker takes one of the cluster's cores for Ray's scheduling (a share of the free ones when there
        # are more workers), but computes with as many threads as a local run: on a CPU the intra-op thread count
        # changes the pixels (reductions split differently), and the grid must be the local one, cell for cell.
        # Their OpenMP threads sleep when idle instead of spinning: several workers' threads on the same cores
        # would otherwise spin against each other's work.
        options = dict(num_gpus=1, num_cpus=1) if use_gpu else dict(
            num_cpus=min(1.0, max(cpus, 0.01) / n), runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
        threads = 0 if use_gpu else torch.get_num_threads()
        per_worker = self.worker_settings or [s] * n
        from lora_spectrum.execution.worker import CONCURRENCY, EngineWorker

        remote = ray.remote(concurrency_groups=CONCURRENCY)(EngineWorker)
        self.say(f"starting {n} Ray worker(s) ({'one GPU' if use_gpu else f'{threads} CPU thread(s)'} each)")
        for i in range(n):
            # A GPU worker sees only its own card (Ray sets CUDA_VISIBLE_DEVICES): "cuda", whatever index was set.
            ws = replace(per_worker[i], device="cuda" if use_gpu else "cpu")
            actor = remote.options(max_restarts=0, **options).remote(
                f"worker-{i}", ws, self.allow_demo, self.loras_given, threads)
            self.workers.append(Worker(f"worker-{i}", actor))
        # 3. Every worker loads its engine; those that cannot, or load another, are left out by name.
        refs = [w.actor.start.remote() for w in self.workers]
        deadline = time.monotonic() + START_TIMEOUT_S  # one deadline for all: they load side by side
        for w, ref in zip(self.workers, refs, strict=True):
            try:
                w.info = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                w.info = {"error": f"still loading after {START_TIMEOUT_S} s (or waiting for a free CPU or GPU)"}
            except ray.exceptions.RayError as exc:
                w.info = {"error": shorten(reason(exc), 300)}
        reference = _reference([w for w in self.workers if "error" not in w.info])
        for w in self.workers:
            why = w.info["error"] if "error" in w.info else differences(w.info, reference.info)
            if why:
                self._leave_out(w, f"{w.name} could not load the base: {why}" if "error" in w.info
                                else f"{w.name} left out: it {why}")
        if not self.alive:
            self.close()
            raise ClusterError("no Ray worker could load the base: " + "; ".join(self.problems))
        self.facts = reference.info
        self.engine = RemoteEngine(self.facts, self, s.max_queued_renders)
        self.say(self.summary)
        return self.facts

    def _leave_out(self, w: Worker, why: str) -> None:
        ray = import_ray()
        with self._lock:  # two runs may see one death
            if not w.alive:
                return
            w.alive = False
            self.problems.append(why)
        self.say(why)
        try:
            ray.kill(w.actor, no_restart=True)
        except ray.exceptions.RayError:
            pass  # already gone

    # ------------------------------------------------------------------ run
    def run(self, batches: Iterable[Batch], cancel: threading.Event | None = None,
            on_step: Callable[[int, int, str], None] | None = None) -> Iterator[tuple[Batch, list[Outcome]]]:
        """Render ``batches`` on the workers; (batch, outcomes) as each finishes, in no fixed order."""
        ray = import_ray()
        batches = list(batches)  # every file checked and every cache hit taken before placing
        run_id = uuid.uuid4().hex
        inflight: dict = {}

        stamps = _stamps(batches)  # the files as checked: a worker refuses one changed since

        def submit(todo: list[Batch]) -> bool:
            # 1. Epoch-major over the live workers; each worker's queue in plan order, its reads ahead set.
            alive = self.alive
            if not alive:
                return False
            for w, queue in zip(alive, place(todo, len(alive)), strict=True):
                for b in with_ahead(queue):
                    inflight[w.actor.run.remote(run_id, b, {f: stamps[f] for f in b.files})] = (w, b)
            return True

        if batches and not submit(batches):
            for b in batches:
                yield b, _failed(b, "no Ray worker left to render it (see the workers' problems)")
            return
        cancel_sent, polled, seen = False, 0.0, {}
        try:
            while inflight:
                # 2. A cancel goes to every worker at once; each stops within a denoising step.
                if cancel is not None and cancel.is_set() and not cancel_sent:
                    for w in self.alive:
                        w.actor.cancel.remote(run_id)
                    cancel_sent = True
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
                if on_step is not None and time.monotonic() - polled > STEP_POLL_S:
                    self._report_steps(run_id, on_step, seen)
                    polled = time.monotonic()
                for ref in ready:
                    w, b = inflight.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        # 3. A dead worker: what it finished is kept, the rest goes to the others.
                        theirs = [r for r, (o, _) in inflight.items() if o is w]
                        done, lost = _collect(ray, theirs, inflight)
                        lost = sorted([b, *lost], key=lambda x: x.index)
                        self._leave_out(w, f"{w.name} died mid-plan ({shorten(reason(exc), 200)}); its "
                                           f"{len(lost)} unfinished batch(es) go to the other workers")
                        yield from done
                        if not submit(lost):
                            for x in lost:
                                yield x, _failed(x, f"no Ray worker left to render it ({w.name} died)")
                        continue
                    except ray.exceptions.RayError as exc:
                        outcomes = _failed(b, f"{w.name}: {shorten(reason(exc), 300)}", w.name)
                    yield b, outcomes
        finally:
            if inflight:  # the caller stopped early: the workers drop the rest of this run
                for w in self.alive:
                    w.actor.cancel.remote(run_id)

    def _report_steps(self, run_id: str, on_step, seen: dict) -> None:
        ray = import_ray()
        alive = self.alive
        try:
            states = ray.get([w.actor.step.remote() for w in alive], timeout=5)
        except ray.exceptions.RayError:
            return  # a worker just died: the result loop deals with it
        for w, state in zip(alive, states, strict=True):
            if state and state[0] == run_id and seen.get(w.name) != state:
                seen[w.name] = state
                on_step(state[1], state[2], f"{state[3]} on {w.name}")

    # ------------------------------------------------------------------ stop
    def close(self) -> None:
        """Stop the workers, and the local cluster if this pool started it."""
        ray = import_ray()
        with self._lock:
            for w in self.workers:
                if w.alive:
                    w.alive = False
                    try:
                        ray.kill(w.actor, no_restart=True)
                    except ray.exceptions.RayError:
                        pass
            if self._started_cluster and ray.is_initialized():
                ray.shutdown()
                self._started_cluster = False


def _reference(loaded: list[Worker]) -> Worker | None:
    """The engine the pool renders with: the one most workers loaded, a real base before the demo."""
    groups: dict[tuple, list[Worker]] = {}
    for w in loaded:
        groups.setdefault(tuple(repr(w.info.get(k)) for k in SAME_ON_EVERY_WORKER), []).append(w)
    best = max(groups.values(), key=lambda g: (not g[0].info["is_demo"], len(g), -loaded.index(g[0])), default=None)
    return best[0] if best else None


def _collect(ray, refs: list, inflight: dict) -> tuple[list, list[Batch]]:
    """Of a dead worker's refs: (batch, outcomes) of those it finished, and the batches it did not."""
    done, lost = [], []
    for r in refs:
        w, b = inflight.pop(r)
        try:
            ready, _ = ray.wait([r], timeout=0)
            if ready:
                done.append((b, ray.get(ready[0])))
                continue
        except ray.exceptions.RayError:
            pass  # died with it
        lost.append(b)
    return done, lost


def _stamps(batches: list[Batch]) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file of ``batches``, as the driver checked them."""
    return {f: file_stamp(f) for f in {f for b in batches for f in b.files}}


def _failed(batch: Batch, why: str, worker: str = "") -> list[Outcome]:
    return [Outcome(error=why, worker=worker) for _ in batch.routes]
