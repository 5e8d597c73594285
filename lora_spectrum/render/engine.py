"""The one resident pipeline: device, dtype, offload, memory reservation, the process-wide lock, admission and
``render()``; every knob in one ``EngineConfig``.

Nothing here parses file names or decides fallbacks (the caller picks the demo when the configured base cannot load;
``adapters/routed_calls.py`` decides a routed batch's), and nothing here knows about Streamlit. One ``Engine`` is
shared by every browser session of the app; all of its state changes (swap + render) happen under ``Engine.lock``,
the one lock over the adapter state too, because diffusers pipelines are not thread-safe. ``fuse: auto`` is a render
hook (``fuse_policy.FuseAuto``) called before each swap.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from lora_spectrum.adapters import HotSwapper, SwapRecord
from lora_spectrum.adapters.routed_calls import RenderResult, Route, render_calls
from lora_spectrum.bases.devices import free_memory, is_out_of_memory, reserve_vram, resolve_device, resolve_dtype
from lora_spectrum.bases.families import Family, detect_family, get_family
from lora_spectrum.bases.loading import load_pipeline, place
from lora_spectrum.errors import Cancelled, LoraSpectrumError, OutOfMemoryError, RenderError, reason, translated
from lora_spectrum.language import _
from lora_spectrum.render.admission import Admission
from lora_spectrum.render.compilation import compile_denoiser, resolve_compile, settle
from lora_spectrum.render.fuse_policy import FuseAuto, FuseChoice, FusePolicy, resolve_fuse, verdict_for
from lora_spectrum.render.sampling import Sampling

__all__ = ["Engine", "EngineConfig", "RenderHook", "RenderRequest", "RenderResult", "Route", "StepReport",
           "resolve_device"]

StepReport = Callable[[int, int, str], None]  # on_step(step, steps, label): the one progress signature, end to end


@dataclass(frozen=True)
class RenderRequest:
    """What to render: one image per seed of ``prompt``; the LoRA and its strength are passed to ``Engine.render``
    (a routed batch's routes carry their own seeds, and this one's are not used). ``fuse``: under ``fuse: auto``,
    whether the adapter is merged and why, as chosen for the whole run before it (``Engine.fuse_choice``); None:
    chosen for this request alone, by the same rule. ``label``: what progress calls it (``StepReport``)."""

    prompt: str
    seeds: tuple[int, ...] = (0,)
    sampling: Sampling = Sampling()
    fuse: FuseChoice | None = None
    label: str = ""


@dataclass(frozen=True)
class EngineConfig:
    """Every knob of an engine, in one place: the first group is read by ``Engine.load`` only, the rest by
    ``Engine`` too. ``from_settings`` takes them from the config file (``settings.Settings``)."""

    # Loading a base (``Engine.load``).
    family: str = "auto"  # a registered family's name, or auto: detected from the base
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto: the family's dtype on CUDA, float32 on a CPU
    local_files_only: bool = True  # a base missing from the local cache fails in seconds, never waits on the network
    cache_dir: str | None = None  # the Hugging Face cache bases are loaded from (None: HF_HUB_CACHE / HF_HOME)
    reserve_vram_gb: float = 0.0  # VRAM kept free for other programs
    # The engine.
    offload: str = "none"  # none | model | sequential | group (diffusers' offload; loading places the pipeline)
    resident_adapters: int = 4  # prepared adapters kept in memory (LRU): swaps back to one of them are warm
    empty_cache_after_swap: bool = False  # give the allocator's cache back after each swap
    max_queued: int = 2  # runs admitted at once; more raise BusyError at once
    max_sequence_length: int = 512  # text tokens per prompt, for families with a T5-like encoder
    defaults: dict | None = None  # render defaults over the family's (the tiny demo renders smaller)
    fuse: bool | str = "off"  # on | off | auto: merge the active adapter into the base weights (fuse_policy.py)
    compile: bool | str = "off"  # on | off | auto: the denoiser through torch.compile (compilation.py)
    compile_backend: str = "inductor"  # torch.compile's backend
    prefetch: bool = True  # read the plan's next file while the current one renders
    note: str = ""  # shown by the UI, e.g. why the demo is in use

    @classmethod
    def from_settings(cls, settings) -> EngineConfig:
        return cls(family=settings.family, device=settings.device, dtype=settings.dtype,
                   local_files_only=settings.local_files_only, cache_dir=settings.hf_cache or None,
                   reserve_vram_gb=settings.reserve_vram_gb, offload=settings.offload,
                   resident_adapters=settings.resident_adapters, empty_cache_after_swap=settings.empty_cache_after_swap,
                   max_queued=settings.max_queued_renders, fuse=settings.fuse, compile=settings.compile,
                   compile_backend=settings.compile_backend, prefetch=settings.prefetch)

    def keeping(self, *names: str, **values) -> EngineConfig:
        """A config of the defaults but for ``names`` (taken from this one) and ``values``."""
        return EngineConfig(**{name: getattr(self, name) for name in names}, **values)


class RenderHook(Protocol):
    """Called by the engine, under its lock, before each swap: ``route`` (file, strength, seeds) is about to be
    swapped in on ``swapper`` for ``request`` (``fuse_policy.FuseAuto`` is one)."""

    def before_swap(self, swapper: HotSwapper, request: RenderRequest, route: Route) -> None: ...


class Engine:
    """A resident base pipeline plus its hot-swapper, shared by every caller of this process. Built from an
    ``EngineConfig`` (``config``, or its fields by name in ``options``); ``device``: where it renders, when its
    denoiser's parameters are elsewhere (offload)."""

    executor = None  # it renders in this process (a Ray pool's ``RemoteEngine`` names its pool here)

    def __init__(self, pipe, family: Family, base_id: str, config: EngineConfig | None = None, *,
                 device: torch.device | None = None, **options):
        config = replace(config or EngineConfig(), **options)
        self.config = config
        self.pipe = pipe
        self.family = family
        self.base_id = base_id
        denoiser = family.denoiser(pipe)
        self.device = device or next(denoiser.parameters()).device
        self.dtype = next(denoiser.parameters()).dtype
        self.offload = config.offload
        self.note = config.note
        # Render defaults: the family's YAML, overridden for bases that need others (the tiny demo).
        self.defaults = family.defaults.with_sampling(**(config.defaults or {}))
        self.max_sequence_length = config.max_sequence_length
        self.lock = threading.Lock()  # the one lock over the pipeline and its adapter state (hotswap.py says why)
        self.admission = Admission(config.max_queued)
        # Merge the active adapter into the base weights: on, off, or auto (chosen before each run from what
        # bench recorded for this machine, fuse_policy.py; never from the renders' own timings).
        self.fuse_mode = resolve_fuse(config.fuse, self.device, self.offload)
        # torch.compile for the denoiser: off, on, or auto (where bench --compile found it pays; compilation.py).
        self.compiled, self.compile_note, self.fuse_mode = settle(config.compile, self.device, family.name,
                                                                  self.fuse_mode, self.offload, denoiser)
        self.hooks: list[RenderHook] = []
        if self.fuse_mode == "auto":
            policy = FusePolicy(verdict_for(self.device, family.name, denoiser))
            self.hooks.append(FuseAuto(policy, self._uses_cfg))
        self.hotswap = HotSwapper(pipe, family, resident=config.resident_adapters,
                                  empty_cache=config.empty_cache_after_swap, fuse=self.fuse_mode == "on",
                                  compiled=self.compiled)
        if self.compiled:
            compile_denoiser(denoiser, config.compile_backend)
        self.prefetch_enabled = bool(config.prefetch)  # read the plan's next file while the current one renders
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

    @property
    def _fuse_auto(self) -> FuseAuto | None:
        return next((h for h in self.hooks if isinstance(h, FuseAuto)), None)

    @property
    def fuse_policy(self) -> FusePolicy | None:
        """``fuse: auto``'s rule on what bench recorded; None unless the fuse mode is auto."""
        hook = self._fuse_auto
        return hook.policy if hook else None

    @property
    def fuse_decision(self) -> str:
        """Why ``fuse: auto`` chose what it did for the last swap ("" until it chose, or when not auto)."""
        hook = self._fuse_auto
        return hook.decision if hook else ""

    def _count_te_forward(self, *_args):
        self.text_encoder_forwards += 1

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, base: str, config: EngineConfig | None = None, **options) -> Engine:
        """Load a base: a Hugging Face repo id, a local diffusers folder, or a single-file checkpoint; ``config``
        (or its fields by name in ``options``) says how.

        Raises ``BaseLoadError`` with the reason; with ``local_files_only`` a base missing from the local cache
        fails in seconds instead of waiting on the network.
        """
        c = replace(config or EngineConfig(), **options)
        # 1. Family and device.
        fam = get_family(detect_family(base, c.local_files_only, c.cache_dir) if c.family == "auto" else c.family)
        dev = resolve_device(c.device)
        torch_dtype = resolve_dtype(c.dtype, dev, fam.defaults.dtype_cuda)
        fused = resolve_fuse(c.fuse, dev, c.offload)  # checked before the (slow) load
        resolve_compile(c.compile, dev, fam.name, fused, c.offload)
        # 2. Load with diffusers (safetensors weights only), then place it on the device or offload it; the
        #    family's variant (Z-Image base or Turbo, FLUX.1 dev or schnell) picks the render defaults.
        pipe = load_pipeline(base, fam, torch_dtype, c.local_files_only, c.cache_dir)  # cache_dir: the hub cache
        fam = fam.for_base(base, pipe)
        place(pipe, dev, c.offload)
        reserve_vram(dev, c.reserve_vram_gb)
        return cls(pipe, fam, base, replace(c, fuse=fused), device=dev)

    @classmethod
    def from_settings(cls, settings) -> Engine:
        return cls.load(settings.base, EngineConfig.from_settings(settings))

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
               cancel: threading.Event | None = None, on_step: StepReport | None = None,
               ahead: str | None = None) -> RenderResult:
        """Swap in ``lora_path`` at ``strength`` (``None``: the base) and render one image per seed; ``ahead``:
        the file the caller swaps in next, read in the background while this renders (``prefetch``).

        The swap and the render happen under the engine lock, so no other caller can change the adapter between
        them. Every call states its own adapter, so a failed call never leaves a LoRA active for the next one.
        """
        with self.lock:
            t0 = time.perf_counter()
            try:
                swap = self._swap(request, Route(lora_path, strength, tuple(request.seeds)))
            finally:  # after the swap took this file's read ahead (a failed swap still lets the next one read)
                self.prefetch(ahead)
            images = self._render_locked(request, cancel, on_step)
            return RenderResult(images, swap, time.perf_counter() - t0)

    def render_routed(self, request: RenderRequest, calls: list[list[Route]], cancel: threading.Event | None = None,
                      on_step: StepReport | None = None, ahead: str | None = None
                      ) -> list[list[RenderResult | LoraSpectrumError]]:
        """Render batched pipeline calls of ``Route``s (file or ``None``, strength, seeds), each sample through
        its own adapter (``HotSwapper.routed``), each route with its own seeds (``request.seeds`` is not used);
        ``ahead`` as for ``render``, read once the first call's files are. ``calls`` come grouped by the plan
        (``plan.calls``): the routes of one call have the same number of seeds. Every file is read once for all.

        Returns, per call and route, its ``RenderResult`` or the ``LoraSpectrumError`` that failed it; which
        routes share a call and the fallbacks are ``adapters.routed_calls.render_calls``'s.
        """
        calls = [[Route(*r) for r in call] for call in calls]  # plain (file, strength, seeds) tuples too
        with self.lock:
            return render_calls(
                self.hotswap, calls,
                render=lambda seeds: self._render_locked(replace(request, seeds=seeds), cancel, on_step),
                swap=lambda route, prepared: self._swap(request, route, prepared),
                free_memory=self.free_memory, after_first_read=lambda: self.prefetch(ahead))

    def _swap(self, request: RenderRequest, route: Route, prepared=None) -> SwapRecord:
        """``route``'s adapter swapped in for ``request`` (the lock held): the render hooks first, then the swap."""
        for hook in self.hooks:
            hook.before_swap(self.hotswap, request, route)
        return self.set_lora(route.path, route.strength, prepared)

    # ------------------------------------------------------------------ fuse: auto (fuse_policy.py)
    def fuse_choice(self, sampling: Sampling, images: int) -> FuseChoice:
        """Whether renders of ``sampling`` with ``images`` per call merge their adapter: ``fuse: on/off`` as set,
        ``auto`` by the rule on bench's recorded measurements. A pure function of its arguments and of what was
        recorded before the engine started: timings and load never change it (docs/adapters.md)."""
        hook = self._fuse_auto
        if hook is None:
            return FuseChoice(self.fuse_mode == "on", f"fuse: {self.fuse_mode}")
        return hook.choose(sampling, images)

    def _render_locked(self, req: RenderRequest, cancel: threading.Event | None = None,
                       on_step: StepReport | None = None) -> list:
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
                on_step(i + 1, sampling.steps, req.label)
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
