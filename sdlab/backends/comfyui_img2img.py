"""img2img and inpainting on ComfyUI: sdlab's txt2img graph turned into ComfyUI's own templates.

- img2img: LoadImage (the request's init image, uploaded with POST /upload/image) -> VAEEncode ->
  the KSampler's `latent_image`, with `denoise` = the request's `strength` (ComfyUI's name for it).
- inpainting: the init image uploaded with the mask as its alpha channel (transparent = repaint:
  ComfyUI's LoadImage gives MASK = 1 - alpha), LoadImage -> InpaintModelConditioning (pixels, mask,
  the prompt's two conditionings, the VAE) -> the KSampler's positive, negative and latent_image.
What ComfyUI's graph cannot express the way sdlab applies it (mask blur, "only masked" crop, hires
fix, refiner) is refused by name; so is a custom workflow (its own LoadImage takes `image=` as before).
"""

from __future__ import annotations

import io
from typing import Any

from ..request import GenerationRequest


def validate(request: GenerationRequest, *, default_workflow: bool) -> None:
    if request.image is None:
        refused = [n for n in ("hires_width", "refiner") if getattr(request, n) is not None]
    else:
        refused = [n for n in ("padding_mask_crop", "hires_width", "refiner") if getattr(request, n) is not None]
        if request.mask_blur:
            refused.append("mask_blur")
        if not default_workflow:
            raise ValueError(
                "`image`/`mask_image` as request fields use sdlab's own ComfyUI template; with a custom workflow, "
                "pass the image to its LoadImage as before (and `denoise=`)"
            )
        if any(not hasattr(i, "mode") for i in request.image):
            refused.append("image (latents)")
    if refused:
        names = ["hires_scale" if n == "hires_width" else n for n in refused]
        raise ValueError(
            f"{', '.join(f'`{n}`' for n in names)}: not supported by the ComfyUI backend yet; use the local backend"
        )


def upload_image(request: GenerationRequest, i: int):
    """The PIL image uploaded for image `i`: the init image, with the mask as alpha for inpainting."""
    image = request.image[i].convert("RGB")
    if request.mask_image is None:
        return image
    from PIL import ImageOps

    rgba = image.convert("RGBA")
    rgba.putalpha(ImageOps.invert(request.mask_image[i].convert("L")))  # transparent where ComfyUI repaints
    return rgba


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def apply(workflow: Any, request: GenerationRequest, image_name: str) -> None:
    """Turn sdlab's txt2img graph (`workflow`, already filled) into the img2img or inpainting one."""
    graph = workflow.graph
    sampler = workflow.find("KSampler")[0]
    checkpoint = workflow.find("CheckpointLoaderSimple")[0]
    for nid in workflow.find("EmptyLatentImage"):  # the size is the init image's
        del graph[nid]
    load, encode = "sdlab_load_image", "sdlab_encode"
    graph[load] = {"class_type": "LoadImage", "inputs": {"image": image_name}, "_meta": {"title": "Init image"}}
    inputs = graph[sampler]["inputs"]
    if request.mask_image is None:
        graph[encode] = {
            "class_type": "VAEEncode",
            "inputs": {"pixels": [load, 0], "vae": [checkpoint, 2]},
            "_meta": {"title": "VAE Encode"},
        }
        inputs["latent_image"] = [encode, 0]
    else:
        graph[encode] = {
            "class_type": "InpaintModelConditioning",
            "inputs": {
                "positive": inputs["positive"],
                "negative": inputs["negative"],
                "vae": [checkpoint, 2],
                "pixels": [load, 0],
                "mask": [load, 1],
                "noise_mask": True,
            },
            "_meta": {"title": "Inpaint conditioning"},
        }
        inputs["positive"], inputs["negative"], inputs["latent_image"] = [encode, 0], [encode, 1], [encode, 2]
    inputs["denoise"] = float(request.strength)
