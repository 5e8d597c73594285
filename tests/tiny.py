"""Helpers for tests: tiny real pipelines of every registered family (random, seeded weights; nothing downloaded)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from lora_spectrum import demo
from lora_spectrum.bases.families import FAMILY_NAMES, REGISTRY, get_family
from lora_spectrum.render.engine import Engine, RenderRequest
from lora_spectrum.render.sampling import Sampling

FAMILIES = FAMILY_NAMES  # every test parametrized over these runs for each family of the registry
SIZE = {f.name: f.tiny_sampling["width"] for f in REGISTRY}
GUIDANCE = {f.name: f.tiny_sampling["guidance"] for f in REGISTRY}
SAMPLER = {f.name: f.tiny_sampling["sampler"] for f in REGISTRY}


def new_engine(family: str, resident: int = 4, **kwargs) -> Engine:
    """A fresh tiny pipeline (identical weights every time: seeded) wrapped in an engine."""
    pipe = demo.build_tiny(family, seed=0)
    return Engine(pipe, get_family(family), f"tiny-{family}", resident_adapters=resident, max_sequence_length=32,
                  **kwargs)


def request(family: str, seeds=(1, 2), prompt="a red circle", steps=2) -> RenderRequest:
    sampling = Sampling("", steps, GUIDANCE[family], SIZE[family], SIZE[family], SAMPLER[family])
    return RenderRequest(prompt, tuple(seeds), sampling)


def with_guidance(req: RenderRequest, guidance: float) -> RenderRequest:
    return replace(req, sampling=req.sampling.override(guidance=guidance))


def garbage(n: int, seed: int = 0) -> bytes:
    """Seeded random bytes that are no file format: the first 8 bytes read as an absurd header length.

    Plain ``os.urandom`` made tests flaky: about one run in 250 its first byte looked like a pickle's PROTO opcode.
    """
    return b"GARBAGE!" + random.Random(seed).randbytes(n - 8)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im) for im in images])


class Boom:
    """Unpickling this creates a marker file: proof that nothing was unpickled if the marker is absent."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def copied_epochs(demo_loras: dict, family: str, n: int, folder):
    """The first ``n`` demo epochs of ``family`` copied into ``folder`` (made here), scanned: (catalog, the ready
    entries in order)."""
    from lora_spectrum.loras.catalog import Catalog

    folder.mkdir()
    for p in demo_loras[family][:n]:
        (folder / p.name).write_bytes(p.read_bytes())
    catalog = Catalog(folder)
    return catalog, [e for e in catalog.scan() if e.state == "ready"]
