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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

MAX_SEED = 2**64 - 1
# ComfyUI's KSampler stops at 100 too; far above it guidance overflows into NaN (a black image).
MAX_GUIDANCE = 100.0
MAX_CLIP_SKIP = 12
# The one set of pipeline keywords sdlab owns: it sets them itself, or its own prompt encoding would
# make the pipeline ignore them. Passing one through **pipeline_kwargs is an error naming it.
RESERVED_KWARGS = {
    "prompt",
    "prompt_2",
    "prompt_3",
    "negative_prompt",
    "negative_prompt_2",
    "negative_prompt_3",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "width",
    "height",
    "num_inference_steps",
    "guidance_scale",
    "generator",
    "num_images_per_prompt",
    "output_type",
    "return_dict",
    "callback",
    "callback_steps",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
    "latents",
    "clip_skip",
    "max_sequence_length",
}
_RESERVED_HINTS = {
    "clip_skip": "pass it as `clip_skip=` (an sdlab argument, applied in sdlab's own prompt encoding)",
    "prompt_2": "sdlab sends `prompt` to both SDXL text encoders; prompt_2 would be ignored",
    "negative_prompt_2": "sdlab sends `negative_prompt` to both SDXL text encoders; negative_prompt_2 would be ignored",
    "max_sequence_length": "it is a load option of FLUX presets (sdlab encodes prompts itself)",
    "num_images_per_prompt": "use `num_images`",
}


@dataclass(frozen=True)
class Defaults:
    """A model's sensible defaults (from its preset, or the backend's knowledge)."""

    width: int = 512
    height: int = 512
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    negative_prompt: str | None = None
    scheduler: str | None = None


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
            raise ValueError(
                f"`seed` has {len(seed)} entries but {count} images are requested; give one seed per image"
            )
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
    if not 0 <= value <= MAX_GUIDANCE:
        raise ValueError(
            f"`{name}` must be between 0 and {MAX_GUIDANCE:g} (0 or 1 switch classifier-free guidance off; "
            f"far above the range the image overflows to black), got {value!r}"
        )
    return float(value)


def check_clip_skip(value: Any, name: str = "clip_skip") -> int | None:
    """diffusers' convention: the number of final CLIP layers skipped (None or 0: none). A1111's
    "Clip skip: 2" is clip_skip=1 here."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= MAX_CLIP_SKIP:
        raise ValueError(
            f"`{name}` must be an int from 0 to {MAX_CLIP_SKIP} (diffusers' convention: layers skipped; "
            f"A1111's 'Clip skip: 2' is clip_skip=1) or None, got {value!r}"
        )
    return int(value) or None


def check_variation_strength(value: Any, name: str = "variation_strength") -> float:
    """A1111's "Var. strength": 0 keeps the seed's noise, 1 is the variation seed's noise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(
            f"`{name}` must be a number from 0 (the seed's image) to 1 (the variation seed's), got {value!r}"
        )
    return float(value)


def resolve_variation(
    variation_seed: int | Sequence[int] | None, variation_strength: float | Sequence[float], count: int
) -> tuple[tuple[int | None, ...], tuple[float, ...]]:
    """One variation seed and strength per image, as seeds are resolved: an int `v` gives v, v+1, ...
    (A1111 counts its variation seeds up the same way), a list gives one per image. A non-zero
    strength without a variation seed (None or -1) draws one random variation seed, recorded."""
    if isinstance(variation_strength, (list, tuple)):
        if len(variation_strength) != count:
            raise ValueError(f"`variation_strength` has {len(variation_strength)} entries for {count} images")
        strengths = tuple(check_variation_strength(v) for v in variation_strength)
    else:
        strengths = (check_variation_strength(variation_strength),) * count
    if variation_seed is None and not any(strengths):
        return (None,) * count, strengths
    if isinstance(variation_seed, (list, tuple)):
        if len(variation_seed) != count:
            raise ValueError(f"`variation_seed` has {len(variation_seed)} entries for {count} images")
        seeds = tuple(None if v is None else check_seed(v, "variation_seed") for v in variation_seed)
        return tuple(random_seed() if v is None and s else v for v, s in zip(seeds, strengths)), strengths
    base = random_seed() if variation_seed is None else check_seed(variation_seed, "variation_seed")
    return tuple((base + i) % (MAX_SEED + 1) for i in range(count)), strengths


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


def check_pipeline_kwargs(kwargs: Any) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"`pipeline_kwargs` must be a mapping of keyword to value, got {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise ValueError(f"pipeline keyword names must be strings, got {key!r}")
        if key in RESERVED_KWARGS:
            hint = _RESERVED_HINTS.get(key, "it is set by sdlab; pass it as an sdlab argument")
            raise ValueError(f"pipeline keyword `{key}` is not accepted: {hint}")
    return dict(kwargs)


def _check_prompt_value(value: Any, name: str, *, optional: bool) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, str) or is_prompt_object(value):
        return value
    raise ValueError(f"`{name}` must contain only strings (or prompts from sdlab.prompts.weighted), got {value!r}")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything needed to make a batch of images again. One entry per image in the tuples.

    The constructor checks every value (before any model work), so no client can build a request
    that `generate` would refuse; `GenerationRequest.create` also fills a model's defaults and
    resolves seeds. `clip_skip` uses diffusers' convention (A1111's "Clip skip: 2" is 1 here).
    """

    prompt: tuple[str, ...]
    negative_prompt: tuple[str | None, ...]
    seed: tuple[int, ...]
    guidance_scale: tuple[float, ...]
    width: int
    height: int
    num_inference_steps: int
    scheduler: str | None = None
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
    clip_skip: int | None = None
    # A1111's "Var. seed" / "Var. strength", per image (None: one tuple of None / of 0.0)
    variation_seed: tuple[int | None, ...] | None = None
    variation_strength: tuple[float, ...] | None = None
    # img2img, inpainting, hires fix, SDXL refiner (sdlab.inputs): images per image, the rest shared
    image: tuple[Any, ...] | None = None
    mask_image: tuple[Any, ...] | None = None
    strength: float | None = None
    mask_blur: int = 0
    padding_mask_crop: int | None = None
    hires_scale: float | None = None
    hires_width: int | None = None
    hires_height: int | None = None
    hires_upscaler: str | None = None
    hires_steps: int | None = None
    hires_strength: float | None = None
    refiner: str | None = None
    refiner_switch: float | None = None
    # LoRAs per image (sdlab.adapters.Lora: file by content hash, weights); the same files for every image
    loras: tuple[tuple[Any, ...], ...] | None = None
    # textual inversion tokens (sdlab.textual_inversion.Embedding), shared by the batch
    embeddings: tuple[Any, ...] = ()

    def __post_init__(self):
        for name in ("prompt", "negative_prompt", "seed", "guidance_scale"):
            if not isinstance(getattr(self, name), tuple):
                raise ValueError(f"`{name}` of a GenerationRequest is a tuple with one entry per image")
        n = len(self.prompt)
        if n == 0:
            raise ValueError("a request needs at least one image")
        for name in ("negative_prompt", "seed", "guidance_scale"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"`{name}` has {len(getattr(self, name))} entries for {n} prompts")
        for p in self.prompt:
            _check_prompt_value(p, "prompt", optional=False)
        for p in self.negative_prompt:
            _check_prompt_value(p, "negative_prompt", optional=True)
        for s in self.seed:
            check_seed(s)
            if s == -1:
                raise ValueError("a request holds resolved seeds; -1 (random) is resolved by GenerationRequest.create")
        set_ = object.__setattr__
        set_(self, "seed", tuple(int(s) for s in self.seed))
        set_(self, "guidance_scale", tuple(check_guidance(g) for g in self.guidance_scale))
        set_(self, "width", check_positive_int(self.width, "width"))
        set_(self, "height", check_positive_int(self.height, "height"))
        set_(self, "num_inference_steps", check_positive_int(self.num_inference_steps, "num_inference_steps"))
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler.strip()):
            raise ValueError(f"`scheduler` must be a scheduler name or None, got {self.scheduler!r}")
        set_(self, "clip_skip", check_clip_skip(self.clip_skip))
        set_(self, "pipeline_kwargs", check_pipeline_kwargs(self.pipeline_kwargs))
        self._check_variation(n)
        from . import inputs

        for name, value in inputs.check_request(self).items():
            set_(self, name, value)
        self._check_loras(n)
        if self.embeddings:
            from .textual_inversion import check_embeddings

            object.__setattr__(self, "embeddings", check_embeddings(self.embeddings))
        else:
            object.__setattr__(self, "embeddings", ())

    def _check_loras(self, n: int) -> None:
        loras = ((),) * n if self.loras is None else self.loras
        if not isinstance(loras, tuple) or len(loras) != n or not all(isinstance(e, tuple) for e in loras):
            raise ValueError(f"`loras` of a GenerationRequest is a tuple with one tuple of LoRAs per image ({n})")
        if any(loras) or any(isinstance(p, str) and "<lora:" in p for p in self.prompt):
            from .adapters import check_request_loras

            check_request_loras(self.prompt, loras)
        for p in self.negative_prompt:
            if isinstance(p, str) and "<lora:" in p:
                raise ValueError("`negative_prompt` has a <lora:...> tag: LoRAs are applied from the prompt only")
        object.__setattr__(self, "loras", loras)

    @property
    def has_loras(self) -> bool:
        return any(self.loras)

    def _check_variation(self, n: int) -> None:
        seeds = (None,) * n if self.variation_seed is None else self.variation_seed
        strengths = (0.0,) * n if self.variation_strength is None else self.variation_strength
        for name, value in (("variation_seed", seeds), ("variation_strength", strengths)):
            if not isinstance(value, tuple):
                raise ValueError(f"`{name}` of a GenerationRequest is a tuple with one entry per image")
            if len(value) != n:
                raise ValueError(f"`{name}` has {len(value)} entries for {n} prompts")
        strengths = tuple(check_variation_strength(v) for v in strengths)
        for v, strength in zip(seeds, strengths):
            if v is not None and not isinstance(v, bool) and v == -1:
                raise ValueError("a request holds resolved variation seeds; -1 is resolved by GenerationRequest.create")
            if v is not None:
                check_seed(v, "variation_seed")
            if v is None and strength:
                raise ValueError(
                    f"`variation_strength` {strength!r} needs a `variation_seed` (a random one is drawn by "
                    f"GenerationRequest.create)"
                )
        object.__setattr__(self, "variation_seed", tuple(None if v is None else int(v) for v in seeds))
        object.__setattr__(self, "variation_strength", strengths)

    @property
    def has_variation(self) -> bool:
        """Whether any image's noise is slerped towards a variation seed's (A1111's Var. seed)."""
        return any(self.variation_strength)

    @classmethod
    def create(
        cls,
        prompt: Any,
        *,
        defaults: Defaults | None = None,
        negative_prompt: Any = None,
        width: int | None = None,
        height: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        clip_skip: int | None = None,
        variation_seed: int | Sequence[int] | None = None,
        variation_strength: float | Sequence[float] = 0.0,
        loras: Any = None,
        embeddings: Any = None,
        pipeline_kwargs: Mapping[str, Any] | None = None,
        **image_fields: Any,
    ) -> GenerationRequest:
        """The request `generate` makes: `num_images` images per prompt, the model's `defaults`
        where a value is None, seeds resolved (None or -1: one random seed, recorded).
        `image_fields` are sdlab.inputs' (`image`, `mask_image`, `strength`, `hires_scale`, ...):
        init images and masks are loaded and fitted to the size; `strength` defaults to 0.75."""
        defaults = defaults or Defaults()
        prompts = check_prompts(prompt)
        num_images = check_positive_int(num_images, "num_images")
        if isinstance(seed, (list, tuple)) and num_images == 1 and len(prompts) == 1 and len(seed) > 1:
            num_images = len(seed)  # a list of seeds for one prompt: one image per seed
        if negative_prompt is None:
            negatives: list[Any] = [defaults.negative_prompt] * len(prompts)
        elif isinstance(negative_prompt, str) or is_prompt_object(negative_prompt):
            negatives = [negative_prompt] * len(prompts)
        else:
            negatives = check_prompts(negative_prompt, "negative_prompt")
            if len(negatives) != len(prompts):
                raise ValueError(f"`negative_prompt` has {len(negatives)} entries for {len(prompts)} prompts")
        count = len(prompts) * num_images
        guidance = check_guidance(defaults.guidance_scale if guidance_scale is None else guidance_scale)
        variation_seeds, variation_strengths = resolve_variation(variation_seed, variation_strength, count)
        from . import inputs

        unknown = set(image_fields) - set(inputs.FIELDS)
        if unknown:
            raise TypeError(f"GenerationRequest.create() got unexpected keyword(s) {sorted(unknown)}")
        width = defaults.width if width is None else width
        height = defaults.height if height is None else height
        image_fields = inputs.fit_fields(image_fields, count=count, width=width, height=height, per_prompt=num_images)
        lora_sets = None
        if loras is not None or any(isinstance(p, str) and "<lora:" in p for p in prompts):
            from .adapters import loras_for  # `<lora:name:w>` tags in the prompt, then `loras`

            lora_sets = tuple(loras_for(p, loras) for p in prompts for _ in range(num_images))
        return cls(
            prompt=tuple(p for p in prompts for _ in range(num_images)),
            negative_prompt=tuple(n for n in negatives for _ in range(num_images)),
            seed=resolve_seeds(seed, count),
            guidance_scale=(guidance,) * count,
            width=width,
            height=height,
            num_inference_steps=defaults.num_inference_steps if num_inference_steps is None else num_inference_steps,
            scheduler=scheduler,
            pipeline_kwargs=dict(pipeline_kwargs or {}),
            clip_skip=clip_skip,
            variation_seed=variation_seeds,
            variation_strength=variation_strengths,
            **image_fields,
            loras=lora_sets,
            embeddings=_resolve_embeddings(embeddings),
        )

    # ------------------------------------------------------------ the JSON form

    def to_dict(self) -> dict[str, Any]:
        """The request as JSON-able values; `from_dict` rebuilds it. Prompt objects are described
        (text and weighting); images and tensors in pipeline keywords by shape and content hash.
        Variation fields are written when any is set (a request without them keeps its old key)."""
        data = {
            "prompt": [describe_value(p) for p in self.prompt],
            "negative_prompt": [describe_value(p) for p in self.negative_prompt],
            "seed": list(self.seed),
            "guidance_scale": list(self.guidance_scale),
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "scheduler": self.scheduler,
            "clip_skip": self.clip_skip,
            "pipeline_kwargs": {k: describe_value(v) for k, v in sorted(self.pipeline_kwargs.items())},
        }
        if self.has_variation or any(v is not None for v in self.variation_seed):
            data["variation_seed"] = list(self.variation_seed)
            data["variation_strength"] = list(self.variation_strength)
        from . import inputs

        data.update(inputs.to_dict(self))  # written when set: a txt2img request keeps its old key
        if self.has_loras:  # written when any (a request without LoRAs keeps its old key)
            data["loras"] = [[lora.describe() for lora in entries] for entries in self.loras]
        if self.embeddings:
            data["embeddings"] = [e.describe() for e in self.embeddings]
        return data

    def identity_dict(self) -> dict[str, Any]:
        """`to_dict` without where adapter files were found: what cache keys hash (content, not paths)."""
        data = self.to_dict()
        if "loras" in data:
            data["loras"] = [
                [{k: v for k, v in d.items() if k != "path"} for d in entries] for entries in data["loras"]
            ]
        if "embeddings" in data:
            data["embeddings"] = [{k: v for k, v in d.items() if k != "path"} for d in data["embeddings"]]
        refiner = data.get("refiner")
        if isinstance(refiner, dict) and ({"sha256", "folder_sha256"} & set(refiner)):
            data["refiner"] = {k: v for k, v in refiner.items() if k != "name"}  # a local refiner by content only
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationRequest:
        """The request `to_dict` described (validated again). Images and tensors cannot be rebuilt
        from their description: such a request raises, naming the keyword."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown request field(s) {sorted(unknown)}")
        kwargs = dict(data.get("pipeline_kwargs") or {})
        for key, value in kwargs.items():
            if isinstance(value, dict) and value.get("type") in ("image", "tensor", "array"):
                raise ValueError(f"the request's `{key}` is a {value['type']} described by its hash; pass it again")
        from . import inputs

        return cls(
            **inputs.from_dict(data),
            prompt=tuple(_prompt_from_json(p) for p in data["prompt"]),
            negative_prompt=tuple(_prompt_from_json(p) for p in data["negative_prompt"]),
            seed=tuple(data["seed"]),
            guidance_scale=tuple(data["guidance_scale"]),
            width=data["width"],
            height=data["height"],
            num_inference_steps=data["num_inference_steps"],
            scheduler=data.get("scheduler"),
            pipeline_kwargs=kwargs,
            clip_skip=data.get("clip_skip"),
            variation_seed=None if data.get("variation_seed") is None else tuple(data["variation_seed"]),
            variation_strength=None if data.get("variation_strength") is None else tuple(data["variation_strength"]),
            loras=None if not data.get("loras") else _loras_from_json(data["loras"]),
            embeddings=tuple(_embedding_from_json(d) for d in data.get("embeddings") or ()),
        )

    def key(self) -> str:
        """A content hash of the whole request (what a cache keys on, with the model's identity)."""
        return hashlib.sha256(json.dumps(self.identity_dict(), sort_keys=True, default=str).encode()).hexdigest()

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
        if self.clip_skip:
            params["clip_skip"] = self.clip_skip
        if self.variation_strength[i]:  # A1111 records no variation at strength 0 (it has no effect)
            params["variation_seed"] = self.variation_seed[i]
            params["variation_strength"] = self.variation_strength[i]
        if self.loras[i]:
            params["loras"] = [lora.describe() for lora in self.loras[i]]
        if self.embeddings:
            params["embeddings"] = [e.describe() for e in self.embeddings]
        for name in ("prompt", "negative_prompt"):  # prompt objects: text above, weighting here
            value = getattr(self, name)[i]
            if is_prompt_object(value):
                params[f"{name}_weighting"] = getattr(value, "weighting", type(value).__name__)
        if self.pipeline_kwargs:
            params["pipeline_kwargs"] = {k: describe_value(v) for k, v in self.pipeline_kwargs.items()}
        from . import inputs

        params.update(inputs.image_params(self, i))
        return params

    def select(self, indices: Sequence[int]) -> GenerationRequest:
        """The sub-request of the given images (used to split a batch, e.g. on out-of-memory)."""
        return replace(
            self,
            prompt=tuple(self.prompt[i] for i in indices),
            negative_prompt=tuple(self.negative_prompt[i] for i in indices),
            seed=tuple(self.seed[i] for i in indices),
            guidance_scale=tuple(self.guidance_scale[i] for i in indices),
            variation_seed=tuple(self.variation_seed[i] for i in indices),
            variation_strength=tuple(self.variation_strength[i] for i in indices),
            image=None if self.image is None else tuple(self.image[i] for i in indices),
            mask_image=None if self.mask_image is None else tuple(self.mask_image[i] for i in indices),
            loras=tuple(self.loras[i] for i in indices),
        )

    def shared_key(self) -> str:
        """A key equal for requests that may share one pipeline call (all but per-image fields)."""
        shared = {
            "width": self.width,
            "height": self.height,
            "num_inference_steps": self.num_inference_steps,
            "scheduler": self.scheduler,
            "clip_skip": self.clip_skip,
            "pipeline_kwargs": {k: describe_value(v) for k, v in sorted(self.pipeline_kwargs.items())},
        }
        from . import inputs

        shared.update(inputs.shared_dict(self))
        shared["img2img"] = (self.image is not None, self.mask_image is not None)  # one pipeline per call
        if self.has_loras:  # the same LoRA files share a call; their weights are per image
            shared["lora_files"] = [lora.file.sha256 for lora in self.loras[0]]
        if self.embeddings:
            shared["embeddings"] = [(e.token, e.sha256) for e in self.embeddings]
        return json.dumps(shared, sort_keys=True, default=str)

    @staticmethod
    def concat(requests: Sequence[GenerationRequest]) -> GenerationRequest:
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
            variation_seed=sum((r.variation_seed for r in requests), ()),
            variation_strength=sum((r.variation_strength for r in requests), ()),
            image=None if first.image is None else sum((r.image for r in requests), ()),
            mask_image=None if first.mask_image is None else sum((r.mask_image for r in requests), ()),
            loras=sum((r.loras for r in requests), ()),
        )


# Prompt objects rebuilt from their JSON description, by weighting name (sdlab.prompts registers "compel").
PROMPT_TYPES: dict[str, Callable[[str], Any]] = {}


def _prompt_from_json(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and value.get("type") == "weighted_prompt":
        factory = PROMPT_TYPES.get(value.get("weighting"))
        if factory is None:
            raise ValueError(f"prompt weighting {value.get('weighting')!r} is unknown (import sdlab.prompts)")
        return factory(value["text"])
    raise ValueError(f"`prompt` must be a string or a weighted prompt's description, got {value!r}")


def _resolve_embeddings(embeddings: Any) -> tuple:
    if embeddings is None:
        return ()
    from .textual_inversion import resolve_embeddings

    return resolve_embeddings(embeddings)


def _embedding_from_json(d: Mapping[str, Any]):
    """An embedding of a request's JSON form: at its recorded path if unchanged, else by hash in the embeddings folder."""
    from pathlib import Path

    from . import identity, textual_inversion

    path = d.get("path")
    if not (path and Path(path).is_file() and identity.file_sha256(path) == d["sha256"]):
        path = textual_inversion.find_by_hash(d["sha256"])
        if path is None:
            raise ValueError(
                f"embedding {d.get('name')!r} (sha256 {d['sha256'][:12]}) is not at {d.get('path')!r} "
                f"nor in the embeddings folder"
            )
    return textual_inversion.Embedding(token=d["token"], name=d["name"], path=str(path), sha256=d["sha256"])


def _loras_from_json(data: Any) -> tuple:
    """LoRAs of a request's JSON form: each file at its recorded path if its content is unchanged, else
    found by its hash in the LoRA folder; a file found nowhere is a ValueError naming it."""
    from pathlib import Path

    from . import adapters, identity

    def one(d: Mapping[str, Any]):
        file = None
        path = d.get("path")
        if path and Path(path).is_file() and identity.file_sha256(path) == d["sha256"]:
            file = adapters.LoraFile(name=d["name"], path=str(path), sha256=d["sha256"])
        if file is None:
            found = adapters.find_by_hash(d["sha256"])
            if found is None:
                raise ValueError(
                    f"LoRA {d.get('name')!r} (sha256 {d['sha256'][:12]}) is not at {path!r} nor in the LoRA folder"
                )
            file = adapters.LoraFile(name=d["name"], path=found.path, sha256=found.sha256)
        return adapters.Lora(file, d["weight"], d.get("text_encoder_weight"))

    return tuple(tuple(one(d) for d in entries) for entries in data)


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
