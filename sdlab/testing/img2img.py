"""Tiny pipelines for image-to-image tests: an inpainting checkpoint (9-channel UNet) and an SDXL
refiner with its own components (text_encoder_2 only, aesthetic-score time ids), as the real
`stable-diffusion-xl-refiner-1.0` is built; random weights, CPU, float32."""

from __future__ import annotations

import os
from pathlib import Path


def tiny_inpainting_pipeline(family: str = "sd1", *, seed: int = 0):
    """An inpainting checkpoint: `tiny_pipeline(family)`'s components with a 9-channel UNet (latents,
    mask, masked-image latents), as StableDiffusionInpaintPipeline / StableDiffusionXLInpaintPipeline."""
    import diffusers
    from diffusers import UNet2DConditionModel

    from .pipelines import _seeded, tiny_components

    if family not in ("sd1", "sdxl"):
        raise ValueError(f"`family` must be 'sd1' or 'sdxl' for a tiny inpainting checkpoint, not {family!r}")
    components = tiny_components(family, seed=seed)
    config = dict(components["unet"].config)
    config["in_channels"] = 9
    with _seeded(seed + 5):
        components["unet"] = UNet2DConditionModel.from_config(config).eval()
    if family == "sd1":
        return diffusers.StableDiffusionInpaintPipeline(**components, requires_safety_checker=False)
    return diffusers.StableDiffusionXLInpaintPipeline(**components)


def tiny_refiner(*, seed: int = 10):
    """A tiny SDXL refiner (StableDiffusionXLImg2ImgPipeline): its own text_encoder_2 (width 64) and
    UNet (cross-attention 64, 5 time ids with the aesthetic score), no first text encoder."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    from .pipelines import _UNET, _seeded, tiny_components

    components = tiny_components("sdxl", seed=seed)
    with _seeded(seed + 6):
        unet = UNet2DConditionModel(
            **_UNET,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=5 * 8 + 64,  # 5 time ids (aesthetic score) + pooled
        ).eval()
    components.update(unet=unet, text_encoder=None, tokenizer=None)
    return StableDiffusionXLImg2ImgPipeline(
        **components, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False
    )


def save_tiny_refiner(directory: str | os.PathLike, *, seed: int = 10) -> Path:
    """`tiny_refiner()` saved as a diffusers folder (what `refiner=` takes)."""
    directory = Path(directory)
    tiny_refiner(seed=seed).save_pretrained(directory, safe_serialization=True)
    return directory
