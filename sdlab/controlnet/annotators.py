"""Annotators: turn any picture into a control image (edges, scribbles, depth, pose, ...).

Annotators without weights run right away: `canny` (OpenCV's Canny, as controlnet-aux's
CannyDetector, but at the image's own size), `scribble` (inverted and thresholded: white lines on
black, as scribble ControlNets expect), `lineart_standard` and `shuffle` (controlnet-aux).
The others are controlnet-aux detectors whose weights come from the Hugging Face hub
(`lllyasviel/Annotators`) or a local folder; when they are missing, a `ModelLoadError` says which
files to download and how.

Every control image comes back as an RGB `PIL.Image` of the input's size, with
`info["sdlab_label"]` ("canny 50/150") and `info["sdlab_params"]` ({"annotator": "canny", ...}),
so that a list of them can be a sweep axis (`image=[...]`) with readable labels.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import MissingDependencyError, ModelLoadError
from .images import fit_image, load_image

LABEL_KEY = "sdlab_label"
PARAMS_KEY = "sdlab_params"
ANNOTATOR_WEIGHTS = "lllyasviel/Annotators"
DETECTOR_CACHE_SIZE = 4
INTEGER_PARAMS = {"seed", "detect_resolution"}


@dataclass(frozen=True)
class Annotator:
    """One way of making a control image. `parameters` maps each parameter to its default."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None  # the hub repo of its weights; None: it needs none
    files: tuple[str, ...] = ()  # the weight files it reads from that repo (or a local folder)
    detector: str | None = None  # the controlnet_aux class

    @property
    def needs_weights(self) -> bool:
        return self.weights is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "needs_weights": self.needs_weights,
            "weights": self.weights,
            "files": list(self.files),
            "parameters": dict(self.parameters),
            "description": self.description,
        }


def _weighted(name, detector, files, description, **parameters) -> Annotator:
    return Annotator(
        name, description, {**parameters, "detect_resolution": 512}, ANNOTATOR_WEIGHTS, tuple(files), detector
    )


ANNOTATORS: dict[str, Annotator] = {
    a.name: a
    for a in [
        Annotator("canny", "Canny edges (OpenCV): white edges on black", {"low_threshold": 100, "high_threshold": 200}),
        Annotator(
            "scribble",
            "a drawing used directly: inverted and thresholded to white lines on black",
            {"threshold": 128, "invert": True},
        ),
        Annotator(
            "lineart_standard",
            "line art by difference of Gaussians (controlnet-aux), no weights",
            {"gaussian_sigma": 6.0, "intensity_threshold": 8},
            detector="LineartStandardDetector",
        ),
        Annotator(
            "shuffle",
            "content shuffle (controlnet-aux): the image's colours, randomly warped",
            {"seed": 0},
            detector="ContentShuffleDetector",
        ),
        _weighted("hed", "HEDdetector", ["ControlNetHED.pth"], "soft edges (HED)", safe=False, scribble=False),
        _weighted(
            "pidinet", "PidiNetDetector", ["table5_pidinet.pth"], "soft edges (PiDiNet)", safe=False, scribble=False
        ),
        _weighted("depth_midas", "MidasDetector", ["dpt_hybrid-midas-501f0c75.pt"], "MiDaS depth", bg_th=0.1),
        _weighted(
            "openpose",
            "OpenposeDetector",
            ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"],
            "OpenPose skeletons",
            include_body=True,
            include_hand=False,
            include_face=False,
        ),
        _weighted("mlsd", "MLSDdetector", ["mlsd_large_512_fp32.pth"], "straight lines (M-LSD)", thr_v=0.1, thr_d=0.1),
        _weighted(
            "lineart",
            "LineartDetector",
            ["sk_model.pth", "sk_model2.pth"],
            "line art (realistic or coarse)",
            coarse=False,
        ),
        _weighted("lineart_anime", "LineartAnimeDetector", ["netG.pth"], "line art of anime drawings"),
        _weighted("normal_bae", "NormalBaeDetector", ["scannet.pt"], "surface normals (BAE)"),
    ]
}
# The kinds of sdlab's ControlNet presets, where they differ from an annotator's name.
ALIASES = {"depth": "depth_midas", "softedge": "hed", "pose": "openpose"}


def list_annotators() -> list[Annotator]:
    """Every annotator: name, whether it needs weights (and which), its parameters and defaults."""
    return list(ANNOTATORS.values())


def get_annotator(kind: str) -> Annotator:
    if not isinstance(kind, str):
        raise ValueError(f"`kind` must be an annotator name, got {kind!r}")
    name = ALIASES.get(kind, kind)
    if name not in ANNOTATORS:
        raise ValueError(f"`kind`={kind!r} is not an annotator; choose one of: {', '.join(ANNOTATORS)}")
    return ANNOTATORS[name]


# ---------------------------------------------------------------- parameters and labels


def _check_param(annotator: Annotator, name: str, value: Any) -> Any:
    default = annotator.parameters[name]
    where = f"`{name}` (annotator {annotator.name!r})"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be True or False, got {value!r}")
        return value
    if isinstance(default, numbers.Real):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{where} must be a number >= 0, got {value!r}")
        if name in INTEGER_PARAMS and not isinstance(value, numbers.Integral):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    return value


def resolve_params(annotator: Annotator, params: Mapping[str, Any]) -> dict[str, Any]:
    """The annotator's parameters with `params` applied, each checked; a ValueError names a bad one."""
    unknown = sorted(set(params) - set(annotator.parameters))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in annotator.parameters.items()) or "no parameters"
        raise ValueError(f"unknown parameter(s) {unknown} for annotator {annotator.name!r}; it takes: {accepted}")
    merged = dict(annotator.parameters)
    merged.update({k: _check_param(annotator, k, v) for k, v in params.items()})
    if annotator.name == "canny" and merged["low_threshold"] > merged["high_threshold"]:
        raise ValueError(
            f"`low_threshold` ({merged['low_threshold']}) must not exceed `high_threshold` ({merged['high_threshold']})"
        )
    if annotator.name == "scribble" and merged["threshold"] > 255:
        raise ValueError(f"`threshold` (annotator 'scribble') must be between 0 and 255, got {merged['threshold']}")
    if annotator.name == "lineart_standard" and merged["gaussian_sigma"] <= 0:
        raise ValueError(f"`gaussian_sigma` (annotator 'lineart_standard') must be > 0, got {merged['gaussian_sigma']}")
    if "detect_resolution" in merged and merged["detect_resolution"] < 64:
        raise ValueError(f"`detect_resolution` must be at least 64, got {merged['detect_resolution']}")
    return merged


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def make_label(annotator: Annotator, params: Mapping[str, Any]) -> str:
    """A short grid label: "canny 50/150"; otherwise the name and the parameters off their default."""
    if annotator.name == "canny":
        return f"canny {_fmt(params['low_threshold'])}/{_fmt(params['high_threshold'])}"
    changed = [f"{k}={_fmt(v)}" for k, v in params.items() if annotator.parameters.get(k) != v]
    return " ".join([annotator.name, *changed])


def _labelled(array, annotator: Annotator, params: Mapping[str, Any]) -> Image.Image:
    import numpy as np

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    image = Image.fromarray(array.astype(np.uint8)).convert("RGB")
    image.info[LABEL_KEY] = make_label(annotator, params)
    image.info[PARAMS_KEY] = {"annotator": annotator.name, **params}
    return image


# ---------------------------------------------------------------- the annotators without weights


def _canny(rgb, p):
    import cv2

    # controlnet-aux's CannyDetector runs exactly this, after resizing to multiples of 64
    return cv2.Canny(rgb, float(p["low_threshold"]), float(p["high_threshold"]))


def _scribble(rgb, p):
    import numpy as np

    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    lines = gray < p["threshold"] if p["invert"] else gray >= p["threshold"]
    return np.where(lines, 255, 0).astype(np.uint8)


def _controlnet_aux():
    try:
        import warnings

        with warnings.catch_warnings():  # it warns about optional packages (mediapipe) it does not need here
            warnings.simplefilter("ignore")
            import controlnet_aux
    except ImportError as e:  # pragma: no cover - a core dependency
        raise MissingDependencyError("controlnet-aux", "this annotator") from e
    return controlnet_aux


def _lineart_standard(rgb, p):
    detector = _controlnet_aux().LineartStandardDetector()
    h, w = rgb.shape[:2]
    return detector(
        rgb,
        guassian_sigma=float(p["gaussian_sigma"]),
        intensity_threshold=p["intensity_threshold"],
        detect_resolution=min(h, w),
        output_type="np",
    )


def _shuffle(rgb, p):
    import numpy as np

    detector = _controlnet_aux().ContentShuffleDetector()
    h, w = rgb.shape[:2]
    state = np.random.get_state()  # controlnet-aux draws from numpy's global generator
    try:
        np.random.seed(int(p["seed"]) % 2**32)
        return detector(rgb, detect_resolution=min(h, w), image_resolution=min(h, w), output_type="np")
    finally:
        np.random.set_state(state)


_RUN: dict[str, Callable] = {
    "canny": _canny,
    "scribble": _scribble,
    "lineart_standard": _lineart_standard,
    "shuffle": _shuffle,
}


# ---------------------------------------------------------------- the annotators with weights

_DETECTORS: OrderedDict[tuple, Any] = OrderedDict()


def _download_hint(annotator: Annotator, repo: str) -> str:
    files = " ".join(annotator.files)
    return (
        f"Download them once where the hub is reachable: `hf download {repo} {files}` (they go to the Hugging Face "
        f"cache, HF_HOME; then they load offline), or put {', '.join(annotator.files)} in a folder and pass "
        f"annotate(image, {annotator.name!r}, weights='/path/to/that/folder')"
    )


def weights_folder(annotator: Annotator, weights: str | Path | None = None, *, cache_dir=None) -> Path:
    """The folder holding `annotator`'s weight files: a local folder, or the hub snapshot of a
    repo (from the HF cache; downloaded unless offline). Raises `ModelLoadError` saying what to get."""
    if not annotator.needs_weights:
        raise ValueError(f"annotator {annotator.name!r} needs no weights")
    location = str(weights) if weights is not None else annotator.weights
    path = Path(location).expanduser()
    if path.is_dir():
        missing = [f for f in annotator.files if not (path / f).is_file()]
        if missing:
            raise ModelLoadError(
                f"annotator {annotator.name!r}: the folder {path} lacks {', '.join(missing)}. "
                + _download_hint(annotator, annotator.weights)
            )
        return path
    if location.count("/") != 1 or location.startswith((".", "/", "~")):
        raise ValueError(f"`weights`={location!r} is neither an existing folder nor a hub repo id (org/name)")
    from huggingface_hub import hf_hub_download

    try:
        paths = [Path(hf_hub_download(location, f, cache_dir=cache_dir)) for f in annotator.files]
    except Exception as e:  # offline, not cached, no such repo or file
        raise ModelLoadError(
            f"annotator {annotator.name!r} needs the weights {', '.join(annotator.files)} from the Hugging Face repo "
            f"{location!r}, which could not be fetched nor found in the cache ({type(e).__name__}). "
            + _download_hint(annotator, location)
        ) from e
    return paths[0].parent


def load_detector(annotator: Annotator, weights: str | Path | None = None, *, device: str = "cpu", cache_dir=None):
    """The controlnet-aux detector of `annotator`, its weights loaded (kept in a small cache)."""
    folder = weights_folder(annotator, weights, cache_dir=cache_dir)
    key = (annotator.name, str(folder), str(device))
    if key in _DETECTORS:
        _DETECTORS.move_to_end(key)
        return _DETECTORS[key]
    cls = getattr(_controlnet_aux(), annotator.detector)
    try:
        detector = cls.from_pretrained(str(folder))
        if hasattr(detector, "to"):
            detector = detector.to(device) or detector
    except Exception as e:
        raise ModelLoadError(
            f"could not load the {annotator.name!r} annotator from {folder}: {type(e).__name__}: {e}"
        ) from e
    _DETECTORS[key] = detector
    while len(_DETECTORS) > DETECTOR_CACHE_SIZE:
        _DETECTORS.popitem(last=False)
    return detector


def _run_detector(detector, rgb, params: Mapping[str, Any]):
    import inspect

    h, w = rgb.shape[:2]
    kwargs = {k: v for k, v in params.items()}
    accepted = set(inspect.signature(detector.__call__).parameters)
    if "image_resolution" in accepted:
        kwargs["image_resolution"] = min(h, w)
    return detector(rgb, output_type="np", **kwargs)


# ---------------------------------------------------------------- the public entry points


def annotate(
    image: Any,
    kind: str = "canny",
    *,
    weights: str | Path | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    **params: Any,
) -> Image.Image:
    """A control image from `image` (a path, PIL image or uint8 array), of the same size.

    Args:
        kind: an annotator name (`list_annotators()`), e.g. "canny", "scribble", "hed", "depth_midas".
        weights: for annotators that need weights, a local folder holding their files or a hub repo
            id (default `lllyasviel/Annotators`, read from the Hugging Face cache when offline).
        device: where a weighted annotator runs.
        cache_dir: the Hugging Face cache to read hub weights from (default: the HF cache, HF_HOME).
        **params: the annotator's parameters, e.g. `low_threshold=50, high_threshold=150` for Canny.

    Returns:
        An RGB `PIL.Image` with `info["sdlab_label"]` and `info["sdlab_params"]` set.
    """
    import numpy as np

    annotator = get_annotator(kind)
    resolved = resolve_params(annotator, params)
    if weights is not None and not annotator.needs_weights:
        raise ValueError(f"`weights`: annotator {annotator.name!r} needs no weights")
    source = load_image(image)
    rgb = np.asarray(source, dtype=np.uint8)
    if annotator.needs_weights:
        out = _run_detector(load_detector(annotator, weights, device=device, cache_dir=cache_dir), rgb, resolved)
    else:
        out = _RUN[annotator.name](rgb, resolved)
    control = _labelled(out, annotator, resolved)
    if control.size != source.size:  # detectors work at multiples of 64; back to the input's size
        info = dict(control.info)
        control = control.resize(source.size, Image.Resampling.BILINEAR)
        control.info.update(info)
    return control


def control_variants(
    source: Any,
    kind: str = "canny",
    *,
    width: int | None = None,
    height: int | None = None,
    combine: str = "product",
    weights: str | Path | None = None,
    **param_lists: Any,
) -> list[Image.Image]:
    """Control images of `source` over lists of annotator parameters: a sweep axis for `image=`.

    `control_variants(photo, "canny", low_threshold=[50, 100], high_threshold=[150, 200])` gives
    four images labelled "canny 50/150", "canny 50/200", ... (`combine="product"`, the first keyword
    outermost) or, with `combine="zip"`, two ("canny 50/150", "canny 100/200"). A single value is
    used for every image. With `width` and `height`, `source` is first fitted to that size (aspect
    kept, padded with white), as `prepare_sketch` does.

    Each element is a `PIL.Image` with `info["sdlab_label"]` (the sweep's grid label) and
    `info["sdlab_params"]` (the annotator and its parameters).
    """
    annotator = get_annotator(kind)
    if combine not in ("product", "zip"):
        raise ValueError(f"`combine` must be 'product' or 'zip', got {combine!r}")
    if (width is None) != (height is None):
        raise ValueError("pass both `width` and `height` (to fit the source to that size), or neither")
    names = list(param_lists)
    lists = []
    for name in names:
        values = param_lists[name]
        values = list(values) if isinstance(values, (list, tuple, range)) else [values]
        if not values:
            raise ValueError(f"`{name}` is an empty list")
        lists.append(values)
    if combine == "zip":
        lengths = {len(v) for v in lists if len(v) > 1}
        if len(lengths) > 1:
            raise ValueError(f"combine='zip' needs lists of one length; got lengths {[len(v) for v in lists]}")
        n = lengths.pop() if lengths else 1
        combos = [tuple(v[i] if len(v) > 1 else v[0] for v in lists) for i in range(n)]
    else:
        combos = list(itertools.product(*lists)) if lists else [()]
    # check every combination before any work (a bad one fails the call, not half-way)
    for combo in combos:
        resolve_params(annotator, dict(zip(names, combo)))
    image = load_image(source, name="source")
    if width is not None:
        image = fit_image(image, width=width, height=height)
    return [annotate(image, annotator.name, weights=weights, **dict(zip(names, combo))) for combo in combos]
