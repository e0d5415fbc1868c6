"""`generate`: one request to one backend, images back with their full records.

This is the one path: sweeps, widgets, the CLI and the server all build a `GenerationRequest`
and hand it to a backend through `run_request`; nothing else calls a pipeline.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .backends import as_backend
from .backends.base import Backend, ProgressCallback
from .request import GenerationRequest


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """The versions that can change pixels, recorded with every image."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sdlab", "diffusers", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


@dataclass
class GenerationResult:
    """Images and, for each, the record that makes it again."""

    images: list[Image.Image]
    records: list[dict[str, Any]]
    request: GenerationRequest | None = None
    paths: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image(self) -> Image.Image:
        """The first image (for the common one-image case)."""
        return self.images[0]

    @property
    def seeds(self) -> list[int]:
        return [r["seed"] for r in self.records]

    def save(self, directory: str | Path, *, prefix: str = "") -> list[Path]:
        """Write each image as a PNG carrying its record; returns the paths (never overwrites)."""
        from .metadata import save_png

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        counter = _next_counter(directory)
        paths = []
        for i, (image, record) in enumerate(zip(self.images, self.records)):
            path = directory / f"{prefix}{counter + i:05d}-{record['seed']}.png"
            paths.append(save_png(image, path, record))
        self.paths = paths
        return paths

    def grid(self, **kwargs) -> Image.Image:
        """The images side by side, labelled by seed."""
        from .grid import image_grid

        labels = [f"seed {r['seed']}" for r in self.records]
        return image_grid(self.images, labels=labels, **kwargs)

    def _repr_png_(self):
        import io

        buf = io.BytesIO()
        (self.grid() if len(self.images) > 1 else self.images[0]).save(buf, format="PNG")
        return buf.getvalue()


def _next_counter(directory: Path) -> int:
    highest = -1
    for p in directory.glob("*.png"):
        m = re.match(r"(?:.*?)(\d{5})-", p.name)
        if m:
            highest = max(highest, int(m.group(1)))
    return highest + 1


def build_request(backend: Backend, prompt: Any, **kwargs: Any) -> GenerationRequest:
    """The request `generate` makes for `backend`: its defaults filled, every value checked by the
    request itself and then by the backend; no model work happens here."""
    from .inputs import take_fields

    pipeline_kwargs = dict(kwargs.pop("pipeline_kwargs", None) or {})
    # img2img, inpainting, hires fix, refiner (sdlab.inputs); on ControlNet pipelines `image` is the control image
    fields = take_fields(
        pipeline_kwargs,
        local=bool(getattr(backend, "takes_image_fields", getattr(backend, "name", None) == "diffusers")),
        controlnet=int(getattr(backend, "num_controlnets", 0) or 0) > 0,
    )
    request = GenerationRequest.create(
        prompt, defaults=backend.defaults, pipeline_kwargs=pipeline_kwargs, **fields, **kwargs
    )
    backend.validate(request)
    return request


def run_request(
    backend: Backend,
    request: GenerationRequest,
    *,
    progress: ProgressCallback | None = None,
    progress_bar: bool | None = None,
) -> GenerationResult:
    """Run one request on one backend and attach the full record to every image."""
    output = backend.run(request, progress=progress, progress_bar=progress_bar)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    n = len(request)
    records = []
    for i in range(n):
        record = request.image_params(i)
        record.update(output.records[i])
        record["versions"] = versions()
        record["seconds"] = round(output.seconds / n, 4)
        record["batch_size"] = n
        record["batch_index"] = i
        record["created"] = created
        records.append(record)
    return GenerationResult(images=output.images, records=records, request=request)


def generate(
    pipe: Any,
    prompt: str | Sequence[str],
    *,
    negative_prompt: str | Sequence[str] | None = None,
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
    progress: ProgressCallback | None = None,
    **pipeline_kwargs: Any,
) -> GenerationResult:
    """Generate images with a pipeline (from `load_pipeline`) or a backend.

    Args:
        pipe: a diffusers pipeline or an sdlab backend (ComfyUI, Replicate).
        prompt: a prompt or a list of prompts; `num_images` images are made per prompt.
        seed: an int (image i gets seed+i), a list with one seed per image, or None for a random
            seed that is recorded. 0 is a seed. Each image has its own CPU generator, so image i of a
            batch equals that seed generated alone.
        width, height, num_inference_steps, guidance_scale, scheduler: default to the model's preset.
        clip_skip: final CLIP layers to skip, in diffusers' convention (A1111's "Clip skip: 2" is
            `clip_skip=1`); applied in sdlab's own prompt encoding (SD 1.x/2.x, SDXL).
        variation_seed, variation_strength: A1111's "Var. seed" and "Var. strength": each image's
            initial noise is its seed's, slerped towards its variation seed's by the strength (0: the
            seed's image, 1: the variation seed's). Per image like `seed` (an int counts up, a list
            gives one each; None with a strength draws one, recorded). A1111 keeps one seed for a
            batch of variations: pass `seed=[s] * n` for that. Local backend, text-to-image only.
        image, mask_image, strength: img2img (an init image, path or array; one for all images or
            one per image) and inpainting (white = repaint), at A1111's "Denoising strength"
            (default 0.75), on the img2img/inpainting pipeline of the loaded components. Images are
            fitted to `width` x `height` (aspect kept, padded) and recorded by content hash (and file
            name). `mask_blur` (pixels) and `padding_mask_crop` (A1111's "Only masked" padding).
            On a ControlNet pipeline `image` is the control image.
        hires_scale (or hires_width, hires_height), hires_upscaler ("latent", "lanczos", ...),
            hires_steps, hires_strength: A1111's hires fix (a second, img2img pass at the larger size).
        refiner, refiner_switch: an SDXL refiner (preset, hub id or folder) taking over at that
            fraction of the steps (A1111's "Refiner switch at", default 0.8).
        loras: LoRAs for this call: name (in the LoRA folder, `sdlab.set_lora_dir`), file, folder or
            cached hub id -> weight, or -> (unet weight, text encoder weight). `<lora:name:w>` in the
            prompt does the same. Applied for this call only, recorded by content hash (sdlab.adapters).
        embeddings: textual inversion tokens for this call: {token: file or name}, or [name] (the
            token is the file's name, as in A1111); SD 1.x/2.x (sdlab.textual_inversion).
        progress: called with a dict (`step`, `total`, ...) after every denoising step.
        **pipeline_kwargs: other keywords of the pipeline (e.g. `image` and
            `controlnet_conditioning_scale` for ControlNet); unknown names are an error.

    Returns:
        A `GenerationResult` with `.images`, `.records` and `.save(directory)`.
    """
    backend = as_backend(pipe)
    request = build_request(
        backend,
        prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
        num_images=num_images,
        scheduler=scheduler,
        clip_skip=clip_skip,
        variation_seed=variation_seed,
        variation_strength=variation_strength,
        loras=loras,
        embeddings=embeddings,
        pipeline_kwargs=pipeline_kwargs,
    )
    return run_request(backend, request, progress=progress)


class RegenerateWarning(UserWarning):
    """`regenerate` could not make the image exactly as recorded: a different model, or settings
    (named in the message and in `.unapplied`, as the text wrote them) that sdlab does not apply."""

    def __init__(self, message: str, unapplied: Sequence[str] = ()):
        super().__init__(message)
        self.unapplied = tuple(unapplied)


# A1111 keys that describe the run without changing pixels, or that regenerate checks itself
_A1111_INFORMATIVE = {"Version", "Model", "User", "Lora hashes", "TI hashes"}  # LoRAs: applied by hash (sdlab.adapters)
# A1111's extra networks in a prompt (<lora:name:0.8>): A1111 takes them out of the text it encodes
_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def regenerate(path: str | Path, pipe: Any, **overrides: Any) -> GenerationResult:
    """Make the image at `path` again from the parameters it carries (sdlab's or A1111's).

    Keyword arguments override recorded parameters (e.g. a different `num_inference_steps`).
    From A1111's text it applies the sampler and schedule type, clip skip, size, seed, variation
    seed and strength, DDIM's eta, and A1111's prompt weights (through `sdlab.prompts.weighted`);
    it compares the `Model hash` with the loaded model's, and applies hires fix and denoising
    strength (an init image must be passed again). Whatever else the text holds (GPU/NV noise,
    extensions' keys) is listed in ONE `RegenerateWarning`: the image may differ.
    LoRAs are found by content hash in the LoRA folder (`sdlab.set_lora_dir`); missing ones are an
    error naming them.
    """
    from .metadata import read_params

    params = read_params(path)
    backend = as_backend(pipe)
    name = Path(path).name if isinstance(path, (str, Path)) else "the image"
    unapplied: list[str] = []
    if params.get("source") == "a1111":
        unapplied = _a1111_unapplied(params, backend, name)
    else:
        _check_model(params, backend, name)
    kwargs: dict[str, Any] = {}
    for key in (
        "negative_prompt",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "scheduler",
        "clip_skip",
        "variation_seed",
        "variation_strength",
    ):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    prompt = params["prompt"]
    if "<lora:" in prompt or params.get("loras"):  # the same LoRA files, found by hash (sdlab.adapters)
        from .adapters import loras_to_regenerate, strip_tags

        kwargs["loras"] = loras_to_regenerate(params, name)
        prompt = strip_tags(prompt)
    embeddings = _embeddings_to_regenerate(params, name)
    if embeddings:
        kwargs["embeddings"] = embeddings
    if params.get("source") == "a1111":  # A1111's prompt syntax is sdlab's default encoding: only extra networks go
        prompt, dropped = _without_extra_networks(prompt)
        unapplied += [f"prompt {tag}" for tag in dropped]
        if kwargs.get("negative_prompt") is not None:
            kwargs["negative_prompt"], dropped = _without_extra_networks(kwargs["negative_prompt"])
            unapplied += [f"negative prompt {tag}" for tag in dropped]
    if params.get("prompt_weighting") or params.get("negative_prompt_weighting"):  # sdlab.prompts.weighted, verbatim
        from .prompts import prompt_object

        if params.get("prompt_weighting"):
            prompt = prompt_object(params["prompt_weighting"], prompt)
        if params.get("negative_prompt_weighting") and kwargs.get("negative_prompt") is not None:
            kwargs["negative_prompt"] = prompt_object(params["negative_prompt_weighting"], kwargs["negative_prompt"])
    kwargs.update(_input_fields(params, overrides, name))
    if params.get("refiner_a1111") and "refiner" not in overrides:
        unapplied.append(f"Refiner: {params['refiner_a1111']} (pass refiner= to apply it)")
    pipeline_kwargs = {}
    for key, value in (params.get("pipeline_kwargs") or {}).items():
        if isinstance(value, dict) and value.get("type") in ("image", "tensor", "array"):
            if key not in overrides:
                raise ValueError(
                    f"{name} was made with a `{key}` {value['type']} that PNG metadata cannot hold; "
                    f"pass it again: regenerate(path, pipe, {key}=...)"
                )
            continue
        pipeline_kwargs[key] = value
    kwargs.update(pipeline_kwargs)
    kwargs.update(overrides)
    if unapplied:
        warnings.warn(
            RegenerateWarning(
                f"{name}: sdlab does not apply {'; '.join(unapplied)}. The image may differ from the original",
                unapplied,
            ),
            stacklevel=2,
        )
    result = generate(pipe, prompt, **kwargs)
    for key in ("image", "mask_image"):  # the input passed again against the one the record names
        recorded = params.get(key)
        made = result.records[0].get(key) if result.records else None
        if isinstance(recorded, dict) and recorded.get("sha256") and made and made["sha256"] != recorded["sha256"]:
            warnings.warn(
                RegenerateWarning(
                    f"{name}: the `{key}` passed (sha256 {made['sha256'][:16]}) is not the one it was made from "
                    f"({recorded.get('file') or 'sha256 ' + recorded['sha256'][:16]}). The image may differ",
                    [key],
                ),
                stacklevel=2,
            )
    return result


def _input_fields(params: dict[str, Any], overrides: dict[str, Any], name: str) -> dict[str, Any]:
    """img2img / inpainting / hires / refiner fields of a record (sdlab.inputs). An init image or mask
    cannot be in PNG metadata: the record names it (hash, file) and it must be passed again."""
    from .inputs import FIELDS, PER_IMAGE

    out: dict[str, Any] = {}
    for key in FIELDS:
        value = params.get(key)
        if value is None:
            continue
        if key in PER_IMAGE:
            if key not in overrides:
                described = value if isinstance(value, dict) else {}
                which = described.get("file") or (
                    f"sha256 {described['sha256'][:16]}" if described.get("sha256") else "not named in the text"
                )
                raise ValueError(
                    f"{name} was made from an input `{key}` ({which}) that PNG metadata cannot hold; pass it again: "
                    f"regenerate(path, pipe, {key}=...)"
                )
            continue
        out[key] = value.get("name") if key == "refiner" and isinstance(value, dict) else value
    return out


def _embeddings_to_regenerate(params: dict[str, Any], name: str) -> tuple:
    """Textual inversion embeddings of a record (by SHA-256) or of A1111's `TI hashes`, found again."""
    from .request import _embedding_from_json
    from .textual_inversion import Embedding, find_by_hash

    if params.get("embeddings"):
        return tuple(_embedding_from_json(d) for d in params["embeddings"])
    text = (params.get("extra") or {}).get("TI hashes")
    if not text:
        return ()
    from . import identity

    out, missing = [], []
    for token, _, short in (p.strip().rpartition(":") for p in text.split(",") if ":" in p):
        path = find_by_hash(short.strip())
        if path is None:
            missing.append(f"{token.strip()} ({short.strip()})")
        else:
            sha = identity.file_sha256(path)
            out.append(Embedding(token=token.strip(), name=Path(path).stem, path=path, sha256=sha))
    if missing:
        raise ValueError(
            f"{name} was made with textual inversion embedding(s) {', '.join(missing)}, not in the embeddings folder"
        )
    return tuple(out)


def _check_model(params: dict[str, Any], backend: Backend, name: str) -> None:
    """sdlab's own record: the model it names against the loaded one (by hash when both are known)."""
    loaded_hash = getattr(getattr(backend, "info", None), "model_hash", None)
    recorded_hash = params.get("model_hash")
    if loaded_hash and recorded_hash:
        if loaded_hash != recorded_hash:
            warnings.warn(
                f"{name} was made with a model of hash {recorded_hash}; the loaded model's hash is {loaded_hash}",
                RegenerateWarning,
                stacklevel=3,
            )
        return
    recorded_model = params.get("model")
    if recorded_model and recorded_model != backend.model_id:
        warnings.warn(
            f"{name} was made with model {recorded_model!r}; regenerating with {backend.model_id!r}",
            RegenerateWarning,
            stacklevel=3,
        )


def _a1111_unapplied(params: dict[str, Any], backend: Backend, name: str) -> list[str]:
    """The model check for A1111's text, and the keys of it sdlab does not apply (as written)."""
    extra = dict(params.get("extra") or {})
    sdlab_text = str(extra.get("Version", "")).startswith("sdlab")
    unapplied = [f"{key}: {value}" for key, value in extra.items() if key not in _A1111_INFORMATIVE | {"RNG"}]
    rng = extra.get("RNG")
    if rng is None and not sdlab_text:  # A1111 writes RNG only for CPU noise; none means GPU (or NV) noise
        unapplied.append("RNG: GPU (A1111's default, not CPU noise)")
    elif rng is not None and rng != "CPU":
        unapplied.append(f"RNG: {rng}")
    loaded_hash = getattr(getattr(backend, "info", None), "model_hash", None)
    recorded_hash = params.get("model_hash")
    if loaded_hash and recorded_hash:
        if loaded_hash.lower() != str(recorded_hash).lower():
            warnings.warn(
                f"{name} was made with Model hash {recorded_hash} ({params.get('model') or 'model name not given'}); "
                f"the loaded model's hash is {loaded_hash}",
                RegenerateWarning,
                stacklevel=3,
            )
    elif sdlab_text:
        _check_model(params, backend, name)
    elif recorded_hash:
        unapplied.append(f"Model hash: {recorded_hash} (not checked: the loaded model has no single-file hash)")
    elif params.get("model"):
        unapplied.append(f"Model: {params['model']} (not checked: the text has no Model hash)")
    return unapplied


def _without_extra_networks(text: str) -> tuple[str, list[str]]:
    """A1111's prompt without its <lora:...>-style tags (A1111 removes them before encoding), and the tags."""
    tags = [m.group(0) for m in _RE_EXTRA_NETWORK.finditer(text)]
    return _RE_EXTRA_NETWORK.sub("", text), tags
