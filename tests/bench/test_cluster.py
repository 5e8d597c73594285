"""``bench --executor ray``: the same grid on one engine and on a local Ray pool of 2 CPU workers, side by side,
with every figure the table prints (a smaller grid than the bench's own: the tests' time budget)."""

from __future__ import annotations

import pytest

from lora_spectrum.bench.cluster import format_cluster, run_cluster_benchmark
from lora_spectrum.errors import ConfigError


def test_the_cluster_bench_measures_local_and_ray_on_the_same_grid():
    lines = []
    r = run_cluster_benchmark("tiny", "cpu", workers=2, progress=lines.append, seeds=(0,), prompts=("p",))
    assert r["images"] == r["epochs"] + 1 == 7 and r["errors"] == []
    assert r["identical_cells"] == r["images"], "the pool renders the local grid"
    assert sorted(r["cells_per_worker"]) == ["worker-0", "worker-1"] and sum(r["cells_per_worker"].values()) == 7
    assert r["speedup"] == pytest.approx(r["local_wall_s"] / r["ray_wall_s"])
    assert r["pool_start_s"] > 0 and len(r["pool"]["workers"]) == 2 and r["pool"]["left_out"] == []
    table = format_cluster(r)
    assert "| local (one engine) |" in table and "| ray, 2 worker(s) |" in table and "7/7 cells" in table
    assert any("starting 2 Ray worker(s)" in line for line in lines)


def test_the_cluster_bench_refuses_what_it_cannot_run():
    with pytest.raises(ConfigError, match="tiny or sdxl-size"):
        run_cluster_benchmark("z-image-size", "cpu")
    with pytest.raises(ConfigError, match="--workers 1 or more"):
        run_cluster_benchmark("tiny", "cpu", workers=-1)
