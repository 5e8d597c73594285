"""The one resident pipeline: device, dtype, offload, memory reservation, the process-wide lock and ``render()``.

Nothing here parses file names or decides fallbacks (the caller picks the demo when the configured base cannot
load), and nothing here knows about Streamlit. One ``Engine`` is shared by every browser session of the app; all
of its state changes (swap + render) happen under ``Engine.lock``, because diffusers pipelines are not thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lora_spectrum.adapters import HotSwapper, SwapRecord
from lora_spectrum.admission import Admission
from lora_spectrum.bases import load_pipeline, place
from lora_spectrum.compilation import compile_denoiser, eager, resolve_compile, settle
from lora_spectrum.devices import free_memory, is_out_of_memory, reserve_vram, resolve_device, resolve_dtype
from lora_spectrum.errors import (
    Cancelled,
    LoraSpectrumError,
    OutOfMemoryError,
    PlanError,
    RenderError,
    reason,
    translated,
)
from lora_spectrum.families import Family, detect_family, get_family
from lora_spectrum.fuse_policy import FuseChoice, FusePolicy, resolve_fuse, verdict_for
from lora_spectrum.language import _
from lora_spectrum.sampling import Sampling

log = logging.getLogger(__name__)
Route = tuple[str | None, float, tuple[int, ...]]  # (file or None for the base, strength, seeds)


@dataclass(frozen=True)
class RenderRequest:
    """What to render: one image per seed of ``prompt``; the LoRA and its strength are passed to ``Engine.render``.
    ``fuse``: under ``fuse: auto``, whether the adapter is merged and why, as chosen for the whole run before it
    (``Engine.fuse_choice``); None: the engine chooses for this request alone, by the same rule."""

    prompt: str
    seeds: tuple[int, ...] = (0,)
    sampling: Sampling = Sampling()
    fuse: FuseChoice | None = None


@dataclass
class RenderResult:
    images: list  # PIL images, one per seed
    swap: SwapRecord
    seconds: float


class Engine:
    """A resident base pipeline plus its hot-swapper, shared by every caller of this process."""

    def __init__(self, pipe, family: Family, base_id: str, device: torch.device | None = None,
                 resident_adapters: int = 4, empty_cache_after_swap: bool = False, max_queued: int = 2,
                 max_sequence_length: int = 512, offload: str = "none", note: str = "",
                 defaults: dict | None = None, fuse: bool | str = False, prefetch: bool = True,
                 compile: bool | str = "off", compile_backend="inductor"):  # noqa: A002 - the config's word
        self.pipe = pipe
        self.family = family
        self.base_id = base_id
        self.device = device or next(family.denoiser(pipe).parameters()).device
        self.dtype = next(family.denoiser(pipe).parameters()).dtype
        self.offload = offload
        self.note = note  # shown by the UI, e.g. why the demo is in use
        # Render defaults: the family's YAML, overridden for bases that need others (the tiny demo).
        self.defaults = family.defaults.with_sampling(**(defaults or {}))
        self.max_sequence_length = max_sequence_length
        self.lock = threading.Lock()
        self.admission = Admission(max_queued)
        # Merge the active adapter into the base weights: on, off, or auto (chosen before each run from what
        # bench recorded for this machine, fuse_policy.py; never from the renders' own timings).
        self.fuse_mode = resolve_fuse(fuse, self.device, offload)
        # torch.compile for the denoiser: off, on, or auto (where bench --compile found it pays; compilation.py).
        self.compiled, self.compile_note, self.fuse_mode = settle(compile, self.device, family.name, self.fuse_mode,
                                                                  offload, family.denoiser(pipe))
        self.fuse_policy = (FusePolicy(verdict_for(self.device, family.name, family.denoiser(pipe)))
                            if self.fuse_mode == "auto" else None)
        self.fuse_decision = ""  # why fuse: auto chose what it did for the last swap ("" until it chose)
        self.hotswap = HotSwapper(pipe, family, resident=resident_adapters, empty_cache=empty_cache_after_swap,
                                  fuse=self.fuse_mode == "on", compiled=self.compiled)
        if self.compiled:
            compile_denoiser(family.denoiser(pipe), compile_backend)
        self.prefetch_enabled = bool(prefetch)  # read the plan's next file while the current one renders
        self._scheduler_config = pipe.scheduler.config
        self._embeds: OrderedDict[tuple, tuple] = OrderedDict()
        self.prompt_encodings = 0  # encode_prompt calls actually run (cache misses)
        self.text_encoder_forwards = 0  # forwards of any text encoder, counted by hooks that change nothing
        for te in family.text_encoders(pipe):
            te.register_forward_hook(self._count_te_forward)
        pipe.set_progress_bar_config(disable=True)

    @property
    def fuse(self) -> bool:
        """Whether swaps merge the adapter into the base weights now (fixed by ``fuse: on/off``; auto decides)."""
        return self.hotswap.fuse

    def _count_te_forward(self, *_args):
        self.text_encoder_forwards += 1

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, base: str, family: str = "auto", device: str = "auto", dtype: str = "auto",
             offload: str = "none", local_files_only: bool = True, reserve_vram_gb: float = 0.0,
             fuse: bool | str = "auto", compile: bool | str = "off", cache_dir=None, **kwargs) -> Engine:  # noqa: A002
        """Load a base: a Hugging Face repo id, a local diffusers folder, or a single-file checkpoint.

        Raises ``BaseLoadError`` with the reason; with ``local_files_only`` a base missing from the local cache
        fails in seconds instead of waiting on the network.
        """
        # 1. Family and device.
        fam = get_family(detect_family(base, local_files_only, cache_dir) if family == "auto" else family)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev, fam.defaults.dtype_cuda)
        fused = resolve_fuse(fuse, dev, offload)  # checked before the (slow) load
        resolve_compile(compile, dev, fam.name, fused, offload)
        # 2. Load with diffusers (safetensors weights only), then place it on the device or offload it; the
        #    family's variant (Z-Image base or Turbo, FLUX.1 dev or schnell) picks the render defaults.
        pipe = load_pipeline(base, fam, torch_dtype, local_files_only, cache_dir)  # cache_dir: the hub cache
        fam = fam.for_base(base, pipe)
        place(pipe, dev, offload)
        reserve_vram(dev, reserve_vram_gb)
        return cls(pipe, fam, base, device=dev, offload=offload, fuse=fused, compile=compile, **kwargs)

    @classmethod
    def from_settings(cls, settings) -> Engine:
        return cls.load(settings.base, family=settings.family, device=settings.device, dtype=settings.dtype,
                        offload=settings.offload, local_files_only=settings.local_files_only,
                        reserve_vram_gb=settings.reserve_vram_gb, resident_adapters=settings.resident_adapters,
                        empty_cache_after_swap=settings.empty_cache_after_swap, cache_dir=settings.hf_cache or None,
                        max_queued=settings.max_queued_renders, fuse=settings.fuse, prefetch=settings.prefetch,
                        compile=settings.compile, compile_backend=settings.compile_backend)

    # ------------------------------------------------------------------ admission
    def admit(self):
        """Admit one run (a grid, a render): at most ``max_queued`` at once; more raise ``BusyError`` at once."""
        return self.admission.enter()

    # ------------------------------------------------------------------ prompts
    def encode(self, prompt: str, negative_prompt: str, guidance: float) -> tuple:
        """Prompt embeddings, computed once per (prompt, negative, guidance on/off) and reused for every epoch,
        strength and seed: the text encoders are never modified, so this is exact."""
        cfg = self._uses_cfg(guidance)
        key = (prompt, negative_prompt if cfg else "", cfg)
        if key in self._embeds:
            self._embeds.move_to_end(key)
            return self._embeds[key]
        self.prompt_encodings += 1
        with torch.no_grad():
            out = self.family.encode_prompt(self.pipe, prompt, negative_prompt, cfg, self._exec_device,
                                            self.max_sequence_length)
        self._embeds[key] = out
        while len(self._embeds) > 16:
            self._embeds.popitem(last=False)
        return out

    def forget_prompts(self) -> None:
        """Drop the cached prompt embeddings (the next render of each prompt encodes it again)."""
        self._embeds.clear()

    @property
    def _exec_device(self):
        return getattr(self.pipe, "_execution_device", self.device)

    def _uses_cfg(self, guidance: float) -> bool:
        return self.family.uses_cfg(self.pipe, guidance)

    # ------------------------------------------------------------------ render
    def prefetch(self, lora_path: str | None) -> None:
        """Read ``lora_path`` ahead for a swap to come (``adapters/prefetch.py``); needs no lock, touches no
        model, and a bad file fails at its own swap only."""
        if self.prefetch_enabled:
            self.hotswap.store.prefetch(lora_path)

    def set_lora(self, lora_path: str | None, strength: float = 1.0, prepared=None) -> SwapRecord:
        """Swap (must hold ``lock``). ``None`` or strength 0 renders the base. ``prepared``: the file as the
        caller just read it (``HotSwapper.activate`` then does not read it again)."""
        if lora_path is None:
            return self.hotswap.use_base()
        return self.hotswap.activate(lora_path, strength, prepared=prepared)

    def render(self, request: RenderRequest, lora_path: str | None = None, strength: float = 1.0,
               cancel: threading.Event | None = None, on_step: Callable[[int, int], None] | None = None,
               ahead: str | None = None) -> RenderResult:
        """Swap in ``lora_path`` at ``strength`` (``None``: the base) and render one image per seed; ``ahead``:
        the file the caller swaps in next, read in the background while this renders (``prefetch``).

        The swap and the render happen under the engine lock, so no other caller can change the adapter between
        them. Every call states its own adapter, so a failed call never leaves a LoRA active for the next one.
        """
        with self.lock:
            t0 = time.perf_counter()
            self._choose_fuse(request, lora_path, strength)
            try:
                swap = self.set_lora(lora_path, strength)
            finally:  # after the swap took this file's read ahead (a failed swap still lets the next one read)
                self.prefetch(ahead)
            images = self._render_locked(request, cancel, on_step)
            return RenderResult(images, swap, time.perf_counter() - t0)

    def render_routed(self, request: RenderRequest, calls: list[list[Route]], cancel: threading.Event | None = None,
                      on_step: Callable[[int, int], None] | None = None, ahead: str | None = None
                      ) -> list[list[RenderResult | LoraSpectrumError]]:
        """Render batched pipeline calls of (file or ``None``, strength, seeds) routes, each sample through its own
        adapter (``HotSwapper.routed``); ``request.seeds`` is ignored; ``ahead`` as for ``render``, read once the
        first call's files are. ``calls`` come grouped by the plan
        (``plan.calls``): the routes of one call have the same number of seeds. Every file is read once for all.

        Returns, per call and route, its ``RenderResult`` (a shared call's swap record is the routing set-up), or
        the ``LoraSpectrumError`` that failed it (its file's, its shared call's, or ``Cancelled``). A route alone
        in its call, or whose file cannot share one, renders as ``render`` would; if routing cannot be set up, or
        runs out of memory, its routes render one by one.
        """
        for call in calls:
            if len({len(seeds) for _path, _strength, seeds in call}) > 1:
                raise PlanError("the routes of one batched call must have the same number of seeds")
        out: list[list[RenderResult | LoraSpectrumError | None]] = [[None] * len(call) for call in calls]
        prepared: dict[str, object] = {}
        with self.lock:
            try:
                for call, results in zip(calls, out, strict=True):
                    # 1. Each file read and checked on its own, so that a bad one fails its own route only.
                    shared, alone = [], []
                    for i, (path, strength, _seeds) in enumerate(call):
                        if path is not None and float(strength) != 0.0:
                            try:
                                if str(path) not in prepared:  # one file at two strengths is read once
                                    prepared[str(path)] = self.hotswap.load_adapter(path)[0]
                            except LoraSpectrumError as exc:
                                results[i] = exc
                                continue
                            if self.hotswap.unroutable(prepared[str(path)]):
                                alone.append(i)
                                continue
                        shared.append(i)
                    if len(shared) < 2:
                        alone, shared = sorted(alone + shared), []
                    if call is calls[0]:
                        self.prefetch(ahead)
                    # 2. The shared call first, then the rest one by one.
                    if shared:
                        self._render_shared(request, call, shared, prepared, results, cancel, on_step)
                    for i in alone:
                        self._render_alone(request, call, i, prepared, results, cancel, on_step)
            except Cancelled as exc:  # a cancel leaves the routes not done marked
                out = [[exc if o is None else o for o in results] for results in out]
        return out

    def _render_shared(self, request, routes, group, prepared, out, cancel, on_step) -> None:
        t0 = time.perf_counter()
        blocks = [(routes[i][0], float(routes[i][1])) for i in group]  # one block a route, its seeds its samples
        seeds = tuple(seed for i in group for seed in routes[i][2])
        swap = images = None
        try:
            with eager(self.hotswap.denoiser) if self.compiled else contextlib.nullcontext(), \
                    self.hotswap.routed(blocks, len(routes[group[0]][2]), prepared=prepared) as swap:
                images = self._render_locked(replace(request, seeds=seeds), cancel, on_step)
        except Cancelled:
            raise
        except LoraSpectrumError as exc:
            # Routing could not be set up (memory, a file changed), or the wide batch ran out of memory: one by
            # one instead, each route needing only its own seeds' memory. Any other failure fails them all.
            if swap is None or (images is None and isinstance(exc, OutOfMemoryError)):
                self.free_memory()
                for i in group:
                    self._render_alone(request, routes, i, prepared, out, cancel, on_step)
                return
            if images is None:
                for i in group:
                    out[i] = exc
                return
            # Rendered, but the adapter of before could not be put back (the base is active): the images stand.
        seconds = time.perf_counter() - t0
        for i in group:
            n = len(routes[i][2])
            out[i], images = RenderResult(images[:n], swap, seconds), images[n:]

    def _render_alone(self, request, routes, i, prepared, out, cancel, on_step) -> None:
        path, strength, seeds = routes[i]
        t0 = time.perf_counter()
        try:
            self._choose_fuse(request, path, strength)
            swap = self.set_lora(path, strength, prepared.get(str(path)))  # read in step 1
            images = self._render_locked(replace(request, seeds=tuple(seeds)), cancel, on_step)
        except Cancelled:
            raise
        except LoraSpectrumError as exc:
            out[i] = exc
            return
        out[i] = RenderResult(images, swap, time.perf_counter() - t0)

    # ------------------------------------------------------------------ fuse: auto (fuse_policy.py)
    def fuse_choice(self, sampling: Sampling, images: int) -> FuseChoice:
        """Whether renders of ``sampling`` with ``images`` per call merge their adapter: ``fuse: on/off`` as set,
        ``auto`` by the rule on bench's recorded measurements. A pure function of its arguments and of what was
        recorded before the engine started: timings and load never change it (docs/adapters.md)."""
        if self.fuse_policy is None:
            return FuseChoice(self.fuse_mode == "on", f"fuse: {self.fuse_mode}")
        samples = images * (2 if self._uses_cfg(sampling.guidance) else 1)
        return self.fuse_policy.choose(sampling.steps, sampling.width, sampling.height, samples)

    def _choose_fuse(self, req: RenderRequest, lora_path: str | None, strength: float) -> None:
        """Before a swap to an adapter under ``fuse: auto``: fused or not, as the run chose (``req.fuse``) or as
        ``fuse_choice`` says for this request alone; a new choice is logged."""
        if self.fuse_policy is None or lora_path is None or float(strength) == 0.0:
            return
        choice = req.fuse or self.fuse_choice(req.sampling, len(req.seeds))
        if choice.fused != self.hotswap.fuse:
            if choice.fused:
                self.hotswap.use_base()  # nothing merged twice: the swap that follows merges
            self.hotswap.set_fuse(choice.fused)
        if choice.why != self.fuse_decision:
            log.info(choice.why)
            self.fuse_decision = choice.why

    def _render_locked(self, req: RenderRequest, cancel=None, on_step=None) -> list:
        """Render ``req`` with the adapter as it stands."""
        sampling = req.sampling
        # 1. Scheduler: a fresh one per render, so no state carries over between renders.
        self.pipe.scheduler = self.family.make_scheduler(sampling.sampler or self.defaults.sampling.sampler,
                                                         self._scheduler_config)
        # 2. Prompt embeddings from the cache.
        embeds = self.encode(req.prompt, sampling.negative_prompt, sampling.guidance)
        n = len(req.seeds)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in req.seeds]

        def step_end(pipe, i, t, kwargs):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if on_step is not None:
                on_step(i + 1, sampling.steps)
            return kwargs

        common = dict(num_inference_steps=sampling.steps, guidance_scale=sampling.guidance, width=sampling.width,
                      height=sampling.height, num_images_per_prompt=n, generator=generators,
                      callback_on_step_end=step_end, output_type="pil")
        # 3. Denoise and decode. Any library error becomes a ``RenderError`` (the caller fails this cell and goes
        #    on). Out of memory is answered after the block: until then the exception's traceback holds the failed
        #    render's tensors (latents, activations), and freeing memory while they are alive frees nothing.
        try:
            with torch.no_grad(), translated(_render_error):
                out = self.pipe(**{**common, **self.family.call_kwargs(embeds, n, self.max_sequence_length)})
        except OutOfMemoryError:
            pass
        else:
            return list(out.images)
        self.free_memory()
        raise OutOfMemoryError(_("out of memory rendering {n} image(s) at {width}x{height}: use a smaller size or fewer "
                                 "seeds, or set offload: model in the config").format(n=n, width=sampling.width, height=sampling.height))

    def free_memory(self) -> None:
        free_memory()

    def retire(self) -> None:
        """Let go of the pipeline and adapters (a switch of base), so that their memory can be freed even while
        something still holds this engine; it cannot render after."""
        self.pipe = self.hotswap = None
        self._embeds.clear()


def _render_error(exc: BaseException) -> RenderError:
    """A library error raised while rendering, as the engine reports it (out of memory gets its own type)."""
    if is_out_of_memory(exc):
        return OutOfMemoryError(str(exc))
    return RenderError(f"render failed ({reason(exc)})")
