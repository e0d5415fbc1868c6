"""Control images: loading (alpha flattened), fitting to a model's size, and checking them.

ControlNets want the control image at the size of the output. diffusers resizes whatever it is
given to `width` x `height` (stretching it), and turns RGBA into RGB by dropping the alpha channel,
which makes the transparent background of a drawing black. So sdlab fits images itself (aspect
kept, padded) and refuses, before any model work, a control image that does not match.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

# Modes diffusers converts to RGB without losing anything.
CONTROL_MODES = ("RGB", "L", "1")
WHITE = (255, 255, 255)


def load_image(image: Any, *, name: str = "image", background=WHITE) -> Image.Image:
    """An RGB `PIL.Image` from a path, a PIL image or a uint8 array; transparency is flattened
    onto `background` (white: the paper a sketch is drawn on)."""
    import numpy as np

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`{name}`: no such image file: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except OSError as e:
            raise ValueError(f"`{name}`: {path} is not an image PIL can read ({e})") from e
    elif isinstance(image, np.ndarray):
        image = _from_array(image, name)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"`{name}` must be a path, a PIL image or a uint8 numpy array, got {type(image).__name__}")
    return flatten_alpha(image, background=background)


def _from_array(array, name: str) -> Image.Image:
    import numpy as np

    if array.dtype != np.uint8:
        raise ValueError(f"`{name}`: numpy arrays must be uint8 (0-255), got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    raise ValueError(f"`{name}`: expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def flatten_alpha(image: Image.Image, *, background=WHITE) -> Image.Image:
    """`image` as RGB, transparent pixels composited onto `background` (never turned black)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def fit_image(
    image: Image.Image,
    *,
    width: int,
    height: int,
    background=WHITE,
    resample: int = Image.Resampling.LANCZOS,
) -> Image.Image:
    """`image` resized to fit inside `width` x `height` with its aspect kept, centred and padded
    with `background`. `width` and `height` must be multiples of 8 (what SD models accept)."""
    for name, value in (
        ("width", width),
        ("height", height),
    ):  # what SD models accept (checked here: no request import)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 8 or value % 8:
            raise ValueError(f"`{name}` must be a positive multiple of 8 to fit an image to, got {value!r}")
    if not isinstance(image, Image.Image):
        raise ValueError(f"`image` must be a PIL image, got {type(image).__name__}")
    image = flatten_alpha(image, background=background)
    if image.size == (width, height):
        return image
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, resample)
    canvas = Image.new("RGB", (width, height), background)
    canvas.paste(resized, ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


# ---------------------------------------------------------------- checks before any model work


def _spatial_size(value: Any) -> tuple[int, int] | None:
    """(width, height) of a control image given as PIL, numpy (H, W, C) or torch (C, H, W)."""
    if isinstance(value, Image.Image):
        return value.size
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    module = type(value).__module__
    if module.startswith("torch"):
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) == 3:
            return int(shape[2]), int(shape[1])
    else:  # numpy: (H, W), (H, W, C) or (1, H, W, C)
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) in (2, 3):
            return int(shape[1]), int(shape[0])
    return None


def check_control_image(value: Any, *, width: int, height: int, name: str = "image") -> None:
    """A ValueError naming `name` unless `value` is one control image of `width` x `height`."""
    if isinstance(value, (str, Path)):
        raise ValueError(
            f"`{name}` is a path; pass the image itself: sdlab.controlnet.load_image(path), or "
            "sdlab.controlnet.prepare_sketch(path, width=..., height=...) for a drawing"
        )
    if isinstance(value, Image.Image) and value.mode not in CONTROL_MODES:
        hint = (
            "it has an alpha channel, which diffusers would drop (a transparent background turns black); "
            if value.mode in ("RGBA", "LA", "PA", "P")
            else ""
        )
        raise ValueError(
            f"`{name}` is a {value.mode} image; {hint}control images must be RGB, L or 1: "
            "convert it with sdlab.controlnet.load_image(image) (flattens transparency onto white)"
        )
    size = _spatial_size(value)
    if size is None:
        raise ValueError(
            f"`{name}` must be a PIL image, a numpy array (H, W, C) or a torch tensor (C, H, W), "
            f"got {type(value).__name__}{getattr(value, 'shape', '')}"
        )
    if size != (width, height):
        raise ValueError(
            f"`{name}` is {size[0]}x{size[1]} but the images are {width}x{height}; a ControlNet needs its control "
            f"image at the output size. Fit it (aspect kept, padded): "
            f"sdlab.controlnet.fit_image(image, width={width}, height={height}), or pass width={size[0]}, "
            f"height={size[1]} if the model accepts that size"
        )


def _check_number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    import math

    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"`{name}` must be between {low} and {high}, got {value}")
    return float(value)


def _per_controlnet(value: Any, name: str, count: int) -> list:
    """One entry per ControlNet: a list of `count` entries, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"`{name}` has {len(value)} entries for {count} ControlNets; give one per ControlNet")
        return list(value)
    return [value] * count


def check_control_kwargs(kwargs: dict, *, width: int, height: int, num_controlnets: int) -> None:
    """Validate the ControlNet keywords of a request (`image`, `controlnet_conditioning_scale`,
    `control_guidance_start`, `control_guidance_end`) before any model work."""
    if "image" not in kwargs or kwargs["image"] is None:
        raise ValueError("this is a ControlNet pipeline: pass the control image as `image=`")
    image = kwargs["image"]
    if num_controlnets == 1:
        if isinstance(image, (list, tuple)):
            if len(image) != 1:
                raise ValueError(
                    f"`image` is a list of {len(image)} images but the pipeline has one ControlNet; pass one control "
                    "image (it is used for every image of the batch)"
                )
            image = image[0]
        check_control_image(image, width=width, height=height)
    else:
        if not isinstance(image, (list, tuple)) or len(image) != num_controlnets:
            got = f"a list of {len(image)}" if isinstance(image, (list, tuple)) else "one image"
            raise ValueError(
                f"`image`: the pipeline has {num_controlnets} ControlNets, so pass a list of {num_controlnets} control "
                f"images (one per ControlNet, in order); got {got}"
            )
        for i, one in enumerate(image):
            check_control_image(one, width=width, height=height, name=f"image[{i}]")
    for value in _per_controlnet(
        kwargs.get("controlnet_conditioning_scale", 1.0), "controlnet_conditioning_scale", num_controlnets
    ):
        _check_number(value, "controlnet_conditioning_scale")
    starts = _per_controlnet(kwargs.get("control_guidance_start", 0.0), "control_guidance_start", num_controlnets)
    ends = _per_controlnet(kwargs.get("control_guidance_end", 1.0), "control_guidance_end", num_controlnets)
    for start, end in zip(starts, ends):
        start = _check_number(start, "control_guidance_start", 0.0, 1.0)
        end = _check_number(end, "control_guidance_end", 0.0, 1.0)
        if start >= end:
            raise ValueError(
                f"`control_guidance_start` ({start}) must be below `control_guidance_end` ({end}): the ControlNet acts "
                "on that fraction of the steps"
            )


def images_of(value: Any) -> Sequence[Image.Image]:
    """The images of a result-like value: a PIL image, a list, or anything with `.images`."""
    if isinstance(value, Image.Image):
        return [value]
    images = getattr(value, "images", None)
    if images is not None and not callable(images):
        return [im for im in images]
    if callable(images):  # SweepResult.images()
        return [im for im in images()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"expected an image, a list of images or a result with `.images`, got {type(value).__name__}")
