"""What the adapter tests compare: base weights with peft's wrapping undone, text-encoder state, the bad files every
swap must refuse, and routed renders against epoch-by-epoch ones."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from lora_spectrum.bases.families import get_family
from tests.tiny import garbage, new_engine, pixels

DOWN, UP = (".lora_down.weight", ".lora_A.weight"), (".lora_up.weight", ".lora_B.weight")


def base_weights(denoiser) -> dict[str, torch.Tensor]:
    """The base parameters with peft's wrapping undone in the names (``x.base_layer.weight`` -> ``x.weight``)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in denoiser.state_dict().items()
            if "lora_" not in k}


def te_state(engine) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in te.state_dict().items()} for te in engine.family.text_encoders(engine.pipe)]


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def weights_now(denoiser) -> dict[str, torch.Tensor]:
    """Every tensor of the denoiser as it stands (merged base weights and adapter tensors included)."""
    return {k: v.detach().clone() for k, v in denoiser.state_dict().items()}


def fresh_base_weights(family) -> dict[str, torch.Tensor]:
    return base_weights(get_family(family).denoiser(demo.build_tiny(family, seed=0)))


def bad_files(family, denoiser, good, tmp_path):
    """Files that must all fail to swap, each with the words its message must contain."""
    bad = {}
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-64])
    bad["truncated.safetensors"] = "not a valid safetensors"
    (tmp_path / "garbage.safetensors").write_bytes(garbage(2048))
    bad["garbage.safetensors"] = "not a valid safetensors"
    sd = load_file(str(good))
    nan = {k: (v.clone().fill_(float("nan")) if k.endswith(UP) else v) for k, v in sd.items()}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    bad["nan.safetensors"] = "NaN or Inf"
    # A file of another architecture in this family's own layout: the denoiser has none of its layers (an
    # SD1.5-style file on SDXL, whose UNet has no attention in down_blocks.0).
    down, up, _alpha = get_family(family).demo_lora_names("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    wrong = {down: torch.randn(4, 320), up: torch.randn(320, 4)}
    save_file(wrong, str(tmp_path / "wrongarch.safetensors"))
    bad["wrongarch.safetensors"] = "does not have"
    shape = {k: (torch.randn(v.shape[0], v.shape[1] + 3) if k.endswith(DOWN) else v) for k, v in sd.items()}
    save_file(shape, str(tmp_path / "shape.safetensors"))
    bad["shape.safetensors"] = "mismatch"
    # A DoRA file whose magnitudes fit neither the layers' outputs nor their inputs.
    dora = dict(sd)
    for k, v in sd.items():
        if k.endswith(UP):
            dora[k.rsplit(".", 2)[0] + ".dora_scale"] = torch.ones(v.shape[0] + 1, 1)
    save_file(dora, str(tmp_path / "dora.safetensors"))
    bad["dora.safetensors"] = "DoRA magnitudes"
    return bad


def separate(engine, req, routes) -> list[np.ndarray]:
    """Each route rendered the usual way: swap, then one batched call of its seeds."""
    return [pixels(engine.render(dataclasses.replace(req, seeds=seeds), path, strength).images)
            for path, strength, seeds in routes]


def only_the_slot(engine) -> bool:
    """No adapter in the denoiser but the swapper's one slot (routing's temporary ones are gone)."""
    names = list(getattr(engine.hotswap.denoiser, "peft_config", {}))
    return len(names) <= 1 and all(name.startswith("lora_spectrum_slot") for name in names)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def other_rank(family, tmp_path) -> str:
    """An epoch file of another layout (rank 8): it cannot be stacked with the demo's rank-4 epochs."""
    path = tmp_path / "rank8_1.safetensors"
    save_file(demo.make_lora_state_dict(new_engine(family).hotswap.denoiser, family, rank=8, seed=5), str(path))
    return str(path)


def new_reader(family: str):
    """A ``Reader`` for a fresh tiny pipeline of ``family``, and that pipeline's denoiser."""
    from lora_spectrum.adapters.reading import Reader, layer_table

    fam = get_family(family)
    pipe = demo.build_tiny(family, seed=0)
    denoiser = fam.denoiser(pipe)
    return Reader(fam, functools.partial(fam.convert_lora, pipe=pipe), layer_table(denoiser)), denoiser


def read(reader, path):
    """``reader.prepare`` for a float32 model on the CPU (the tiny pipelines)."""
    return reader.prepare(path, torch.device("cpu"), torch.float32)
