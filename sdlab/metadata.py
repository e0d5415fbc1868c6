"""Every PNG says how to make it again.

Two text chunks: `parameters`, A1111's infotext that other tools in the ecosystem parse, and
`sdlab`, the full record as JSON. `read_params` reads either back, from sdlab's PNGs and A1111's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"
SDLAB_KEY = "sdlab"

# A1111's infotext parameter pattern (modules/infotext_utils.py).
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")

# Record keys shown in the infotext under A1111's labels, in A1111's order.
_INFOTEXT_FIELDS = [
    ("num_inference_steps", "Steps"),
    ("scheduler", "Sampler"),
    ("guidance_scale", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model_hash", "Model hash"),
    ("model", "Model"),
]


def _quote(value: Any) -> str:
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == round(value, 8) else repr(round(value, 8))
    return str(value)


def infotext(record: dict[str, Any]) -> str:
    """A1111's `parameters` text for one image record."""
    lines = [record.get("prompt", "")]
    negative = record.get("negative_prompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    params: list[tuple[str, Any]] = []
    values = dict(record)
    values["size"] = f"{record.get('width')}x{record.get('height')}"
    for key, label in _INFOTEXT_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        params.append((label, _format_number(value)))
    if record.get("clip_skip"):  # sdlab records diffusers' convention (layers skipped); A1111 counts from 1
        params.append(("Clip skip", str(int(record["clip_skip"]) + 1)))
    for key, value in (record.get("pipeline_kwargs") or {}).items():
        if isinstance(value, (int, float, str, bool)) and value is not None:
            params.append((key.replace("_", " ").capitalize(), _format_number(value)))
    if record.get("backend") and record.get("backend") != "diffusers":
        params.append(("Backend", record["backend"]))
    versions = record.get("versions") or {}
    if versions.get("sdlab"):
        params.append(("Version", f"sdlab {versions['sdlab']}"))
    lines.append(", ".join(f"{label}: {_quote(value)}" for label, value in params))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's infotext as a dict: `prompt`, `negative_prompt` and the labelled parameters."""
    lines = text.strip().split("\n")
    params_line = ""
    if lines and len(_RE_PARAM.findall(lines[-1])) >= 3:
        params_line = lines.pop()
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines) or None}
    for key, value in _RE_PARAM.findall(params_line):
        result[key.strip()] = _unquote(value.strip())
    return result


def params_from_infotext(text: str) -> dict[str, Any]:
    """A1111 infotext to sdlab's parameter names (diffusers vocabulary)."""
    raw = parse_infotext(text)
    params: dict[str, Any] = {"prompt": raw.pop("prompt"), "negative_prompt": raw.pop("negative_prompt")}
    if "Steps" in raw:
        params["num_inference_steps"] = int(raw.pop("Steps"))
    if "CFG scale" in raw:
        params["guidance_scale"] = float(raw.pop("CFG scale"))
    if "Seed" in raw:
        params["seed"] = int(raw.pop("Seed"))
    if "Size" in raw:
        m = _RE_SIZE.match(raw.pop("Size"))
        if m:
            params["width"], params["height"] = int(m.group(1)), int(m.group(2))
    if "Sampler" in raw:
        sampler = raw.pop("Sampler")
        schedule = raw.pop("Schedule type", None)
        if schedule and schedule.lower() not in ("automatic", "uniform") and schedule not in sampler:
            sampler = f"{sampler} {schedule}"
        params["scheduler"] = sampler
    if "Model" in raw:
        params["model"] = raw.pop("Model")
    if "Model hash" in raw:
        params["model_hash"] = raw.pop("Model hash")
    if "Clip skip" in raw:  # A1111's "Clip skip: 2" skips one layer: diffusers' clip_skip=1
        params["clip_skip"] = int(raw.pop("Clip skip")) - 1 or None
    params["extra"] = raw
    return params


def png_info(record: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, infotext(record))
    info.add_itxt(SDLAB_KEY, json.dumps(record, ensure_ascii=False, sort_keys=True, default=str))
    return info


def save_png(image: Image.Image, path: str | Path, record: dict[str, Any], *, extra_text: dict[str, str] | None = None) -> Path:
    """Write `image` with its record, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = png_info(record)
    for key, value in (extra_text or {}).items():
        info.add_itxt(key, value)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_text_chunks(path_or_image: str | Path | Image.Image) -> dict[str, str]:
    if isinstance(path_or_image, Image.Image):
        image = path_or_image
        return {k: v for k, v in getattr(image, "text", image.info).items() if isinstance(v, str)}
    try:
        with Image.open(path_or_image) as image:
            image.load()
            if image.format != "PNG":
                raise ValueError(f"{path_or_image} is a {image.format} image, not a PNG: generation parameters are read "
                                 "from PNG text chunks")
            return {k: v for k, v in getattr(image, "text", image.info).items() if isinstance(v, str)}
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as e:  # PIL: not an image (UnidentifiedImageError), truncated, broken chunks
        raise ValueError(f"{path_or_image} is not a readable PNG image ({e})") from e


def read_params(path_or_image: str | Path | Image.Image) -> dict[str, Any]:
    """The parameters a PNG was made with: sdlab's full record when present, else A1111's infotext.

    The result uses diffusers' names (`prompt`, `negative_prompt`, `num_inference_steps`,
    `guidance_scale`, `seed`, `width`, `height`, `scheduler`, `model`) and says its `source`.
    """
    chunks = read_text_chunks(path_or_image)
    if SDLAB_KEY in chunks:
        record = json.loads(chunks[SDLAB_KEY])
        record["source"] = "sdlab"
        return record
    if PARAMETERS_KEY in chunks:
        params = params_from_infotext(chunks[PARAMETERS_KEY])
        params["source"] = "a1111"
        return params
    raise ValueError(f"{path_or_image} carries no generation parameters (no 'parameters' or 'sdlab' text chunk)")
