"""One engine protocol for the local engine and a Ray pool's (``execution.Engine``), and ``execute`` on a real tiny
engine: a batch renders its routes' own seeds and reports every step with its label."""

from __future__ import annotations

from lora_spectrum.execution import Batch, Engine, LocalExecutor, execute, executor_for
from lora_spectrum.execution.remote_engine import RemoteEngine, engine_facts
from lora_spectrum.render.engine import RenderRequest
from lora_spectrum.render.plan import make_plan
from lora_spectrum.render.runs import run_plan
from lora_spectrum.render.sampling import Sampling
from lora_spectrum.workbench import EngineChoice
from tests.tiny import copied_epochs, new_engine, pixels, request


def test_the_local_and_a_pool_s_engine_share_one_protocol_and_render_the_same_grid(demo_loras, tmp_path):
    """``run_plan`` reads only the protocol: a ``RemoteEngine`` whose executor renders on a real engine (here this
    process's, as a Ray worker would) gives the local grid, cell for cell."""
    family = "sdxl"
    catalog, _entries = copied_epochs(demo_loras, family, 2, tmp_path / "loras")
    folder = catalog.folder
    local = new_engine(family)
    remote = RemoteEngine(engine_facts(EngineChoice(local, folder, False)), LocalExecutor(new_engine(family)))
    assert isinstance(local, Engine) and isinstance(remote, Engine)
    assert local.executor is None and isinstance(executor_for(local), LocalExecutor)
    assert executor_for(remote) is remote.executor
    assert (remote.base_id, remote.family.name, remote.dtype, remote.device, remote.fuse_mode, remote.compiled) == \
        (local.base_id, local.family.name, local.dtype, local.device, local.fuse_mode, local.compiled)
    assert remote.fuse_choice(local.defaults.sampling, 2).fused is False
    entries = [e for e in catalog.scan() if e.state == "ready"]
    plan = make_plan(local.defaults, [None, *entries], [1], [1.0], ["a red circle"],
                     Sampling("", 2, 5.0, 64, 64, "Euler"))
    here, there = run_plan(local, plan, catalog, mix=2), run_plan(remote, plan, catalog, mix=2)
    assert [(c.column, c.seed, c.error) for c in here] == [(c.column, c.seed, c.error) for c in there]
    assert all((pixels([a.image]) == pixels([b.image])).all() for a, b in zip(here, there, strict=True))


def test_execute_renders_the_route_s_seeds_and_reports_steps_with_the_label(demo_loras):
    family = "sdxl"
    path = str(demo_loras[family][2])
    req = request(family, seeds=(3, 4))
    expected = pixels(new_engine(family).render(req, path, 0.8).images)
    batch = Batch(0, RenderRequest(req.prompt, (), req.sampling), (((path, 0.8, (3, 4)),),), False, "epoch 3")
    steps = []
    [outcome] = execute(new_engine(family), batch, on_step=lambda step, n, label: steps.append((step, n, label)))
    assert outcome.error is None and (pixels(outcome.images) == expected).all()
    assert steps == [(1, 2, "epoch 3"), (2, 2, "epoch 3")]


def test_a_pool_s_engine_keeps_the_family_variant_of_its_workers(tmp_path):
    """A Z-Image base (not Turbo) on the workers stays the base variant on the driver: its defaults and name."""
    from lora_spectrum.bases.families import get_family

    local = new_engine("z-image")
    local.family = get_family("z-image", "base")
    remote = RemoteEngine(engine_facts(EngineChoice(local, tmp_path, False)), LocalExecutor(local))
    assert (remote.family.name, remote.family.variant) == ("z-image", "base")
