"""Executing plans (``run_plan``) end to end: bad files met by a run, faults during work, cancel, the cache,
concurrent runs, and pixels that never depend on timing or load.

Every case goes through ``run_plan`` on a tiny real engine with a real catalog, the way the app and the ``grid``
command run, and is compared pixel for pixel with clean renders. What tests/loras/test_catalog.py (each bad file's state
and reason at scan time) and tests/adapters/ (swap atomicity and purity, engine-level threads) already cover
is not repeated: here a run meets those files, mostly files that were fine when the folder was scanned and broke,
vanished or were replaced before their swap, which is when a run meets them in practice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from lora_spectrum.errors import BusyError, Cancelled, PlanError, RenderError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.loras.lora_keys import HEADER_LIMIT
from lora_spectrum.records.grid_files import render_settings, write_outputs
from lora_spectrum.render.compilation import denoiser_size
from lora_spectrum.render.fuse_policy import record_verdict
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.render_cache import PixelSettings, RenderCache
from lora_spectrum.render.runs import run_plan
from tests.adapters.helpers import assert_same_tensors, base_weights
from tests.tiny import Boom, new_engine, pixels
from tests.tiny import request as tiny_request

SEEDS = (1,)
ROOT = Path(__file__).resolve().parents[2]


def request(family: str, seeds=SEEDS):
    """``tests.tiny.request`` without classifier-free guidance: half the denoiser work, same code paths here."""
    req = tiny_request(family, seeds)
    return replace(req, sampling=req.sampling.override(guidance=0.0))


# ---------------------------------------------------------------------------------------------- helpers
class Reference:
    """Clean renders, one fresh engine per family, memoised by file content: what every cell must equal."""

    def __init__(self):
        self.engines, self.memo = {}, {}

    def __call__(self, family: str, path=None, strength: float = 1.0, seeds=SEEDS) -> np.ndarray:
        content = None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()
        key = (family, content, strength if path else 0.0, tuple(seeds))
        if key not in self.memo:
            if family not in self.engines:
                self.engines[family] = new_engine(family)
            result = self.engines[family].render(request(family, seeds), None if path is None else str(path), strength)
            self.memo[key] = pixels(result.images)
        return self.memo[key]


@pytest.fixture(scope="module")
def ref():
    return Reference()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny renders are all thread overhead: one intra-op thread is 3-10x faster on a busy 2-core machine. The
    threads these tests start themselves (concurrent runs) are unaffected. Restored for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def plan_for(engine, columns, seeds=SEEDS, strengths=(1.0,)):
    """A plan with the same settings as ``tests.tiny.request`` (2 steps, 64x64 SDXL / 32x32 Z-Image)."""
    req = request(engine.family.name, seeds)
    return make_plan(engine.defaults, columns, list(seeds), strengths, [req.prompt], req.sampling)


def column(cells, name):
    """The cells of the column for file ``name`` (``None``: the base column)."""
    return [c for c in cells if c.file == name]


def column_pixels(cells, name):
    found = column(cells, name)
    assert found and all(c.image is not None for c in found), [(c.file, c.error) for c in found]
    return pixels([c.image for c in found])


def demo_catalog(demo_loras, family) -> tuple[Catalog, dict]:
    """The demo epochs (never modified here) as a scanned catalog, and its entries by epoch."""
    cat = Catalog(demo_loras[family][0].parent)
    cat.scan()
    return cat, {e.epoch: e for e in cat.entries}


class FailOnce:
    """A forward pre-hook on the denoiser that raises ``kind(message)`` on its ``at``-th call, once. It keeps weak
    references to the inputs it saw, to tell whether the failed render's tensors were freed, and no reference to
    the exception it raised (whose traceback holds them)."""

    def __init__(self, kind: type[BaseException], message: str, at: int = 1):
        self.kind, self.message, self.at, self.calls, self.seen = kind, message, at, 0, []

    def __call__(self, module, args, kwargs):
        self.calls += 1
        if args and isinstance(args[0], torch.Tensor):
            self.seen.append(weakref.ref(args[0]))
        if self.calls == self.at:
            raise self.kind(self.message)


def sd15_lora() -> dict[str, torch.Tensor]:
    """A kohya LoRA for SD1.5: UNet layers SDXL does not have (320 channels in down_blocks.0) and ``lora_te_``."""
    unet = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    return {f"{unet}.lora_down.weight": torch.randn(4, 320), f"{unet}.lora_up.weight": torch.randn(320, 4),
            f"{unet}.alpha": torch.tensor(4.0), f"{te}.lora_down.weight": torch.randn(4, 768),
            f"{te}.lora_up.weight": torch.randn(768, 4), f"{te}.alpha": torch.tensor(4.0)}


def te_only_lora() -> dict[str, torch.Tensor]:
    out = {}
    for te in ("lora_te1", "lora_te2"):
        key = f"{te}_text_model_encoder_layers_0_self_attn_q_proj"
        out |= {f"{key}.lora_down.weight": torch.randn(4, 32), f"{key}.lora_up.weight": torch.randn(32, 4),
                f"{key}.alpha": torch.tensor(4.0)}
    return out


def poisoned(path: Path, value: float) -> dict[str, torch.Tensor]:
    sd = load_file(str(path))
    key = next(k for k in sorted(sd) if k.endswith("lora_up.weight"))
    sd[key] = sd[key].clone()
    sd[key][0, 0] = value
    return sd


def set_old_mtime(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_files_fail_only_their_own_cells_and_change_nothing_else(tmp_path, demo_loras, ref):
    """The matrix on SDXL: files broken before the run (they pass the catalog, fail at swap) and files broken,
    removed or replaced mid-run (they passed the scan), between good epochs, odd names and a different rank."""
    family = "sdxl"
    folder = tmp_path / "loras"
    folder.mkdir()
    src = {p.name: p for p in demo_loras[family]}
    e20, e150, e300 = (Path(shutil.copy(src[f"jimeng_{n}.safetensors"], folder)) for n in (20, 150, 300))
    good = e20.read_bytes()
    engine = new_engine(family)
    denoiser = engine.hotswap.denoiser

    # 1. Files that pass the catalog (valid safetensors) but must not be swapped in, with the words of the cause.
    save_file(sd15_lora(), str(folder / "sd15-style_1.safetensors"), metadata={"ss_base_model_version": "sd_v1"})
    save_file(te_only_lora(), str(folder / "te-only_1.safetensors"))
    save_file(poisoned(e150, float("nan")), str(folder / "diverged-nan_1.safetensors"))
    save_file(poisoned(e150, float("inf")), str(folder / "diverged-inf_1.safetensors"))
    fail_at_swap = {"sd15-style_1.safetensors": "another architecture",
                    "te-only_1.safetensors": "only text-encoder keys",
                    "diverged-nan_1.safetensors": "NaN or Inf", "diverged-inf_1.safetensors": "NaN or Inf"}
    # 2. Files that must render exactly as their content does on a fresh engine: another rank (the slot is rebuilt
    #    for it and again for the next epoch), a space (and a name differing from it only by an underscore), and
    #    a unicode name near the file system's 255-byte limit.
    rank8 = folder / "jimeng-rank8_160.safetensors"
    save_file(demo.make_lora_state_dict(denoiser, family, rank=8, magnitude=1.2, seed=3), str(rank8))
    long_name = "ünïcødé_風格_" + "l" * 220 + "_300.safetensors"  # nothing in it is replaced in cell file names
    assert 250 <= len(long_name.encode()) <= 255
    odd = {"with space_150.safetensors": e150, "with_space_150.safetensors": e300, long_name: e20}
    for name, source in odd.items():
        shutil.copy(source, folder / name)
    # 3. Files that are fine when the folder is scanned and change before their swap (see ``break_files``).
    marker = tmp_path / "UNPICKLED"
    outside = Path(shutil.copy(e300, tmp_path / "outside_300.safetensors"))
    mid_run = {"zero-byte_1.safetensors": "zero bytes", "truncated_1.safetensors": "truncated",
               "growing_1.safetensors": "still growing", "garbage_1.safetensors": "not a safetensors file",
               "claims-more_1.safetensors": "header claims", "huge-header_1.safetensors": "header too large",
               "pickle_1.safetensors": "pickle files are never loaded",
               "link-out_1.safetensors": "outside the loras folder", "deleted_1.safetensors": "removed",
               "replaced_1.safetensors": "replaced after the last scan"}
    for name in mid_run:
        (folder / name).write_bytes(good)

    def break_files():
        (folder / "zero-byte_1.safetensors").write_bytes(b"")
        (folder / "truncated_1.safetensors").write_bytes(good[:-100])
        (folder / "claims-more_1.safetensors").write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
        for name in ("zero-byte_1.safetensors", "truncated_1.safetensors", "claims-more_1.safetensors"):
            set_old_mtime(folder / name)  # broken long ago (a failed copy), not a copy in progress
        (folder / "growing_1.safetensors").write_bytes(good[: len(good) // 2])  # a copy in progress, just now
        (folder / "garbage_1.safetensors").write_bytes(bytes(range(7, 256)) * 16)
        (folder / "huge-header_1.safetensors").write_bytes(struct.pack("<Q", HEADER_LIMIT + 1) + b"{" + b" " * 64)
        Boom.marker = str(marker)
        (folder / "pickle_1.safetensors").write_bytes(pickle.dumps(Boom()))
        (folder / "link-out_1.safetensors").unlink()
        os.symlink(outside, folder / "link-out_1.safetensors")
        (folder / "deleted_1.safetensors").unlink()
        (folder / "replaced_1.safetensors").write_bytes(e300.read_bytes())

    cat = Catalog(folder)
    entries = {e.name: e for e in cat.scan()}
    assert all(e.state == "ready" for e in entries.values()), [(e.name, e.reason) for e in entries.values()]
    before = ([e.to_json() for e in cat.entries], cat.generation)
    expected = {None: ref(family), e20.name: ref(family, e20), e150.name: ref(family, e150),
                e300.name: ref(family, e300), rank8.name: ref(family, rank8)}
    expected |= {name: ref(family, source) for name, source in odd.items()}

    # Good and bad columns interleaved: every bad column comes after rendered cells and before more; the base
    # column comes last, after every failure.
    order = [e20.name, *mid_run, e150.name, *fail_at_swap, rank8.name, e300.name, *odd, None]
    plan = plan_for(engine, [None if n is None else entries[n] for n in order])
    active_after, last_ok, broken = [], [(None, 0.0)], []

    def on_progress(done, total, cell):
        if cell.error is None:
            last_ok.append((None, 0.0) if cell.file is None else (str(folder / cell.file), 1.0))
        active_after.append((cell, engine.hotswap.get_active_adapter(), last_ok[-1]))
        if cell.file == e20.name and not broken:
            broken.append(True)
            break_files()

    cells = run_plan(engine, plan, cat, None, on_progress)

    # Each bad column: its own cells fail, naming the file and the cause; nothing was unpickled.
    for name, words in {**fail_at_swap, **mid_run}.items():
        for c in column(cells, name):
            assert c.image is None and c.png is None
            assert name in c.error and words in c.error, (name, c.error)
    assert not marker.exists(), "a pickle was unpickled"
    # Every other cell equals its clean render, before and after the bad columns.
    for name, want in expected.items():
        assert np.array_equal(column_pixels(cells, name), want), name
    # A failed swap never changes the active adapter: after each failed cell it is the last good column's.
    assert len(active_after) == len(cells) and any(c.error for c, _, _ in active_after)
    for cell, active, last in active_after:
        if cell.error:
            assert active == last, (cell.file, active, last)
    # The resident base is untouched: bit-identical weights (and the base column, rendered last, equals a fresh one).
    assert_same_tensors(base_weights(denoiser), base_weights(demo.build_tiny(family).unet))
    # The run changed nothing in the catalog; a rescan then says what each file has become.
    assert ([e.to_json() for e in cat.entries], cat.generation) == before
    now = {e.name: e for e in cat.scan()}
    assert "deleted_1.safetensors" not in now
    for name in set(mid_run) - {"deleted_1.safetensors", "replaced_1.safetensors"}:
        assert not now[name].selectable, (name, now[name].state)
    with pytest.raises(PlanError, match="pickle_1.safetensors.*pickle"):
        plan_for(engine, [now["pickle_1.safetensors"]])
    # Every finished render is written under its own name (no two cells share a file, none is too long).
    out = write_outputs(tmp_path / "out", plan, cells, engine.base_id, family)
    images = [c["image"] for c in out["cells"] if c["image"]]
    assert len(images) == len({*images}) == sum(c.png is not None for c in cells) == len(expected)
    assert all((tmp_path / "out" / i).is_file() for i in images)
    # The copy that was growing finished: once settled, the next scan offers it again.
    growing = folder / "growing_1.safetensors"
    growing.write_bytes(good)
    set_old_mtime(growing)
    assert {e.name: e for e in cat.scan()}[growing.name].selectable


def test_wrong_architecture_and_another_rank_on_z_image(tmp_path, demo_loras, ref):
    family = "z-image"
    folder = tmp_path / "loras"
    folder.mkdir()
    e20, e300 = (Path(shutil.copy(p, folder)) for p in (demo_loras[family][0], demo_loras[family][-1]))
    engine = new_engine(family)
    sdxl = folder / "sdxl-style_1.safetensors"
    save_file(demo.make_lora_state_dict(demo.build_tiny("sdxl").unet, "sdxl"), str(sdxl),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    rank8 = folder / "jimeng-rank8_160.safetensors"
    save_file(demo.make_lora_state_dict(engine.hotswap.denoiser, family, rank=8, magnitude=1.2, seed=3), str(rank8))
    cat = Catalog(folder)
    entries = {e.name: e for e in cat.scan()}
    order = [None, e20.name, sdxl.name, rank8.name, e300.name]
    cells = run_plan(engine, plan_for(engine, [None if n is None else entries[n] for n in order]), cat)
    for c in column(cells, sdxl.name):
        assert sdxl.name in c.error and "another architecture" in c.error, c.error
    for name, path in ((None, None), (e20.name, e20), (rank8.name, rank8), (e300.name, e300)):
        assert np.array_equal(column_pixels(cells, name), ref(family, path)), name


# ---------------------------------------------------------------------------------------------- faults
def test_out_of_memory_frees_the_render_reports_advice_and_the_next_render_works(demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family)
    cat, by_epoch = demo_catalog(demo_loras, family)
    e20, e150 = by_epoch[20], by_epoch[150]
    # 1. Directly: the error reaches the caller with advice, and nothing of the failed render is still alive
    #    while the caller holds the error (else freeing memory - gc, the CUDA cache - would have freed nothing).
    hook = FailOnce(torch.OutOfMemoryError, "CUDA out of memory. Tried to allocate 20.00 GiB")
    handle = engine.hotswap.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with pytest.raises(RenderError) as info:
            engine.render(request(family, SEEDS), e150.path)
        assert hook.seen and all(r() is None for r in hook.seen), "the failed render's tensors are still held"
        message = str(info.value)
        assert "out of memory" in message and "smaller size" in message and "offload" in message
        # 2. In a run: the failing column's cells carry the advice; the run goes on; the next render works.
        hook.calls, hook.at = 0, request(family).sampling.steps + 1  # the base column's forward passes, then epoch 20's
        cells = run_plan(engine, plan_for(engine, [None, e20, e150]), cat)
    finally:
        handle.remove()
    assert np.array_equal(column_pixels(cells, None), ref(family))
    for c in column(cells, e20.name):
        assert "out of memory" in c.error and "offload" in c.error
    assert np.array_equal(column_pixels(cells, e150.name), ref(family, e150.path))
    assert np.array_equal(pixels(engine.render(request(family, SEEDS), e20.path).images), ref(family, e20.path))


def test_cancelling_a_run_leaves_the_engine_ready(demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family, max_queued=2)
    cat, by_epoch = demo_catalog(demo_loras, family)
    plan = plan_for(engine, [None, by_epoch[20], by_epoch[150]])
    # 1. Between images: the progress callback cancels after the first column.
    cancel, seen = threading.Event(), []

    def cancel_after_first(done, total, cell):
        seen.append((done, total, id(cell)))
        cancel.set()

    cells = run_plan(engine, plan, cat, on_progress=cancel_after_first, cancel=cancel)
    assert np.array_equal(column_pixels(cells, None), ref(family)), "finished cells are kept"
    assert all(c.error == "cancelled" and c.image is None for c in cells if c.file is not None)
    assert [d for d, _, _ in seen] == list(range(1, len(cells) + 1)), "every cell reported once, cancelled too"
    assert {i for _, _, i in seen} == {id(c) for c in cells}
    # 2. In the middle of a render: the per-step callback cancels after the first step of two.
    stop = threading.Event()
    with pytest.raises(Cancelled):
        engine.render(request(family, SEEDS), by_epoch[300].path, cancel=stop,
                      on_step=lambda i, n, label: stop.set() if i == 1 else None)
    # Ready: nothing holds the lock or an admission, and the next run equals a clean one.
    assert not engine.lock.locked()
    with engine.admit(), engine.admit():
        pass
    again = run_plan(engine, plan_for(engine, [by_epoch[20], by_epoch[300]]), cat)
    assert np.array_equal(column_pixels(again, by_epoch[20].name), ref(family, by_epoch[20].path))
    assert np.array_equal(column_pixels(again, by_epoch[300].name), ref(family, by_epoch[300].path))


def test_an_exception_inside_one_cell_never_leaves_a_lora_active(demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family)
    cat, by_epoch = demo_catalog(demo_loras, family)
    hook = FailOnce(ValueError, "a bug in a custom component")
    handle = engine.hotswap.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        cells = run_plan(engine, plan_for(engine, [by_epoch[150], None, by_epoch[300]]), cat)
    finally:
        handle.remove()
    for c in column(cells, by_epoch[150].name):
        assert "render failed" in c.error and "a bug in a custom component" in c.error, c.error
    # The base column right after the failed LoRA cell, and a base render after the run, equal a fresh base.
    assert np.array_equal(column_pixels(cells, None), ref(family))
    assert np.array_equal(column_pixels(cells, by_epoch[300].name), ref(family, by_epoch[300].path))
    assert np.array_equal(pixels(engine.render(request(family, SEEDS)).images), ref(family))


def test_an_unusable_cache_folder_costs_no_render(tmp_path, demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family)
    cat, by_epoch = demo_catalog(demo_loras, family)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    cells = run_plan(engine, plan_for(engine, [by_epoch[50]]), cat, RenderCache(tmp_path / "cache"))
    assert np.array_equal(column_pixels(cells, by_epoch[50].name), ref(family, by_epoch[50].path))


def test_a_run_leaves_the_cache_within_its_bound(tmp_path, demo_loras):
    family = "sdxl"
    engine = new_engine(family)
    cat, by_epoch = demo_catalog(demo_loras, family)
    cache = RenderCache(tmp_path / "cache", max_mb=0.02)  # room for a few 64x64 cells, not for all of them
    cells = run_plan(engine, plan_for(engine, [by_epoch[20], by_epoch[50], by_epoch[80]]), cat, cache)
    stored = list((tmp_path / "cache").glob("*/*.png"))
    assert all(c.error is None for c in cells)
    assert 0 < len(stored) < len(cells), (len(stored), len(cells))
    assert sum(p.stat().st_size for p in stored) <= cache.max_bytes


# ---------------------------------------------------------------------------------------------- concurrency
@pytest.mark.parametrize("n_threads", [2, 4])
def test_concurrent_runs_each_get_exactly_their_own_epochs(n_threads, tmp_path, demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family, max_queued=n_threads)
    cat, by_epoch = demo_catalog(demo_loras, family)
    pairs = [(20, 220), (300, 50), (150, 80), (20, 220)][:n_threads]  # the last repeats the first: one cache key
    results, errors = {}, []
    barrier = threading.Barrier(n_threads)

    def work(i, epochs):
        try:
            barrier.wait(timeout=60)
            cache = RenderCache(tmp_path / "cache")  # one per session, as in the app, on one shared folder
            results[i] = run_plan(engine, plan_for(engine, [by_epoch[e] for e in epochs]), cat, cache)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, p)) for i, p in enumerate(pairs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for i, epochs in enumerate(pairs):
        for e in epochs:
            entry = by_epoch[e]
            assert np.array_equal(column_pixels(results[i], entry.name), ref(family, entry.path)), (i, e)


def test_the_busy_limit_turns_a_third_run_away_at_once(demo_loras, ref):
    family = "sdxl"
    engine = new_engine(family, max_queued=2)
    cat, by_epoch = demo_catalog(demo_loras, family)
    entered, release = threading.Semaphore(0), threading.Event()
    results = {}

    def hold(done, total, cell):  # keeps its run, and so its admission, open until released
        entered.release()
        release.wait(timeout=120)

    def work(epoch):
        results[epoch] = run_plan(engine, plan_for(engine, [by_epoch[epoch]]), cat, on_progress=hold)

    holders = [threading.Thread(target=work, args=(e,)) for e in (20, 300)]
    for t in holders:
        t.start()
    try:
        assert entered.acquire(timeout=120) and entered.acquire(timeout=120), "the two runs did not start"
        generation = engine.hotswap.generation
        third = []
        with pytest.raises(BusyError, match="busy"):
            run_plan(engine, plan_for(engine, [by_epoch[150]]), cat, on_progress=lambda *a: third.append(a))
        # Turned away without waiting for the others (still held) and without swapping or rendering anything.
        assert all(t.is_alive() for t in holders)
        assert not third and engine.hotswap.generation == generation
    finally:
        release.set()
        for t in holders:
            t.join(timeout=300)
    for e in (20, 300):
        assert np.array_equal(column_pixels(results[e], by_epoch[e].name), ref(family, by_epoch[e].path))
    after = run_plan(engine, plan_for(engine, [by_epoch[150]]), cat)
    assert np.array_equal(column_pixels(after, by_epoch[150].name), ref(family, by_epoch[150].path))


# ---------------------------------------------------------------------------------------------- timing and load
@contextlib.contextmanager
def busy_cores():
    """A machine under load: a busy loop spinning on every core, killed after."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(0.5)  # every spinner running before the first render
        yield
    finally:
        for p in spinners:
            p.kill()
        for p in spinners:
            p.wait()


def measured(path: Path, monkeypatch, fusing_pays: bool) -> None:
    """fuse: auto reads ``path``: with ``fusing_pays``, bench's measurements for the tiny SDXL engine on this CPU
    where merging pays (fuse: auto fuses); else nothing recorded (unfused)."""
    monkeypatch.setenv("LORA_SPECTRUM_FUSE_VERDICTS", str(path))
    if fusing_pays:
        size = denoiser_size(new_engine("sdxl").hotswap.denoiser)
        record_verdict(torch.device("cpu"), "sdxl", size, bare_s=0.01, unfused_s=1.0, merge_s=1e-6, image=64,
                       path=path)


@pytest.fixture
def fusing_pays(tmp_path, monkeypatch):
    measured(tmp_path / "fuse.json", monkeypatch, fusing_pays=True)


def how(cell) -> dict:
    """How ``cell`` was rendered, as its PNG parameters say."""
    assert cell.png is not None, (cell.file, cell.error)
    return render_settings(cell.png)


@pytest.mark.parametrize("recorded", [True, False], ids=["fusing-pays", "nothing-recorded"])
def test_a_grid_renders_the_same_on_an_idle_and_a_busy_machine(recorded, tmp_path, monkeypatch, demo_loras):
    """The same grid on one resident engine, idle then with every core busy: the same pixels, cell for cell, and
    the same record of how each was rendered (fuse: auto chooses from what bench recorded, never from timings)."""
    family = "sdxl"
    measured(tmp_path / "fuse.json", monkeypatch, fusing_pays=recorded)
    engine = new_engine(family, fuse="auto")
    cat, by_epoch = demo_catalog(demo_loras, family)
    plan = plan_for(engine, [None, by_epoch[20], by_epoch[150], by_epoch[300]], seeds=(1, 2), strengths=(0.5, 1.0))
    t0 = time.perf_counter()
    idle = run_plan(engine, plan, cat)
    idle_s = time.perf_counter() - t0
    with busy_cores():
        t0 = time.perf_counter()
        busy = run_plan(engine, plan, cat)
        busy_s = time.perf_counter() - t0
    print(f"idle {idle_s:.2f} s, busy {busy_s:.2f} s")  # the load is real: the busy run is slower
    assert len(idle) == len(busy) == 2 + 3 * 2 * 2
    for a, b in zip(idle, busy, strict=True):
        assert (a.file, a.seed, a.strength) == (b.file, b.seed, b.strength)
        assert np.array_equal(pixels([a.image]), pixels([b.image])), (a.file, a.seed, a.strength)
        assert how(a) == how(b) == {"dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
                                    "compiled": False, "fused": recorded and a.file is not None, "batch": 2,
                                    "routed": 0}
    # The manifest carries each cell's record.
    manifest = write_outputs(tmp_path / "out", plan, busy, engine.base_id, family)
    assert [c["render"] for c in manifest["cells"]] == [how(c) for c in busy]


def test_a_cell_renders_the_same_in_a_grid_and_alone_with_fuse_auto(fusing_pays, tmp_path, demo_loras):
    family = "sdxl"
    engine = new_engine(family, fuse="auto")
    cat, by_epoch = demo_catalog(demo_loras, family)
    cache = RenderCache(tmp_path / "cache")
    grid = run_plan(engine, plan_for(engine, [by_epoch[20], by_epoch[150], by_epoch[300]]), cat, cache)
    [in_grid] = column(grid, by_epoch[150].name)
    assert how(in_grid)["fused"], "fusing pays here: the grid's adapters are merged"
    # Alone, on a fresh engine: the same pixels, rendered the same way.
    alone_plan = plan_for(engine, [by_epoch[150]])
    [alone] = run_plan(new_engine(family, fuse="auto"), alone_plan, cat)
    assert np.array_equal(pixels([alone.image]), pixels([in_grid.image]))
    assert how(alone) == how(in_grid)
    # Alone through the grid's cache: the same key, so the grid's own PNG.
    [again] = run_plan(engine, alone_plan, cat, cache)
    assert again.cached and again.png == in_grid.png
    # Routed with its neighbours (another batch, unfused arithmetic) it is another cell: its own key and record.
    routed = run_plan(engine, plan_for(engine, [by_epoch[20], by_epoch[150], by_epoch[300]]), cat, cache, mix=3)
    [in_routed] = column(routed, by_epoch[150].name)
    assert not in_routed.cached and in_routed.routed
    assert how(in_routed) | {"fused": True, "batch": 1, "routed": 0} == how(in_grid)
    assert (how(in_routed)["fused"], how(in_routed)["batch"], how(in_routed)["routed"]) == (False, 3, 3)


def test_a_batch_comes_from_the_cache_whole_or_renders_whole(tmp_path, demo_loras, ref):
    """A cell is cached under the batch it rendered in; when one cell of a batch is missing, the batch renders
    whole again, so that no cell renders in a batch other than the one its key names."""
    family = "sdxl"
    engine = new_engine(family)
    cat, by_epoch = demo_catalog(demo_loras, family)
    cache = RenderCache(tmp_path / "cache")
    plan = plan_for(engine, [by_epoch[20], by_epoch[150]], seeds=(1, 2))
    first = run_plan(engine, plan, cat, cache)
    lost = column(first, by_epoch[150].name)[1]
    key = RenderCache.key(engine, plan.sampling, lost, PixelSettings.of(engine, fused=False, batch=2))
    cache._path(key).unlink()
    again = run_plan(engine, plan, cat, cache)
    assert [c.cached for c in again] == [True, True, False, False]
    assert [c.png for c in again] == [c.png for c in first]
    assert all(how(c)["batch"] == 2 for c in again)
