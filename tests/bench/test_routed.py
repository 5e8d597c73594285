"""Several epochs in one routed batch: the figures are there and each sample is its own epoch's.

No timing thresholds: timings belong to the benchmark, not to tests. The run is the shared ``result`` fixture.
"""

from __future__ import annotations

from tests.bench.figures import positive


def test_routed_grid_figures(result):
    g = result["grid_routed"]
    assert g["epochs"] == 3 and g["steps"] >= 1
    assert g["routed_way"] == "routed", "every epoch of one run shares a layout: the stacked way"
    for key in ("epoch_by_epoch_step_s", "routed_step_s", "routed_setup_s", "base_batch_step_s", "step_speedup",
                "grid_speedup", "routed_vs_base_batch", "peft_routed_step_s", "peft_routed_setup_s",
                "peft_grid_speedup"):
        assert positive(g[key]), key
    # Each routed sample is its own epoch's forward up to rounding, far from its neighbour's; nothing stays.
    assert g["own_epoch_max_abs"] < 0.01 * g["neighbour_epoch_max_abs"]
    assert g["base_bit_exact_after"] is True
