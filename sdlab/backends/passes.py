"""Two-pass requests on the local backend: A1111's hires fix and the SDXL refiner.

Hires fix (A1111's txt2img "Hires. fix"):
1. the request without hires at its own size, as latents (latent upscalers) or images (seed
   variations make this pass's noise; recorded as `hires_variation`);
2. upscaled to `hires_width` x `hires_height`: latents by `torch.nn.functional.interpolate` in
   A1111's latent modes, images by PIL (Lanczos, Nearest);
3. an img2img pass at that size with `hires_strength` over `hires_steps` (or the request's) steps,
   the same seeds (fresh generators, as A1111 draws the hires noise from the seeds again), prompts
   and per-image guidance, through the backend's own call (`_run`), so everything sdlab does for a
   call (prompt encoding, guidance, NaN check, progress) holds for both passes.

SDXL refiner (A1111's "Refiner", diffusers' ensemble of experts):
1. the base pipeline denoises until `refiner_switch` of the schedule (`denoising_end`), as latents;
2. the refiner (a preset, hub id or folder, loaded once per backend and given the call's
   scheduler) denoises from there (`denoising_start`) with its own text encoder and guidance.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from ..errors import BackendError
from ..request import GenerationRequest
from .base import BackendOutput

_NO_HIRES = {
    "hires_scale": None,
    "hires_width": None,
    "hires_height": None,
    "hires_upscaler": None,
    "hires_steps": None,
    "hires_strength": None,
}


def is_multi_pass(request: GenerationRequest) -> bool:
    return request.hires_width is not None or request.refiner is not None


def _is_latent(upscaler: str) -> bool:
    return upscaler.startswith("latent")


def first_pass(request: GenerationRequest) -> GenerationRequest:
    return replace(request, **_NO_HIRES, refiner=None, refiner_switch=None)


def hires_pass(request: GenerationRequest, images: tuple) -> GenerationRequest:
    """The img2img request of the hires pass, from the upscaled first-pass `images`. Seed variations
    make the first pass's noise only (diffusers' img2img draws its own noise from the seed)."""
    return replace(
        first_pass(request),
        variation_seed=None,
        variation_strength=None,
        width=request.hires_width,
        height=request.hires_height,
        image=images,
        strength=request.hires_strength,
        num_inference_steps=request.hires_steps or request.num_inference_steps,
    )


def validate(backend: Any, request: GenerationRequest) -> None:
    """Hires fix and refiner requests, checked before any model work (both passes)."""
    if not is_multi_pass(request):
        return
    if request.hires_width is not None:
        if _is_latent(request.hires_upscaler) and backend.family == "flux":
            raise ValueError(
                f"`hires_upscaler` {request.hires_upscaler!r}: FLUX latents are packed; use hires_upscaler='lanczos'"
            )
        scale = int(getattr(backend.pipe, "vae_scale_factor", 8))
        channels = 4 if backend.family != "flux" else 16
        placeholder = tuple(
            torch.zeros(channels, request.hires_height // scale, request.hires_width // scale) for _ in request.seed
        )
        try:
            backend.validate(hires_pass(request, placeholder))
        except ValueError as e:
            raise ValueError(f"the hires pass ({request.hires_width}x{request.hires_height}): {e}") from e
    if request.refiner is not None:
        if backend.family != "sdxl":
            raise ValueError(f"`refiner` follows an SDXL base model; this one is {backend.family!r}")
        from ..prompts import a1111

        for name, values in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            for p in values:
                if p is not None and (not isinstance(p, str) or a1111.has_syntax(p)):
                    raise ValueError(
                        f"`{name}` {p!r}: the refiner encodes prompts with its own text encoder as plain text; A1111 "
                        f"syntax and weighted prompts are not supported with a `refiner`"
                    )


def run(backend: Any, request: GenerationRequest, *, progress=None, progress_bar=None) -> BackendOutput:
    backend.validate(request)
    if request.hires_width is not None:
        return _run_hires(backend, request, progress=progress, progress_bar=progress_bar)
    return _run_refiner(backend, request, progress=progress, progress_bar=progress_bar)


def _tagged(progress, name: str):
    if progress is None:
        return None
    return lambda info: progress({**info, "pass": name})


# ------------------------------------------------------------------ hires fix


def upscale_latents(latents: torch.Tensor, *, width: int, height: int, upscaler: str, scale: int) -> torch.Tensor:
    from ..inputs import _LATENT_MODES

    mode, antialias = _LATENT_MODES[upscaler]
    size = (height // scale, width // scale)
    if mode in ("nearest", "nearest-exact"):
        return torch.nn.functional.interpolate(latents, size=size, mode=mode)
    return torch.nn.functional.interpolate(latents, size=size, mode=mode, antialias=antialias)


def upscale_images(images: list, *, width: int, height: int, upscaler: str) -> list:
    from PIL import Image

    resample = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[upscaler]
    return [im.resize((width, height), resample) for im in images]


def _run_hires(backend: Any, request: GenerationRequest, *, progress, progress_bar) -> BackendOutput:
    latent = _is_latent(request.hires_upscaler)
    first = backend._run(
        first_pass(request),
        progress=_tagged(progress, "first"),
        progress_bar=progress_bar,
        output_type="latent" if latent else "pil",
    )
    if latent:
        scale = int(getattr(backend.pipe, "vae_scale_factor", 8))
        up = upscale_latents(
            torch.stack(list(first.images)).float(),
            width=request.hires_width,
            height=request.hires_height,
            upscaler=request.hires_upscaler,
            scale=scale,
        )
        images = tuple(up[i] for i in range(len(request)))
    else:
        images = tuple(
            upscale_images(
                list(first.images),
                width=request.hires_width,
                height=request.hires_height,
                upscaler=request.hires_upscaler,
            )
        )
    second = backend._run(hires_pass(request, images), progress=_tagged(progress, "hires"), progress_bar=progress_bar)
    records = []
    for r1, r2 in zip(first.records, second.records):
        record = dict(r2)
        record["pipeline"] = f"{r1['pipeline']} + {r2['pipeline']} (hires)"
        record["hires_first_pass_size"] = [request.width, request.height]
        if request.has_variation:
            record["hires_variation"] = "first pass only (the hires pass's noise is the seed's)"
        records.append(record)
    return BackendOutput(images=list(second.images), records=records, seconds=first.seconds + second.seconds)


# ------------------------------------------------------------------ refiner


def load_refiner(backend: Any, name: str):
    """The refiner's img2img pipeline, loaded once per backend (on the base model's device and dtype)."""
    cache = backend.__dict__.setdefault("_refiners", {})
    if name in cache:
        return cache[name]
    from diffusers import AutoPipelineForImage2Image

    from ..loading import load_pipeline, pipeline_info

    loaded = load_pipeline(name, device=str(backend.info.device), dtype=backend.info.dtype, progress_bar=False)
    if "denoising_start" not in set(_call_params(loaded)):
        loaded = AutoPipelineForImage2Image.from_pipe(loaded)
    unet, encoder = loaded.unet.config, getattr(loaded, "text_encoder_2", None)
    if encoder is not None and unet.get("addition_time_embed_dim"):  # 5 time ids: a refiner's aesthetic score
        ids = (unet["projection_class_embeddings_input_dim"] - encoder.config.projection_dim) // unet[
            "addition_time_embed_dim"
        ]
        loaded.register_to_config(requires_aesthetics_score=ids == 5)
    cache[name] = (loaded, pipeline_info(loaded))
    return cache[name]


def _call_params(pipe) -> set:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters) - {"self"}


def _run_refiner(backend: Any, request: GenerationRequest, *, progress, progress_bar) -> BackendOutput:
    from ..request import prompt_text
    from ..schedulers import make_scheduler

    refiner, refiner_info = load_refiner(backend, request.refiner)
    switch = request.refiner_switch
    first = backend._run(
        first_pass(request),
        progress=_tagged(progress, "base"),
        progress_bar=progress_bar,
        output_type="latent",
        call_extra={"denoising_end": switch},
    )
    latents = torch.stack(list(first.images))
    start = time.perf_counter()
    images: list[Any] = [None] * len(request)
    steps = request.num_inference_steps

    def on_step_end(_pipe, step, timestep, callback_kwargs):
        lat = callback_kwargs.get("latents")
        if lat is not None and not torch.isfinite(lat).all():
            raise BackendError(f"the refiner's latents became NaN/inf at step {step + 1}", backend=backend.name)
        if progress is not None:
            progress({"step": step + 1, "total": steps, "timestep": float(timestep), "pass": "refiner"})
        return callback_kwargs

    # The refiner denoises with the scheduler the base pass used (the one the record names), built
    # from the base's config: never its own default, which a preset or a folder may set otherwise
    previous, base = refiner.scheduler, backend.pipe.scheduler
    if request.scheduler is not None:
        refiner.scheduler = make_scheduler(request.scheduler, base.config)
    else:
        refiner.scheduler = type(base).from_config(base.config)
    try:
        by_guidance: dict[float, list[int]] = {}  # the refiner runs its own CFG: one scale per call
        for i, g in enumerate(request.guidance_scale):
            by_guidance.setdefault(g, []).append(i)
        for guidance, rows in by_guidance.items():
            negatives = [request.negative_prompt[i] for i in rows]
            with torch.inference_mode():
                out = refiner(
                    prompt=[prompt_text(request.prompt[i]) for i in rows],
                    negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
                    image=latents[rows].to(device=refiner.device),
                    num_inference_steps=steps,
                    denoising_start=switch,
                    guidance_scale=guidance,
                    generator=[torch.Generator("cpu").manual_seed(int(request.seed[i])) for i in rows],
                    output_type="pil",
                    callback_on_step_end=on_step_end,
                )
            for j, i in enumerate(rows):
                images[i] = out.images[j]
    finally:
        refiner.scheduler = previous
    records = []
    for r in first.records:
        record = dict(r)
        record["pipeline"] = f"{r['pipeline']} + {type(refiner).__name__} (refiner)"
        record["refiner_weights"] = refiner_info.weights_identity(refiner)
        record["refiner_model"] = str(refiner_info.model)
        records.append(record)
    return BackendOutput(images=images, records=records, seconds=first.seconds + time.perf_counter() - start)
