"""``compile: off|on|auto``: whether the denoiser runs through ``torch.compile``, the verdicts ``bench --compile``
records for ``auto``, and the compile itself. Nothing here swaps adapters (the swapper keeps its tensors in place
so that swaps never recompile: ``HotSwapper.compiled``) or knows about Streamlit.

A compiled graph is specialised to the module tree it traced. Swaps re-point the slot's parameters at other tensors
of the same shapes and write strengths into 0-dim tensors, so the graph guards keep passing: no recompile across
swaps, strength changes or the base. A file with another layout (rank, targeted layers) builds a new slot, which
compiles once more; routed batches run the denoiser eagerly (their hooks change each layer's forward).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from lora_spectrum.errors import ConfigError

MODES = ("off", "on", "auto")
PAYBACK_FORWARDS = 200  # compile pays when it is won back within this many forwards (a 4 x 2 x 25-step grid)


def verdicts_path() -> Path:
    """Where ``bench --compile`` records whether compile paid on this machine (``$LORA_SPECTRUM_COMPILE_VERDICTS``
    or ``~/.cache/lora_spectrum/compile.json``)."""
    env = os.environ.get("LORA_SPECTRUM_COMPILE_VERDICTS")
    return Path(env) if env else Path.home() / ".cache" / "lora_spectrum" / "compile.json"


def denoiser_size(denoiser: torch.nn.Module) -> int:
    """The denoiser's parameters in millions (peft's adapter layers not counted): which model a verdict is for."""
    return round(sum(p.numel() for n, p in denoiser.named_parameters() if "lora_" not in n) / 1e6)


def machine_key(device: torch.device, family: str, size_m: int) -> str:
    """What a verdict holds for: the device (the GPU's name), the family, the denoiser's size (millions of
    parameters: the full-size bench model and a real base agree, the tiny demo does not) and torch's version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{os.cpu_count()}"
    return f"{name} | {family} {size_m}M | torch {torch.__version__}"


def pays(eager_s: float, compiled_s: float, compile_s: float) -> bool:
    """Whether compiling pays: faster per forward, and the compile time won back within ``PAYBACK_FORWARDS``."""
    return compiled_s < eager_s and (eager_s - compiled_s) * PAYBACK_FORWARDS > compile_s


def record_verdict(device: torch.device, family: str, size_m: int, eager_s: float, compiled_s: float,
                   compile_s: float, path: Path | None = None) -> dict:
    """Write what ``bench --compile`` measured for this machine; returns the verdict."""
    path = path or verdicts_path()
    verdict = {"eager_forward_s": eager_s, "compiled_forward_s": compiled_s, "compile_s": compile_s,
               "pays": pays(eager_s, compiled_s, compile_s)}
    write_verdict(path, machine_key(device, family, size_m), verdict)
    return verdict


def write_verdict(path: Path, key: str, verdict: dict) -> None:
    """Put one machine's verdict into a verdicts file (compile's, fuse's): read, change and replace under a lock
    between processes (two bench runs at once must not lose one), written whole through a temporary file."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        data = read_verdicts(path)
        data[key] = verdict
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        tmp.replace(path)


def read_verdicts(path: Path | None = None) -> dict:
    try:
        data = json.loads((path or verdicts_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_compile(mode: str | bool, device: torch.device, family: str, fuse: str, offload: str = "none",
                    size_m: int = 0, verdicts: Path | None = None) -> tuple[bool, str]:
    """(compile or not, why). ``auto``: on only where a verdict of ``bench --compile`` for this machine says it
    pays. Refuses, with the reason, what cannot agree with a compiled denoiser."""
    if isinstance(mode, bool):  # YAML 1.1 reads a bare on/off as a boolean
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ConfigError(f"compile must be off, on or auto, not {mode!r}")
    if mode == "off":
        return False, "compile: off"
    if mode == "auto":
        verdict = read_verdicts(verdicts).get(machine_key(device, family, size_m))
        if not verdict or not verdict.get("pays"):
            why = "no bench --compile verdict for this machine" if not verdict else "bench --compile measured " \
                  f"no gain here ({verdict['compiled_forward_s']:.3g} s compiled vs {verdict['eager_forward_s']:.3g} s" \
                  f" eager, {verdict['compile_s']:.0f} s to compile)"
            return False, f"compile: auto is off ({why})"
    why = _refusal(fuse, offload)
    if why:
        if mode == "auto":
            return False, f"compile: auto is off ({why})"
        raise ConfigError(f"compile: on cannot be used with {why}")
    return True, f"compile: {mode} (the denoiser runs through torch.compile)"


def settle(mode: str | bool, device: torch.device, family: str, fuse: str, offload: str,
           denoiser: torch.nn.Module) -> tuple[bool, str, str]:
    """For an engine: (compile or not, why, the fuse mode). ``fuse: auto`` stays unfused under compile, since
    each of its switches between fused and unfused would recompile."""
    compiled, why = resolve_compile(mode, device, family, fuse, offload, denoiser_size(denoiser))
    return compiled, why, "off" if compiled and fuse == "auto" else fuse


def _refusal(fuse: str, offload: str) -> str:
    if fuse == "on":
        return ("fuse: on: fused mode switches each layer between merged weights and added LoRA layers (a slot it "
                "cannot merge renders unfused), and every switch would recompile; use fuse: off or auto")
    if offload != "none":
        return (f"offload: {offload}: offload hooks move the denoiser between devices around every call, which a "
                f"compiled graph cannot follow; use offload: none")
    return ""


def compile_denoiser(denoiser: torch.nn.Module, backend="inductor") -> None:
    """Compile ``denoiser`` in place (``nn.Module.compile``): the pipeline, peft and the swapper keep the same
    module object, and the first forward of each input shape compiles."""
    denoiser.compile(backend=backend)


def uncompile(denoiser: torch.nn.Module) -> None:
    """Undo ``compile_denoiser``: the module's calls run eagerly again."""
    denoiser._compiled_call_impl = None


@contextlib.contextmanager
def eager(denoiser: torch.nn.Module):
    """Run ``denoiser`` uncompiled inside the block (routed batches: their hooks would recompile the graph)."""
    compiled = getattr(denoiser, "_compiled_call_impl", None)
    uncompile(denoiser)
    try:
        yield
    finally:
        denoiser._compiled_call_impl = compiled
