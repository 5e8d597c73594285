"""One decision of *ready*: for every trainer's file format and every family, the catalog lists a file as usable
exactly when a real render of it succeeds (and says why when not); ``inspect`` lists nothing ready that no base can
render; peft files without a prefix render on every family like their prefixed twins."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_spectrum import demo
from lora_spectrum.adapters.reading import _file_refusal, layer_table, lora_loader, swap_refusal
from lora_spectrum.bases.families import get_family
from lora_spectrum.cli.render_commands import _cmd_inspect
from lora_spectrum.errors import LoraLoadError
from lora_spectrum.loras.catalog import Catalog
from tests import trainer_files
from tests.tiny import FAMILIES, new_engine, pixels, request


def _write_formats(folder, denoisers) -> dict[str, str | None]:
    """One file per format trainers write, for the tiny models: {file name: the family it renders on, or None}."""
    made: dict[str, str | None] = {}

    def save(name, sd, family, metadata=None):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / f"{name}.safetensors"), metadata=metadata)
        made[f"{name}.safetensors"] = family

    for family in FAMILIES:
        denoiser = denoisers[family]
        for name, (sd, metadata) in trainer_files.trainer_formats(family, denoiser).items():
            save(name, sd, family, metadata)
        tag = family.replace("-", "")
        peft = trainer_files.write_peft(folder / f"peft-bare-{tag}.safetensors", denoiser)
        made[f"peft-bare-{tag}.safetensors"] = family
        trainer_files.write_peft(folder / f"peft-default-{tag}.safetensors", denoiser, adapter_name=True)
        made[f"peft-default-{tag}.safetensors"] = family
        save(f"peft-prefixed-{tag}", {f"{get_family(family).lora_prefix}.{k}": v for k, v in peft.items()}, family)
        lycoris = trainer_files.LYCORIS_STYLE.get(family, "kohya")
        for algo, style in (("loha", lycoris), ("lokr", lycoris), ("dora", lycoris), ("peft-dora", "peft")):
            trainer_files.write(folder / f"{algo}-{tag}.safetensors", family, denoiser, algo, style=style)
            made[f"{algo}-{tag}.safetensors"] = family
    trainer_files.write(folder / "lokr-full-zimage.safetensors", "z-image", denoisers["z-image"], "lokr-full",
                        style="ai-toolkit")
    made["lokr-full-zimage.safetensors"] = "z-image"
    # Files no base renders: only text-encoder keys; peft factors naming layers neither denoiser has.
    te = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    save("te-only", {f"{te}.lora_down.weight": torch.randn(4, 32), f"{te}.lora_up.weight": torch.randn(32, 4),
                     f"{te}.alpha": torch.tensor(4.0)}, None)
    save("peft-elsewhere", {"vision_tower.blocks.0.qkv.lora_A.weight": torch.randn(4, 32),
                            "vision_tower.blocks.0.qkv.lora_B.weight": torch.randn(96, 4)}, None)
    return made


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    denoisers = {f: get_family(f).denoiser(demo.build_tiny(f, seed=0)) for f in FAMILIES}
    return folder, _write_formats(folder, denoisers), denoisers


@pytest.mark.parametrize("family", FAMILIES)
def test_ready_and_renders_agree_for_every_format(family, formats):
    """Each file: listed usable on a ``family`` base exactly when its render there succeeds, and changes the image;
    otherwise a state and a reason. Files made for ``family`` are all usable; peft files without a prefix (with or
    without peft's adapter name) render exactly like the prefixed file of the same tensors."""
    folder, made, _denoisers = formats
    engine = new_engine(family)
    req = request(family, seeds=(1,))
    base = pixels(engine.render(req, None).images)
    entries = {e.name: e for e in Catalog(folder).scan()}
    assert set(entries) == set(made)
    disagree, images = [], {}
    for name, entry in entries.items():
        problem = entry.problem(family)
        try:
            images[name] = pixels(engine.render(req, entry.path).images)
            rendered, error = True, ""
        except LoraLoadError as exc:
            rendered, error = False, exc.cause
        if (problem is None) != rendered:
            disagree.append(f"{name}: catalog {problem or 'ready'}, render {'ok' if rendered else error}")
        elif problem is not None:
            assert problem[0] in ("unsupported", "incompatible") and problem[1], (name, problem)
        elif np.array_equal(images[name], base):
            disagree.append(f"{name}: listed ready and rendered, but the image is the base's")
        if (made[name] == family) != rendered:
            disagree.append(f"{name} (made for {made[name]}): render on {family} {'ok' if rendered else error}")
    assert not disagree, "\n".join(disagree)
    tag = family.replace("-", "")
    for variant in ("bare", "default"):
        assert np.array_equal(images[f"peft-{variant}-{tag}.safetensors"], images[f"peft-prefixed-{tag}.safetensors"])


def test_inspect_lists_ready_only_what_some_base_renders(formats, capsys):
    """The issue's file (peft, no prefix, SDXL) is listed ready and renders; what no family takes is listed with
    the swap's reason, never as ready."""
    folder, made, _denoisers = formats
    assert _cmd_inspect(SimpleNamespace(loras=str(folder), json=True)) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, family in made.items():
        assert (rows[name]["state"] == "ready") == (family is not None), rows[name]
    issue = rows["peft-bare-sdxl.safetensors"]
    assert (issue["format"], issue["rank"], issue["denoiser_keys"]) == ("diffsynth", 4, 192)
    assert rows["te-only.safetensors"]["state"] == "unsupported"
    assert "only text-encoder keys" in rows["te-only.safetensors"]["reason"]
    assert "vision_tower.blocks.0.qkv" in rows["peft-elsewhere.safetensors"]["reason"]
    # On a base of the other family, a file that fits one family is incompatible, naming the one it fits.
    catalog = Catalog(folder)
    catalog.scan()
    state, reason = catalog.get("peft-bare-sdxl.safetensors").problem("z-image")
    assert state == "incompatible" and "fits a sdxl base" in reason and "down_blocks" in reason


def test_the_decision_is_cached_per_file_version(tmp_path):
    """Decided once per (size, mtime): asked again, nothing is read; a file replaced in place is decided anew."""
    denoiser = get_family("sdxl").denoiser(demo.build_tiny("sdxl", seed=0))
    path = tmp_path / "peft_1.safetensors"
    trainer_files.write_peft(path, denoiser)
    assert swap_refusal(path, "sdxl") == ""
    hits = _file_refusal.cache_info().hits
    assert swap_refusal(path, "sdxl") == "" and _file_refusal.cache_info().hits == hits + 1
    save_file({"lora_te1_x.lora_down.weight": torch.randn(4, 8), "lora_te1_x.lora_up.weight": torch.randn(8, 4)},
              str(path))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert "only text-encoder keys" in swap_refusal(path, "sdxl")
    assert "file not found" in swap_refusal(tmp_path / "gone.safetensors", "sdxl")


def test_the_family_facts_the_check_stands_on_are_those_of_the_models(formats):
    """The check converts with the LoRA loader each pipeline inherits ``lora_state_dict`` from (the very function),
    and ``Family.denoiser_roots`` names the top-level modules with Linear/Conv2d layers of each family's denoiser
    (Z-Image's omni variant adds its siglip modules)."""
    _folder, _made, denoisers = formats
    for family, denoiser in denoisers.items():
        fam = get_family(family)
        assert lora_loader(fam).lora_state_dict.__func__ is fam.pipeline_cls().lora_state_dict.__func__
        roots = {name.split(".")[0] for name in layer_table(denoiser)}
        assert roots <= set(fam.denoiser_roots)
        assert set(fam.denoiser_roots) - roots <= {"siglip_embedder", "siglip_refiner"}
