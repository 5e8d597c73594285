"""The command line on the tiny demo base: ``grid`` (files, manifest, PNG parameters, cache, a corrupt epoch, bad
arguments, --mix) and ``inspect``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from lora_spectrum.cli import main
from lora_spectrum.records.grid_files import parse_parameters
from tests.tiny import garbage


def grid(config, loras, out, *extra):
    return main(["grid", "--config", str(config), "--loras", str(loras), "--out", str(out), "--steps", "2",
                 *extra])


def test_grid_writes_cells_grid_and_manifest(setup, capsys):
    config, loras, out = setup
    code = grid(config, loras, out, "--include-base", "--seeds", "1,2", "--epochs", "20,80,150,220,300",
                "--prompt", "a red circle, on white")
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    cells = manifest["cells"]
    assert manifest["settings"]["columns"] == ["base", "jimeng_20.safetensors", "jimeng_80.safetensors",
                                                "jimeng_150.safetensors", "jimeng_220.safetensors",
                                                "jimeng_300.safetensors"]
    assert len(cells) == 12  # (base + 5 epochs) x 2 seeds
    assert [c["epoch"] for c in cells[::2]] == [None, 20, 80, 150, 220, 300], "epoch-major order"
    for c in cells:
        assert {"epoch", "file", "sha256", "seed", "strength", "image", "seconds", "cached", "error"} <= set(c)
        assert c["error"] is None and not c["cached"] and (out / c["image"]).is_file()
    base = cells[0]
    assert base["file"] is None and base["sha256"] is None
    assert len(cells[2]["sha256"]) == 64
    grid_png = Image.open(out / "grid.png")
    one = Image.open(out / cells[0]["image"])
    assert grid_png.width > 6 * one.width and grid_png.height > 2 * one.height
    verdict = manifest["insight"]["verdict"]
    assert verdict["state"] == "needs probe" and verdict["epoch"] is None, "a grid alone never names a pick"
    err = capsys.readouterr().err
    assert "[12/12]" in err


def test_parameters_chunk_round_trips(setup):
    config, loras, out = setup
    assert grid(config, loras, out, "--epochs", "150", "--seeds", "7", "--strengths", "0.6",
                "--prompt", "a red circle, on white", "--negative", "blurry, dark", "--cfg", "4.5") == 0
    cell = json.loads((out / "manifest.json").read_text())["cells"][0]
    params = parse_parameters(Image.open(out / cell["image"]).text["parameters"])
    assert params["prompt"] == "a red circle, on white <lora:jimeng_150:0.6>"
    assert params["negative_prompt"] == "blurry, dark"
    assert (params["Steps"], params["Sampler"], params["CFG scale"], params["Seed"], params["Size"]) == \
        ("2", "Euler", "4.5", "7", "64x64")
    assert params["Lora"] == "jimeng_150" and params["Lora epoch"] == "150" and params["Lora strength"] == "0.6"
    data = (loras / "jimeng_150.safetensors").read_bytes()  # A1111's addnet hash: the bytes after the header
    after_header = data[8 + int.from_bytes(data[:8], "little"):]
    assert params["Lora hashes"] == f"jimeng_150: {hashlib.sha256(after_header).hexdigest()[:12]}"
    assert not cell["sha256"].startswith(params["Lora hashes"].split(": ")[1]), "not the whole file's hash"
    assert params["Model"] == "base-sdxl", "the base's name, never its local path"
    assert "Model hash" not in params, "a diffusers folder has no single file to hash"


def test_cache_hits_and_changed_content_is_rendered_again(setup):
    config, loras, out = setup
    args = ("--epochs", "20,300", "--seeds", "1", "--prompt", "p")
    assert grid(config, loras, out, *args) == 0
    first = json.loads((out / "manifest.json").read_text())["cells"]
    assert grid(config, loras, out, *args) == 0
    second = json.loads((out / "manifest.json").read_text())["cells"]
    assert [c["cached"] for c in second] == [True, True]
    # New content under the same name: that epoch is rendered again, the other still comes from the cache.
    shutil.copy(loras / "jimeng_150.safetensors", loras / "jimeng_20.safetensors")
    os.utime(loras / "jimeng_20.safetensors")
    assert grid(config, loras, out, *args) == 0
    third = json.loads((out / "manifest.json").read_text())["cells"]
    assert [c["cached"] for c in third] == [False, True]
    assert third[0]["sha256"] != first[0]["sha256"]
    assert grid(config, loras, out, *args, "--no-cache") == 0
    assert not any(c["cached"] for c in json.loads((out / "manifest.json").read_text())["cells"])


def test_a_corrupt_epoch_fails_only_its_own_cells(setup, capsys):
    config, loras, out = setup
    # Valid header, unusable content: it passes the catalog (ready) but fails at swap time with NaN weights.
    from safetensors.torch import load_file, save_file

    sd = load_file(str(loras / "jimeng_80.safetensors"))
    save_file({k: v.clone().fill_(float("nan")) for k, v in sd.items()}, str(loras / "jimeng_80.safetensors"),
              metadata={"ss_epoch": "80"})
    code = grid(config, loras, out, "--epochs", "20,80,150", "--seeds", "1,2", "--prompt", "p")
    assert code == 1
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    bad = [c for c in cells if c["epoch"] == 80]
    assert all("jimeng_80.safetensors" in c["error"] and "NaN" in c["error"] for c in bad)
    assert all(c["error"] is None and (out / c["image"]).is_file() for c in cells if c["epoch"] != 80)
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (("--seeds", "-1"), "seed"),
    (("--strengths", "nan"), "strength"),
    (("--width", "65"), "multiple of 8"),
    (("--epochs", "21"), "not in series"),
    (("--prompt", "  "), "prompt"),
    (("--sampler", "Nope"), "sampler"),
])
def test_bad_arguments_exit_2_and_render_nothing(setup, capsys, extra, words):
    config, loras, out = setup
    args = {"--prompt": "p"}
    code = grid(config, loras, out, *[x for kv in args.items() for x in kv if kv[0] not in extra], *extra)
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_several_series_need_a_choice_and_an_unloadable_base_exits_2(setup, capsys):
    config, loras, out = setup
    shutil.copy(loras / "jimeng_20.safetensors", loras / "other_20.safetensors")
    assert grid(config, loras, out, "--prompt", "p") == 2
    assert "--series" in capsys.readouterr().err
    assert main(["grid", "--config", str(config), "--base", str(out / "missing"), "--family", "sdxl", "--loras",
                 str(loras), "--out", str(out), "--prompt", "p"]) == 2
    assert "cannot load" in capsys.readouterr().err
    assert not out.exists()


def test_relative_loras_and_cache_paths_are_relative_to_the_current_folder(setup, monkeypatch):
    config, loras, out = setup
    monkeypatch.chdir(loras.parent)
    assert main(["grid", "--config", str(config), "--loras", "loras", "--cache-dir", "mycache", "--out", "rel",
                 "--epochs", "20", "--seeds", "1", "--steps", "2", "--prompt", "p"]) == 0
    assert (loras.parent / "rel" / "grid.png").is_file()
    assert any((loras.parent / "mycache").rglob("*.png"))


def test_grid_mix_renders_the_same_cells_and_refuses_zero(setup, capsys):
    config, loras, out = setup
    args = ("--include-base", "--seeds", "1,2", "--epochs", "20,150,300", "--prompt", "p", "--no-cache")
    assert grid(config, loras, out, *args) == 0
    assert grid(config, loras, out.with_name("mixed"), *args, "--mix", "4") == 0
    plain = json.loads((out / "manifest.json").read_text())["cells"]
    mixed = json.loads((out.with_name("mixed") / "manifest.json").read_text())["cells"]
    assert [(c["epoch"], c["seed"]) for c in mixed] == [(c["epoch"], c["seed"]) for c in plain]
    assert all(c["routed"] for c in mixed) and not any(c["routed"] for c in plain), "base + 3 epochs in one call"
    for a, b in zip(plain, mixed, strict=True):
        pa = np.asarray(Image.open(out / a["image"])).astype(int)
        pb = np.asarray(Image.open(out.with_name("mixed") / b["image"])).astype(int)
        assert np.abs(pa - pb).mean() < 0.05, (a["epoch"], a["seed"])
    capsys.readouterr()
    assert grid(config, loras, out, *args, "--mix", "0") == 2
    assert "--mix must be at least 1" in capsys.readouterr().err


def test_grid_compile_and_no_prefetch_render_the_same_cells_and_say_so_in_the_manifest(setup):
    config, loras, out = setup
    # dynamo's eager backend: the compiled path (guards, in-place strengths) without minutes of C++ compile;
    # unfused both ways (fuse: auto may merge, which rounds differently; under compile it stays unfused).
    config.write_text(config.read_text() + "compile_backend: eager\nfuse: off\n", encoding="utf-8")
    args = ("--seeds", "1", "--epochs", "20,150,300", "--prompt", "p", "--no-cache", "--strengths", "0.5")
    assert grid(config, loras, out, *args) == 0
    assert grid(config, loras, out.with_name("compiled"), *args, "--compile", "--no-prefetch") == 0
    plain = json.loads((out / "manifest.json").read_text())
    compiled = json.loads((out.with_name("compiled") / "manifest.json").read_text())
    assert plain["engine"] == {"fuse": "off", "compiled": False, "prefetch": True, "executor": "local"}
    assert compiled["engine"] == {"fuse": "off", "compiled": True, "prefetch": False, "executor": "local"}
    for a, b in zip(plain["cells"], compiled["cells"], strict=True):
        assert (a["epoch"], a["strength"]) == (b["epoch"], b["strength"]) and b["error"] is None
        assert np.array_equal(np.asarray(Image.open(out / a["image"])),
                              np.asarray(Image.open(out.with_name("compiled") / b["image"]))), a["image"]


def test_epochs_all_lists_each_skipped_file_and_a_requested_unusable_epoch_names_its_file(setup, capsys):
    config, loras, out = setup
    (loras / "jimeng_10.safetensors").write_bytes(garbage(4096))
    assert grid(config, loras, out, "--epochs", "all", "--prompt", "p", "--seeds", "1") == 0
    err = capsys.readouterr().err
    assert "skipped jimeng_10.safetensors: unreadable: not a safetensors file" in err
    cells = json.loads((out / "manifest.json").read_text())["cells"]
    assert [c["epoch"] for c in cells] == [20, 50, 80, 150, 220, 300]
    assert grid(config, loras, out.with_name("two"), "--epochs", "20,10", "--prompt", "p") == 2
    err = capsys.readouterr().err.strip()
    assert "epoch 10 of series 'jimeng' is jimeng_10.safetensors, which cannot be used: unreadable" in err
    assert len(err.splitlines()) == 1 and not out.with_name("two").exists()
    assert grid(config, loras, out.with_name("three"), "--epochs", "20,11", "--prompt", "p") == 2
    assert "epoch(s) [11] not in series 'jimeng'" in capsys.readouterr().err


def test_a_base_named_on_the_command_line_brings_its_own_family(setup, tmp_path, capsys):
    """The config says z-image; --base names an SDXL folder: its model_index.json decides, not the config."""
    from lora_spectrum import demo

    config, loras, out = setup
    config.write_text(config.read_text() + "family: z-image\n")
    base = tmp_path / "some-sdxl"
    demo.build_tiny("sdxl", seed=0).save_pretrained(base)
    assert main(["grid", "--config", str(config), "--base", str(base), "--loras", str(loras), "--out", str(out),
                 "--epochs", "20", "--steps", "1", "--width", "64", "--height", "64", "--prompt", "p"]) == 0, \
        capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["family"] == "sdxl"
    params = parse_parameters(Image.open(out / manifest["cells"][0]["image"]).text["parameters"])
    assert params["Model"] == "some-sdxl" and str(tmp_path) not in Image.open(out / manifest["cells"][0]["image"]).text["parameters"]


# ---------------------------------------------------------------------------------------------------- insight --probe
@pytest.fixture
def trained_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"base: demo\ndemo: trained\ndevice: cpu\ncache_dir: {tmp_path / 'cache'}\n"
                      f"loras: {tmp_path / 'none'}\n", encoding="utf-8")
    return config


def test_insight_probe_on_the_demo_gives_one_verdict_from_clip_and_the_style_references(trained_config, tmp_path,
                                                                                        capsys):
    """The probe's plumbing on the trained demo: its own CLIP, its style set as references, a verdict with its
    front and uncertainty, and a re-run served from the cache. (Whether the pick is right on runs trained with
    other settings: tests/measures/test_demo_runs.py.)"""
    from lora_spectrum.demo import assets

    small = tmp_path / "small.yaml"
    # 6 steps, not the demo's 20: the plumbing is the same at any step count (72 renders, twice).
    small.write_text("seeds: [11, 12]\nstyle: [{prompt: a red circle on a white background, steps: 6}]\n"
                     "new_context: [{prompt: a blue triangle on a gray background, steps: 6},\n"
                     "              {prompt: a cyan square on a cream background, steps: 6}]\n"
                     "leak: [{prompt: a green circle on a cream background, steps: 6}]\n", encoding="utf-8")
    args = ["insight", "--config", str(trained_config), "--base", "demo", "--probe", str(small), "--json",
            "--probe-out", str(tmp_path / "probe")]
    assert main(args) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    verdict = result["verdict"]
    total = 9 * 4 * 2  # (base + 8 epochs) x 4 prompts x 2 seeds
    assert f"[probe {total}/{total}]" in err
    assert result["probe"]["measure"] == "clip" and result["probe"]["clip"]["model"] == str(assets.demo_clip_dir())
    assert result["probe"]["references"] == len(list(assets.demo_style_dir().glob("*.png")))
    assert verdict["state"] in ("measures", "no style") and "probe" not in verdict["missing"]
    if verdict["state"] == "measures":
        assert verdict["epoch"] in verdict["front"] and verdict["epoch"] in verdict["tied"]
        assert 0 < verdict["confidence"] <= 1 and "prompt fidelity" in verdict["reason"]
    rows = {e["epoch"]: e for e in result["epochs"]}
    assert all(rows[e][k] is not None for e in rows for k in ("style", "fidelity", "leak", "consistency"))
    # A re-run is served from the cache and gives the same verdict.
    assert main(args) == 0
    out2, err2 = capsys.readouterr()
    lines = [line for line in err2.splitlines() if line.startswith("[probe ")]
    assert len(lines) == total and all(line.endswith(": cached") for line in lines)
    assert json.loads(out2)["verdict"] == verdict


def test_insight_on_other_loras_never_reads_the_demos_training_log(trained_config, tmp_path, capsys):
    """``--base demo --loras OTHER`` without ``--logs``: the demo's log belongs to the demo's epochs only."""
    import shutil

    from lora_spectrum.demo import assets

    other = tmp_path / "other"
    shutil.copytree(assets.ASSETS_DIR / assets.LORAS_DIRNAME, other)
    from lora_spectrum.settings import load_settings
    from lora_spectrum.workbench import demo_engine

    settings = load_settings(trained_config)
    choice = demo_engine(settings)
    assert choice.logs_folder(settings) is not None, "the demo's own epochs read the demo's log"
    choice.loras_dir = other
    assert choice.logs_folder(settings) is None


def test_insight_probe_reads_a_kohya_prompt_file_and_names_an_unknown_set(trained_config, tmp_path, capsys):
    prompts = tmp_path / "sample_prompts.txt"
    prompts.write_text("a blue triangle on a gray background, jimeng style --d 3 --s 8\n"
                       "a green circle on a cream background --d 3 --s 8\n", encoding="utf-8")
    args = ["insight", "--config", str(trained_config), "--base", "demo", "--probe-out", str(tmp_path / "p")]
    assert main([*args, "--probe", str(prompts), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["probe"]["probe_set"] == "sample_prompts"
    assert [p["kind"] for p in result["probe"]["prompts"]] == ["style", "leak"]
    assert main([*args, "--probe", "nonesuch"]) == 2
    err = capsys.readouterr().err
    assert "nonesuch" in err and "shapes" in err and "general" in err and len(err.strip().splitlines()) == 1
