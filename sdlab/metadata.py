"""Every PNG says how to make it again.

Two text chunks: `parameters`, A1111's infotext that other tools in the ecosystem parse, and
`sdlab`, the full record as JSON. `read_params` reads either back, from sdlab's PNGs and A1111's
(PNG text chunks, and the EXIF UserComment A1111 writes into its JPEG and WebP files).
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
    ("sampler", "Sampler"),
    ("schedule_type", "Schedule type"),
    ("guidance_scale", "CFG scale"),
    ("seed", "Seed"),
    ("size", "Size"),
    ("model_hash", "Model hash"),
    ("model", "Model"),
    ("variation_seed", "Variation seed"),  # A1111 writes both only at a non-zero strength
    ("variation_strength", "Variation seed strength"),
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
    """A number as A1111 writes it (Python's shortest text that reads back as the same float)."""
    return repr(value) if isinstance(value, float) else str(value)


def _is_ddim(record: dict[str, Any]) -> bool:
    from .schedulers import split_a1111

    return record.get("scheduler_class") == "DDIMScheduler" or split_a1111(str(record.get("scheduler")))[0] == "DDIM"


def _pipeline_label(key: str, record: dict[str, Any]) -> str:
    if key == "eta" and _is_ddim(record):  # A1111's "Eta" is the ancestral samplers' noise; DDIM's is "Eta DDIM"
        return "Eta DDIM"
    return key.replace("_", " ").capitalize()


def _a1111_prompt(record: dict[str, Any], name: str) -> str | None:
    """A prompt as A1111 must read it: a verbatim one (sdlab.prompts.verbatim) with its brackets escaped."""
    text = record.get(name)
    if text and record.get(f"{name}_weighting") == "verbatim":
        return re.sub(r"([\\()\[\]])", r"\\\1", text)
    return text


def infotext(record: dict[str, Any]) -> str:
    """A1111's `parameters` text for one image record."""
    lines = [_with_lora_tags(_a1111_prompt(record, "prompt") or "", record.get("loras"))]
    negative = _a1111_prompt(record, "negative_prompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    params: list[tuple[str, Any]] = []
    values = dict(record)
    values["size"] = f"{record.get('width')}x{record.get('height')}"
    if record.get("scheduler"):  # A1111 v1.10 writes the sampler and its schedule type apart
        from .schedulers import to_a1111

        values["sampler"], values["schedule_type"] = to_a1111(str(record["scheduler"]))
    for key, label in _INFOTEXT_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        params.append((label, _format_number(value)))
    if record.get("clip_skip"):  # sdlab records diffusers' convention (layers skipped); A1111 counts from 1
        params.append(("Clip skip", str(int(record["clip_skip"]) + 1)))
    from .inputs import infotext_params

    params += infotext_params(record)  # img2img, inpainting, hires fix, refiner: A1111's labels
    if record.get("loras"):  # A1111's Lora hashes: "name: addnet hash, ..." (names without ':' and ',')
        hashes = [f"{d['name'].replace(':', '').replace(',', '')}: {d['a1111_hash']}" for d in record["loras"]]
        params.append(("Lora hashes", ", ".join(hashes)))
    if record.get("embeddings"):  # A1111's TI hashes: "name: first 12 hex digits of the file's SHA-256"
        params.append(("TI hashes", ", ".join(f"{d['token']}: {d['a1111_hash']}" for d in record["embeddings"])))
    for key, value in (record.get("pipeline_kwargs") or {}).items():
        if isinstance(value, (int, float, str, bool)) and value is not None:
            params.append((_pipeline_label(key, record), _format_number(value)))
    if record.get("backend") and record.get("backend") != "diffusers":
        params.append(("Backend", record["backend"]))
    versions = record.get("versions") or {}
    if versions.get("sdlab"):
        params.append(("Version", f"sdlab {versions['sdlab']}"))
    lines.append(", ".join(f"{label}: {_quote(value)}" for label, value in params))
    return "\n".join(lines)


def _with_lora_tags(prompt: str, loras: list | None) -> str:
    """The prompt as A1111 writes it: a `<lora:name:w>` tag for every LoRA applied (those given as
    `loras=` rather than in the prompt are appended, as A1111 appends its default LoRA)."""
    if not loras:
        return prompt
    from .adapters import parse_tags

    tagged = {name for name, _, _ in parse_tags(prompt)}
    for d in loras:
        if d["name"] not in tagged:
            from .adapters import _number

            te = d.get("text_encoder_weight")
            w = _number(d["weight"])
            prompt += f"<lora:{d['name']}:{w}>" if te is None else f"<lora:{d['name']}:{_number(te)}:{w}>"
    return prompt


def add_infotext_params(text: str, params: list[tuple[str, str]]) -> str:
    """`text` (from `infotext`) with more labelled parameters, placed as A1111's `create_infotext`
    places a script's (its `extra_generation_params`): before `Version`."""
    if not params:
        return text
    head, newline, line = text.rpartition("\n")
    added = ", ".join(f"{label}: {_quote(value)}" for label, value in params)
    m = re.search(r"(?:^|, )Version: [^,]*$", line)
    if m:
        line = f"{line[: m.start()]}, {added}{line[m.start() :]}" if m.start() else f"{added}, {line}"
    else:
        line = f"{line}, {added}" if line else added
    return head + newline + line


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
            line = line[len("Negative prompt:") :].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines) or None}
    for key, value in _RE_PARAM.findall(params_line):
        result[key.strip()] = _unquote(value.strip())
    return result


def params_from_infotext(text: str) -> dict[str, Any]:
    """A1111 infotext to sdlab's parameter names (diffusers vocabulary).

    The sampler is read as A1111 v1.10 reads it (`Sampler: DPM++ 2M, Schedule type: Karras`,
    "Automatic" being the sampler's default); texts from before v1.9 carry no schedule type and
    name it in the sampler ("DPM++ 2M Karras"; a bare "DPM++ 2M" then meant the model's own
    sigmas). Labels sdlab does not use stay in `extra`, as written.
    """
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
        from .schedulers import from_a1111

        sampler = raw.pop("Sampler")
        params["scheduler"] = from_a1111(sampler, raw.pop("Schedule type", None))
        if "Eta DDIM" in raw and params["scheduler"] == "DDIM":
            params["pipeline_kwargs"] = {"eta": float(raw.pop("Eta DDIM"))}
    if "Model" in raw:
        params["model"] = raw.pop("Model")
    if "Model hash" in raw:
        params["model_hash"] = raw.pop("Model hash")
    if "Variation seed strength" in raw:  # A1111's Var. seed / Var. strength (absent at strength 0)
        params["variation_strength"] = float(raw.pop("Variation seed strength"))
        if "Variation seed" in raw:
            params["variation_seed"] = int(raw.pop("Variation seed"))
    if "Lora hashes" in raw:  # name -> A1111's short hash of the LoRA file
        pairs = [p.rpartition(":") for p in raw["Lora hashes"].split(",") if ":" in p]  # also kept in extra
        params["lora_hashes"] = {name.strip(): value.strip() for name, _, value in pairs}
    if "Clip skip" in raw:  # A1111's "Clip skip: 2" skips one layer: diffusers' clip_skip=1
        params["clip_skip"] = int(raw.pop("Clip skip")) - 1 or None
    from .inputs import params_from_a1111

    params.update(params_from_a1111(raw))  # Denoising strength, Hires *, Refiner *
    params["extra"] = raw
    return params


def png_info(record: dict[str, Any], *, parameters: str | None = None) -> PngImagePlugin.PngInfo:
    """The PNG text chunks of a record: A1111's `parameters` (`infotext(record)` unless given) and sdlab's."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, infotext(record) if parameters is None else parameters)
    info.add_itxt(SDLAB_KEY, json.dumps(record, ensure_ascii=False, sort_keys=True, default=str))
    return info


def save_png(
    image: Image.Image,
    path: str | Path,
    record: dict[str, Any],
    *,
    extra_text: dict[str, str] | None = None,
    parameters: str | None = None,
) -> Path:
    """Write `image` with its record, atomically (a temporary file renamed into place); `parameters`
    replaces the A1111 text made from the record (a grid's carries its X/Y/Z plot keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = png_info(record, parameters=parameters)
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
    """An image's text: PNG text chunks, or A1111's `parameters` from a JPEG's or WebP's EXIF UserComment."""
    if isinstance(path_or_image, Image.Image):
        return _text_of(path_or_image)
    try:
        with Image.open(path_or_image) as image:
            image.load()
            return _text_of(image)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as e:  # PIL: not an image (UnidentifiedImageError), truncated, broken chunks
        raise ValueError(f"{path_or_image} is not a readable image ({e})") from e


def _text_of(image: Image.Image) -> dict[str, str]:
    chunks = {k: v for k, v in getattr(image, "text", image.info).items() if isinstance(v, str)}
    if PARAMETERS_KEY not in chunks:
        comment = exif_user_comment(image)
        if comment:
            chunks[PARAMETERS_KEY] = comment
    return chunks


_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286
_COMMENT_CODES = {b"ASCII\0\0\0": "ascii", b"JIS\0\0\0\0\0": "shift_jis"}


def exif_user_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment of an image, decoded as A1111 reads it (piexif's UserComment: an 8-byte
    character code, "UNICODE" being UTF-16 in the EXIF block's byte order, which A1111 writes
    big-endian), or None."""
    raw_exif = image.info.get("exif")
    if not raw_exif:
        return None
    try:
        value = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a damaged EXIF block reads as no comment, as in A1111
        return None
    if isinstance(value, str):
        return value or None
    if not isinstance(value, (bytes, bytearray)) or len(value) < 8:
        return None
    code, body = bytes(value[:8]), bytes(value[8:])
    if code == b"UNICODE\0":
        tiff = raw_exif[6:] if raw_exif.startswith(b"Exif\0\0") else raw_exif
        text = body.decode("utf-16-le" if tiff[:2] == b"II" else "utf-16-be", errors="replace")
    elif code in _COMMENT_CODES:
        text = body.decode(_COMMENT_CODES[code], errors="replace")
    else:  # no or an unknown character code: A1111 falls back to UTF-8
        text = bytes(value).decode("utf-8", errors="ignore")
    text = text.rstrip("\0")
    return text or None


def read_params(path_or_image: str | Path | Image.Image) -> dict[str, Any]:
    """The parameters an image was made with: sdlab's full record when present, else A1111's
    infotext (a PNG's `parameters` chunk, or the EXIF UserComment of A1111's JPEG and WebP files).

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
    raise ValueError(
        f"{path_or_image} carries no generation parameters (no 'parameters' or 'sdlab' text chunk, no EXIF UserComment)"
    )
