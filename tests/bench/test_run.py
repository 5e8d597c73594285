"""``bench --model tiny``: every figure the issue asks for is present, numeric and positive where it must be.

No timing thresholds: timings belong to the benchmark, not to tests. The run is the shared ``result`` fixture.
"""

from __future__ import annotations

import statistics

from lora_spectrum.cli import main
from tests.bench.figures import positive


def test_every_timing_is_a_positive_median(result):
    for key in ("floor_s", "read_only_s", "swap_cold_s", "swap_warm_s", "swap_first_s", "diffusers_hotswap_s",
                "diffusers_reload_s", "pipeline_reload_s", "forward_base_s", "adapter_mb", "build_s", "total_s"):
        assert positive(result[key]), (key, result.get(key))
    assert set(result["forward_active_s"]) == {"unfused", "fused"}
    assert positive(result["swap_fused_s"]) and positive(result["fused_extra_mb"])
    split = result["swap_fused_split"]
    assert all(positive(split[k]) for k in ("read_s", "merge_s", "restore_s"))
    assert split["merge_s"] < result["swap_fused_s"] and positive(result["swap_fused_warm_s"])
    assert all(positive(v) for v in result["forward_active_s"].values())
    for name, n in result["repeats"].items():
        assert isinstance(n, int) and n >= 1, name


def test_identity_and_reproduction_fields(result):
    assert (result["model"], result["device"], result["dtype"]) == ("tiny", "cpu", "float32")
    assert result["gpu"] is None
    assert result["rank"] == 8 and result["epochs"] == 3 and result["swaps"] == 20
    assert result["adapter_tensors"] > 0
    assert "bench --model tiny" in result["command"] and "--swaps 20" in result["command"]
    assert set(result["methods"]) >= {"floor", "swap_cold", "swap_warm", "diffusers_reload", "diffusers_hotswap",
                                      "pipeline_reload", "forward"}


def test_ratios_and_targets_are_all_filled(result):
    ratios = result["ratios"]
    for key in ("cold_vs_floor", "warm_vs_floor", "diffusers_hotswap_vs_cold", "diffusers_reload_vs_cold",
                "pipeline_reload_vs_cold"):
        assert positive(ratios[key]), key
    assert positive(ratios["forward_active_vs_base"]["unfused"])
    assert positive(ratios["forward_active_vs_base"]["fused"]) and positive(ratios["swap_fused_vs_warm"])
    assert {"fused_forward_within_2pct_of_base", "fused_base_restored_bit_exact",
            "fused_swap_le_15x_floor"} <= set(result["targets"]) and positive(ratios["swap_fused_vs_floor"])
    assert any(n.startswith("fused_forward_within_2pct_of_base: on a CPU") for n in result["notes"])
    assert result["targets"] and all(isinstance(v, bool) for v in result["targets"].values())


def test_the_end_to_end_grid_renders_every_cell_and_reads_each_later_epoch_ahead(result):
    grid = result["grid"]
    assert (grid["epochs"], grid["seeds"], grid["images"]) == (3, 2, 6) and grid["errors"] == []
    for key in ("grid_wall_s", "grid_render_s", "render_call_s", "overhead_ratio", "swap_prefetched_s",
                "pipeline_build_s"):
        assert positive(grid[key]), key
    # The slot was installed by the warm-up; the first epoch is read cold, the others while the one before rendered.
    assert grid["swap_kinds"] == ["cold", "prefetched", "prefetched"]
    assert grid["swap_prefetched_s"] == statistics.median(grid["swap_seconds"][1:])
    assert positive(grid["slot_install_s"]) and positive(grid["outside_engine_s"])
    assert {"grid_wall_le_1_05x_render", "swap_prefetched_le_0_2x_cold"} <= set(result["targets"])
    assert positive(result["ratios"]["swap_prefetched_vs_cold"]) and "grid" in result["methods"]


def test_memory_figures(result):
    assert isinstance(result["memory_growth_mb"], float)
    for when in ("before_swaps", "after_swaps"):
        assert positive(result["memory"][when]["rss_mb"])
        assert "cuda_allocated_mb" not in result["memory"][when], "CUDA figures only on a GPU"
    assert positive(result["memory"]["resident_adapters_mb"])


def test_cli_refuses_bad_values_in_one_line(capsys):
    assert main(["bench", "--model", "tiny", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs >= 2" in err and len(err.strip().splitlines()) == 1


def test_flux_size_is_offered_and_refuses_a_cpu_with_the_reason(capsys):
    """FLUX.1's 12 B transformer does not fit this machine: refused before anything is built, in one line."""
    from lora_spectrum.bench.models import MODELS

    assert "flux-size" in MODELS
    assert main(["bench", "--model", "flux-size", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "flux-size runs on a GPU only" in err and len(err.strip().splitlines()) == 1


def test_the_fuse_measurements_are_recorded_for_fuse_auto(result):
    """fuse: auto decides before a run from what bench recorded on this machine, never by timing a visible cell."""
    from lora_spectrum.render import fuse_policy

    verdict = result["fuse_verdict"]
    assert all(positive(verdict[k]) for k in ("bare_forward_s", "unfused_forward_s", "merge_s")), verdict
    assert verdict in fuse_policy.read_verdicts().values()
