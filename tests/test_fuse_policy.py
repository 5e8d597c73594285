"""``fuse: auto`` (``fuse_policy.py``): the rule steps x unfused overhead > merge, on measured numbers, and the
engine feeding it from real renders and applying what it says (logged)."""

from __future__ import annotations

import logging

import numpy as np

from lora_spectrum.fuse_policy import FusePolicy
from tests.tiny import new_engine, pixels, request

SHAPE = (64, 64, 2, True)


def test_the_rule_steps_times_overhead_against_the_merge():
    policy = FusePolicy()
    assert policy.decide(SHAPE, 30) == (None, "fuse auto: no unfused step measured yet at this size")
    policy.observe_steps("unfused", SHAPE, [0.030, 0.031, 0.029])
    want, why = policy.decide(SHAPE, 30)
    assert want is True and "to measure a merge" in why  # overhead unknown against the merge: one try
    policy.observe_steps("bare", SHAPE, [0.020, 0.020, 0.021])
    policy.observe_merge(0.5)
    # 30 steps x 10 ms = 300 ms of overhead < a 500 ms merge: unfused; 60 steps: 600 ms > 500 ms: fused.
    want, why = policy.decide(SHAPE, 30)
    assert want is False and why == "fuse auto: off, 30 steps x 10.0 ms unfused overhead = 300 ms <= 500 ms per merge"
    want, why = policy.decide(SHAPE, 60)
    assert want is True and "600 ms > 500 ms per merge" in why
    # Medians: one slow outlier merge does not flip it.
    policy.observe_merge(0.4)
    policy.observe_merge(9.0)
    assert policy.decide(SHAPE, 60)[0] is True
    # Another size has its own step times.
    assert policy.decide((128, 128, 1, True), 60)[0] is None


def test_no_overhead_means_unfused_without_trying_a_merge():
    policy = FusePolicy()
    policy.observe_steps("bare", SHAPE, [0.020])
    policy.observe_steps("unfused", SHAPE, [0.019])  # the CPU case: peft's layers cost nothing measurable
    want, why = policy.decide(SHAPE, 1000)
    assert want is False and "adds nothing per step" in why


def test_only_the_last_measurements_count():
    policy = FusePolicy(keep=3)
    policy.observe_steps("bare", SHAPE, [0.01] * 3)
    policy.observe_steps("unfused", SHAPE, [0.5] * 3 + [0.011] * 3)  # the machine got faster: old samples go
    policy.observe_merge(1.0)
    assert policy.decide(SHAPE, 30) == (False, "fuse auto: off, 30 steps x 1.0 ms unfused overhead = 30 ms <= "
                                               "1000 ms per merge")


def test_the_engine_measures_real_renders_and_applies_the_decision(demo_loras, caplog):
    family = "sdxl"
    path = str(demo_loras[family][4])
    req = request(family, steps=3)
    engine = new_engine(family, fuse="auto")
    shape = engine._shape(req)
    engine.render(req, None)
    engine.render(req, path)
    policy = engine.fuse_policy
    bare, unfused = policy._steps[("bare", shape)], policy._steps[("unfused", shape)]
    assert len(bare) == len(unfused) == 2, "two intervals between three step ends, per render"
    assert not engine.hotswap.is_fused()
    # Whatever this machine measured, a large overhead against a cheap merge must turn fusing on ...
    policy.observe_steps("unfused", shape, [10.0] * 20)
    policy.observe_merge(1e-6)
    unfused_pixels = pixels(new_engine(family).render(req, path, 0.9).images).astype(int)
    with caplog.at_level(logging.INFO, logger="lora_spectrum.engine"):
        result = engine.render(req, path, 0.9)
    assert result.swap.fused and engine.fuse and engine.hotswap.is_fused()
    assert "fuse auto: on" in engine.fuse_decision and engine.fuse_decision in caplog.text
    assert np.abs(pixels(result.images).astype(int) - unfused_pixels).max() <= 2  # other arithmetic, same image
    assert engine.fuse_policy._merges[-1] == engine.hotswap.fuser.last_merge_s > 0, "the merge was measured"
    # ... and no overhead turns it off again, the merge buffers freed.
    policy.observe_steps("unfused", shape, [0.0] * 20)
    policy.observe_steps("unfused", shape, [1e-9] * 20)
    result = engine.render(req, str(demo_loras[family][2]))
    assert not result.swap.fused and not engine.fuse and engine.hotswap.fused_extra_bytes() == 0
    assert "fuse auto: off" in engine.fuse_decision
