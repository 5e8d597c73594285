"""Start-up: the configured base or the demo, the loras folder it hands on, the training-log folder."""

from __future__ import annotations

from lora_spectrum import demo
from lora_spectrum.settings import load_settings
from lora_spectrum.workbench import open_engine


def test_the_demo_hands_on_the_catalog_it_scanned_to_choose_the_loras_folder(setup):
    """``base: demo`` looks at the configured loras folder to choose it; that scan is the caller's catalog, so the
    folder's headers are read once at start-up, not twice."""
    config, loras, _ = setup
    settings = load_settings(config)
    settings.loras = str(loras)
    choice = open_engine(settings)
    assert choice.loras_dir == loras and choice.scanned is not None
    catalog = choice.catalog()
    assert catalog is choice.scanned and catalog.generation == 1, "scanned once, by open_engine"
    assert {e.name for e in catalog.entries} == {p.name for p in loras.glob("*.safetensors")}
    empty = loras.parent / "empty"
    empty.mkdir()
    settings.loras = str(empty)
    other = open_engine(settings)
    assert other.loras_dir != empty and other.catalog().folder == other.loras_dir, "the demo's own epochs"



def test_the_log_folder_is_the_first_that_exists_of_given_configured_demo_and_loras_logs(setup, tmp_path):
    config, loras, _ = setup
    settings = load_settings(config)
    settings.loras = str(loras)
    choice = open_engine(settings)
    assert choice.logs_dir is None, "the random demo has no training log"
    assert choice.logs_folder(settings) is None, "nothing exists yet"
    (loras / "logs").mkdir()
    assert choice.logs_folder(settings) == loras / "logs"
    configured = tmp_path / "configured"
    configured.mkdir()
    settings.logs = str(configured)
    assert choice.logs_folder(settings) == configured, "the config's folder before <loras>/logs"
    given = tmp_path / "given"
    assert choice.logs_folder(settings, given) == configured, "a given folder that does not exist is passed over"
    given.mkdir()
    assert choice.logs_folder(settings, given) == given, "a folder typed on the command line comes first"
    choice.logs_dir = tmp_path / "demo-logs"
    choice.logs_dir.mkdir()
    settings.logs = ""
    assert choice.logs_folder(settings) == loras / "logs", "the demo's log belongs to the demo's own epochs only"
    choice.loras_dir = demo.ASSETS_DIR / demo.LORAS_DIRNAME
    assert choice.logs_folder(settings) == choice.logs_dir, "the demo's epochs read the demo's log"
