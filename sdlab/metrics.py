"""Scores of generated images: one number (or a small dict of them) per image, offline.

    result = sdlab.sweep(pipe, "a large red circle on a blue background",
                         axes={"guidance_scale": [1, 3, 5, 7], "seed": "1-4"},
                         metrics=["judge", "sharpness", similarity(reference={"guidance_scale": 7})])
    result.table[0]["metrics"]   # {"judge.colour": 1.0, ..., "sharpness": 812.4, "similarity.ssim": 0.71, ...}

A scorer is a function of the image and its record (the dict saved in the PNG), and for a
reference-based scorer also of a reference cell's image and record; it returns a number, None
(does not apply) or a dict of them. `Scorer` gives it a name and a version: both are in the
cache key of every score, with the image's content, so a changed scorer scores again and an
unchanged one never does.

Built in: `judge` (the bundled `shapes` model's adherence to the prompt), `sharpness` (variance
of the Laplacian), `colourfulness` (Hasler and Suesstrunk), `saturation` (mean HSV saturation),
`similarity` (SSIM, mean absolute difference, PSNR and, given a VAE, latent distance to a
reference cell) and `clip_score` (CLIP through transformers, from the Hugging Face cache).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import SdlabError

__all__ = [
    "BUILTIN",
    "Reference",
    "Scorer",
    "clip_score",
    "colourfulness",
    "flatten",
    "image_distance",
    "judge",
    "resolve",
    "saturation",
    "sharpness",
    "similarity",
]


class Reference(NamedTuple):
    """The reference cell a reference-based scorer compares with."""

    image: Any  # PIL image
    record: dict[str, Any]


@dataclass(frozen=True)
class Scorer:
    """A named, versioned scoring function: `fn(image, record)`, or `fn(image, record, reference)`
    when `reference` (axis name -> value) names the reference cell: the cell with the same
    values on every other axis."""

    name: str
    fn: Callable[..., Any] = field(compare=False)
    version: str = "1"
    reference: dict[str, Any] | None = None
    prepare: Callable[[], None] | None = field(default=None, compare=False)  # loads models; raises if missing
    config: Any = field(default=None, compare=False)  # how a sweep file names it ("judge", {"similarity": {...}})
    bind: Callable[[Any], Scorer] | None = field(default=None, compare=False)  # given the sweep's pipeline

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ValueError(f"a scorer's `name` must be a non-empty string without '.', got {self.name!r}")
        if self.reference is not None and (not isinstance(self.reference, dict) or not self.reference):
            raise ValueError(f"scorer {self.name!r}: `reference` must map axis names to values, got {self.reference!r}")

    def cache_key(self, image_key: str, reference_key: str | None = None) -> str:
        payload = [self.name, self.version, image_key, reference_key]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()

    def score(self, image, record: dict[str, Any], reference: Reference | None = None) -> dict[str, float | None]:
        """The flat scores of one image (see `flatten`); exceptions propagate."""
        value = self.fn(image, record) if self.reference is None else self.fn(image, record, reference)
        return flatten(self.name, value)


def flatten(name: str, value: Any) -> dict[str, float | None]:
    """A scorer's result as flat names: a number is `name`, a dict `name.key` per key; values that
    are not finite numbers become None (JSON cannot carry them)."""
    items = value.items() if isinstance(value, dict) else [(None, value)]
    out: dict[str, float | None] = {}
    for key, v in items:
        if v is not None and not isinstance(v, (bool, int, float, np.number)):
            raise TypeError(f"scorer {name!r} returned {type(v).__name__} for {key or name!r}; scores are numbers")
        number = None if v is None else float(v)
        if number is not None and not math.isfinite(number):
            number = None
        out[name if key is None else f"{name}.{key}"] = number
    return out


def _source_version(*objects) -> str:
    """A version from the source code of the given functions or modules: edit them, score again."""
    digest = hashlib.sha256()
    for obj in objects:
        try:
            digest.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):  # no source file (e.g. made by exec): its bytecode and constants
            code = getattr(obj, "__code__", None)
            if code is None:
                raise ValueError(
                    f"cannot version the scorer {obj!r} by its source; give it one: Scorer(name, fn, version=...)"
                ) from None
            digest.update(code.co_code + repr(code.co_consts).encode())
    return digest.hexdigest()[:12]


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)


# ------------------------------------------------------------------ image statistics


def _sharpness(image, record=None) -> float:
    import cv2

    grey = cv2.cvtColor(_rgb(image).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey.astype(np.float64), cv2.CV_64F).var())


def _colourfulness(image, record=None) -> float:
    rgb = _rgb(image).astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def _saturation(image, record=None) -> float:
    import cv2

    hsv = cv2.cvtColor(_rgb(image).astype(np.uint8), cv2.COLOR_RGB2HSV)
    return float(hsv[..., 1].mean() / 255.0)


def sharpness() -> Scorer:
    """Variance of the Laplacian of the grey image (higher: more fine detail or noise)."""
    return Scorer("sharpness", _sharpness, version=_source_version(_sharpness), config="sharpness")


def colourfulness() -> Scorer:
    """Hasler and Suesstrunk's colourfulness (2003): 0 for grey, ~100 for vivid images."""
    return Scorer("colourfulness", _colourfulness, version=_source_version(_colourfulness), config="colourfulness")


def saturation() -> Scorer:
    """Mean HSV saturation, 0-1."""
    return Scorer("saturation", _saturation, version=_source_version(_saturation), config="saturation")


# ------------------------------------------------------------------ the bundled model's judge


def _judge(image, record) -> dict[str, float | None]:
    from .bundled.judge import judge as judge_image
    from .bundled.world import parse_caption

    wanted = parse_caption(str(record.get("prompt") or ""))
    seen = judge_image(image)
    scores: dict[str, float | None] = {}
    for attribute in ("colour", "shape", "background", "size", "position"):
        want = wanted.get(attribute)
        scores[attribute] = None if want is None else float(getattr(seen, attribute) == want)
    if wanted.get("style") == "outlined":  # only when the prompt asks for it (the bundled LoRA's style)
        scores["outlined"] = float(bool(seen.outlined))
    pair = [scores[a] for a in ("colour", "shape") if scores[a] is not None]
    scores["colour_shape"] = sum(pair) / len(pair) if pair else None
    named = [v for v in scores.values() if v is not None]
    scores["all"] = float(all(named)) if named else None
    return scores


def judge() -> Scorer:
    """The `shapes` judge against the prompt: per attribute the prompt names (colour, shape,
    background, size, position) 1.0 if the image shows it, 0.0 if not, None if the prompt names
    none; `outlined` only for prompts that ask for outlined shapes (the bundled LoRA's style);
    `colour_shape` their mean over colour and shape, `all` 1.0 when every named one holds."""
    from .bundled import judge as judge_module
    from .bundled import world

    return Scorer("judge", _judge, version=_source_version(_judge, judge_module, world.parse_caption), config="judge")


# ------------------------------------------------------------------ similarity to a reference


def image_distance(image, reference) -> dict[str, float]:
    """Mean absolute difference (0-255), PSNR (dB, inf if equal) and SSIM between two images."""
    from skimage.metrics import structural_similarity

    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    b = np.asarray(reference.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image sizes differ: {a.shape} vs reference {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    win = min(7, a.shape[0], a.shape[1])
    win -= 1 - win % 2  # odd
    ssim = float(structural_similarity(a, b, data_range=255.0, channel_axis=2, win_size=max(win, 3)))
    return {"mae": float(np.mean(np.abs(a - b))), "psnr": psnr, "ssim": ssim}


def _latents(vae, image):
    import torch

    param = next(vae.parameters())
    x = torch.from_numpy(_rgb(image).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        return vae.encode(x.to(param.device, param.dtype)).latent_dist.mean.float().cpu()


def similarity(*, reference: dict[str, Any], vae=None, latent: bool = False, name: str = "similarity") -> Scorer:
    """Each image against its reference cell (the cell with `reference`'s axis values and this
    cell's values on every other axis): `ssim` (1 = identical), `mae` (0-255 levels), `psnr` (dB;
    None when identical) and, given a `vae` (e.g. `pipe.vae`) or `latent=True` (the VAE of the
    sweep's own pipeline), `latent_mse` between the VAE encodings of both images (the
    distribution's mean)."""
    from .identity import modules_sha256

    def score(image, record, ref: Reference):
        out: dict[str, float | None] = dict(image_distance(image, ref.image))
        if vae is not None:
            a, b = _latents(vae, image), _latents(vae, ref.image)
            out["latent_mse"] = float(((a - b) ** 2).mean())
        return out

    latent = bool(latent or vae is not None)
    version = _source_version(image_distance, _latents) + (f"+vae:{modules_sha256({'vae': vae})[:12]}" if vae else "")
    options: dict[str, Any] = {"reference": dict(reference), "name": name}
    if latent:
        options["latent"] = True
    bind = None
    if latent and vae is None:

        def bind(pipe):  # the sweep hands in its pipeline: the VAE's weights are in the version
            if getattr(pipe, "vae", None) is None:
                raise ValueError(f"`metrics`: {name!r} with latent=True needs a local pipeline with a VAE")
            return similarity(reference=reference, vae=pipe.vae, name=name)

    return Scorer(name, score, version=version, reference=dict(reference), config={"similarity": options}, bind=bind)


# ------------------------------------------------------------------ CLIP score

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class MissingModelError(SdlabError):
    """A scorer's model is not in the local Hugging Face cache (and sdlab never downloads one)."""


def clip_score(model: str = DEFAULT_CLIP, *, cache_dir: str | Path | None = None, name: str = "clip_score") -> Scorer:
    """CLIP score (Hessel et al. 2021, as torchmetrics computes it): 100 x the cosine of the image
    and prompt embeddings, floored at 0, with a CLIP model from the Hugging Face cache (or a local
    folder). Nothing is downloaded: a model that is not there is a `MissingModelError` naming it,
    raised when the sweep starts."""
    state: dict[str, Any] = {}

    def load():
        if state:
            return
        from transformers import CLIPModel, CLIPProcessor

        try:
            kwargs = {"local_files_only": True, "cache_dir": str(cache_dir) if cache_dir else None}
            state["model"] = CLIPModel.from_pretrained(model, **kwargs).eval()
            state["processor"] = CLIPProcessor.from_pretrained(model, **kwargs)
        except OSError as e:
            raise MissingModelError(
                f"clip_score needs the CLIP model {model!r}, which is not in the Hugging Face cache"
                f"{f' {cache_dir}' if cache_dir else ''}: download it once with "
                f"`huggingface-cli download {model}` (or pass clip_score(model=<a local folder or cached id>))"
            ) from e

    def score(image, record):
        import torch

        load()
        processor, clip = state["processor"], state["model"]
        inputs = processor(
            text=[str(record.get("prompt") or "")], images=[image.convert("RGB")], return_tensors="pt", padding=True
        )
        inputs["input_ids"] = inputs["input_ids"][:, : clip.config.text_config.max_position_embeddings]
        inputs["attention_mask"] = inputs["attention_mask"][:, : clip.config.text_config.max_position_embeddings]
        with torch.no_grad():
            out = clip(**inputs)
        img, txt = out.image_embeds[0], out.text_embeds[0]
        cosine = torch.nn.functional.cosine_similarity(img, txt, dim=0)
        return 100.0 * max(float(cosine), 0.0)

    config = {"clip_score": {"model": model, "name": name}} if cache_dir is None else None
    return Scorer(name, score, version=f"{model}@{_model_identity(model, cache_dir)}", prepare=load, config=config)


def _model_identity(model: str, cache_dir) -> str:
    """The CLIP model's content: a local folder's file hashes, or the cached hub commit."""
    path = Path(model)
    if path.is_dir():
        from .identity import folder_sha256

        return folder_sha256(path)[:16]
    from .identity import hub_commit

    return hub_commit(model, cache_dir=str(cache_dir) if cache_dir else None) or "not-cached"


# ------------------------------------------------------------------ by name

BUILTIN: dict[str, Callable[[], Scorer]] = {
    "judge": judge,
    "sharpness": sharpness,
    "colourfulness": colourfulness,
    "saturation": saturation,
    "clip_score": clip_score,
    "similarity": similarity,
}


def resolve(metrics) -> list[Scorer]:
    """`metrics` as scorers: built-in names ("judge"), one-key dicts of a built-in and its options
    ({"similarity": {"reference": {"num_inference_steps": 50}}}), `Scorer`s, or plain functions
    `f(image, record)` (named after the function, versioned by its source)."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, Scorer, dict)) or callable(metrics):
        metrics = [metrics]
    out: list[Scorer] = []
    for m in metrics:
        if isinstance(m, Scorer):
            scorer = m
        elif isinstance(m, str) or (isinstance(m, dict) and len(m) == 1):
            kind, options = (m, {}) if isinstance(m, str) else next(iter(m.items()))
            if kind not in BUILTIN:
                raise ValueError(f"`metrics`: unknown metric {kind!r}; built in: {', '.join(BUILTIN)}")
            if not isinstance(options, dict):
                raise ValueError(f"`metrics`: the options of {kind!r} must be a mapping, got {options!r}")
            allowed = set(inspect.signature(BUILTIN[kind]).parameters) - {"vae", "cache_dir"}
            unknown = sorted(set(options) - allowed)
            if unknown:
                raise ValueError(
                    f"`metrics`: {kind!r} has no option {unknown[0]!r}; options: {', '.join(sorted(allowed)) or 'none'}"
                )
            try:
                scorer = BUILTIN[kind](**options)
            except TypeError as e:
                raise ValueError(f"`metrics`: {kind!r}: {e}") from e
        elif callable(m):
            scorer = Scorer(getattr(m, "__name__", type(m).__name__), m, version=_source_version(m))
        else:
            raise ValueError(f"`metrics` takes names, Scorers or functions, got {type(m).__name__}")
        if any(s.name == scorer.name for s in out):
            raise ValueError(f"`metrics`: two scorers are named {scorer.name!r}; give one another name")
        out.append(scorer)
    return out
