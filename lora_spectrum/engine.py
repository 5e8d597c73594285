"""The one resident pipeline: device, dtype, offload, memory reservation, the process-wide lock and ``render()``.

Nothing here parses file names or decides fallbacks (the caller picks the demo when the configured base cannot
load), and nothing here knows about Streamlit. One ``Engine`` is shared by every browser session of the app; all
of its state changes (swap + render) happen under ``Engine.lock``, because diffusers pipelines are not thread-safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lora_spectrum.adapters import HotSwapper, SwapRecord
from lora_spectrum.errors import (
    BaseLoadError,
    BusyError,
    Cancelled,
    LoraSpectrumError,
    OutOfMemoryError,
    RenderError,
)
from lora_spectrum.families import Family, detect_family, get_family


@dataclass(frozen=True)
class RenderRequest:
    """What to render; the LoRA and its strength are passed separately to ``Engine.render``."""

    prompt: str
    negative_prompt: str = ""
    seeds: tuple[int, ...] = (0,)
    steps: int = 8
    guidance: float = 0.0
    width: int = 64
    height: int = 64
    sampler: str = ""


@dataclass
class RenderResult:
    images: list  # PIL images, one per seed
    swap: SwapRecord
    seconds: float


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise BaseLoadError("device cuda was asked for, but no CUDA GPU is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, family: Family) -> torch.dtype:
    if dtype == "auto":
        return getattr(torch, family.defaults.dtype_cuda) if device.type == "cuda" else torch.float32
    try:
        return {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError as exc:
        raise BaseLoadError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16") from exc


def resolve_fuse(fuse: bool | str, device: torch.device, offload: str = "none") -> bool:
    """Whether the hot-swapper merges the active adapter into the base weights (``hotswap.py``, fused mode).

    ``auto``: on for CUDA, where peft's unfused LoRA layers cost up to 2x per denoiser forward; off on the CPU, where
    they cost about 1.2x and a merge costs seconds per swap. Sequential offload keeps the weights off the module
    (accelerate hooks), where nothing can be merged: fused mode is refused there.
    """
    if isinstance(fuse, bool):
        value = "on" if fuse else "off"
    else:
        value = str(fuse).lower()
    if value not in ("auto", "on", "off"):
        raise BaseLoadError(f"unknown fuse setting {fuse!r}; use auto, on or off")
    if value == "auto":
        return device.type == "cuda" and offload != "sequential"
    if value == "on" and offload == "sequential":
        raise BaseLoadError("fuse: on does not work with offload: sequential (the weights live in offload hooks); "
                            "use fuse: off, or offload: model")
    return value == "on"


class Engine:
    """A resident base pipeline plus its hot-swapper, shared by every caller of this process."""

    def __init__(self, pipe, family: Family, base_id: str, device: torch.device | None = None,
                 resident_adapters: int = 4, empty_cache_after_swap: bool = False, max_queued: int = 2,
                 max_sequence_length: int = 512, offload: str = "none", note: str = "",
                 defaults: dict | None = None, fuse: bool | str = False):
        self.pipe = pipe
        self.family = family
        self.base_id = base_id
        self.device = device or next(family.denoiser(pipe).parameters()).device
        self.dtype = next(family.denoiser(pipe).parameters()).dtype
        self.offload = offload
        self.note = note  # shown by the UI, e.g. why the demo is in use
        # Render defaults: the family's YAML, overridden for bases that need others (the tiny demo).
        self.defaults = dataclasses.replace(family.defaults, **(defaults or {}))
        self.max_sequence_length = max_sequence_length
        self.lock = threading.Lock()
        self._admission = threading.BoundedSemaphore(max(1, max_queued))
        self.fuse = resolve_fuse(fuse, self.device, offload)  # merge the active adapter into the base weights
        self.hotswap = HotSwapper(pipe, family, resident=resident_adapters, empty_cache=empty_cache_after_swap,
                                  fuse=self.fuse)
        self._scheduler_config = pipe.scheduler.config
        self._embeds: OrderedDict[tuple, tuple] = OrderedDict()
        self.prompt_encodings = 0  # encode_prompt calls actually run (cache misses)
        self.text_encoder_forwards = 0  # forwards of any text encoder, counted by hooks that change nothing
        for te in family.text_encoders(pipe):
            te.register_forward_hook(self._count_te_forward)
        pipe.set_progress_bar_config(disable=True)

    def _count_te_forward(self, *_):
        self.text_encoder_forwards += 1

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, base: str, family: str = "auto", device: str = "auto", dtype: str = "auto",
             offload: str = "none", local_files_only: bool = True, reserve_vram_gb: float = 0.0,
             fuse: bool | str = "auto", **kwargs) -> Engine:
        """Load a base: a Hugging Face repo id, a local diffusers folder, or a single-file SDXL checkpoint.

        Raises ``BaseLoadError`` with the reason; with ``local_files_only`` a base missing from the local cache
        fails in seconds instead of waiting on the network.
        """
        # 1. Family and device.
        fam = get_family(detect_family(base, local_files_only) if family == "auto" else family)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev, fam)
        fused = resolve_fuse(fuse, dev, offload)  # checked before the (slow) load
        # 2. Load with diffusers, from safetensors weights only: pickle-based weights (.bin, .ckpt, .pt) are
        #    refused rather than handed to torch.load, whose restricted unpickler has had bypasses (CVE-2025-32434).
        path = Path(base).expanduser()
        try:
            if path.is_file():
                if fam.name != "sdxl":
                    raise BaseLoadError(f"{base}: single-file checkpoints are supported for SDXL only")
                if path.suffix.lower() != ".safetensors":
                    raise BaseLoadError(f"{base}: only .safetensors checkpoints are loaded ({path.suffix or 'this'} "
                                        f"files are pickles, which can run code); convert it to safetensors")
                pipe = fam.pipeline_cls().from_single_file(str(path), torch_dtype=torch_dtype,
                                                           local_files_only=local_files_only)
            else:
                pipe = fam.pipeline_cls().from_pretrained(base, torch_dtype=torch_dtype,
                                                          local_files_only=local_files_only, use_safetensors=True)
        except BaseLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub, OS and diffusers errors are all "cannot load"; translated
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "safetensors" in reason:
                reason += "; only safetensors weights are loaded, never pickle-based .bin files"
            raise BaseLoadError(f"{base}: cannot load the {fam.name} base ({reason})") from exc
        # 3. Place it: resident on the device, or offloaded for small cards.
        if dev.type == "cuda" and offload == "model":
            pipe.enable_model_cpu_offload()
        elif dev.type == "cuda" and offload == "sequential":
            pipe.enable_sequential_cpu_offload()
        else:
            pipe.to(dev)
        if dev.type == "cuda" and reserve_vram_gb > 0:
            # Allocate and free: the memory stays in torch's caching allocator, reserved for this process.
            block = torch.empty(int(reserve_vram_gb * 2**30), dtype=torch.uint8, device=dev)
            del block
        return cls(pipe, fam, base, device=dev, offload=offload, fuse=fused, **kwargs)

    @classmethod
    def from_settings(cls, settings) -> Engine:
        return cls.load(settings.base, family=settings.family, device=settings.device, dtype=settings.dtype,
                        offload=settings.offload, local_files_only=settings.local_files_only,
                        reserve_vram_gb=settings.reserve_vram_gb, resident_adapters=settings.resident_adapters,
                        empty_cache_after_swap=settings.empty_cache_after_swap,
                        max_queued=settings.max_queued_renders, fuse=settings.fuse)

    # ------------------------------------------------------------------ admission
    @contextlib.contextmanager
    def admit(self):
        """Admit one run (a grid, a render): at most ``max_queued`` at once; more raise ``BusyError`` at once."""
        if not self._admission.acquire(blocking=False):
            raise BusyError("the workbench is busy with other renders; try again when they finish")
        try:
            yield self
        finally:
            self._admission.release()

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
            if self.family.name == "sdxl":
                out = self.pipe.encode_prompt(prompt, device=self._exec_device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=cfg, negative_prompt=negative_prompt or None)
            else:
                out = self.pipe.encode_prompt(prompt, device=self._exec_device, do_classifier_free_guidance=cfg,
                                              negative_prompt=negative_prompt or None,
                                              max_sequence_length=self.max_sequence_length)
        self._embeds[key] = out
        while len(self._embeds) > 16:
            self._embeds.popitem(last=False)
        return out

    @property
    def _exec_device(self):
        return getattr(self.pipe, "_execution_device", self.device)

    def _uses_cfg(self, guidance: float) -> bool:
        if self.family.name == "sdxl":
            return guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None
        return guidance > 0.0

    # ------------------------------------------------------------------ render
    def set_lora(self, lora_path: str | None, strength: float = 1.0, prepared=None) -> SwapRecord:
        """Swap (must hold ``lock``). ``None`` or strength 0 renders the base. ``prepared``: the file as the
        caller just read it (``HotSwapper.activate`` then does not read it again)."""
        if lora_path is None:
            return self.hotswap.use_base()
        return self.hotswap.activate(lora_path, strength, prepared=prepared)

    def render(self, request: RenderRequest, lora_path: str | None = None, strength: float = 1.0,
               cancel: threading.Event | None = None, on_step: Callable[[int, int], None] | None = None
               ) -> RenderResult:
        """Swap in ``lora_path`` at ``strength`` (``None``: the base) and render one image per seed.

        The swap and the render happen under the engine lock, so no other caller can change the adapter between
        them. Every call states its own adapter, so a failed call never leaves a LoRA active for the next one.
        """
        with self.lock:
            t0 = time.perf_counter()
            swap = self.set_lora(lora_path, strength)
            images = self._render_locked(request, cancel, on_step)
            return RenderResult(images, swap, time.perf_counter() - t0)

    def render_routed(self, request: RenderRequest, routes: list[tuple[str | None, float, tuple[int, ...]]],
                      cancel: threading.Event | None = None, on_step: Callable[[int, int], None] | None = None
                      ) -> list[RenderResult | LoraSpectrumError]:
        """Render several (file or ``None``, strength, seeds) routes in batched pipeline calls, each sample
        through its own adapter (``HotSwapper.routed``); ``request.seeds`` is ignored.

        Returns one entry per route: its ``RenderResult`` (a shared call's swap record is the routing set-up), or
        the ``LoraSpectrumError`` that failed it: its own file's, the error of the call it shared (out of
        memory, say), or ``Cancelled`` for a route left unrendered by a cancel. Routes with the same number
        of seeds share a call (so that routing takes its stacked way); a route alone in its call, or whose file
        cannot share one, renders as ``render`` would. If routing cannot be set up, its routes render one by one.
        """
        out: list[RenderResult | LoraSpectrumError | None] = [None] * len(routes)
        with self.lock:
            # 1. Each file read and checked on its own, so that a bad one is reported against itself only.
            prepared: dict[str, object] = {}
            alone, by_seeds = [], {}
            for i, (path, strength, seeds) in enumerate(routes):
                if path is not None and float(strength) != 0.0:
                    try:
                        if str(path) not in prepared:  # one file at two strengths is read once
                            prepared[str(path)] = self.hotswap.load_adapter(path)[0]
                    except LoraSpectrumError as exc:
                        out[i] = exc
                        continue
                    if self.hotswap.unroutable(prepared[str(path)]):
                        alone.append(i)
                        continue
                by_seeds.setdefault(len(seeds), []).append(i)
            calls = [group for group in by_seeds.values() if len(group) > 1]
            alone = sorted(alone + [group[0] for group in by_seeds.values() if len(group) == 1])
            # 2. Shared calls first, then the rest one by one; a cancel leaves the routes not done marked.
            try:
                for group in calls:
                    self._render_shared(request, routes, group, prepared, out, cancel, on_step)
                for i in alone:
                    self._render_alone(request, routes, i, prepared, out, cancel, on_step)
            except Cancelled as exc:
                out = [exc if o is None else o for o in out]
        return out

    def _render_shared(self, request, routes, group, prepared, out, cancel, on_step) -> None:
        t0 = time.perf_counter()
        blocks = [(routes[i][0], float(routes[i][1])) for i in group]  # one block a route, its seeds its samples
        seeds = tuple(seed for i in group for seed in routes[i][2])
        swap = images = None
        try:
            with self.hotswap.routed(blocks, len(routes[group[0]][2]), prepared=prepared) as swap:
                images = self._render_locked(dataclasses.replace(request, seeds=seeds), cancel, on_step)
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
            swap = self.set_lora(path, strength, prepared.get(str(path)))  # the file step 1 read, not read again
            images = self._render_locked(dataclasses.replace(request, seeds=tuple(seeds)), cancel, on_step)
        except Cancelled:
            raise
        except LoraSpectrumError as exc:
            out[i] = exc
            return
        out[i] = RenderResult(images, swap, time.perf_counter() - t0)

    def _render_locked(self, req: RenderRequest, cancel=None, on_step=None) -> list:
        # 1. Scheduler: a fresh one per render, so no state carries over between renders.
        self.pipe.scheduler = self.family.make_scheduler(req.sampler or self.family.defaults.sampler,
                                                         self._scheduler_config)
        # 2. Prompt embeddings from the cache.
        embeds = self.encode(req.prompt, req.negative_prompt, req.guidance)
        n = len(req.seeds)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in req.seeds]

        def step_end(pipe, i, t, kwargs):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if on_step is not None:
                on_step(i + 1, req.steps)
            return kwargs

        common = dict(num_inference_steps=req.steps, guidance_scale=req.guidance, width=req.width,
                      height=req.height, num_images_per_prompt=n, generator=generators,
                      callback_on_step_end=step_end, output_type="pil")
        # 3. Denoise and decode. Any library error becomes a ``RenderError`` (the caller fails this cell and goes
        #    on). Out of memory is answered after the except block: until then the exception's traceback holds the
        #    failed render's tensors (latents, activations), and freeing memory while they are alive frees nothing.
        out_of_memory = False
        try:
            with torch.no_grad():
                if self.family.name == "sdxl":
                    pe, npe, ppe, nppe = embeds
                    out = self.pipe(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                                    negative_pooled_prompt_embeds=nppe, **common)
                else:
                    pe, npe = embeds
                    out = self.pipe(prompt_embeds=list(pe), negative_prompt_embeds=list(npe) if npe else None,
                                    max_sequence_length=self.max_sequence_length, **common)
        except LoraSpectrumError:
            raise
        except torch.OutOfMemoryError:
            out_of_memory = True
        except Exception as exc:  # noqa: BLE001 - diffusers/torch raise many types; translated for the caller
            if not ("out of memory" in str(exc).lower() and isinstance(exc, RuntimeError)):
                raise RenderError(f"render failed ({type(exc).__name__}: {exc})") from exc
            out_of_memory = True
        if out_of_memory:
            self.free_memory()
            raise OutOfMemoryError(f"out of memory rendering {n} image(s) at {req.width}x{req.height}: use a smaller "
                              f"size or fewer seeds, or set offload: model in the config")
        return list(out.images)

    def free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
