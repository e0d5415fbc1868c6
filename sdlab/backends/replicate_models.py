"""Replicate models: how each takes sdlab's parameters, and the prediction input of one image.

A small table of known models (`KNOWN_MODELS`: input names, sizes and ranges) and a generic
mapping for others; values a model cannot take are refused (a ValueError naming the argument)
before any call.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from ..request import GenerationRequest, check_size, is_prompt_object, prompt_text
from .base import Defaults

# PIL's name of each output_format a model may be asked for.
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
# sdlab parameters whose input name `input_names` may override.
RENAMABLE = ("negative_prompt", "num_inference_steps", "guidance_scale", "scheduler", "num_outputs")

FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
FLUX_PRO_RATIOS = ("1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")


@dataclass(frozen=True)
class ReplicateModel:
    """How one Replicate model takes sdlab's parameters: its input names (None: not taken).

    `size` is "width_height" (inputs width/height), "aspect_ratio" (only a ratio from
    `aspect_ratios`), or "aspect_ratio_or_custom" (aspect_ratio="custom" with width/height inside
    `size_range`, else a listed ratio)."""

    size: str = "width_height"
    aspect_ratios: tuple[str, ...] = ()
    size_range: tuple[int, int] = (64, 2048)
    size_multiple: int = 8
    negative_prompt: str | None = "negative_prompt"
    num_inference_steps: str | None = "num_inference_steps"
    steps_range: tuple[int, int] | None = None
    guidance_scale: str | None = "guidance_scale"
    guidance_range: tuple[float, float] | None = None
    scheduler: str | None = "scheduler"
    num_outputs: str | None = None  # the batch input, always sent as 1 (per-image seeds)
    output_formats: tuple[str, ...] = ()  # () when the model has no output_format input
    inputs: tuple[str, ...] | None = None  # other inputs it takes; None: pass anything through
    # (LoRA file input, its scale input) per LoRA it takes, e.g. (("lora_weights", "lora_scale"),)
    loras: tuple[tuple[str, str], ...] = ()
    lora_scale_range: tuple[float, float] | None = None
    defaults: Defaults = field(default_factory=lambda: Defaults(1024, 1024, 30, 7.5))


KNOWN_MODELS: dict[str, ReplicateModel] = {
    "black-forest-labs/flux-1.1-pro": ReplicateModel(
        size="aspect_ratio_or_custom",
        aspect_ratios=FLUX_PRO_RATIOS,
        size_range=(256, 1440),
        size_multiple=32,
        negative_prompt=None,
        num_inference_steps=None,
        guidance_scale=None,
        scheduler=None,
        output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "safety_tolerance", "prompt_upsampling", "image_prompt", "output_quality"),
        defaults=Defaults(1024, 1024, 25, 3.0),
    ),
    "black-forest-labs/flux-pro": ReplicateModel(
        size="aspect_ratio_or_custom",
        aspect_ratios=FLUX_PRO_RATIOS,
        size_range=(256, 1440),
        size_multiple=32,
        negative_prompt=None,
        num_inference_steps="steps",
        steps_range=(1, 50),
        guidance_scale="guidance",
        guidance_range=(2.0, 5.0),
        scheduler=None,
        output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "safety_tolerance", "prompt_upsampling", "image_prompt", "interval", "output_quality"),
        defaults=Defaults(1024, 1024, 25, 3.0),
    ),
    "black-forest-labs/flux-dev": ReplicateModel(
        size="aspect_ratio",
        aspect_ratios=FLUX_RATIOS,
        size_multiple=16,
        negative_prompt=None,
        num_inference_steps="num_inference_steps",
        steps_range=(1, 50),
        guidance_scale="guidance",
        guidance_range=(0.0, 10.0),
        scheduler=None,
        num_outputs="num_outputs",
        output_formats=("webp", "jpg", "png"),
        inputs=(
            "aspect_ratio",
            "image",
            "prompt_strength",
            "go_fast",
            "megapixels",
            "disable_safety_checker",
            "output_quality",
        ),
        defaults=Defaults(1024, 1024, 28, 3.0),
    ),
    "black-forest-labs/flux-schnell": ReplicateModel(
        size="aspect_ratio",
        aspect_ratios=FLUX_RATIOS,
        size_multiple=16,
        negative_prompt=None,
        num_inference_steps="num_inference_steps",
        steps_range=(1, 4),
        guidance_scale=None,
        scheduler=None,
        num_outputs="num_outputs",
        output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "go_fast", "megapixels", "disable_safety_checker", "output_quality"),
        defaults=Defaults(1024, 1024, 4, 0.0),
    ),
    # flux-dev / flux-schnell with one LoRA: `lora_weights` (a .safetensors URL) scaled by `lora_scale`
    "black-forest-labs/flux-dev-lora": ReplicateModel(
        size="aspect_ratio",
        aspect_ratios=FLUX_RATIOS,
        size_multiple=16,
        negative_prompt=None,
        num_inference_steps="num_inference_steps",
        steps_range=(1, 50),
        guidance_scale="guidance",
        guidance_range=(0.0, 10.0),
        scheduler=None,
        num_outputs="num_outputs",
        output_formats=("webp", "jpg", "png"),
        inputs=(
            "aspect_ratio",
            "image",
            "prompt_strength",
            "go_fast",
            "megapixels",
            "disable_safety_checker",
            "output_quality",
            "lora_weights",
            "lora_scale",
        ),
        loras=(("lora_weights", "lora_scale"),),
        lora_scale_range=(-1.0, 3.0),
        defaults=Defaults(1024, 1024, 28, 3.0),
    ),
    "black-forest-labs/flux-schnell-lora": ReplicateModel(
        size="aspect_ratio",
        aspect_ratios=FLUX_RATIOS,
        size_multiple=16,
        negative_prompt=None,
        num_inference_steps="num_inference_steps",
        steps_range=(1, 4),
        guidance_scale=None,
        scheduler=None,
        num_outputs="num_outputs",
        output_formats=("webp", "jpg", "png"),
        inputs=(
            "aspect_ratio",
            "go_fast",
            "megapixels",
            "disable_safety_checker",
            "output_quality",
            "lora_weights",
            "lora_scale",
        ),
        loras=(("lora_weights", "lora_scale"),),
        lora_scale_range=(-1.0, 3.0),
        defaults=Defaults(1024, 1024, 4, 0.0),
    ),
    "stability-ai/sdxl": ReplicateModel(
        size="width_height",
        size_multiple=8,
        steps_range=(1, 500),
        guidance_range=(1.0, 50.0),
        num_outputs="num_outputs",
        defaults=Defaults(1024, 1024, 30, 7.5),
    ),
}


def parse_model(ref: str) -> tuple[str, str | None]:
    """'owner/name' or 'owner/name:version' -> ('owner/name', version or None)."""
    if not isinstance(ref, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", ref.strip()):
        raise ValueError(
            f"`model` must read 'owner/name' or 'owner/name:version' (e.g. 'black-forest-labs/flux-schnell'), got {ref!r}"
        )
    name, _, version = ref.strip().partition(":")
    return name, version or None


def model_spec(
    model: str,
    *,
    input_names: Mapping[str, str | None] | None = None,
    defaults: Defaults | None = None,
    lora_inputs: Any = None,
) -> ReplicateModel:
    """The mapping of `model` ('owner/name'): its known entry or the generic one, with `input_names`,
    `defaults` and `lora_inputs` ((file input, scale input) pairs, one per LoRA) overridden."""
    spec = KNOWN_MODELS.get(model, ReplicateModel())
    if lora_inputs is not None:
        pairs = tuple(tuple(p) for p in lora_inputs) if isinstance(lora_inputs, (list, tuple)) else None
        if pairs is None or not all(len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in pairs):
            raise ValueError(
                f"`lora_inputs` is a list of (file input, scale input) name pairs, e.g. "
                f"[('lora_weights', 'lora_scale'), ('extra_lora', 'extra_lora_scale')], got {lora_inputs!r}"
            )
        extra = tuple(x for p in pairs for x in p if spec.inputs is not None and x not in spec.inputs)
        spec = replace(spec, loras=pairs, inputs=None if spec.inputs is None else spec.inputs + extra)
    if input_names:
        bad = sorted(set(input_names) - set(RENAMABLE))
        if bad:
            raise ValueError(
                f"`input_names` keys {bad} are not sdlab parameters; known: {', '.join(sorted(RENAMABLE))}"
            )
        spec = replace(spec, **dict(input_names))
    if defaults is not None:
        spec = replace(spec, defaults=defaults)
    return spec


def prediction_input(
    spec: ReplicateModel,
    model: str,
    request: GenerationRequest,
    i: int,
    *,
    inputs: Mapping[str, Any],
    output_format: str | None,
    output_quality: int | None,
    lora_urls: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The prediction input of image `i` for `model` and the sdlab parameters it does not take.

    `inputs` are sent with every prediction; `output_format`/`output_quality` are the backend's
    choices; `lora_urls` maps each LoRA file's sha256 to where it was uploaded (None while
    validating). Raises ValueError (naming the argument) for values the model cannot take."""
    check_size(request.width, request.height, spec.size_multiple)
    kwargs = {**inputs, **request.pipeline_kwargs}
    if spec.inputs is not None:
        allowed = set(spec.inputs) | {"output_format"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ValueError(f"unknown argument(s) {unknown} for {model}; it takes: {', '.join(sorted(allowed))}")
    prompt = request.prompt[i]
    if isinstance(prompt, str) and "<lora:" in prompt:  # applied through the LoRA inputs, not read as text
        from ..adapters import strip_tags

        prompt = strip_tags(prompt)
    data: dict[str, Any] = {"prompt": plain_prompt(prompt, "prompt", model), "seed": int(request.seed[i])}
    if data["seed"] >= 2**63:
        raise ValueError(f"`seed`={data['seed']} is too large for Replicate's integer inputs (use < 2**63)")
    unused: list[str] = []
    data.update(_size_input(spec, model, request.width, request.height, kwargs))
    for name, input_name, rng in (
        ("num_inference_steps", spec.num_inference_steps, spec.steps_range),
        ("guidance_scale", spec.guidance_scale, spec.guidance_range),
    ):
        value = request.num_inference_steps if name == "num_inference_steps" else request.guidance_scale[i]
        if input_name is None:
            unused.append(name)
            continue
        if rng is not None and not rng[0] <= value <= rng[1]:
            raise ValueError(f"`{name}`={value:g} is outside {rng[0]:g}..{rng[1]:g}, what {model} takes")
        data[input_name] = value
    negative = plain_prompt(request.negative_prompt[i], "negative_prompt", model)
    if negative:
        if spec.negative_prompt is None:
            unused.append("negative_prompt")
        else:
            data[spec.negative_prompt] = negative
    if request.scheduler is not None:
        if spec.scheduler is None:
            unused.append("scheduler")
        else:
            data[spec.scheduler] = request.scheduler
    if spec.num_outputs:
        data[spec.num_outputs] = 1
    fmt = kwargs.pop("output_format", None)
    explicit = fmt is not None
    fmt = str(fmt if explicit else output_format or "").lower() or None
    if fmt is not None:
        if spec.output_formats and fmt not in spec.output_formats:
            raise ValueError(f"`output_format`={fmt!r}: {model} makes {', '.join(spec.output_formats)}")
        if spec.output_formats or explicit:  # a model without the input gets it only when asked
            data["output_format"] = fmt
    if output_quality is not None and "output_quality" not in kwargs and data.get("output_format") in ("jpg", "webp"):
        data["output_quality"] = output_quality
    for key, value in kwargs.items():
        data[key] = jsonable_input(value, key)
    if request.loras[i]:
        from .replicate_loras import lora_input

        data.update(lora_input(spec, model, request.loras[i], lora_urls, kwargs))
    return data, unused


def _size_input(spec: ReplicateModel, model: str, width: int, height: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The size inputs: width/height, a listed aspect ratio, or aspect_ratio="custom" with both."""
    if spec.size == "width_height":
        lo, hi = spec.size_range
        for name, v in (("width", width), ("height", height)):
            if not lo <= v <= hi:
                raise ValueError(f"`{name}`={v} is outside {lo}..{hi}, what {model} takes")
        return {"width": width, "height": height}
    explicit = kwargs.pop("aspect_ratio", None)
    custom_ok = spec.size == "aspect_ratio_or_custom"
    if explicit is not None:
        if explicit == "custom" and custom_ok:
            return {"aspect_ratio": "custom", "width": width, "height": height}
        if explicit not in spec.aspect_ratios:
            raise ValueError(
                f"`aspect_ratio`={explicit!r}: {model} takes {', '.join(spec.aspect_ratios + (('custom',) if custom_ok else ()))}"
            )
        return {"aspect_ratio": explicit}
    lo, hi = spec.size_range
    if custom_ok and lo <= width <= hi and lo <= height <= hi:
        return {"aspect_ratio": "custom", "width": width, "height": height}
    ratio = _aspect_ratio(width, height)
    if ratio in spec.aspect_ratios:
        return {"aspect_ratio": ratio}
    sizes = f"; or width and height within {lo}..{hi} (multiples of {spec.size_multiple})" if custom_ok else ""
    raise ValueError(
        f"`width`x`height` = {width}x{height} ({ratio}) is not a size {model} makes: it takes the aspect "
        f"ratios {', '.join(spec.aspect_ratios)}{sizes}; or pass aspect_ratio= explicitly"
    )


def _aspect_ratio(width: int, height: int) -> str:
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


def jsonable_input(value: Any, name: str) -> Any:
    """Images become data URLs; everything else must already be JSON-able."""
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable_input(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable_input(v, name) for k, v in value.items()}
    raise ValueError(
        f"`{name}`: a {type(value).__name__} cannot be sent to Replicate (use numbers, strings, lists or PIL images)"
    )


def describe_input(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > 100:
        return value[:40] + f"... ({len(value)} chars)"
    return value


def plain_prompt(value: Any, name: str, model: str) -> str | None:
    """The text of a prompt for a model that reads plain text: a string as it is, a prompt object
    (sdlab.prompts.weighted) as the text its encoder would see, refused if it carries weights."""
    if not is_prompt_object(value):
        from ..prompts.a1111 import check_supported, first_construct, has_syntax

        if has_syntax(value):
            raise ValueError(
                f"`{name}` {value!r} uses A1111 prompt syntax ({first_construct(value)!r}), but {model} on Replicate "
                f"reads plain text and cannot weight or schedule it; remove it, pass sdlab.prompts.verbatim(text) to "
                f"send the characters, or use a local backend"
            )
        if value is not None:
            check_supported(value, name)
        return value
    if getattr(value, "is_weighted", False):
        raise ValueError(
            f"`{name}` {value.text!r} has weights, but {model} on Replicate reads plain text and "
            f"cannot weight it; pass the plain text {value.prompt_sent!r}, or use a local or ComfyUI backend"
        )
    return getattr(value, "prompt_sent", prompt_text(value))
