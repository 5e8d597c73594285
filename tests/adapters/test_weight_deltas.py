"""LyCORIS LoHa and LoKr (decomposed and full) and DoRA (kohya and peft layouts) on every tiny family: each renders
like the base with its delta merged by hand, with the guarantees of plain LoRA (atomic, no residue, text encoders
untouched, strength applies, short errors naming the file), and each is listed with its algorithm and rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from lora_spectrum.bases.families import get_family
from lora_spectrum.errors import LoraLoadError
from lora_spectrum.loras.catalog import Catalog
from tests import trainer_files
from tests.adapters.helpers import assert_same_tensors, base_weights, te_state
from tests.tiny import FAMILIES, new_engine, pixels, request

CASES = [(family, algo, style) for family in FAMILIES
         for algo, style in (("loha", trainer_files.LYCORIS_STYLE.get(family, "kohya")),
                             ("lokr", trainer_files.LYCORIS_STYLE.get(family, "kohya")),
                             ("dora", trainer_files.LYCORIS_STYLE.get(family, "kohya")), ("peft-dora", "peft"))]
CASES.append(("z-image", "lokr-full", "ai-toolkit"))  # ai-toolkit's Z-Image LoKr: full factors, alpha 1e10
CASES.append(("flux", "lokr-full", "ai-toolkit"))  # and its FLUX.1 LoKr, under transformer.


def by_hand(family, deltas, strength=1.0) -> np.ndarray:
    """A fresh base with the deltas merged by the test's own arithmetic, rendered with no adapter."""
    reference = new_engine(family)
    trainer_files.merged_by_hand(get_family(family).denoiser(reference.pipe), deltas, strength)
    return pixels(reference.render(request(family), None).images)


@pytest.mark.parametrize("family, algo, style", CASES)
def test_each_algorithm_renders_like_its_delta_merged_by_hand(family, algo, style, tmp_path):
    engine = new_engine(family)
    path = tmp_path / f"{algo}run-000001.safetensors"
    deltas = trainer_files.write(path, family, engine.hotswap.denoiser, algo, style=style)
    base = pixels(engine.render(request(family), None).images)
    got = pixels(engine.render(request(family), str(path), 1.0).images)
    want = by_hand(family, deltas)
    assert np.abs(got.astype(int) - want).max() <= 1, "the file's weights, to rounding"
    assert np.abs(got.astype(int) - base).mean() > 1.0, "and not the base"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_residue_text_encoders_untouched_and_strength_applies(family, demo_loras, tmp_path):
    engine = new_engine(family)
    fresh = base_weights(engine.hotswap.denoiser)
    te_before = te_state(engine)
    base = pixels(engine.render(request(family), None).images)
    loha = tmp_path / "loharun-000002.safetensors"
    deltas = trainer_files.write(loha, family, engine.hotswap.denoiser, "loha", seed=2)
    half = pixels(engine.render(request(family), str(loha), 0.5).images)
    assert np.abs(half.astype(int) - by_hand(family, deltas, 0.5)).max() <= 1
    # A plain LoRA epoch after it, then back to the LoHa, then the base: every state is exact.
    plain = str(demo_loras[family][-1])
    assert np.array_equal(pixels(engine.render(request(family), plain).images),
                          pixels(new_engine(family).render(request(family), plain).images))
    assert np.array_equal(pixels(engine.render(request(family), str(loha), 0.5).images), half)
    assert np.array_equal(pixels(engine.render(request(family), str(loha), 0.0).images), base)
    assert np.array_equal(pixels(engine.render(request(family), None).images), base)
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)
    for before, after in zip(te_before, te_state(engine), strict=True):
        assert_same_tensors(before, after)
    engine.hotswap.unload()
    assert_same_tensors(base_weights(engine.hotswap.denoiser), fresh)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bad_lycoris_file_changes_nothing_and_says_why_briefly(family, tmp_path):
    engine = new_engine(family)
    good = tmp_path / "lokrrun-000001.safetensors"
    trainer_files.write(good, family, engine.hotswap.denoiser, "lokr")
    active = pixels(engine.render(request(family), str(good), 0.8).images)
    weights = {k: v.clone() for k, v in engine.hotswap.denoiser.state_dict().items()}
    sd = load_file(str(good))
    bad = tmp_path / "lokrrun-000002.safetensors"
    first = next(k for k in sorted(sd) if k.endswith(".lokr_w2_b"))
    save_file({**sd, first: sd[first][:, :-1].contiguous()}, str(bad))  # one layer's factors no longer fit
    with pytest.raises(LoraLoadError) as info, engine.lock:
        engine.hotswap.activate(bad, 1.0)
    message = str(info.value)
    assert "lokrrun-000002.safetensors" in message and "do not make a" in message and len(message) < 500
    assert engine.hotswap.get_active_adapter() == (str(good), 0.8)
    assert_same_tensors({k: v for k, v in engine.hotswap.denoiser.state_dict().items()}, weights)
    assert np.array_equal(pixels(engine.render(request(family), str(good), 0.8).images), active)


def test_lycoris_files_render_alone_in_routed_batches(tmp_path, demo_loras):
    family = "sdxl"
    engine = new_engine(family)
    loha = tmp_path / "loharun-000001.safetensors"
    trainer_files.write(loha, family, engine.hotswap.denoiser, "loha")
    prepared, _ = engine.hotswap.load_adapter(str(loha))
    assert "LyCORIS or DoRA" in engine.hotswap.unroutable(prepared)
    req = request(family)
    results = engine.render_routed(req, [[(str(demo_loras[family][0]), 1.0, (1, 2)), (str(loha), 1.0, (1, 2))]])[0]
    assert results[0].swap.kind != "routed" and results[1].swap.kind != "routed", "both alone: one is LyCORIS"
    assert np.array_equal(pixels(results[1].images), pixels(new_engine(family).render(req, str(loha)).images))


@pytest.mark.parametrize("algo, rank, expected", [("loha", 4, "loha"), ("lokr", 4, "lokr"), ("dora", 4, "dora"),
                                                  ("peft-dora", 4, "dora")])
def test_the_catalog_names_the_algorithm_rank_and_keys(algo, rank, expected, tmp_path):
    denoiser = new_engine("sdxl").hotswap.denoiser
    path = tmp_path / f"{algo}run-000003.safetensors"
    trainer_files.write(path, "sdxl", denoiser, algo, rank=rank, style="peft" if algo == "peft-dora" else "kohya")
    entry = Catalog(tmp_path).scan()[0]
    layers = sum(1 for _ in trainer_files.attention_targets(denoiser))
    assert (entry.state, entry.algorithm, entry.rank, entry.epoch) == ("ready", expected, rank, 3)
    assert entry.text_encoder_keys == 0 and entry.alpha_keys == (0 if algo == "peft-dora" else layers)
    assert entry.denoiser_keys == len(load_file(str(path))) - entry.alpha_keys
    assert entry.series == f"{algo}run"


def test_a_diffsynth_file_is_recognised_and_renders(tmp_path):
    """DiffSynth-Studio saves peft's names with no prefix and the adapter name: ``layers.0...lora_A.default.weight``
    in fp32, as ``epoch-0.safetensors`` (0-based)."""
    family = "z-image"
    engine = new_engine(family)
    folder = tmp_path / "diffsynth-run"
    folder.mkdir()
    sd = {}
    plain = demo.make_lora_state_dict(engine.hotswap.denoiser, family, rank=4, alpha=4.0)
    for key, value in plain.items():
        if key.endswith(".alpha"):
            continue
        module = key.removeprefix("diffusion_model.").rsplit(".", 2)[0]
        leaf = "lora_A" if ".lora_down." in key else "lora_B"
        sd[f"{module}.{leaf}.default.weight"] = value.float().contiguous()
    save_file(sd, str(folder / "epoch-0.safetensors"), metadata={"format": "pt"})
    musubi = tmp_path / "musubi-000001.safetensors"
    save_file(plain, str(musubi))
    entry = Catalog(folder).scan()[0]
    assert (entry.series, entry.epoch, entry.label, entry.format) == ("diffsynth-run", 0, "epoch 0", "diffsynth")
    assert entry.denoiser_keys == len(sd) and entry.rank == 4 and entry.algorithm == "lora"
    got = pixels(engine.render(request(family), str(folder / "epoch-0.safetensors")).images)
    assert np.array_equal(got, pixels(new_engine(family).render(request(family), str(musubi)).images))


def test_a_tucker_loha_on_convolutions_renders_like_its_delta_merged_by_hand(tmp_path):
    """LyCORIS's Tucker LoHa on 3x3 convolutions (``hada_t1/_t2`` (r, r, k, k), ``hada_w*_a`` (r, out),
    ``hada_w*_b`` (r, in)): each side is ``t x1 w_a x2 w_b``, and dW = side1 * side2 * alpha / r."""
    family, rank, alpha = "sdxl", 4, 2.0
    engine = new_engine(family)
    convs = [(n, m) for n, m in engine.hotswap.denoiser.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and ".resnets." in n][:3]
    gen, sd, deltas = torch.Generator().manual_seed(0), {}, {}
    for name, conv in convs:
        out_c, in_c, k, _ = conv.weight.shape
        f = {"hada_w1_a": (rank, out_c), "hada_w1_b": (rank, in_c), "hada_t1": (rank, rank, k, k),
             "hada_w2_a": (rank, out_c), "hada_w2_b": (rank, in_c), "hada_t2": (rank, rank, k, k)}
        f = {factor: torch.randn(*shape, generator=gen) * 0.3 for factor, shape in f.items()}
        key = "lora_unet_" + name.replace(".", "_")
        sd |= {f"{key}.{factor}": t for factor, t in f.items()} | {f"{key}.alpha": torch.tensor(alpha)}
        sides = [torch.einsum("ijkl,ip,jr->prkl", f[f"hada_t{s}"], f[f"hada_w{s}_a"], f[f"hada_w{s}_b"]) for s in (1, 2)]
        deltas[name] = sides[0] * sides[1] * alpha / rank
    path = tmp_path / "tucker-000001.safetensors"
    save_file(sd, str(path))
    got = pixels(engine.render(request(family), str(path)).images)
    assert np.abs(got.astype(int) - by_hand(family, deltas)).max() <= 1
    assert np.abs(got.astype(int) - pixels(new_engine(family).render(request(family), None).images)).mean() > 0.1
    assert Catalog(tmp_path).scan()[0].algorithm == "loha"


def test_a_lycoris_module_on_a_fused_flux_layer_is_refused_with_the_reason(tmp_path):
    """sd-scripts names FLUX.1's fused layers (``img_attn_qkv``, ``linear1``), which diffusers splits into several
    layers: a LoHa delta there has no one layer to merge into, so the file is refused, saying so."""
    engine = new_engine("flux")
    for module, parts in (("double_blocks_0_img_attn_qkv", 3), ("single_blocks_0_linear1", 4)):
        key = f"lora_unet_{module}"
        sd = {f"{key}.hada_w1_a": torch.randn(96, 4), f"{key}.hada_w1_b": torch.randn(4, 32),
              f"{key}.hada_w2_a": torch.randn(96, 4), f"{key}.hada_w2_b": torch.randn(4, 32),
              f"{key}.alpha": torch.tensor(4.0)}
        path = tmp_path / f"{module}.safetensors"
        save_file(sd, str(path))
        with pytest.raises(LoraLoadError, match=f"split into {parts} layers"), engine.lock:
            engine.hotswap.activate(str(path), 1.0)
        entry = next(e for e in Catalog(tmp_path).scan() if e.name == path.name)
        assert f"split into {parts} layers" in entry.problem("flux")[1], "and the catalog lists it so"
    assert engine.hotswap.get_active_adapter() == (None, 0.0)
