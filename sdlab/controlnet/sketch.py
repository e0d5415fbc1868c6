"""From a drawing to an image: sketch preparation, generation through `sdlab.generate`, side by side.

The production guide ran Canny with fixed thresholds on the raw sketch at whatever size it came.
Here the sketch is loaded (transparency flattened onto white), fitted to the size the model makes
(aspect kept, padded with white), and turned into a control image either by Canny (thresholds as
parameters) or used directly as a scribble (white lines on black, as scribble ControlNets expect).

Downscaling a drawing needs care. In "scribble" mode the strokes are first thickened, so that a
thin line does not fade to grey and vanish. In "canny" mode the edges are found at the drawing's
own resolution and then shrunk and thinned to 1-pixel lines: Canny sees both sides of a pen
stroke, and shrinking merges them into one contour, as Canny of a filled shape (what Canny
ControlNets are trained on) gives; Canny after the downscale would give two close contours.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from ..presets import CONTROLNET_PRESETS, SHAPES_CONTROLNET_DIR, SHAPES_DIR
from ..request import check_size
from .annotators import LABEL_KEY, PARAMS_KEY, annotate
from .images import fit_image, images_of, load_image

SKETCH_MODES = ("canny", "scribble")


def _downscale_factor(image: Image.Image, width: int, height: int) -> float:
    return min(image.width / width, image.height / height)


def _thicken_lines(image: Image.Image, width: int, height: int) -> Image.Image:
    """Dark strokes widened by the downscale factor, so a 1-pixel line is still a line afterwards."""
    size = 2 * int(_downscale_factor(image, width, height) // 2) + 1  # odd, about the factor
    return image.filter(ImageFilter.MinFilter(size)) if size >= 3 else image


def _pad_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` padded with white (centred, at its own resolution) to the aspect of `width` x `height`."""
    target = (
        max(image.width, round(image.height * width / height)),
        max(image.height, round(image.width * height / width)),
    )
    if target == image.size:
        return image
    canvas = Image.new("RGB", target, (255, 255, 255))
    canvas.paste(image, ((target[0] - image.width) // 2, (target[1] - image.height) // 2))
    return canvas


def _shrink_edges(edges: Image.Image, width: int, height: int) -> Image.Image:
    """A large edge map at `width` x `height` as 1-pixel lines: widened, averaged down, thinned."""
    import numpy as np
    from skimage.morphology import skeletonize

    factor = _downscale_factor(edges, width, height)
    size = max(3, 2 * int(factor / 4) + 1)  # widened to about half a target pixel, so no line is averaged away
    small = edges.convert("L").filter(ImageFilter.MaxFilter(size)).resize((width, height), Image.Resampling.BOX)
    lines = skeletonize(np.asarray(small) > 40)
    out = Image.fromarray(np.where(lines, 255, 0).astype(np.uint8)).convert("RGB")
    out.info.update(edges.info)
    return out


def prepare_sketch(
    sketch: Any,
    *,
    width: int,
    height: int,
    mode: str = "canny",
    **params: Any,
) -> Image.Image:
    """A control image from a drawing (dark lines on light paper), at `width` x `height`.

    Args:
        sketch: a path, a PIL image or a uint8 array. Transparency is flattened onto white.
        width, height: the size of the images to generate (multiples of 8). The sketch is resized
            to fit with its aspect kept and padded with white.
        mode: "canny" (edges of the drawing as 1-pixel lines; `low_threshold`, `high_threshold`) or
            "scribble" (the drawing itself, inverted to white lines on black; `threshold`, `invert`).
        **params: the annotator's parameters.

    Returns:
        An RGB image with `info["sdlab_label"]` and `info["sdlab_params"]` (see `annotate`).
    """
    if mode not in SKETCH_MODES:
        raise ValueError(f"`mode` must be one of {SKETCH_MODES}, got {mode!r}")
    width, height = check_size(width, height, 8)
    image = load_image(sketch, name="sketch")
    if mode == "canny" and _downscale_factor(image, width, height) >= 2:
        edges = annotate(_pad_to_aspect(image, width, height), "canny", **params)
        return _shrink_edges(edges, width, height)
    if mode == "scribble":
        image = _thicken_lines(image, width, height)
    return annotate(fit_image(image, width=width, height=height), mode, **params)


def _controlnet_kinds(pipe: Any) -> list[str]:
    from ..loading import pipeline_info

    kinds = []
    for name in pipeline_info(pipe).controlnet or []:
        preset = CONTROLNET_PRESETS.get(str(name))
        if preset is not None:
            kinds.append(preset.kind)
    return kinds


def generate_from_sketch(
    pipe: Any,
    sketch: Any,
    prompt: str | Sequence[str],
    *,
    mode: str = "canny",
    sketch_params: dict[str, Any] | None = None,
    controlnet_conditioning_scale: float = 1.0,
    width: int | None = None,
    height: int | None = None,
    **generate_kwargs: Any,
):
    """Generate from a drawing with a ControlNet pipeline, through `sdlab.generate` (the one path);
    or, with `mode="img2img"` and a pipeline without ControlNet, from the drawing as init image
    (`strength=` as in `generate`, default 0.75).

    The control image is `prepare_sketch(sketch, width=, height=, mode=, **sketch_params)` at the
    size generated (default: the model's). Every other keyword goes to `sdlab.generate`
    (`seed`, `num_images`, `guidance_scale`, `control_guidance_end`, ...). The result's records
    carry the annotator and its parameters under "control"; the control image itself is
    `result.request.pipeline_kwargs["image"]`.
    """
    from ..backends import as_backend
    from ..generation import generate

    if "image" in generate_kwargs:
        raise ValueError("`image` is made from `sketch` here; to pass a control image yourself, use sdlab.generate")
    backend = as_backend(pipe)
    if mode == "img2img":  # the drawing itself as the init image (A1111's img2img from a sketch)
        return _sketch_img2img(pipe, backend, sketch, prompt, width=width, height=height, **generate_kwargs)
    if backend.num_controlnets == 0:
        raise ValueError(
            "`pipe` has no ControlNet: load one, e.g. sdlab.load_pipeline('sd15', controlnet='canny-sd15')"
        )
    if backend.num_controlnets > 1:
        raise ValueError(
            "`pipe` has several ControlNets; one sketch makes one control image: use sdlab.generate "
            "with image=[...] (one per ControlNet)"
        )
    for kind in _controlnet_kinds(pipe):
        if kind in SKETCH_MODES and kind != mode:
            warnings.warn(f"the pipeline's ControlNet expects {kind} images but mode={mode!r}", stacklevel=2)
    defaults = backend.defaults
    width = defaults.width if width is None else width
    height = defaults.height if height is None else height
    control = prepare_sketch(sketch, width=width, height=height, mode=mode, **(sketch_params or {}))
    result = generate(
        pipe,
        prompt,
        width=width,
        height=height,
        image=control,
        controlnet_conditioning_scale=controlnet_conditioning_scale,
        **generate_kwargs,
    )
    described = dict(control.info[PARAMS_KEY])
    if isinstance(sketch, (str, Path)):
        described["sketch"] = str(sketch)
    for record in result.records:
        record["control"] = dict(described)
    return result


def _sketch_img2img(pipe, backend, sketch, prompt, *, width, height, **generate_kwargs):
    """img2img from the drawing: flattened onto white, fitted to the size, denoised at `strength`."""
    from ..generation import generate
    from .images import load_image

    if backend.num_controlnets:
        raise ValueError(
            "mode='img2img' needs a pipeline without ControlNet (on a ControlNet pipeline `image` is the control "
            "image); load the model alone, e.g. sdlab.load_pipeline('shapes')"
        )
    defaults = backend.defaults
    width = defaults.width if width is None else width
    height = defaults.height if height is None else height
    image = load_image(sketch, name="sketch")
    if isinstance(sketch, (str, Path)):
        from ..inputs import FILE_KEY

        image.info[FILE_KEY] = Path(sketch).name
    result = generate(pipe, prompt, width=width, height=height, image=image, **generate_kwargs)
    for record in result.records:
        record["control"] = {"mode": "img2img"}
    return result


# ---------------------------------------------------------------- showing the steps


def _label_of(image: Image.Image | None, fallback: str) -> str:
    label = getattr(image, "info", {}).get(LABEL_KEY) if image is not None else None
    return label if isinstance(label, str) else fallback


def _to_cell(image: Image.Image | None, width: int, height: int) -> Image.Image | None:
    if image is None:
        return None
    image = load_image(image)
    if image.size == (width, height):
        return image
    upscale = image.width <= width and image.height <= height
    method = Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS
    return ImageOps.pad(image, (width, height), method=method, color=(255, 255, 255))


def _result_labels(result: Any, results: list, name: str) -> list[str]:
    """Labels of several results: the sweep's axis labels, the seeds of a GenerationResult, or numbers."""
    if len(results) == 1:
        return [name]
    cells, axes = getattr(result, "cells", None), getattr(result, "axes", None)
    if cells is not None and axes is not None and len(cells) == len(results):  # a SweepResult
        varying = [a for a in axes if len(a.values) > 1]
        return [", ".join(a.labels[c.coords[a.name]] for a in varying) or name for c in cells]
    seeds = [r.get("seed") for r in getattr(result, "records", [])]
    if len(seeds) == len(results):
        return [f"{name}, seed {s}" for s in seeds]
    return [_label_of(im, f"{name} {i + 1}") for i, im in enumerate(results)]


def side_by_side(
    source: Any,
    control: Any,
    result: Any,
    *,
    labels: Sequence[str] = ("source", "control", "result"),
    title: str | None = None,
    min_cell: int = 160,
) -> Image.Image:
    """One labelled image of the steps: the source (a sketch or photo), its control image and the result.

    `result` may be one image, a list of images (a sweep row), a `GenerationResult`, a
    `SweepResult` or anything with `.images`. `labels` has three entries (several results are then
    labelled by their sweep axes, their seeds, or numbered), or two plus one per result. `control` may be a list with one control image per result
    (e.g. `control_variants`): then controls and results are two rows under their labels. Cells
    take the result's size, small images are enlarged (pixels kept) to at least `min_cell`.
    """
    from ..grid import join_horizontally, labelled_grid

    results = list(images_of(result))
    if not results:
        raise ValueError("`result` holds no images")
    controls = list(control) if isinstance(control, (list, tuple)) else [control]
    if len(controls) not in (1, len(results)):
        raise ValueError(
            f"`control` has {len(controls)} images for {len(results)} results; give one, or one per result"
        )
    labels = [str(x) for x in labels]
    if len(labels) == 2 + len(results):
        result_labels = labels[2:]
    elif len(labels) == 3:
        result_labels = _result_labels(result, results, labels[2])
    else:
        raise ValueError(f"`labels` must have 3 entries, or 2 + one per result ({2 + len(results)}); got {len(labels)}")
    first = next((im for im in results if im is not None), None)
    if first is None:
        raise ValueError("`result` holds no images (every cell failed)")
    scale = max(1, math.ceil(min_cell / max(first.width, first.height)))
    w, h = first.width * scale, first.height * scale
    source_cell = _to_cell(source, w, h)
    control_cells = [_to_cell(c, w, h) for c in controls]
    result_cells = [_to_cell(r, w, h) for r in results]
    if len(controls) == 1:
        cells = [[source_cell, control_cells[0], *result_cells]]
        return labelled_grid(cells, x_labels=[labels[0], labels[1], *result_labels], title=title, margin=4)
    # one control per result: the source on the left; each control above its result
    if len(labels) == 2 + len(results):
        columns = result_labels
    else:
        columns = [_label_of(c, f"{labels[1]} {i + 1}") for i, c in enumerate(controls)]
    left = labelled_grid([[source_cell]], x_labels=[labels[0]], margin=4)
    right = labelled_grid([control_cells, result_cells], x_labels=columns, y_labels=[labels[1], labels[2]], margin=4)
    joined = join_horizontally([left, right], gap=8)
    return labelled_grid([[joined]], title=title) if title else joined


# ---------------------------------------------------------------- the default model and its ControlNet


def default_controlnet_model() -> tuple[str, str]:
    """(model, controlnet) to load by default: the bundled `shapes` model with its Canny ControlNet
    once both exist, else the `tiny` model with its `tiny` ControlNet (random weights, offline)."""
    if (SHAPES_DIR / "model_index.json").exists() and (SHAPES_CONTROLNET_DIR / "config.json").exists():
        return "shapes", "canny-shapes"
    return "tiny", "tiny"
