"""One series' insight (lora_spectrum.measures.insight and .report): folder problems named with the choices, image
rows attached to epochs, the lenient mode of the UI, the text tables, and the ``insight`` command's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lora_spectrum import demo
from lora_spectrum.errors import CatalogError, ConfigError
from lora_spectrum.loras.catalog import Catalog
from lora_spectrum.measures.insight import series_insight
from lora_spectrum.measures.report import format_insight
from tests.measures.files import scanned, write_grid

REPO = Path(__file__).resolve().parents[2]


def test_folder_problems_are_reported_with_the_choices(demo_loras, unet, tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        series_insight(scanned(tmp_path / "nowhere"))
    two = tmp_path / "two"
    demo.write_demo_loras(unet, two, "sdxl", epochs=(1, 2), series="alpha")
    demo.write_demo_loras(unet, two, "sdxl", epochs=(1, 2), series="beta")
    with pytest.raises(CatalogError, match=r"2 series.*alpha \(2 files\), beta \(2 files\)"):
        series_insight(scanned(two))
    with pytest.raises(CatalogError, match="no series 'gamma'.*alpha, beta"):
        series_insight(scanned(two), series="gamma")
    assert series_insight(scanned(two), series="beta")["series"] == "beta"


def test_the_catalog_is_measured_as_its_caller_scanned_it(unet, tmp_path):
    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(1, 2), series="alpha")
    catalog = Catalog(tmp_path)
    catalog.scan()
    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(3,), series="alpha")  # a file arrives after the scan
    assert [e["epoch"] for e in series_insight(catalog)["epochs"]] == [1, 2]
    catalog.scan()
    assert [e["epoch"] for e in series_insight(catalog)["epochs"]] == [1, 2, 3]


def test_insight_attaches_image_rows_to_epochs(demo_loras, tmp_path):
    grid = write_grid(tmp_path / "grid", steps=(0.1, 0.3))
    manifest = json.loads((grid / "manifest.json").read_text())
    for c in manifest["cells"]:  # point the synthetic grid at two demo epochs
        if c["file"]:
            c["file"] = {"s_10.safetensors": "jimeng_20.safetensors"}.get(c["file"], "jimeng_50.safetensors")
    (grid / "manifest.json").write_text(json.dumps(manifest))
    result = series_insight(scanned(demo_loras), grid=grid, use_clip=False)
    by_file = {e["file"]: e["image"] for e in result["epochs"]}
    assert by_file["jimeng_20.safetensors"]["distance_from_base"] < by_file["jimeng_50.safetensors"][
        "distance_from_base"]
    assert by_file["jimeng_300.safetensors"] is None
    assert "image measure: pixel" in format_insight(result)


def test_lenient_insight_keeps_the_curves_when_the_log_folder_is_empty(tmp_path):
    pipe = demo.build_tiny("sdxl")
    demo.write_demo_loras(pipe.unet, tmp_path / "loras", "sdxl", epochs=(20, 50))
    empty = tmp_path / "loras" / "logs"
    empty.mkdir()
    with pytest.raises(ConfigError):
        series_insight(scanned(tmp_path / "loras"), logs=empty)
    result = series_insight(scanned(tmp_path / "loras"), logs=empty, grid=tmp_path / "nogrid", lenient=True)
    assert [e["epoch"] for e in result["epochs"]] == [20, 50] and result["loss"] is None
    assert any("training log not used" in n for n in result["notes"])
    assert any("image measures not available" in n for n in result["notes"])


def test_format_insight_is_a_table_that_ends_with_the_verdict(demo_result):
    text = format_insight(demo_result)
    assert "jimeng_300.safetensors" in text and "update norm per layer group" in text
    assert demo_result["verdict"]["reason"] in text and "Verdict: No pick yet" in text
    assert "Suggestion" not in text, "weight curves alone never name a pick"


# ---------------------------------------------------------------------------------------------- command line
def test_insight_command_prints_the_documented_json(demo_loras, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "logs")) as w:
        for epoch in (20, 50):  # per-epoch tags use the epoch number as step
            w.add_scalar("loss/epoch", 20.0 / epoch, epoch)
    cmd = [sys.executable, "-m", "lora_spectrum", "insight", "--loras", str(demo_loras), "--logs",
           str(tmp_path / "logs"), "--json"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"series", "epochs", "loss", "verdict"} <= set(result)
    assert result["verdict"]["state"] == "needs probe" and result["verdict"]["epoch"] is None
    assert {"epoch", "file", "weight_norm", "relative_change", "cosine_to_previous", "cosine_to_last",
            "relative_change_to_last", "groups"} <= set(result["epochs"][0])
    assert result["series"] == "jimeng" and result["image"] is None
    assert result["loss"]["series"]["loss/epoch"] == [[20, 1.0], [50, pytest.approx(0.4)]]  # float32 in the file
    assert [e["epoch_loss"] for e in result["epochs"][:3]] == [{"loss/epoch": 1.0},
                                                               {"loss/epoch": pytest.approx(0.4)}, None]
    assert [m["step"] for m in result["loss"]["markers"]] == [10 * e for e in demo.DEMO_EPOCHS]


def test_insight_command_reads_the_log_beside_the_loras_unless_told_otherwise(unet, tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    from lora_spectrum.cli import main

    loras = tmp_path / "loras"
    demo.write_demo_loras(unet, loras, "sdxl", epochs=(20, 50))
    for folder, value in ((loras / "logs", 0.5), (tmp_path / "other", 0.25)):
        with SummaryWriter(str(folder)) as w:
            w.add_scalar("loss/epoch", value, 20)
    assert main(["insight", "--loras", str(loras), "--json"]) == 0
    loss = json.loads(capsys.readouterr().out)["loss"]
    assert loss["folder"] == str(loras / "logs") and loss["series"]["loss/epoch"] == [[20, 0.5]]
    assert main(["insight", "--loras", str(loras), "--logs", str(tmp_path / "other"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"]["series"]["loss/epoch"] == [[20, 0.25]]


def test_insight_command_takes_the_clip_model_and_says_why_it_was_skipped(demo_loras, tmp_path, capsys):
    from lora_spectrum.cli import main

    grid = write_grid(tmp_path / "grid", steps=(0.1, 0.3))
    assert main(["insight", "--loras", str(demo_loras), "--grid", str(grid), "--json",
                 "--clip-model", "lora-spectrum-tests/no-such-clip"]) == 0
    result = json.loads(capsys.readouterr().out)
    clip = result["image"]["clip"]
    assert clip["skipped"] and "lora-spectrum-tests/no-such-clip" in clip["reason"]
    assert "no download attempted" in clip["reason"] and result["image"]["measure"] == "pixel"


def test_insight_command_names_a_missing_loras_folder(tmp_path, capsys):
    from lora_spectrum.cli import main

    assert main(["insight", "--loras", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: loras folder does not exist" in capsys.readouterr().err


def test_insight_command_names_the_series_to_choose(unet, tmp_path, capsys):
    from lora_spectrum.cli import main

    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(1,), series="alpha")
    demo.write_demo_loras(unet, tmp_path, "sdxl", epochs=(1,), series="beta")
    assert main(["insight", "--loras", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "alpha" in err and "beta" in err and "--series" in err
    assert main(["insight", "--loras", str(tmp_path), "--series", "beta"]) == 0
    out = capsys.readouterr().out
    assert "series beta" in out and "No pick yet" in out and "still moving" not in out
