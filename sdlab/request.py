"""The generation request: every parameter of a batch of images, seeds resolved.

A request is what flows to a backend (local diffusers, ComfyUI, Replicate). Per-image fields
(prompt, negative prompt, seed, guidance) are tuples with one entry per image, so one request
can carry a batch whose cells differ in those; everything else is shared by the batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

MAX_SEED = 2**64 - 1
# Keywords that sdlab itself sets; a caller passing them through **pipeline_kwargs is an error.
RESERVED_KWARGS = {
    "prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale",
    "generator", "num_images_per_prompt", "output_type", "return_dict", "callback_on_step_end",
    "callback_on_step_end_tensor_inputs", "latents",
}


def random_seed() -> int:
    """A fresh random seed in A1111's range (32 bits), to be recorded."""
    return secrets.randbelow(2**32)


def check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`{name}` must be an int (0 is a valid seed) or None, got {seed!r}")
    seed = int(seed)
    if seed == -1:
        return random_seed()
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`{name}` must be between 0 and 2**64-1 (or -1 / None for random), got {seed}")
    return seed


def resolve_seeds(seed: int | Sequence[int] | None, count: int) -> tuple[int, ...]:
    """One seed per image: None or -1 draws one random seed; an int `s` gives s, s+1, ...;
    a list gives one seed per image and must have `count` entries."""
    if seed is None:
        base = random_seed()
        return tuple((base + i) % (MAX_SEED + 1) for i in range(count))
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"`seed` has {len(seed)} entries but {count} images are requested; give one seed per image")
        return tuple(check_seed(s, "seed") for s in seed)
    base = check_seed(seed)
    return tuple((base + i) % (MAX_SEED + 1) for i in range(count))


def is_prompt_object(value: Any) -> bool:
    """A prompt that encodes itself (e.g. sdlab.prompts.WeightedPrompt): a str `.text` and `.encode(pipe)`."""
    return (
        not isinstance(value, str)
        and isinstance(getattr(value, "text", None), str)
        and callable(getattr(value, "encode", None))
    )


def prompt_text(value: Any) -> str | None:
    """A prompt's text: the string itself, or a prompt object's `.text`."""
    return value.text if is_prompt_object(value) else value


def check_prompts(prompt: str | Sequence[str], name: str = "prompt") -> list[str]:
    if isinstance(prompt, str) or is_prompt_object(prompt):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(prompt).__name__}")
    if len(prompt) == 0:
        raise ValueError(f"`{name}` is an empty list; give at least one prompt")
    for p in prompt:
        if not (isinstance(p, str) or is_prompt_object(p)):
            raise ValueError(f"`{name}` must contain only strings (or prompts from sdlab.prompts.weighted), got {p!r}")
    return list(prompt)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}")
    return int(value)


def check_guidance(value: Any, name: str = "guidance_scale") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0 (0 or 1 switch classifier-free guidance off), got {value}")
    return float(value)


def check_size(width: Any, height: Any, multiple: int) -> tuple[int, int]:
    for name, value in (("width", width), ("height", height)):
        check_positive_int(value, name, minimum=multiple)
        if value % multiple:
            lower = value // multiple * multiple
            raise ValueError(
                f"`{name}`={value} is not a multiple of {multiple}, which this model needs; "
                f"try {max(lower, multiple)} or {lower + multiple}"
            )
    return int(width), int(height)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything needed to make a batch of images again. One entry per image in the tuples."""

    prompt: tuple[str, ...]
    negative_prompt: tuple[str | None, ...]
    seed: tuple[int, ...]
    guidance_scale: tuple[float, ...]
    width: int
    height: int
    num_inference_steps: int
    scheduler: str | None = None
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.prompt)
        for name in ("negative_prompt", "seed", "guidance_scale"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"`{name}` has {len(getattr(self, name))} entries for {n} prompts")
        if n == 0:
            raise ValueError("a request needs at least one image")
        bad = RESERVED_KWARGS.intersection(self.pipeline_kwargs)
        if bad:
            raise ValueError(f"pipeline keyword(s) {sorted(bad)} are set by sdlab; pass them as sdlab arguments")

    def __len__(self) -> int:
        return len(self.prompt)

    def image_params(self, i: int) -> dict[str, Any]:
        """The parameters of image `i` alone, as plain JSON-able values."""
        params = {
            "prompt": prompt_text(self.prompt[i]),
            "negative_prompt": prompt_text(self.negative_prompt[i]),
            "seed": self.seed[i],
            "guidance_scale": self.guidance_scale[i],
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "scheduler": self.scheduler,
        }
        for name in ("prompt", "negative_prompt"):  # prompt objects: text above, weighting here
            value = getattr(self, name)[i]
            if is_prompt_object(value):
                params[f"{name}_weighting"] = getattr(value, "weighting", type(value).__name__)
        if self.pipeline_kwargs:
            params["pipeline_kwargs"] = {k: describe_value(v) for k, v in self.pipeline_kwargs.items()}
        return params

    def select(self, indices: Sequence[int]) -> "GenerationRequest":
        """The sub-request of the given images (used to split a batch, e.g. on out-of-memory)."""
        return replace(
            self,
            prompt=tuple(self.prompt[i] for i in indices),
            negative_prompt=tuple(self.negative_prompt[i] for i in indices),
            seed=tuple(self.seed[i] for i in indices),
            guidance_scale=tuple(self.guidance_scale[i] for i in indices),
        )

    def shared_key(self) -> str:
        """A key equal for requests that may share one pipeline call (all but per-image fields)."""
        shared = {
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "scheduler": self.scheduler,
            "pipeline_kwargs": {k: describe_value(v) for k, v in sorted(self.pipeline_kwargs.items())},
        }
        return json.dumps(shared, sort_keys=True, default=str)

    @staticmethod
    def concat(requests: Sequence["GenerationRequest"]) -> "GenerationRequest":
        """One request for all images of `requests`, which must share everything but per-image fields."""
        if not requests:
            raise ValueError("`requests` is empty")
        first = requests[0]
        key = first.shared_key()
        for r in requests[1:]:
            if r.shared_key() != key:
                raise ValueError("requests differ in shared parameters and cannot be batched together")
        return replace(
            first,
            prompt=sum((r.prompt for r in requests), ()),
            negative_prompt=sum((r.negative_prompt for r in requests), ()),
            seed=sum((r.seed for r in requests), ()),
            guidance_scale=sum((r.guidance_scale for r in requests), ()),
        )


def describe_value(value: Any) -> Any:
    """A JSON-able description of a pipeline keyword value (images and tensors by shape and hash)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if is_prompt_object(value):  # sdlab.prompts.WeightedPrompt: text, weighting and weights
        describe = getattr(value, "describe", None)
        return describe() if callable(describe) else value.text
    if isinstance(value, (list, tuple)):
        return [describe_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe_value(v) for k, v in value.items()}
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            digest = hashlib.sha256(value.tobytes()).hexdigest()[:16]
            return {"type": "image", "mode": value.mode, "size": list(value.size), "sha256": digest}
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            digest = hashlib.sha256(t.float().numpy().tobytes()).hexdigest()[:16]
            return {"type": "tensor", "shape": list(t.shape), "dtype": str(t.dtype), "sha256": digest}
    except ImportError:  # pragma: no cover
        pass
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
            return {"type": "array", "shape": list(value.shape), "dtype": str(value.dtype), "sha256": digest}
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return repr(value)
