"""Routed batches (``adapters/routing.py``): what routing rests on (a batch-first input in every routed layer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.tiny import FAMILIES, new_engine, request


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_but_the_listed_ones_sees_one_row_per_sample(family):
    """What routing rests on: a layer's input has the batch as its first dimension. Checked in a real forward
    of three samples, for every Linear and Conv2d of the denoiser, against ``Family.unbatched_layers``."""
    engine = new_engine(family)
    seen: dict[str, set[int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, set()).add(args[0].shape[0]))
             for name, m in engine.hotswap.denoiser.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    engine.render(dataclasses.replace(request(family, seeds=(1, 2, 3), steps=1), guidance=0.0))
    for h in hooks:
        h.remove()
    unbatched = {name for name, rows in seen.items() if rows != {3}}
    listed = {name for name in seen if name.split(".", 1)[0] in engine.family.unbatched_layers}
    assert seen and unbatched == listed

