"""Tiny LoRAs for a pipeline, made on the spot: random (nonzero) LoRA layers on its UNet and text
encoder, saved as diffusers saves them (`save_lora_weights`) or in kohya's format (A1111, ComfyUI)."""

from __future__ import annotations

import os
from pathlib import Path

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# kohya files diffusers reads need out_proj among the text encoder's layers (it detects the format by it)
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_layers(pipe, *, seed: int = 0, rank: int = 4, text_encoder: bool = True, scale: float = 1.0) -> dict:
    """{"unet": state dict, "text_encoder": state dict} of random LoRA layers fitting `pipe`, in
    PEFT's key format (what `save_lora_weights` takes). `pipe` itself is not changed."""
    import copy

    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    out = {}
    parts = [("unet", UNET_TARGETS)] + ([("text_encoder", TEXT_TARGETS)] if text_encoder else [])
    for name, targets in parts:
        module = copy.deepcopy(getattr(pipe, name))
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
        inject_adapter_in_model(config, module)
        state = get_peft_model_state_dict(module)
        out[name] = {k: (v * scale if "lora_B" in k else v).contiguous() for k, v in state.items()}
    return out


def save_tiny_lora(
    pipe,
    path: str | os.PathLike,
    *,
    seed: int = 0,
    rank: int = 4,
    text_encoder: bool = True,
    kohya: bool = False,
    scale: float = 1.0,
) -> Path:
    """Save a random LoRA fitting `pipe` at `path` (a .safetensors file); returns the path.
    `kohya=True` writes kohya's keys (lora_unet_..., lora_te_text_model_..., alpha) as A1111 reads them."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = lora_layers(pipe, seed=seed, rank=rank, text_encoder=text_encoder, scale=scale)
    if kohya:
        from diffusers.utils import convert_state_dict_to_kohya

        prefixed = {f"{part}.{k}": v for part, state in layers.items() for k, v in state.items()}
        state = convert_state_dict_to_kohya(prefixed)
        # kohya names the CLIP text model's layers from `text_model` (transformers 4's layout)
        state = {k.replace("lora_te1_", "lora_te_text_model_"): v.contiguous() for k, v in state.items()}
        save_file(state, str(path))
        return path
    StableDiffusionPipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers.get("text_encoder"),
        weight_name=path.name,
    )
    return path
