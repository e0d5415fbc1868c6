"""Image inputs and second passes of a request: img2img, inpainting, hires fix, SDXL refiner.

The fields live on `GenerationRequest` (diffusers' names: `image`, `mask_image`, `strength`,
`padding_mask_crop`; A1111's for the rest: `mask_blur`, `hires_*`, `refiner_switch`); this module
checks them, describes them for the record and the cache key, and names them in A1111's infotext.

- `image` / `mask_image`: one init image (and mask) per image of the request, fitted to the
  request's size as ControlNet images are (aspect kept, padded: white for an init image, black,
  i.e. "keep", for a mask). Identified by content (`identity.image_sha256`) in keys and records;
  the record also names the file an image was read from, when it was read from one.
- `strength`: A1111's "Denoising strength" of img2img (one per call, as diffusers takes it).
- hires fix: a txt2img pass at the request size, upscaled (`hires_upscaler`: latent or image),
  then an img2img pass at `hires_scale` (or `hires_width` x `hires_height`) with
  `hires_strength` over `hires_steps` steps (None: the request's steps, A1111's "Hires steps: 0").
- `refiner` (a preset, hub id or folder) takes over the last part of the denoising from
  `refiner_switch` (diffusers' `denoising_end`/`denoising_start`, A1111's "Refiner switch at").
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

# sdlab's names of hires upscalers -> A1111's (modules/shared_items.py latent modes; image resamplers)
HIRES_UPSCALERS = {
    "latent": "Latent",
    "latent-antialiased": "Latent (antialiased)",
    "latent-bicubic": "Latent (bicubic)",
    "latent-nearest": "Latent (nearest)",
    "latent-nearest-exact": "Latent (nearest-exact)",
    "lanczos": "Lanczos",
    "nearest": "Nearest",
}
_LATENT_MODES = {  # torch.nn.functional.interpolate (mode, antialias), as A1111's latent_upscale_modes
    "latent": ("bilinear", False),
    "latent-antialiased": ("bilinear", True),
    "latent-bicubic": ("bicubic", False),
    "latent-nearest": ("nearest", False),
    "latent-nearest-exact": ("nearest-exact", False),
}
DEFAULT_STRENGTH = 0.75  # A1111's img2img default
DEFAULT_HIRES_STRENGTH = 0.7  # A1111's hires default
DEFAULT_REFINER_SWITCH = 0.8  # A1111's default
# request fields this module owns, in the order to_dict writes them
FIELDS = (
    "image",
    "mask_image",
    "strength",
    "mask_blur",
    "padding_mask_crop",
    "hires_scale",
    "hires_width",
    "hires_height",
    "hires_upscaler",
    "hires_steps",
    "hires_strength",
    "refiner",
    "refiner_switch",
)
PER_IMAGE = ("image", "mask_image")
SHARED = tuple(f for f in FIELDS if f not in PER_IMAGE)
FILE_KEY = "sdlab_file"  # PIL `info` key: the file an input image was read from


# ------------------------------------------------------------------ checks


def _number(value: Any, name: str, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bound = f"above {low}" if low_open else f"from {low}"
        raise ValueError(f"`{name}` must be {bound} to {high}, got {value!r}")
    return float(value)


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"`{name}` must be an int of at least {low}, got {value!r}")
    return int(value)


def is_latents(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, torch.Tensor)


def _check_image_entry(value: Any, name: str, width: int, height: int) -> None:
    from PIL import Image

    if is_latents(value):  # latents handed from a first pass (hires fix): [C, h, w]
        if value.ndim != 3:
            raise ValueError(f"`{name}` latents must be [C, H, W], got shape {tuple(value.shape)}")
        return
    if not isinstance(value, Image.Image):
        raise ValueError(
            f"`{name}` of a GenerationRequest holds PIL images (GenerationRequest.create and generate load paths "
            f"and arrays), got {type(value).__name__}"
        )
    if value.size != (width, height):
        raise ValueError(
            f"`{name}` is {value.size[0]}x{value.size[1]} but the request is {width}x{height}; "
            f"GenerationRequest.create fits it (aspect kept, padded)"
        )


def check_request(request: Any) -> dict[str, Any]:
    """The normalised values of this module's fields of `request` (called by its constructor)."""
    n, width, height = len(request.prompt), request.width, request.height
    out: dict[str, Any] = {}
    for name in PER_IMAGE:
        value = getattr(request, name)
        if value is None:
            out[name] = None
            continue
        if not isinstance(value, tuple) or len(value) != n:
            raise ValueError(f"`{name}` of a GenerationRequest is a tuple with one entry per image ({n})")
        for v in value:
            _check_image_entry(v, name, width, height)
        out[name] = value
    image, mask = out["image"], out["mask_image"]
    if mask is not None and image is None:
        raise ValueError("`mask_image` needs an `image` to inpaint")
    if mask is not None and any(is_latents(m) for m in mask):
        raise ValueError("`mask_image` must hold PIL images")
    strength = request.strength
    if strength is not None:
        if image is None:
            raise ValueError("`strength` (A1111's Denoising strength) needs an init `image`")
        strength = _number(strength, "strength", 0.0, 1.0, low_open=True)
    elif image is not None:
        raise ValueError("a request with an init `image` holds its `strength` (GenerationRequest.create sets 0.75)")
    out["strength"] = strength
    out["mask_blur"] = _int(request.mask_blur or 0, "mask_blur", 0)
    if out["mask_blur"] and mask is None:
        raise ValueError("`mask_blur` blurs an inpainting `mask_image`; none is given")
    crop = request.padding_mask_crop
    if crop is not None:
        if mask is None:
            raise ValueError("`padding_mask_crop` (A1111's 'Only masked' padding) needs a `mask_image`")
        crop = _int(crop, "padding_mask_crop", 0)
    out["padding_mask_crop"] = crop
    out.update(_check_hires(request, image is not None))
    out.update(_check_refiner(request, image is not None, out["hires_width"] is not None))
    return out


def _check_hires(request: Any, img2img: bool) -> dict[str, Any]:
    scale, hw, hh = request.hires_scale, request.hires_width, request.hires_height
    others = {
        k: getattr(request, k) for k in ("hires_upscaler", "hires_steps", "hires_strength") if getattr(request, k)
    }
    if scale is None and hw is None and hh is None:
        if others:
            raise ValueError(f"{sorted(others)} set without `hires_scale` (or `hires_width`/`hires_height`)")
        return {k: None for k in ("hires_scale", "hires_width", "hires_height", "hires_upscaler")} | {
            "hires_steps": None,
            "hires_strength": None,
        }
    if img2img:
        raise ValueError("hires fix (`hires_scale`) is a txt2img option; an img2img request has an init `image`")
    if scale is not None:
        scale = _number(scale, "hires_scale", 1.0, 8.0)
        # A1111: int(width * scale); sdlab then keeps the size a multiple of 8 (the backend checks its own)
        size = int(request.width * scale) // 8 * 8, int(request.height * scale) // 8 * 8
        if (hw is not None or hh is not None) and (hw, hh) != size:
            raise ValueError("give `hires_scale` or `hires_width`/`hires_height`, not both")
        hw, hh = size
    else:
        hw = _int(hw if hw is not None else request.width, "hires_width", request.width)
        hh = _int(hh if hh is not None else request.height, "hires_height", request.height)
    upscaler = request.hires_upscaler or "latent"
    if upscaler not in HIRES_UPSCALERS:
        raise ValueError(f"`hires_upscaler` must be one of {', '.join(HIRES_UPSCALERS)}, got {upscaler!r}")
    steps = request.hires_steps
    steps = None if not steps else _int(steps, "hires_steps", 1)
    strength = request.hires_strength
    strength = (
        DEFAULT_HIRES_STRENGTH if strength is None else _number(strength, "hires_strength", 0.0, 1.0, low_open=True)
    )
    return {
        "hires_scale": scale,
        "hires_width": hw,
        "hires_height": hh,
        "hires_upscaler": upscaler,
        "hires_steps": steps,
        "hires_strength": strength,
    }


def _check_refiner(request: Any, img2img: bool, hires: bool) -> dict[str, Any]:
    refiner, switch = request.refiner, request.refiner_switch
    if refiner is None:
        if switch is not None:
            raise ValueError("`refiner_switch` set without a `refiner`")
        return {"refiner": None, "refiner_switch": None}
    if isinstance(refiner, Path):
        refiner = str(refiner)
    if not isinstance(refiner, str) or not refiner.strip():
        raise ValueError(f"`refiner` must be a preset name, hub id or folder of an SDXL refiner, got {refiner!r}")
    if img2img or hires:
        raise ValueError("`refiner` is a txt2img option here; it cannot be combined with an init `image` or hires fix")
    switch = DEFAULT_REFINER_SWITCH if switch is None else _number(switch, "refiner_switch", 0.0, 1.0, low_open=True)
    if switch >= 1.0:
        raise ValueError("`refiner_switch` must be below 1 (at 1 the refiner would run no step)")
    return {"refiner": refiner, "refiner_switch": switch}


# ------------------------------------------------------------------ building (GenerationRequest.create)


def load_input(value: Any, name: str, *, width: int, height: int, mask: bool = False):
    """An init image or mask as the request holds it: read from a path or array, alpha flattened,
    fitted to `width` x `height` (aspect kept; padding white for an image, black for a mask)."""
    from PIL import Image

    from .controlnet.images import fit_image, load_image

    if is_latents(value):
        return value
    file = (
        Path(value).name
        if isinstance(value, (str, Path))
        else (value.info.get(FILE_KEY) if isinstance(value, Image.Image) else None)
    )
    if isinstance(value, Image.Image) and file is None and getattr(value, "filename", None):
        file = Path(value.filename).name
    background = (0, 0, 0) if mask else (255, 255, 255)
    image = load_image(value, name=name, background=(255, 255, 255))
    if mask:
        image = image.convert("L").convert("RGB")
    if width % 8 or height % 8:
        raise ValueError(f"`{name}` cannot be fitted to {width}x{height}: width and height must be multiples of 8")
    fitted = fit_image(image, width=width, height=height, background=background)
    if fitted is image:
        fitted = image.copy()
    if file:
        fitted.info[FILE_KEY] = file
    return fitted


def resolve_images(value: Any, name: str, *, count: int, per_prompt: int, width: int, height: int, mask: bool):
    """One fitted input image per image of the request: one for all, one per prompt, or one per image."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        values = list(value)
        if len(values) == count:
            pass
        elif per_prompt and len(values) * per_prompt == count:
            values = [v for v in values for _ in range(per_prompt)]
        else:
            raise ValueError(f"`{name}` has {len(values)} entries for {count} images; give one, or one per image")
    else:
        values = [value] * count
    loaded: dict[int, Any] = {}
    out = []
    for v in values:
        if id(v) not in loaded:
            loaded[id(v)] = load_input(v, name, width=width, height=height, mask=mask)
        out.append(loaded[id(v)])
    return tuple(out)


def fit_fields(fields: dict[str, Any], *, count: int, width: int, height: int, per_prompt: int = 0) -> dict[str, Any]:
    """`fields` with its init images and masks loaded and fitted, and the default strength."""
    fields = dict(fields)
    for name, is_mask in (("image", False), ("mask_image", True)):
        if fields.get(name) is not None:
            fields[name] = resolve_images(
                fields[name], name, count=count, per_prompt=per_prompt, width=width, height=height, mask=is_mask
            )
    if fields.get("image") is not None and fields.get("strength") is None:
        fields["strength"] = DEFAULT_STRENGTH
    return fields


def take_fields(kwargs: dict[str, Any], *, local: bool = True, controlnet: bool = False) -> dict[str, Any]:
    """This module's fields taken out of `generate`'s pipeline keywords, for the local backend. On a
    ControlNet pipeline `image` stays (it is the control image there); remote backends keep all of
    them as their own inputs (a ComfyUI workflow's LoadImage and `denoise`, a Replicate model's
    `image` and `prompt_strength`), as before."""
    out = {}
    if not local:
        return out
    for name in FIELDS:
        if name == "image" and controlnet:
            continue
        if name in kwargs:
            out[name] = kwargs.pop(name)
    return out


# ------------------------------------------------------------------ describing


def describe_image(value: Any) -> dict[str, Any]:
    """An input image by content: kind, size and SHA-256 (no file name: the key is content only)."""
    from . import identity

    if is_latents(value):
        return {"type": "latents", "shape": list(value.shape), "sha256": identity.image_sha256(value)}
    return {"type": "image", "mode": value.mode, "size": list(value.size), "sha256": identity.image_sha256(value)}


def describe_refiner(refiner: str) -> dict[str, Any]:
    """The refiner by name and, when it is a local folder or file, by content."""
    from . import identity

    out: dict[str, Any] = {"name": refiner}
    path = Path(refiner).expanduser()
    if path.exists():
        out.update(identity.path_identity(path))
    elif "/" in refiner and not refiner.startswith((".", "/")):
        commit = identity.hub_commit(refiner)
        if commit:
            out["commit"] = commit
    return out


def to_dict(request: Any) -> dict[str, Any]:
    """The fields that are set, JSON-able (a request without them keeps its old key)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(request, name)
        if value is None or (name == "mask_blur" and not value):
            continue
        if name in PER_IMAGE:
            out[name] = [describe_image(v) for v in value]
        elif name == "refiner":
            out[name] = describe_refiner(value)
        else:
            out[name] = value
    return out


def from_dict(data: dict[str, Any]) -> dict[str, Any]:
    """This module's fields from `to_dict`'s form; images cannot be rebuilt from their hash."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        if data.get(name) is None:
            continue
        if name in PER_IMAGE:
            raise ValueError(f"the request's `{name}` is an image described by its hash; pass it again")
        value = data[name]
        out[name] = value.get("name") if name == "refiner" and isinstance(value, dict) else value
    return out


def shared_dict(request: Any) -> dict[str, Any]:
    """The fields one pipeline call shares (everything but the per-image images; with
    `padding_mask_crop` the images too: diffusers crops one image and mask per call)."""
    data = to_dict(request)
    if request.padding_mask_crop is not None:
        return data
    return {k: v for k, v in data.items() if k not in PER_IMAGE}


def image_params(request: Any, i: int) -> dict[str, Any]:
    """Image `i`'s fields for its record: inputs by hash (and the file they came from, if known)."""
    out = {}
    for name in PER_IMAGE:
        value = getattr(request, name)
        if value is None:
            continue
        described = describe_image(value[i])
        file = getattr(value[i], "info", {}).get(FILE_KEY) if not is_latents(value[i]) else None
        if file:
            described["file"] = file
        out[name] = described
    for name, value in to_dict(request).items():
        if name not in PER_IMAGE:
            out[name] = value
    return out


def needs_guidance_groups(request: Any) -> bool:
    """Whether one call can take only one guidance scale (the refiner pass runs its own CFG)."""
    return request.refiner is not None


# ------------------------------------------------------------------ A1111's infotext


def infotext_params(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A1111 v1.10's labels for this module's record fields, in A1111's order."""
    params: list[tuple[str, str]] = []
    strength = record.get("strength") if record.get("image") else record.get("hires_strength")
    if strength is not None and (record.get("image") or record.get("hires_width")):
        params.append(("Denoising strength", repr(float(strength))))
    if record.get("mask_image"):
        if record.get("mask_blur"):
            params.append(("Mask blur", str(record["mask_blur"])))
        if record.get("padding_mask_crop") is not None:
            params.append(("Inpaint area", "Only masked"))
            params.append(("Masked area padding", str(record["padding_mask_crop"])))
    if record.get("hires_width"):
        if record.get("hires_scale") is not None:
            params.append(("Hires upscale", _number_text(record["hires_scale"])))
        else:
            params.append(("Hires resize", f"{record['hires_width']}x{record['hires_height']}"))
        if record.get("hires_steps"):
            params.append(("Hires steps", str(record["hires_steps"])))
        params.append(("Hires upscaler", HIRES_UPSCALERS[record.get("hires_upscaler") or "latent"]))
    refiner = record.get("refiner")
    if refiner:
        name = refiner.get("name") if isinstance(refiner, dict) else str(refiner)
        sha = refiner.get("sha256") if isinstance(refiner, dict) else None
        label = Path(name).name or name
        params.append(("Refiner", f"{label} [{sha[:10]}]" if sha else label))
        params.append(("Refiner switch at", repr(float(record["refiner_switch"]))))
    return params


def _number_text(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def params_from_a1111(raw: dict[str, Any]) -> dict[str, Any]:
    """sdlab's fields from A1111's labels (removed from `raw`); img2img's init image and mask are not
    in A1111's text: `image` then says so, for `regenerate` to ask for it."""
    out: dict[str, Any] = {}
    hires = "Hires upscale" in raw or "Hires resize" in raw
    if hires:
        if "Hires upscale" in raw:
            out["hires_scale"] = float(raw.pop("Hires upscale"))
        else:
            w, _, h = str(raw.pop("Hires resize")).partition("x")
            out["hires_width"], out["hires_height"] = int(w), int(h)
        if "Hires steps" in raw:
            out["hires_steps"] = int(raw.pop("Hires steps")) or None
        if "Hires upscaler" in raw:
            label = raw.pop("Hires upscaler")
            by_label = {v: k for k, v in HIRES_UPSCALERS.items()}
            if label in by_label:
                out["hires_upscaler"] = by_label[label]
            else:
                raw["Hires upscaler"] = label  # an ESRGAN-like upscaler sdlab does not have: left unapplied
        if "Denoising strength" in raw:
            out["hires_strength"] = float(raw.pop("Denoising strength"))
    elif "Denoising strength" in raw:  # img2img: A1111's text does not carry the init image
        out["strength"] = float(raw.pop("Denoising strength"))
        out["image"] = {"type": "image", "missing": "A1111 img2img text does not carry its init image"}
        if "Mask blur" in raw:
            out["mask_blur"] = int(raw.pop("Mask blur"))
    if "Refiner switch at" in raw:
        out["refiner_switch"] = float(raw.pop("Refiner switch at"))
        if "Refiner" in raw:
            out["refiner_a1111"] = raw.pop("Refiner")
    return out


def refuse_remote(request: Any, backend: str) -> None:
    """Remote backends refuse, by name, the image inputs and passes they do not apply (so no record
    can claim an init image, a mask, hires fix or a refiner that the server never saw)."""
    set_fields = [
        name
        for name in ("image", "mask_image", "strength", "hires_width", "refiner")
        if getattr(request, name) is not None
    ]
    if set_fields:
        names = ["hires_scale" if f == "hires_width" else f for f in set_fields]
        raise ValueError(
            f"{', '.join(f'`{n}`' for n in names)}: img2img, inpainting, hires fix and the refiner are not supported "
            f"by the {backend} backend yet; use the local backend"
        )
