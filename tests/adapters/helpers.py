"""What the adapter tests compare: base weights with peft's wrapping undone, text-encoder state, the bad files every
swap must refuse, and routed renders against epoch-by-epoch ones."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lora_spectrum import demo
from tests.tiny import garbage, new_engine, pixels


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
    return base_weights(demo.build_tiny(family, seed=0).unet if family == "sdxl"
                        else demo.build_tiny(family, seed=0).transformer)


def bad_files(family, denoiser, good, tmp_path):
    """Files that must all fail to swap, each with the words its message must contain."""
    bad = {}
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-64])
    bad["truncated.safetensors"] = "not a valid safetensors"
    (tmp_path / "garbage.safetensors").write_bytes(garbage(2048))
    bad["garbage.safetensors"] = "not a valid safetensors"
    sd = load_file(str(good))
    nan = {k: (v.clone().fill_(float("nan")) if "up" in k else v) for k, v in sd.items()}
    save_file(nan, str(tmp_path / "nan.safetensors"))
    bad["nan.safetensors"] = "NaN or Inf"
    if family == "sdxl":
        # An SD1.5-style file: kohya names of layers this UNet does not have.
        wrong = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.randn(4, 320),
                 "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.randn(320, 4)}
        words = "does not have"
    else:
        # An SDXL LoRA on Z-Image.
        wrong = demo.make_lora_state_dict(demo.build_tiny("sdxl").unet, "sdxl")
        words = "does not have"
    save_file(wrong, str(tmp_path / "wrongarch.safetensors"))
    bad["wrongarch.safetensors"] = words
    shape = {k: (torch.randn(v.shape[0], v.shape[1] + 3) if k.endswith("lora_down.weight") else v) for k, v in sd.items()}
    save_file(shape, str(tmp_path / "shape.safetensors"))
    bad["shape.safetensors"] = "mismatch"
    # A kohya DoRA file whose magnitudes fit neither the layers' outputs nor their inputs.
    dora = dict(sd)
    for k, v in sd.items():
        if k.endswith(".lora_up.weight"):
            dora[k.replace(".lora_up.weight", ".dora_scale")] = torch.ones(v.shape[0] + 1, 1)
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
    from lora_spectrum.families import get_family

    fam = get_family(family)
    pipe = demo.build_tiny(family, seed=0)
    denoiser = fam.denoiser(pipe)
    return Reader(fam, functools.partial(fam.convert_lora, pipe=pipe), layer_table(denoiser)), denoiser


def read(reader, path):
    """``reader.prepare`` for a float32 model on the CPU (the tiny pipelines)."""
    return reader.prepare(path, torch.device("cpu"), torch.float32)
