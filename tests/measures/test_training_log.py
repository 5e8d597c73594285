"""Training logs (lora_spectrum.measures.training_log): kohya's loss tags read from event files this test writes, several
runs in one folder, resumed runs, clear errors, and epoch files placed on the step axis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.tensorboard import SummaryWriter

from lora_spectrum.errors import ConfigError
from lora_spectrum.loras.catalog import Catalog, LoraEntry
from lora_spectrum.measures import training_log

# Values exactly representable in float32 (event files store float32), so the comparison can be exact.
STEP_LOSS = [(step, 1.0 - step / 64) for step in range(1, 31)]
AVERAGE_LOSS = [(step, 0.75 - step / 128) for step in range(1, 31)]
EPOCH_LOSS = [(1, 0.625), (2, 0.5), (3, 0.4375)]
VALIDATION_LOSS = [(1, 0.6875), (2, 0.5625), (3, 0.5)]


def _write_kohya_run(folder: Path, walltime: float = 1_000.0) -> None:
    """What kohya sd-scripts writes: per-step loss and lr, per-epoch loss with the epoch number as step."""
    with SummaryWriter(str(folder)) as w:
        for (step, current), (_, average) in zip(STEP_LOSS, AVERAGE_LOSS, strict=True):
            w.add_scalar("loss/current", current, step, walltime=walltime + step)
            w.add_scalar("loss/average", average, step, walltime=walltime + step)
            w.add_scalar("lr/unet", 1e-4, step, walltime=walltime + step)
        for (epoch, loss), (_, val) in zip(EPOCH_LOSS, VALIDATION_LOSS, strict=True):
            w.add_scalar("loss/epoch", loss, epoch, walltime=walltime + 10 * epoch)
            w.add_scalar("loss/validation/epoch_average", val, epoch, walltime=walltime + 10 * epoch)


def test_kohya_tags_are_read_exactly(tmp_path):
    _write_kohya_run(tmp_path / "logs" / "jimeng20260101" / "network_train")
    scalars = training_log.read_scalars(tmp_path / "logs")
    assert scalars["loss/current"] == STEP_LOSS
    assert scalars["loss/average"] == AVERAGE_LOSS
    assert scalars["loss/epoch"] == EPOCH_LOSS
    assert scalars["loss/validation/epoch_average"] == VALIDATION_LOSS
    assert set(training_log.read_scalars(tmp_path / "logs", tags=["loss/epoch"])) == {"loss/epoch"}

    loss = training_log.read_loss(tmp_path / "logs")
    assert set(loss["series"]) == {"loss/current", "loss/average", "loss/epoch", "loss/validation/epoch_average"}
    assert loss["series"]["loss/epoch"] == [list(p) for p in EPOCH_LOSS]
    assert sorted(loss["per_epoch"]) == ["loss/epoch", "loss/validation/epoch_average"]
    assert sorted(loss["per_step"]) == ["loss/average", "loss/current"]
    assert loss["event_files"] == 1 and loss["note"] is None


def test_a_resumed_run_keeps_the_later_value_of_a_step(tmp_path):
    _write_kohya_run(tmp_path)
    with SummaryWriter(str(tmp_path)) as w:  # resumed from step 29: rewrites steps 29 and 30, adds 31
        for step, value in ((29, 0.125), (30, 0.0625), (31, 0.03125)):
            w.add_scalar("loss/current", value, step, walltime=5_000.0 + step)
    series = training_log.read_scalars(tmp_path)["loss/current"]
    assert series[:28] == STEP_LOSS[:28]
    assert series[28:] == [(29, 0.125), (30, 0.0625), (31, 0.03125)]


def test_several_runs_are_not_mixed(tmp_path):
    _write_kohya_run(tmp_path / "old", walltime=1_000.0)
    with SummaryWriter(str(tmp_path / "new")) as w:
        w.add_scalar("loss/epoch", 0.25, 1, walltime=9_000.0)
    loss = training_log.read_loss(tmp_path)
    assert loss["runs"] == ["old", "new"] and loss["run"] == "new"
    assert loss["series"] == {"loss/epoch": [[1, 0.25]]} and "2 runs" in loss["note"]
    assert training_log.read_loss(tmp_path, run="old")["series"]["loss/epoch"] == [list(p) for p in EPOCH_LOSS]
    with pytest.raises(ConfigError, match="no run 'other'"):
        training_log.read_loss(tmp_path, run="other")


def test_folders_without_event_files_are_named_in_the_error(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing'}: training log folder does not exist")):
        training_log.read_loss(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("no events here")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: no TensorBoard event files")):
        training_log.read_loss(tmp_path)
    with SummaryWriter(str(tmp_path / "lr_only")) as w:
        w.add_scalar("lr/unet", 1e-4, 1)
    with pytest.raises(ConfigError, match="none holds a loss scalar"):
        training_log.read_loss(tmp_path / "lr_only")


def _entry(name: str, epoch: int | None, meta: dict[str, str], step: int | None = None) -> LoraEntry:
    return LoraEntry(name=name, path=name, series="s", epoch=epoch, step=step, state="ready", reason="",
                     metadata=meta)


def test_epoch_files_are_placed_on_the_step_axis():
    rows = training_log.place_entries([
        _entry("s-000001.safetensors", 1, {"ss_epoch": "1", "ss_steps": "40"}),
        _entry("s-000002.safetensors", 2, {"ss_epoch": "2", "ss_steps": "80"}),
        _entry("s-000003.safetensors", 3, {}),
        _entry("s-step500.safetensors", None, {}, step=500),
    ])
    assert [(r["epoch"], r["step"], r["step_source"]) for r in rows] == [
        (1, 40, "ss_steps"), (2, 80, "ss_steps"), (3, 120, "estimated"), (None, 500, "file name")]
    assert training_log.place_entries([_entry("s.safetensors", None, {})])[0]["step"] is None


def test_catalog_metadata_gives_the_steps(tmp_path):
    # kohya's last file has no number in its name: its epoch and step come from the metadata.
    for epoch, name in ((1, "run-000001"), (2, "run")):
        meta = {"ss_epoch": str(epoch), "ss_steps": str(25 * epoch), "ss_output_name": "run"}
        save_file({"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)},
                  str(tmp_path / f"{name}.safetensors"), metadata=meta)
    rows = training_log.place_entries(Catalog(tmp_path).scan())
    assert [(r["file"], r["epoch"], r["step"]) for r in rows] == [
        ("run-000001.safetensors", 1, 25), ("run.safetensors", 2, 50)]
