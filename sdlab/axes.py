"""Sweep axes: values as lists or in the syntax people type in A1111's X/Y/Z plot.

    "1-5"             1, 2, 3, 4, 5
    "1-10 (+3)"       1, 4, 7, 10
    "0-1 [5]"         0, 0.25, 0.5, 0.75, 1
    "3.5-9.5 (+1.5)"  3.5, 5, 6.5, 8, 9.5
    'Euler a, "DPM++ 2M, Karras"'   comma lists, quotes for values holding commas

Prompt axes: search/replace (`prompt_sr`), `{placeholder}` templates (an axis named like the
placeholder), prompt matrix (`prompt_matrix`, A1111's `a|b|c`) and prompt order (`prompt_order`).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

INT_PARAMS = {"seed", "num_inference_steps", "width", "height", "clip_skip", "num_images", "variation_seed"}
FLOAT_PARAMS = {
    "guidance_scale",
    "variation_strength",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
    "guidance_rescale",
    "eta",
    "strength",
    "true_cfg_scale",
}
STRING_PARAMS = {"prompt", "negative_prompt", "scheduler", "model"}

_RANGE_STEP = re.compile(
    r"^\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)\s*\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\)\s*$"
)
_RANGE_COUNT = re.compile(r"^\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)\s*\[\s*(\d+)\s*\]\s*$")
_RANGE = re.compile(r"^\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AxisSyntaxError(ValueError):
    """Axis values that could not be parsed; the message points at the text."""


def _point_at(text: str, item: str, message: str) -> AxisSyntaxError:
    start = text.find(item.strip()) if item.strip() else -1
    if start < 0:
        start = 0
    caret = " " * start + "^" * max(1, len(item.strip()))
    return AxisSyntaxError(f"{message}\n    {text}\n    {caret}")


def split_csv(text: str, *, name: str = "axis") -> list[str]:
    """A1111's comma list: values separated by commas, quoted when they hold commas."""
    if not text.strip():
        return []
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True, strict=True))
    except csv.Error as e:
        opening = _unterminated_quote(text)
        if opening is not None:
            raise AxisSyntaxError(
                f"axis `{name}`: the quote opened here is never closed\n    {text}\n    {' ' * opening}^"
            ) from e
        raise AxisSyntaxError(f"axis `{name}`: bad quoting in the values ({e})\n    {text}") from e
    if len(rows) != 1:
        raise AxisSyntaxError(f"axis `{name}` values must be on one line\n    {text}")
    return [item.strip() for item in rows[0] if item.strip() != ""]


def _unterminated_quote(text: str) -> int | None:
    """Where the quote that is never closed opens (CSV: "" inside quotes is a quote)."""
    opening, i = None, 0
    while i < len(text):
        if text[i] == '"':
            if opening is None:
                opening = i
            elif text[i + 1 : i + 2] == '"':
                i += 1
            else:
                opening = None
        i += 1
    return opening


_SIGN_SPACE = re.compile(r"^([+-])\s+")


def _number(text: str, kind: str):
    text = _SIGN_SPACE.sub(r"\1", text.strip())  # "+ 3" as A1111 reads it; "1 5" stays an error, never 15
    return int(text) if kind == "int" else float(text)


def _is_integral(text: str) -> bool:
    return re.fullmatch(r"[+-]?\s*\d+", text.strip()) is not None


def _steps(start, end, step, kind: str) -> list:
    """start, start+step, ... up to end and never past it (A1111's float ranges may overshoot)."""
    values, i = [], 0
    while len(values) < 10_000:
        v = start + i * step
        if (v > end + 1e-9) if step > 0 else (v < end - 1e-9):
            break
        values.append(round(v, 10) if kind == "float" else v)
        i += 1
    return values


def _expand_range(item: str, kind: str) -> list | None:
    """The values of a range item ("1-5", "1-10 (+3)", "0-1 [5]") as `kind` ("int", "float" or
    "auto": integers when every number is written as one, else floats), or None if it is none."""
    for pattern in (_RANGE_STEP, _RANGE_COUNT, _RANGE):
        m = pattern.match(item)
        if m:
            break
    else:
        return None
    groups = list(m.groups())
    ends = groups[:2] + ([groups[2]] if pattern is _RANGE_STEP else [])
    if kind == "auto":  # "0-1 [5]" is 0, 0.25, ... 1; "0-100 [5]" and "1-5" are integers
        kind = "int" if all(_is_integral(g) for g in ends) else "float"
        if kind == "int" and pattern is _RANGE_COUNT and int(groups[2]) > 1:
            a, b, n = int(_number(groups[0], "int")), int(_number(groups[1], "int")), int(groups[2])
            kind = "int" if (b - a) % (n - 1) == 0 else "float"
    if kind == "int" and not all(_is_integral(g) for g in ends):
        return None
    start, end = _number(groups[0], kind), _number(groups[1], kind)
    if pattern is _RANGE_COUNT:
        count = int(groups[2])
        if count < 1:
            return None
        if count == 1:
            return [start]
        values = [start + (end - start) * i / (count - 1) for i in range(count)]
        if kind == "int":
            return [int(v) for v in values]
        return [round(v, 10) for v in values]
    step = _number(groups[2], kind) if pattern is _RANGE_STEP else (1 if end >= start else -1)
    if step == 0:
        return None
    return _steps(start, end, step, kind)


def value_kind(name: str) -> str:
    if name == "lora_weight" or name.startswith("lora:"):  # LoRA weights (sdlab.adapters)
        return "float"
    if name in INT_PARAMS:
        return "int"
    if name in FLOAT_PARAMS:
        return "float"
    if name == "size":
        return "size"
    if name in STRING_PARAMS:
        return "str"
    return "auto"


def parse_values(text: str, kind: str = "auto", *, name: str = "axis") -> list:
    """Parse A1111-style axis text into values of `kind` ("int", "float", "str", "size", "auto")."""
    if not isinstance(text, str):
        raise AxisSyntaxError(f"`{name}` values must be a list or a string, got {type(text).__name__}")
    items = split_csv(text, name=name)
    if not items:
        raise AxisSyntaxError(f"axis `{name}` is empty: it has no values\n    {text!r}")
    values: list = []
    for item in items:
        if kind == "str":
            values.append(item)
            continue
        if kind == "size":
            m = _SIZE.match(item)
            if not m:
                raise _point_at(text, item, f"axis `{name}`: {item!r} is not a size like 512x768")
            values.append((int(m.group(1)), int(m.group(2))))
            continue
        parsed = _expand_range(item, kind)
        if parsed is None:
            for k in [kind] if kind in ("int", "float") else ["int", "float"]:
                try:
                    parsed = [_number(item, k)]
                    break
                except ValueError:
                    continue
        if parsed is None:
            if kind == "auto":  # a keyword sdlab does not know, or a template: words stay words
                values.append(item)
                continue
            what = "an integer" if kind == "int" else "a number"
            raise _point_at(
                text, item, f"axis `{name}`: cannot read {item!r} as {what} or a range (1-5, 1-10 (+3), 0-1 [5])"
            )
        values.extend(parsed)
    return values


@dataclass(frozen=True)
class Axis:
    """One sweep axis: a name, its values and their labels.

    `kind` says what the values do: "param" sets the generation parameter `name`; "size" sets
    width and height; "template" fills `{name}` in the prompts; "sr" searches `search` and
    replaces it; "matrix" and "order" rebuild the prompt; "model" switches models.
    """

    name: str
    values: tuple
    labels: tuple[str, ...]
    kind: str = "param"
    search: str | None = None
    parts: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.values)


def format_label(name: str, value: Any) -> str:
    label = getattr(value, "label", None)
    if isinstance(label, str):
        return label
    info = getattr(value, "info", None)
    if isinstance(info, dict) and isinstance(info.get("sdlab_label"), str):
        return info["sdlab_label"]
    if name in ("image", "mask_image"):  # input images by file name (never a full path in a grid)
        from pathlib import Path

        file = (
            value
            if isinstance(value, (str, Path))
            else (info or {}).get("sdlab_file") or getattr(value, "filename", "")
        )
        if file:
            return f"{name}: {Path(file).name}"
    if isinstance(value, float):
        value = f"{value:g}"
    if isinstance(value, tuple) and len(value) == 2 and name == "size":
        return f"{value[0]}x{value[1]}"
    if name in ("prompt", "negative_prompt", "scheduler", "model"):
        return str(value)
    short = {
        "guidance_scale": "CFG",
        "num_inference_steps": "Steps",
        "seed": "Seed",
        "variation_seed": "Var. seed",
        "variation_strength": "Var. strength",
    }.get(name, name)
    text = str(value) if not hasattr(value, "size") or isinstance(value, (str, int, float)) else type(value).__name__
    return f"{short}: {text}"


def make_axis(name: str, values: Any, *, prompt: str | None = None, negative_prompt: str | None = None) -> Axis:
    """An Axis from a name and a list or A1111 text; `prompt` decides template axes."""
    if isinstance(values, Axis):
        return values
    if not isinstance(name, str) or not name:
        raise ValueError(f"axis names must be non-empty strings, got {name!r}")
    kind = value_kind(name)
    if isinstance(values, str):
        values = parse_values(values, kind, name=name)
    elif isinstance(values, range):
        values = list(values)
    elif not isinstance(values, (list, tuple)):
        raise ValueError(f"axis `{name}` values must be a list or a string like '1-5', got {type(values).__name__}")
    values = list(values)
    if not values:
        raise ValueError(f"axis `{name}` has no values")
    if name == "size":
        sizes = []
        for v in values:
            if isinstance(v, str):
                m = _SIZE.match(v)
                if not m:
                    raise AxisSyntaxError(f"axis `size`: {v!r} is not a size like 512x768")
                v = (int(m.group(1)), int(m.group(2)))
            if not (isinstance(v, (tuple, list)) and len(v) == 2):
                raise ValueError(f"axis `size` values must be 'WxH' strings or (width, height) pairs, got {v!r}")
            sizes.append((int(v[0]), int(v[1])))
        return Axis("size", tuple(sizes), tuple(f"{w}x{h}" for w, h in sizes), kind="size")
    placeholder = f"{{{name}}}"
    if name not in INT_PARAMS | FLOAT_PARAMS | STRING_PARAMS and (
        placeholder in (prompt or "") or placeholder in (negative_prompt or "")
    ):
        return Axis(name, tuple(values), tuple(str(v) for v in values), kind="template")
    axis_kind = "model" if name == "model" else "param"
    return Axis(name, tuple(values), tuple(format_label(name, v) for v in values), kind=axis_kind)


def prompt_sr(values: Sequence[str] | str, *, name: str | None = None) -> Axis:
    """A1111's Prompt S/R: the first value is searched for in the prompt (and negative prompt) and
    replaced by each value in turn. Several S/R axes are applied together and never collide."""
    if isinstance(values, str):
        values = split_csv(values, name=name or "prompt_sr")
    values = [str(v) for v in values]
    if not values or not values[0]:
        raise ValueError("`prompt_sr` needs at least one value; the first is the text to search for")
    return Axis(name or f"S/R {values[0]}", tuple(values), tuple(values), kind="sr", search=values[0])


def prompt_matrix(template: str, *, name: str = "matrix", separator: str = ", ") -> Axis:
    """A1111's prompt matrix: `base|a|b|c` gives every on/off combination of a, b, c (2^3 prompts)."""
    parts = [p.strip() for p in template.split("|")]
    if len(parts) < 2:
        raise ValueError("`prompt_matrix` needs a template like 'base|a|b' with at least one '|' part")
    base, optional = parts[0], parts[1:]
    values, labels = [], []
    for mask in range(2 ** len(optional)):
        chosen = [p for i, p in enumerate(optional) if mask & (1 << i)]
        values.append(separator.join([base] + chosen) if base else separator.join(chosen))
        labels.append(" + ".join(chosen) if chosen else "(base)")
    return Axis(name, tuple(values), tuple(labels), kind="matrix", parts=tuple(optional))


def prompt_order(tokens: Sequence[str] | str, *, name: str = "order") -> Axis:
    """A1111's prompt order: every permutation of `tokens`, which must all appear in the prompt."""
    if isinstance(tokens, str):
        tokens = split_csv(tokens)
    tokens = [str(t) for t in tokens]
    if len(tokens) < 2:
        raise ValueError("`prompt_order` needs at least two tokens")
    if len(tokens) > 7:
        raise ValueError(
            f"`prompt_order` with {len(tokens)} tokens makes {math.factorial(len(tokens))} prompts; use at most 7"
        )
    perms = list(itertools.permutations(tokens))
    return Axis(name, tuple(perms), tuple(", ".join(p) for p in perms), kind="order", parts=tuple(tokens))


def check_search_replace(axes: Sequence[Axis], *texts: str | None) -> None:
    """Refuse two S/R axes whose search texts are equal, contain one another, or overlap in the
    prompt: one would silently cancel the other (cells labelled "dog" showing a cat)."""
    sr = [a for a in axes if a.kind == "sr"]
    for i, a in enumerate(sr):
        for b in sr[i + 1 :]:
            x, y = a.search or "", b.search or ""
            if x == y or x in y or y in x or any(_overlap(t, x, y) for t in texts if t):
                raise ValueError(
                    f"prompt S/R axes `{a.name}` (searches {x!r}) and `{b.name}` (searches {y!r}) overlap: "
                    f"one would replace what the other looks for; search for texts that do not overlap"
                )


def _overlap(text: str, x: str, y: str) -> bool:
    spans = [(m.start(), m.start() + len(x)) for m in re.finditer(f"(?={re.escape(x)})", text)]
    for m in re.finditer(f"(?={re.escape(y)})", text):
        if any(s < m.start() + len(y) and m.start() < e for s, e in spans):
            return True
    return False


# ------------------------------------------------------------------ prompt rewriting


def apply_order(prompt: str, tokens: Sequence[str], order: Sequence[str]) -> str:
    positions = []
    for t in tokens:
        i = prompt.find(t)
        if i < 0:
            raise ValueError(f"`prompt_order` token {t!r} is not in the prompt {prompt!r}")
        positions.append((i, t))
    positions.sort()
    out, last = [], 0
    for (i, t), new in zip(positions, order):
        out.append(prompt[last:i])
        out.append(new)
        last = i + len(t)
    out.append(prompt[last:])
    return "".join(out)


def apply_replacements(text: str | None, replacements: dict[str, str]) -> str | None:
    """Replace every search text by its replacement in ONE pass, so replacements never collide."""
    if text is None or not replacements:
        return text
    pattern = re.compile("|".join(re.escape(s) for s in sorted(replacements, key=len, reverse=True)))
    return pattern.sub(lambda m: replacements[m.group(0)], text)


def fill_template(text: str | None, values: dict[str, str]) -> str | None:
    if text is None or not values:
        return text
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def placeholders(text: str | None) -> set[str]:
    return set(_PLACEHOLDER.findall(text or ""))
