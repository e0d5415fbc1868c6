"""LoRAs on Replicate: a request's LoRA files go to the model's LoRA inputs (`lora_weights` and
`lora_scale` on black-forest-labs/flux-dev-lora and flux-schnell-lora; more pairs, such as
`extra_lora`/`extra_lora_scale`, where a model takes them), uploaded through Replicate's files API.

Refused by name before any call: a model without LoRA inputs, more LoRAs than it takes, a
text-encoder weight other than the UNet weight (the model has one scale per LoRA), a scale outside
its range, and a file that is not a FLUX LoRA in safetensors format (read from the file's header:
sdlab cannot load a remote model to check the fit as it does locally).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Key fragments only FLUX LoRAs have (diffusers/PEFT, kohya and BFL/XLabs names of FLUX's blocks).
FLUX_KEYS = ("single_transformer_blocks", "single_blocks", "double_blocks")
# Key fragments of UNet LoRAs (SD 1.x/2.x, SDXL in diffusers, kohya and original names).
UNET_KEYS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")
MAX_HEADER = 100 << 20


def safetensors_keys(path: str | Path) -> list[str] | None:
    """The tensor names in a safetensors file's header (None if it is not one), without reading tensors."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if not 2 <= size <= MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    return [k for k in header if k != "__metadata__"]


def is_flux_lora(keys: list[str]) -> bool:
    return any(f in k for k in keys for f in FLUX_KEYS) and not any(f in k for k in keys for f in UNET_KEYS)


def check_loras(spec, model: str, loras: tuple[Any, ...]) -> None:
    """ValueError (naming the LoRA) unless `model` can take these LoRAs (sdlab.adapters.Lora) as they are."""
    if not loras:
        return
    names = ", ".join(lora.file.name for lora in loras)
    if not spec.loras:
        raise ValueError(
            f"`loras` ({names}): {model} takes no LoRA inputs on Replicate; use a model that does "
            f"(black-forest-labs/flux-dev-lora, black-forest-labs/flux-schnell-lora, or pass lora_inputs= "
            f"for another model), or the local backend"
        )
    if len(loras) > len(spec.loras):
        raise ValueError(
            f"`loras` ({names}): {model} takes {len(spec.loras)} LoRA(s) "
            f"({', '.join(w for w, _ in spec.loras)}), not {len(loras)}"
        )
    for lora, (_, scale_input) in zip(loras, spec.loras):
        if lora.text_encoder_weight is not None:
            raise ValueError(
                f"LoRA {lora.file.name!r}: text-encoder weight {lora.te_weight:g} differs from its weight "
                f"{lora.weight:g}, but {model} takes one `{scale_input}` per LoRA; give one weight"
            )
        rng = spec.lora_scale_range
        if rng is not None and not rng[0] <= lora.weight <= rng[1]:
            raise ValueError(
                f"LoRA {lora.file.name!r} weight {lora.weight:g} is outside {rng[0]:g}..{rng[1]:g}, "
                f"what {model} takes as `{scale_input}`"
            )
    for lora in loras:  # the file itself last: the cheap checks first
        keys = safetensors_keys(lora.file.path)
        if keys is None:
            raise ValueError(
                f"LoRA {lora.file.name!r} ({lora.file.path}) is not a safetensors file; {model} loads "
                f"LoRAs in safetensors format"
            )
        if not is_flux_lora(keys):
            raise ValueError(
                f"LoRA {lora.file.name!r} ({lora.file.path}) is not a FLUX LoRA (its keys name no FLUX "
                f"blocks: {', '.join(keys[:2])}...); {model} applies FLUX LoRAs only"
            )


def lora_input(
    spec, model: str, loras: tuple[Any, ...], urls: Mapping[str, str] | None, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The model inputs applying `loras`: each file's uploaded URL (by sha256) and its weight as the scale."""
    check_loras(spec, model, loras)
    data: dict[str, Any] = {}
    for lora, (file_input, scale_input) in zip(loras, spec.loras):
        for name in (file_input, scale_input):
            if name in kwargs:
                raise ValueError(
                    f"`{name}` is given as an input and by `loras` ({lora.file.name}); give the LoRA one way"
                )
        data[file_input] = urls[lora.file.sha256] if urls is not None else f"sdlab-lora:{lora.file.sha256}"
        data[scale_input] = lora.weight
    return data
