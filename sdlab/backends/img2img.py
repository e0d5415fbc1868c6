"""img2img and inpainting on the local backend, from the pipeline already loaded.

diffusers' `AutoPipelineForImage2Image.from_pipe` / `AutoPipelineForInpainting.from_pipe` build
the task's pipeline class around the SAME component objects (no second copy of any weight), so
sdlab's guided UNet, its prompt embeddings, per-image generators, step callback, NaN check and
per-pipeline lock work for them as for text-to-image. The derived pipeline is rebuilt when a
component of the loaded pipeline is replaced, and is given the loaded pipeline's scheduler of the
call (a scheduler swapped for one call applies to the derived pipeline too).

Inpainting works with ordinary checkpoints (4-channel UNet: the pipeline blends the known latents
back at every step) and with inpainting checkpoints (9-channel UNet: mask and masked image are
inputs of the UNet).
"""

from __future__ import annotations

import inspect
from typing import Any

from ..request import GenerationRequest

TASKS = ("text2image", "image2image", "inpainting")


def task_of(request: GenerationRequest) -> str:
    if request.mask_image is not None:
        return "inpainting"
    if request.image is not None:
        return "image2image"
    return "text2image"


def is_inpainting_checkpoint(pipe: Any) -> bool:
    """A 9-channel UNet (latents + mask + masked-image latents): an inpainting checkpoint."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and int(unet.config.get("in_channels", 4)) == 9


def _components_stamp(pipe: Any) -> tuple:
    return tuple(sorted((name, id(module)) for name, module in pipe.components.items()))


def derived_pipeline(backend: Any, task: str):
    """The pipeline of `task` sharing `backend.pipe`'s components (the loaded pipeline itself for
    its own task), cached on the backend until a component is replaced."""
    pipe = backend.pipe
    if task == "text2image" or (task == "inpainting" and "mask_image" in backend._call_params):
        return pipe
    if task == "image2image" and "strength" in backend._call_params and "mask_image" not in backend._call_params:
        return pipe
    cache = backend.__dict__.setdefault("_derived_pipelines", {})
    stamp = _components_stamp(pipe)
    cached = cache.get(task)
    if cached is not None and cached[0] == stamp:
        derived = cached[1]
    else:
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForInpainting if task == "inpainting" else AutoPipelineForImage2Image
        from diffusers.utils import logging as diffusers_logging

        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # from_pipe's dtype notice about modules it does not cast
        try:
            derived = auto.from_pipe(pipe)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{type(pipe).__name__} has no {task} pipeline in diffusers ({e})") from e
        finally:
            diffusers_logging.set_verbosity(verbosity)
        cache[task] = (stamp, derived)
    derived.scheduler = pipe.scheduler  # the call's scheduler (sdlab may swap it for one call)
    derived._progress_bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    return derived


def call_parameters(pipe: Any) -> set[str]:
    return set(inspect.signature(type(pipe).__call__).parameters) - {"self"}


def validate(backend: Any, request: GenerationRequest) -> None:
    """What the local backend cannot do with image inputs, refused by name before any model work."""
    task = task_of(request)
    if task == "text2image":
        if is_inpainting_checkpoint(backend.pipe):
            raise ValueError(
                "this is an inpainting checkpoint (9-channel UNet): pass `image=` and `mask_image=` (text-to-image "
                "and plain img2img need an ordinary checkpoint)"
            )
        return
    if backend.is_controlnet:
        raise ValueError(
            f"img2img/inpainting (`image` with `strength`) is not supported on ControlNet pipelines here; on "
            f"{type(backend.pipe).__name__} `image=` is the control image"
        )
    if task == "image2image" and is_inpainting_checkpoint(backend.pipe):
        raise ValueError("this is an inpainting checkpoint (9-channel UNet): img2img needs a `mask_image` too")
    if backend.family not in ("sd1", "sd2", "sdxl", "flux"):
        raise ValueError(f"`image` (img2img) is not supported for {backend.family!r} models")
    if request.has_variation:
        raise ValueError(
            "`variation_seed`/`variation_strength` replace a text-to-image call's initial noise; an img2img or "
            "inpainting call starts from its init `image`"
        )
    if request.padding_mask_crop is not None:
        from ..identity import image_sha256

        if any(not hasattr(m, "mode") for m in request.image):
            raise ValueError("`padding_mask_crop` needs init images, not latents")
        if len({(image_sha256(i), image_sha256(m)) for i, m in zip(request.image, request.mask_image)}) > 1:
            raise ValueError(
                "`padding_mask_crop`: diffusers crops one init image and mask per call; this request has several "
                "(split it by image)"
            )
    steps = int(request.num_inference_steps * request.strength)
    if steps < 1:
        raise ValueError(
            f"`strength` {request.strength} of {request.num_inference_steps} steps runs no denoising step "
            f"(int(steps * strength) = 0); raise one of them"
        )
    from ..prompts import a1111

    for name, values in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        for p in values:
            if isinstance(p, str) and len(a1111.prompt_schedule(p, request.num_inference_steps)) > 1:
                raise ValueError(
                    f"`{name}` {p!r}: A1111 prompt editing / alternation is not supported with an init `image` "
                    f"(img2img runs only part of the steps); write the prompt without it"
                )


def effective_steps(request: GenerationRequest) -> int:
    """The denoising steps an img2img call runs: diffusers' int(steps * strength) (as A1111)."""
    if request.strength is None:
        return request.num_inference_steps
    return min(request.num_inference_steps, int(request.num_inference_steps * request.strength))


def call_kwargs(backend: Any, pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """The task's keywords of the call: images (latents stacked), masks (blurred as A1111's
    Mask blur), strength, padding_mask_crop; width/height only where the pipeline takes them."""
    params = call_parameters(pipe)
    out: dict[str, Any] = {}
    if "width" in params:
        out["width"], out["height"] = request.width, request.height
    if request.image is None:
        return out
    import torch

    images = list(request.image)
    if all(isinstance(i, torch.Tensor) for i in images):  # latents handed from a first pass
        latents = torch.stack(images).to(device=backend._device())
        if backend.family == "flux":
            raise ValueError("latent inputs are not supported on FLUX here; use an image upscaler")
        out["image"] = latents
    else:
        out["image"] = images
    out["strength"] = request.strength
    if request.mask_image is not None:
        masks = masks_of(request)
        out["mask_image"] = masks
        if request.padding_mask_crop is not None:  # one image and mask for the call (validate checked them equal)
            out["padding_mask_crop"] = request.padding_mask_crop
            out["image"], out["mask_image"] = images[0], masks[0]
    return out


def masks_of(request: GenerationRequest) -> list:
    """The request's masks as the call uses them: grey, blurred by `mask_blur` (diffusers' blur)."""
    masks = [m.convert("L") for m in request.mask_image]
    if request.mask_blur:
        from PIL import ImageFilter

        masks = [m.filter(ImageFilter.GaussianBlur(request.mask_blur)) for m in masks]
    return masks


OVERLAY = "outside the mask the init image's pixels, blended through the (blurred) mask, as A1111 pastes them"


def finish(request: GenerationRequest, images: list, output_type: str) -> tuple[list, dict]:
    """Inpainted images with the init image pasted back outside the mask (A1111's overlay; diffusers
    does it itself only with `padding_mask_crop`), and the record field that says so."""
    if request.mask_image is None or request.padding_mask_crop is not None or output_type != "pil":
        return images, {}
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor()
    pasted = [processor.apply_overlay(m, i, im) for m, i, im in zip(masks_of(request), request.image, images)]
    return [p.convert("RGB") for p in pasted], {"inpaint_overlay": OVERLAY}
