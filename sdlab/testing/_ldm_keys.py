"""diffusers -> original (LDM / A1111 / ComfyUI) state-dict keys, for single-file checkpoints.

The inverse of ``diffusers.loaders.single_file_utils`` (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``),
written for any block layout rather than the four fixed levels of diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``, so tiny models convert too.
Internal to ``sdlab.testing``.
"""

from __future__ import annotations

from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
_VAE_ATTENTION = {
    "group_norm.": "norm.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "to_out.0.": "proj_out.",
}


def _rename(
    state_dict: dict[str, torch.Tensor], prefixes: dict[str, tuple[str, dict[str, str]]]
) -> dict[str, torch.Tensor]:
    """Rename every key by its longest matching diffusers prefix, then by the prefix's inner renames."""
    ordered = sorted(prefixes, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in ordered if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"no original-layout name for diffusers key {key!r}")
        new_prefix, inner = prefixes[prefix]
        rest = key[len(prefix) :]
        for old, new in inner.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        out[new_prefix + rest] = value
    return out


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict in LDM ``openaimodel.UNetModel`` names (no prefix)."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError("only an int `layers_per_block` has an original layout")
    n_blocks = len(config["block_out_channels"])
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    plain: dict[str, str] = {}
    prefixes = {
        "time_embedding.linear_1.": ("time_embed.0.", plain),
        "time_embedding.linear_2.": ("time_embed.2.", plain),
        "add_embedding.linear_1.": ("label_emb.0.0.", plain),
        "add_embedding.linear_2.": ("label_emb.0.2.", plain),
        "conv_in.": ("input_blocks.0.0.", plain),
        "conv_norm_out.": ("out.0.", plain),
        "conv_out.": ("out.2.", plain),
        "mid_block.resnets.0.": ("middle_block.0.", _UNET_RESNET),
        "mid_block.attentions.0.": ("middle_block.1.", plain),
        "mid_block.resnets.1.": ("middle_block.2.", _UNET_RESNET),
    }
    for b in range(n_blocks):
        # input_blocks: conv_in, then per level `per_block` (resnet, attention) pairs and a downsampler
        for j in range(per_block):
            i = 1 + b * (per_block + 1) + j
            prefixes[f"down_blocks.{b}.resnets.{j}."] = (f"input_blocks.{i}.0.", _UNET_RESNET)
            prefixes[f"down_blocks.{b}.attentions.{j}."] = (f"input_blocks.{i}.1.", plain)
        i = (b + 1) * (per_block + 1)
        prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = (f"input_blocks.{i}.0.op.", plain)
        # output_blocks: per level `per_block + 1` (resnet, attention) pairs, the last one with the upsampler
        for j in range(per_block + 1):
            i = b * (per_block + 1) + j
            prefixes[f"up_blocks.{b}.resnets.{j}."] = (f"output_blocks.{i}.0.", _UNET_RESNET)
            prefixes[f"up_blocks.{b}.attentions.{j}."] = (f"output_blocks.{i}.1.", plain)
        slot = 2 if up_has_attention[b] else 1
        prefixes[f"up_blocks.{b}.upsamplers.0.conv."] = (f"output_blocks.{i}.{slot}.conv.", plain)
    return _rename(state_dict, prefixes)


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict in LDM ``AutoencoderKL`` names (no prefix)."""
    n_blocks = len(config["block_out_channels"])
    plain: dict[str, str] = {}
    prefixes = {
        "quant_conv.": ("quant_conv.", plain),
        "post_quant_conv.": ("post_quant_conv.", plain),
    }
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_in."] = (f"{part}.conv_in.", plain)
        prefixes[f"{part}.conv_out."] = (f"{part}.conv_out.", plain)
        prefixes[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", plain)
        prefixes[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", _VAE_ATTENTION)
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}."] = (f"{part}.mid.block_{j + 1}.", plain)
    for i in range(n_blocks):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = (f"encoder.down.{i}.block.", plain)
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = (f"encoder.down.{i}.downsample.conv.", plain)
        # the decoder counts its levels from the bottom
        prefixes[f"decoder.up_blocks.{i}.resnets."] = (f"decoder.up.{n_blocks - 1 - i}.block.", plain)
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = (f"decoder.up.{n_blocks - 1 - i}.upsample.conv.", plain)
    out = _rename(state_dict, prefixes)
    # resnet shortcuts are `nin_shortcut`; attention projections are 1x1 convolutions
    out = {k.replace(".conv_shortcut.", ".nin_shortcut."): v for k, v in out.items()}
    return {k: (v[:, :, None, None] if ".attn_1." in k and v.ndim == 2 else v) for k, v in out.items()}


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` state dict in ``transformers`` CLIP names under ``text_model.`` (no prefix)."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state_dict.items()}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel(WithProjection)`` state dict in OpenCLIP names (SD2, SDXL's second encoder)."""
    sd = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
            out[f"{dst}attn.out_proj.{kind}"] = sd.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = sd.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = sd.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = sd.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = sd.pop(f"{src}mlp.fc2.{kind}")
    if sd:
        raise KeyError(f"no OpenCLIP name for {sorted(sd)}")
    return out


def with_prefix(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``prefix`` put before every key."""
    return {prefix + k: v for k, v in state_dict.items()}
