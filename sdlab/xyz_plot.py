"""A1111's X/Y/Z plot keys: written into a sweep grid's `parameters` text, and read back from grids
A1111 made.

A1111 v1.10's scripts/xyz_grid.py adds to the first cell's infotext `Script: X/Y/Z plot` and, per
axis, `X Type` (the axis label, e.g. "CFG Scale"), `X Values` (the text typed, a comma list with CSV
quoting) and, for seed axes, `Fixed X Values` (the seeds it drew for -1). sdlab writes the axes
that have an A1111 type the same way, in their x, y, z places; any other axis (and any past the
third, and linked axes) under sdlab's own key, `sdlab axis <position> <name>` (`sdlab sr axis ...`
for prompt S/R, matrix and order axes), so nothing is lost.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any

from .axes import Axis, make_axis, prompt_matrix, prompt_order, prompt_sr

SCRIPT = "X/Y/Z plot"
LETTERS = "XYZ"
# sdlab parameter -> A1111 axis type, for axes of numbers (scripts/xyz_grid.py `axis_options`)
NUMBER_TYPES = {
    "seed": "Seed",
    "variation_seed": "Var. seed",
    "variation_strength": "Var. strength",
    "num_inference_steps": "Steps",
    "guidance_scale": "CFG Scale",
    "eta": "Eta",
    "strength": "Denoising",
    "clip_skip": "Clip skip",
}
INT_TYPES = {"Seed", "Var. seed", "Steps", "Clip skip"}
SEED_TYPES = ("Seed", "Var. seed")  # A1111 also writes the seeds it fixed: `Fixed X Values`
READ_TYPES = sorted(
    [*NUMBER_TYPES.values(), "Sampler", "Schedule type", "Checkpoint name", "Prompt S/R", "Prompt order"]
)
_SDLAB_AXIS = re.compile(r"^sdlab (?:(sr|matrix|order) )?axis (\d+) (.+)$")
_KEY = re.compile(r"[^\w \-/]")
_CHECKPOINT_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,}\]$")


# ------------------------------------------------------------------ writing


def format_values(values: Sequence[Any]) -> str:
    """A comma list as A1111's X/Y/Z plot reads it: "1, 2, 3" as people type it, or, when a value
    holds a comma, a quote or outer spaces, CSV as A1111 writes a dropdown's values ("a,\"b, c\"")."""
    texts = [repr(v) if isinstance(v, float) else str(v) for v in values]
    if not any(any(c in t for c in ',"\n') or t != t.strip() for t in texts):
        return ", ".join(texts)
    with io.StringIO() as out:
        csv.writer(out, lineterminator="").writerow(texts)
        return out.getvalue()


def _scheduler_axis(values: Sequence[Any]) -> tuple[str, list[str]] | None:
    """A scheduler axis as A1111's "Sampler" axis (one schedule type) or "Schedule type" axis (one
    sampler), when A1111 reads every value back into the same scheduler; else None."""
    from .schedulers import from_a1111, to_a1111

    if not all(isinstance(v, str) for v in values):
        return None
    pairs = [to_a1111(v) for v in values]
    if any(t is None or from_a1111(s, t) != v for (s, t), v in zip(pairs, values)):
        return None
    if len({t for _, t in pairs}) == 1:
        return "Sampler", [s for s, _ in pairs]
    if len({s for s, _ in pairs}) == 1:
        return "Schedule type", [t for _, t in pairs]
    return None


def a1111_axis(axis: Axis) -> tuple[str, list[Any]] | None:
    """(A1111 axis type, values as A1111 takes them) of an sdlab axis, or None if A1111 has no such axis."""
    if axis.kind == "sr":
        return "Prompt S/R", list(axis.values)
    if axis.kind == "order":
        return "Prompt order", list(axis.parts)
    if axis.kind == "model":
        return "Checkpoint name", list(axis.labels)
    if axis.kind != "param":
        return None
    if axis.name == "scheduler":
        return _scheduler_axis(axis.values)
    type_ = NUMBER_TYPES.get(axis.name)
    if type_ is None:
        return None
    if axis.name == "clip_skip":  # A1111 counts from 1: "Clip skip: 2" skips one layer
        if not all(v is None or isinstance(v, int) for v in axis.values):
            return None
        return type_, [1 + (v or 0) for v in axis.values]
    wanted = int if type_ in INT_TYPES else (int, float)
    if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in axis.values):
        return None
    return type_, list(axis.values)


def _own_key(position: int, axis: Axis) -> tuple[str, str]:
    """sdlab's key for an axis A1111 cannot take: its position, kind and name, and its values."""
    kind = f"{axis.kind} " if axis.kind in ("sr", "matrix", "order") else ""
    key = f"sdlab {kind}axis {position + 1} {_KEY.sub('_', axis.name)}"
    if axis.kind == "order":
        values = list(axis.parts)
    elif axis.kind == "matrix":
        values = ["|".join([axis.values[0], *axis.parts])]
    elif axis.kind == "size":
        values = list(axis.labels)
    elif all(isinstance(v, (str, int, float)) for v in axis.values):
        values = list(axis.values)
    else:
        values = list(axis.labels)
    return key, format_values(values)


def xyz_params(axes: Sequence[Axis], *, link: Sequence[Sequence[str]] | None = None, vary_seeds: bool = False):
    """The (label, value) pairs a sweep's grid adds to its infotext, in A1111's order."""
    linked = {name for group in link or [] for name in group}  # A1111 has no linked axes
    xyz: list[tuple[str, str]] = []
    own: list[tuple[str, str]] = []
    for i, axis in enumerate(axes):
        mapped = a1111_axis(axis) if i < len(LETTERS) and axis.name not in linked else None
        if mapped is None:
            own.append(_own_key(i, axis))
            continue
        letter, (type_, values) = LETTERS[i], mapped
        xyz += [(f"{letter} Type", type_), (f"{letter} Values", format_values(values))]
        if type_ in SEED_TYPES:
            xyz.append((f"Fixed {letter} Values", ", ".join(str(v) for v in values)))
    if link:
        own.append(("sdlab link", "; ".join(", ".join(group) for group in link)))
    if vary_seeds:
        own.append(("sdlab vary seeds", "True"))
    return ([("Script", SCRIPT)] if xyz else []) + xyz + own


# ------------------------------------------------------------------ reading


def split_values(text: str) -> list[str]:
    """A1111's comma list (csv_string_to_list_strip): CSV rows, every value stripped."""
    return [v.strip() for row in csv.reader(io.StringIO(text)) for v in row]


_INT = r"([+-]?\s*\d+)"
_FLOAT = r"([+-]?\s*\d+(?:\.\d*)?)"
_INT_RANGE = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_RANGE = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")


def expand_values(text: str, type_: type, *, axis: str = "axis") -> list:
    """The values A1111's X/Y/Z plot made of `text` for an int or float axis, as it made them:
    "1-5" and "1-10 (+3)" are Python ranges that include the end, float ranges are numpy's
    `arange(start, end + step, step)` (which may pass the end), "a-b [n]" is `linspace`."""
    import numpy as np

    out: list = []
    try:
        for item in split_values(text):
            if type_ is int and (m := _INT_RANGE.fullmatch(item)):
                step = int(m.group(3)) if m.group(3) else 1
                out += list(range(int(m.group(1)), int(m.group(2)) + 1, step))
            elif type_ is int and (m := _INT_COUNT.fullmatch(item)):
                num = int(m.group(3)) if m.group(3) else 1
                out += [int(x) for x in np.linspace(int(m.group(1)), int(m.group(2)), num).tolist()]
            elif type_ is float and (m := _FLOAT_RANGE.fullmatch(item)):
                start, end = float(m.group(1)), float(m.group(2))
                step = float(m.group(3)) if m.group(3) else 1.0
                out += np.arange(start, end + step, step).tolist()
            elif type_ is float and (m := _FLOAT_COUNT.fullmatch(item)):
                num = int(m.group(3)) if m.group(3) else 1
                out += np.linspace(float(m.group(1)), float(m.group(2)), num).tolist()
            else:
                out.append(type_(item))
    except ValueError as e:
        raise ValueError(f"A1111 axis {axis!r}: cannot read its values {text!r} ({e})") from e
    return out


def _axis_from_a1111(type_: str, text: str, fixed: str | None, raw: dict[str, Any]) -> tuple[str, Any] | None:
    """(sdlab axis name, values or Axis) of one A1111 X/Y/Z axis, or None if sdlab has no such axis."""
    from .schedulers import from_a1111

    if type_ in SEED_TYPES and fixed:
        text = fixed  # the seeds A1111 drew for -1 and used
    name = next((n for n, t in NUMBER_TYPES.items() if t == type_), None)
    if name == "strength" and "Hires upscale" in raw:  # txt2img: "Denoising" is the hires fix's
        return None
    if name == "clip_skip":
        return name, [v - 1 or None for v in expand_values(text, int, axis=type_)]
    if name is not None:
        return name, expand_values(text, int if type_ in INT_TYPES else float, axis=type_)
    if type_ == "Sampler":
        return "scheduler", [from_a1111(s, raw.get("Schedule type")) for s in split_values(text)]
    if type_ == "Schedule type":
        return "scheduler", [from_a1111(raw.get("Sampler", ""), t) for t in split_values(text)]
    if type_ == "Checkpoint name":
        return "model", [_CHECKPOINT_HASH.sub("", v) for v in split_values(text)]
    if type_ == "Prompt S/R":
        axis = prompt_sr(split_values(text))
        return axis.name, axis
    if type_ == "Prompt order":
        axis = prompt_order(split_values(text))
        return axis.name, axis
    return None


def _own_axis(key: str, text: str, kwargs: dict[str, Any]) -> tuple[int, str, Any]:
    kind, position, name = _SDLAB_AXIS.match(key).groups()
    if kind == "sr":
        axis = prompt_sr(split_values(text), name=name)
    elif kind == "order":
        axis = prompt_order(split_values(text), name=name)
    elif kind == "matrix":
        axis = prompt_matrix(split_values(text)[0], name=name)
    else:
        axis = make_axis(name, text, prompt=kwargs["prompt"], negative_prompt=kwargs["negative_prompt"])
        return int(position) - 1, name, list(axis.values)
    return int(position) - 1, name, axis


def is_xyz_text(raw: dict[str, Any]) -> bool:
    return raw.get("Script") == SCRIPT or any(_SDLAB_AXIS.match(k) for k in raw)


def sweep_from_xyz(text: str, *, source: str = "the image") -> dict[str, Any]:
    """`sweep` keyword arguments from a grid's infotext with A1111's X/Y/Z plot keys (and sdlab's own
    axis keys): the prompts and fixed parameters of the first cell, the axes in x, y, z order.
    An axis type sdlab cannot sweep is an error naming it; infotext keys the sweep does not apply
    (hires fix, LoRA hashes, ...) are a warning naming them."""
    from .metadata import params_from_infotext, parse_infotext

    raw = parse_infotext(text)
    params = params_from_infotext(text)
    extra = params.pop("extra")
    kwargs: dict[str, Any] = {"prompt": params.pop("prompt"), "negative_prompt": params.pop("negative_prompt")}
    for key in ("seed", "guidance_scale", "num_inference_steps", "scheduler", "width", "height", "clip_skip"):
        if params.get(key) is not None:
            kwargs[key] = params[key]
    kwargs.update(params.get("pipeline_kwargs") or {})
    if "Variation seed" in extra:
        kwargs["variation_seed"] = int(extra.pop("Variation seed"))
        if "Variation seed strength" in extra:
            kwargs["variation_strength"] = float(extra.pop("Variation seed strength"))
    from .inputs import SHARED

    for key in SHARED:  # hires fix and refiner settings of the grid (sdlab.inputs)
        if params.get(key) is not None and key not in ("strength", "mask_blur"):
            kwargs[key] = params[key]
    if params.get("image") is not None:  # A1111 img2img: its text does not carry the init image
        extra["Denoising strength"] = f"{params['strength']} (img2img; the grid's text does not carry its init image)"
    extra.pop("Script", None)
    extra.pop("Version", None)
    axes: list[tuple[int, str, Any]] = []
    unknown = []
    types = {letter: extra.pop(f"{letter} Type") for letter in LETTERS if f"{letter} Type" in extra}
    if {"Sampler", "Schedule type"} <= set(types.values()):
        raise ValueError(
            f"{source}: A1111 axes 'Sampler' and 'Schedule type' together are two axes of one sdlab "
            "parameter (`scheduler`); sweep a `scheduler` axis of full names instead"
        )
    for position, letter in enumerate(LETTERS):
        type_ = types.get(letter)
        text_ = extra.pop(f"{letter} Values", "")
        fixed = extra.pop(f"Fixed {letter} Values", None)
        if type_ is None or type_ == "Nothing":
            continue
        found = _axis_from_a1111(type_, text_, fixed, raw)
        if found is None:
            unknown.append(f"{type_!r} ({letter})")
        else:
            axes.append((position, *found))
    if unknown:
        raise ValueError(
            f"{source}: A1111 X/Y/Z axis types sdlab cannot sweep: {', '.join(unknown)}; "
            f"the types it reads: {', '.join(READ_TYPES)}"
        )
    for key in [k for k in extra if _SDLAB_AXIS.match(k)]:
        axes.append(_own_axis(key, extra.pop(key), kwargs))
    if "sdlab link" in extra:
        kwargs["link"] = [split_values(group) for group in extra.pop("sdlab link").split(";")]
    if extra.pop("sdlab vary seeds", None) == "True":
        kwargs["vary_seeds"] = True
    axes.sort(key=lambda a: a[0])
    kwargs["axes"] = {name: values for _, name, values in axes}
    for name in kwargs["axes"]:  # an axis sets its parameter in every cell
        if name in ("seed", "scheduler", "clip_skip", "guidance_scale", "num_inference_steps"):
            kwargs.pop(name, None)
    if extra:
        warnings.warn(
            f"{source}: the sweep does not apply these settings of the grid's first image: {', '.join(extra)}",
            stacklevel=4,
        )
    return kwargs
