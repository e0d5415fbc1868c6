"""Named models with their sensible defaults (size, steps, guidance, scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .request import Defaults

MODELS_DIR = Path(__file__).parent / "models"
SHAPES_DIR = MODELS_DIR / "shapes"
SHAPES_CONTROLNET_DIR = MODELS_DIR / "shapes-controlnet"
SHAPES_LORA_DIR = MODELS_DIR / "shapes-outlined-lora"  # the `outlined` style LoRA and its epochs

FAMILIES = ("sd1", "sd2", "sdxl", "flux")


@dataclass(frozen=True)
class Preset:
    """A model by name: where it comes from, its family and its defaults."""

    name: str
    source: str  # a hub id, a path, or "builtin:<name>" for models built offline
    family: str
    defaults: Defaults
    description: str = ""
    load_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlNetPreset:
    name: str
    source: str
    family: str
    kind: str  # the annotator it expects: "canny", "scribble", ...
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "sd15",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "sd1",
            Defaults(512, 512, 25, 7.5, scheduler="DPM++ 2M Karras"),
            "Stable Diffusion 1.5 (512x512)",
        ),
        Preset(
            "sd21",
            "stabilityai/stable-diffusion-2-1",
            "sd2",
            Defaults(768, 768, 25, 7.0, scheduler="DPM++ 2M Karras"),
            "Stable Diffusion 2.1 (768x768, v-prediction)",
        ),
        Preset(
            "sdxl",
            "stabilityai/stable-diffusion-xl-base-1.0",
            "sdxl",
            Defaults(1024, 1024, 30, 7.0, scheduler="DPM++ 2M Karras"),
            "Stable Diffusion XL base 1.0 (1024x1024)",
        ),
        Preset(
            "sdxl-refiner",
            "stabilityai/stable-diffusion-xl-refiner-1.0",
            "sdxl",
            Defaults(1024, 1024, 30, 7.0, scheduler="DPM++ 2M Karras"),
            "Stable Diffusion XL refiner 1.0: an img2img model, for `refiner=` after an SDXL base",
        ),
        Preset(
            "sd-turbo",
            "stabilityai/sd-turbo",
            "sd2",
            Defaults(512, 512, 1, 0.0, scheduler="Euler a"),
            "SD-Turbo: 1-4 steps, no classifier-free guidance",
        ),
        Preset(
            "sdxl-turbo",
            "stabilityai/sdxl-turbo",
            "sdxl",
            Defaults(512, 512, 1, 0.0, scheduler="Euler a"),
            "SDXL-Turbo: 1-4 steps at 512x512, no classifier-free guidance",
        ),
        Preset(
            "flux-schnell",
            "black-forest-labs/FLUX.1-schnell",
            "flux",
            Defaults(1024, 1024, 4, 0.0),
            "FLUX.1 [schnell]: 1-4 steps, guidance-distilled (guidance ignored)",
            {"max_sequence_length": 256},
        ),
        Preset(
            "flux-dev",
            "black-forest-labs/FLUX.1-dev",
            "flux",
            Defaults(1024, 1024, 28, 3.5),
            "FLUX.1 [dev]: embedded guidance around 3.5",
        ),
        Preset(
            "tiny",
            "builtin:tiny",
            "sd1",
            Defaults(64, 64, 10, 5.0),
            "random weights, built offline: for tests and smoke runs",
        ),
        Preset(
            "shapes",
            str(SHAPES_DIR),
            "sd1",
            Defaults(64, 64, 20, 5.0, scheduler="DPM++ 2M"),
            "sdlab's bundled model of coloured shapes, trained by the project (offline)",
        ),
    ]
}

CONTROLNET_PRESETS: dict[str, ControlNetPreset] = {
    p.name: p
    for p in [
        ControlNetPreset("canny-sd15", "lllyasviel/sd-controlnet-canny", "sd1", "canny", "Canny edges for SD 1.5"),
        ControlNetPreset(
            "scribble-sd15", "lllyasviel/sd-controlnet-scribble", "sd1", "scribble", "Scribbles for SD 1.5"
        ),
        ControlNetPreset("depth-sd15", "lllyasviel/sd-controlnet-depth", "sd1", "depth", "MiDaS depth for SD 1.5"),
        ControlNetPreset(
            "openpose-sd15", "lllyasviel/sd-controlnet-openpose", "sd1", "openpose", "OpenPose for SD 1.5"
        ),
        ControlNetPreset(
            "softedge-sd15",
            "lllyasviel/control_v11p_sd15_softedge",
            "sd1",
            "hed",
            "Soft edges (HED/PiDiNet) for SD 1.5",
        ),
        ControlNetPreset(
            "lineart-sd15", "lllyasviel/control_v11p_sd15_lineart", "sd1", "lineart", "Line art for SD 1.5"
        ),
        ControlNetPreset(
            "shuffle-sd15", "lllyasviel/control_v11e_sd15_shuffle", "sd1", "shuffle", "Content shuffle for SD 1.5"
        ),
        ControlNetPreset("canny-sdxl", "diffusers/controlnet-canny-sdxl-1.0", "sdxl", "canny", "Canny edges for SDXL"),
        ControlNetPreset("depth-sdxl", "diffusers/controlnet-depth-sdxl-1.0", "sdxl", "depth", "MiDaS depth for SDXL"),
        ControlNetPreset(
            "scribble-sdxl", "xinsir/controlnet-scribble-sdxl-1.0", "sdxl", "scribble", "Scribbles for SDXL"
        ),
        ControlNetPreset(
            "canny-shapes", str(SHAPES_CONTROLNET_DIR), "sd1", "canny", "Canny edges for the bundled shapes model"
        ),
        ControlNetPreset(
            "tiny", "builtin:tiny", "sd1", "canny", "random weights for the `tiny` model: tests and smoke runs"
        ),
    ]
}


def default_model() -> str:
    """The embedded default: the bundled `shapes` model once its weights exist, else `tiny`."""
    return "shapes" if (SHAPES_DIR / "model_index.json").exists() else "tiny"


def family_defaults(family: str, native_size: int | None = None, *, guidance_distilled: bool = False) -> Defaults:
    """Defaults for a model that is not a preset, from its family and native size."""
    if family == "flux":
        size = native_size or 1024
        return Defaults(size, size, 4 if guidance_distilled else 28, 0.0 if guidance_distilled else 3.5)
    if family == "sdxl":
        size = native_size or 1024
        return Defaults(size, size, 30, 7.0, scheduler=None)
    size = native_size or (768 if family == "sd2" else 512)
    return Defaults(size, size, 25, 7.5, scheduler=None)
