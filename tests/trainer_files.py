"""Fixture builders for LyCORIS and DoRA epoch files as the trainers save them (written for these tests from the
trainers' documented key layouts, not copied): kohya sd-scripts with ``network_module=lycoris.kohya`` and musubi
(``lora_unet_<module with _>.<factor>`` + ``.alpha``, fp16/bf16, ``ss_*`` metadata), ai-toolkit
(``diffusion_model.<module>.<factor>``; its LoKr writes full ``lokr_w1``/``lokr_w2`` with alpha 1e10), and peft
DoRA in diffusers' layout (``unet.<module>.lora_A.weight``, ``lora_magnitude_vector``). Each builder also returns
the delta of every layer computed by hand, for the test to merge into a fresh base. ``write_peft`` saves with peft
itself (no prefix, as ``get_peft_model_state_dict`` writes a bare UNet or transformer); ``sgm_names`` renames a
kohya SDXL file to the original (SGM) UNet names sd-scripts writes."""

from __future__ import annotations

import copy
import json
import re

import torch
from safetensors.torch import save_file

from lora_spectrum.bases.families import get_family
from lora_spectrum.demo import attention_targets

# ai-toolkit saves Z-Image (and SDXL) LoRAs with ComfyUI's ``diffusion_model.`` prefix, FLUX.1 ones in peft format
# under ``transformer.`` (toolkit/network_mixins.py: ``peft_format`` is always on for flux).
AI_TOOLKIT_PREFIX = {"flux": "transformer."}
# The LyCORIS layout each family's trainers write with diffusers' layer names: kohya's ``lora_unet_<module>`` for
# SDXL and Z-Image (musubi); for FLUX.1 ai-toolkit's (sd-scripts names FLUX's fused BFL layers instead).
LYCORIS_STYLE = {"flux": "ai-toolkit"}
# Factor scale of the fixtures: the tiny FLUX.1 changes its image less for the same weights.
SCALE = {"flux": 1.0}
DORA_SPREAD = {"flux": 3.0}  # how far DoRA's magnitudes move from the base's norms (0 to this, relative)


def _key(family: str, name: str, style: str) -> str:
    if style == "kohya":
        return "lora_unet_" + name.replace(".", "_")
    if style == "ai-toolkit":
        return AI_TOOLKIT_PREFIX.get(family, "diffusion_model.") + name
    return f"{get_family(family).lora_prefix}.{name}"


def _meta(algo: str, rank: int, alpha: float, family: str, epoch: int) -> dict[str, str]:
    return {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
            "ss_network_args": json.dumps({"algo": algo, "conv_dim": "0"}), "ss_epoch": str(epoch),
            "ss_output_name": f"{algo}run", "ss_base_model_version": get_family(family).base_model_version}


def write(path, family: str, denoiser, algo: str, *, epoch: int = 1, rank: int = 4, alpha: float = 2.0,
          style: str | None = None, dtype=torch.float16, seed: int = 0, scale: float | None = None) -> dict[str, torch.Tensor]:
    """Write one epoch file of ``algo`` (loha, lokr, lokr-full, dora, peft-dora) on the attention projections and
    return {module name in the denoiser: the layer's merged weight by hand, minus W0 (a delta) or, for DoRA, the
    whole merged weight} in float32, computed from the tensors as saved (after the dtype cast)."""
    style = style or LYCORIS_STYLE.get(family, "kohya")
    scale = SCALE.get(family, 0.3) if scale is None else scale
    gen = torch.Generator().manual_seed(seed)
    sd, meta, by_hand = {}, _meta(algo.split("-")[0], rank, alpha, family, epoch), {}

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    for name, layer in attention_targets(denoiser):
        out_f, in_f = layer.out_features, layer.in_features
        key = _key(family, name, style)
        w0 = layer.weight.detach().float()
        if algo == "loha":  # dW = (w1a @ w1b) * (w2a @ w2b) * alpha / r
            f = {"hada_w1_a": rnd(out_f, rank), "hada_w1_b": rnd(rank, in_f),
                 "hada_w2_a": rnd(out_f, rank), "hada_w2_b": rnd(rank, in_f)}
            g = {k: v.float() for k, v in f.items()}
            delta = (g["hada_w1_a"] @ g["hada_w1_b"]) * (g["hada_w2_a"] @ g["hada_w2_b"]) * alpha / rank
        elif algo == "lokr":  # decomposed w2: dW = kron(w1, w2a @ w2b) * alpha / r
            a = 4 if out_f % 4 == 0 and in_f % 4 == 0 else 2
            f = {"lokr_w1": rnd(a, a), "lokr_w2_a": rnd(out_f // a, rank), "lokr_w2_b": rnd(rank, in_f // a)}
            g = {k: v.float() for k, v in f.items()}
            delta = torch.kron(g["lokr_w1"], g["lokr_w2_a"] @ g["lokr_w2_b"]) * alpha / rank
        elif algo == "lokr-full":  # ai-toolkit: both sides full, alpha 1e10 meaning no scale
            a = 4 if out_f % 4 == 0 and in_f % 4 == 0 else 2
            f = {"lokr_w1": rnd(a, a), "lokr_w2": rnd(out_f // a, in_f // a)}
            g = {k: v.float() for k, v in f.items()}
            delta = torch.kron(g["lokr_w1"], g["lokr_w2"])
            alpha = 1e10
        else:  # DoRA: W' = m * (W0 + dW) / ||W0 + dW||, per output row; m starts as ||W0|| and moved in training
            down, up = rnd(rank, in_f), rnd(out_f, rank)
            m = (w0.norm(dim=1, keepdim=True) * (1 + DORA_SPREAD.get(family, 0.5) * torch.rand(out_f, 1, generator=gen))).to(dtype)
            dw = (up.float() @ down.float()) * ((alpha if algo == "dora" else rank) / rank)
            merged = w0 + dw
            delta = m.float() * merged / merged.norm(dim=1, keepdim=True) - w0
            if algo == "dora":  # kohya / LyCORIS: dora_scale shaped (out, 1)
                f = {"lora_down.weight": down, "lora_up.weight": up, "dora_scale": m}
            else:  # peft in diffusers' layout: lora_A/lora_B and a 1-D magnitude vector, alpha in the metadata
                f = {"lora_A.weight": down, "lora_B.weight": up, "lora_magnitude_vector": m.reshape(-1)}
        for factor, tensor in f.items():
            sd[f"{key}.{factor}"] = tensor.contiguous()
        if algo != "peft-dora":  # peft's files carry no alpha keys: alpha = r here, as peft's default
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
        by_hand[name] = delta
    save_file(sd, str(path), metadata=meta)
    return by_hand


def merged_by_hand(denoiser, deltas: dict[str, torch.Tensor], strength: float = 1.0) -> None:
    """Write ``W0 + strength * delta`` into a fresh denoiser's layers, in place (the test's own merge)."""
    with torch.no_grad():
        for name, delta in deltas.items():
            w = denoiser.get_submodule(name).weight
            w.copy_(w.float() + strength * delta)


def write_peft(path, denoiser, *, adapter_name: bool = False, rank: int = 4, seed: int = 0,
               scale: float = 0.2) -> dict[str, torch.Tensor]:
    """A LoRA on the attention projections saved by peft: ``get_peft_model_state_dict`` of the bare denoiser
    (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight``: no prefix, no alpha keys, alpha
    = rank), or with ``adapter_name`` the parameters as the wrapped model's ``state_dict()`` names them
    (``...to_q.lora_A.default.weight``, as DiffSynth-Studio saves). ``denoiser`` is left as it was (a copy is
    wrapped). Returns the tensors saved."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = copy.deepcopy(denoiser)
    targets = [name for name, _layer in attention_targets(denoiser)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at zero: give both factors values, so the file changes the image
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    sd = {k: v for k, v in model.state_dict().items() if ".lora_" in k} if adapter_name \
        else get_peft_model_state_dict(model)
    sd = {k: v.detach().contiguous() for k, v in sd.items()}
    save_file(sd, str(path))
    return sd


def sgm_names(sd: dict[str, torch.Tensor], layers_per_block: int = 2) -> dict[str, torch.Tensor]:
    """A kohya SDXL state dict with diffusers' block names (``lora_unet_down_blocks_1_attentions_0_...``) renamed to
    the original UNet's, as sd-scripts saves SDXL LoRAs: ``input_blocks_<1 + 3b + j>_1_``, ``middle_block_1_``,
    ``output_blocks_<3b + j>_1_`` (with ``layers_per_block`` 2: two resnets and a sampler per block)."""
    per = layers_per_block + 1

    def rename(key: str) -> str:
        key = re.sub(r"^lora_unet_down_blocks_(\d+)_attentions_(\d+)_",
                     lambda m: f"lora_unet_input_blocks_{1 + per * int(m[1]) + int(m[2])}_1_", key)
        key = re.sub(r"^lora_unet_up_blocks_(\d+)_attentions_(\d+)_",
                     lambda m: f"lora_unet_output_blocks_{per * int(m[1]) + int(m[2])}_1_", key)
        return key.replace("lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_")

    return {rename(k): v for k, v in sd.items()}


# FLUX.1: the BFL layer names kohya sd-scripts (networks/lora_flux.py) and ComfyUI use inside each double block,
# and the diffusers layers each stands for, in row order (a fused qkv is split by rows into q, k, v).
FLUX_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
    "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn.proj": ("attn.to_add_out",),
    "txt_mlp.0": ("ff_context.net.0.proj",), "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",),
}  # fmt: skip


def flux_lora(denoiser, rank: int = 4, alpha: float = 2.0, seed: int = 0, scale: float = 0.3,
              dtype=torch.bfloat16) -> tuple[dict, dict, dict]:
    """One LoRA on every Linear of FLUX.1's double blocks, in three layouts with the same effect: kohya sd-scripts
    with ``train_blocks=double`` (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``, ``.alpha``; a fused
    qkv's down factor is shared by q, k and v and its up factor stacks their rows), ComfyUI's (the same under
    ``diffusion_model.double_blocks.0.img_attn.qkv``) and ai-toolkit's (``transformer.transformer_blocks.0.attn.to_q
    .lora_A.weight``, no alpha: alpha/rank folded into B). Returns (kohya, comfy, ai_toolkit) state dicts."""
    gen = torch.Generator().manual_seed(seed)
    kohya, comfy, ait = {}, {}, {}
    for i in range(len(denoiser.transformer_blocks)):
        for bfl, targets in FLUX_DOUBLE.items():
            layers = [denoiser.get_submodule(f"transformer_blocks.{i}.{t}") for t in targets]
            down = (torch.randn(rank, layers[0].in_features, generator=gen) * scale).to(dtype)
            up = (torch.randn(sum(m.out_features for m in layers), rank, generator=gen) * scale).to(dtype)
            name = f"double_blocks.{i}.{bfl}"
            for out, key in ((kohya, "lora_unet_" + name.replace(".", "_")), (comfy, f"diffusion_model.{name}")):
                out.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(alpha, dtype=dtype)})
            rows = 0
            for target, layer in zip(targets, layers, strict=True):
                key = f"transformer.transformer_blocks.{i}.{target}"
                part = up[rows:rows + layer.out_features].float() * (alpha / rank)
                ait.update({f"{key}.lora_A.weight": down.clone(), f"{key}.lora_B.weight": part.to(dtype)})
                rows += layer.out_features
    return kohya, comfy, ait


def flux_kohya_metadata(series: str, epoch: int, rank: int, alpha: float, variant: str = "dev") -> dict[str, str]:
    """What sd-scripts' flux_train_network.py writes (``ss_*``, and sai-modelspec's architecture)."""
    return {"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
            "ss_network_args": json.dumps({"train_blocks": "double"}), "ss_base_model_version": "flux1",
            "ss_epoch": str(epoch), "ss_output_name": series, "modelspec.architecture": f"flux-1-{variant}/lora",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux", "modelspec.title": series}


def ai_toolkit_metadata(series: str, step: int) -> dict[str, str]:
    """What ai-toolkit writes: its software, the run's name and version, and a training_info JSON."""
    return {"software": json.dumps({"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit"}),
            "name": series, "version": "1.0", "training_info": json.dumps({"step": step, "epoch": 0})}


def trainer_formats(family: str, denoiser) -> dict[str, tuple[dict, dict | None]]:
    """Files as each trainer writes them for ``family``'s tiny denoiser: {name: (state dict, metadata)}."""
    from lora_spectrum import demo

    meta = demo.kohya_metadata("run", 1, 10, 4, 4.0, family, 1)
    plain = demo.make_lora_state_dict(denoiser, family)  # the family's demo format (Family.demo_lora_names)
    if family == "sdxl":
        return {"kohya-diffusers-names-sdxl": (plain, meta),  # ai-toolkit's SDXL names
                "kohya-sgm-sdxl": (sgm_names(plain), meta)}  # sd-scripts
    if family == "z-image":
        kohya = {"lora_unet_" + m["module"].replace(".", "_") + "." + m["leaf"]: v for k, v in plain.items()
                 if (m := re.match(r"diffusion_model\.(?P<module>.+?)\.(?P<leaf>lora_\w+\.weight|alpha)$", k))}
        a_b = {k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v
               for k, v in plain.items() if not k.endswith(".alpha")}  # alpha = rank: no alpha keys needed
        diffsynth = {k.removeprefix("diffusion_model.").replace(".weight", ".default.weight"): v for k, v in a_b.items()}
        return {"musubi-dm-zimage": (plain, meta), "musubi-zimage": (kohya, meta),  # lora_unet_layers_0_attention_to_q
                "ai-toolkit-zimage": (a_b, None), "diffsynth-zimage": (diffsynth, {"format": "pt"})}
    kohya, comfy, ait = flux_lora(denoiser)
    return {"kohya-flux": (kohya, flux_kohya_metadata("run", 1, 4, 2.0)), "comfy-flux": (comfy, None),
            "ai-toolkit-flux": (ait, ai_toolkit_metadata("run", 250))}
