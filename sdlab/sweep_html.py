"""The sweep viewer: a self-contained folder (HTML, JS, CSS, the sweep's data and its images) that
opens from disk in any browser, with no server and no network.

    result.save_html("runs/demo/viewer")   # then open runs/demo/viewer/index.html

In the page any two axes go across and down, the others are stepped through; every cell shows its
parameters and scores on hover, copies its A1111 `parameters` text, opens large with its full
record; a score colours the cells (border or heat) and sorts columns and rows, or ranks the cells.

The folder holds:
1. `index.html`, `viewer.js`, `viewer.css` (package data, `sdlab/data/viewer/`);
2. `data.js`: the sweep as JSON assigned to `window.SDLAB_SWEEP` (a script, not a fetch, so the
   page works from `file://`): axes, and per cell its position, status, parameters, scores, A1111
   text and full record as its PNG carries them (the record is what ran, not what was planned);
3. `images/`: the cells' PNGs, copied with their metadata, and `thumbs/`: a small JPEG per cell
   when the image is larger than `thumbnail_size` (smaller images are their own thumbnail).
Paths inside are relative to the folder: it can be zipped, moved and shared.
"""

from __future__ import annotations

import json
import math
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

from .inputs import FIELDS as INPUT_FIELDS
from .metadata import PARAMETERS_KEY, SDLAB_KEY, read_text_chunks

ASSETS = ("index.html", "viewer.js", "viewer.css")
DATA_FILE = "data.js"
DATA_VERSION = 1
# Row fields that are not scores (axes are excluded too): position and the request's own numbers.
NOT_SCORES = {"index", "seed", "guidance_scale", "num_inference_steps", "width", "height", "clip_skip"}


def save_html(
    result,  # a SweepResult (not imported: sweep_result imports this module)
    path: str | Path,
    *,
    thumbnail_size: int = 256,
    copy_images: bool = True,
    title: str | None = None,
) -> Path:
    """Write the viewer of `result` into the folder `path`; returns its `index.html`.

    Args:
        thumbnail_size: the longest side of a cell's thumbnail; images no larger are their own.
        copy_images: copy every cell's full PNG (with its metadata) into `images/` for the large
            view; False writes thumbnails only (a smaller folder; the large view shows the thumbnail).
        title: the page's title (default: the sweep's title, else its axes).
    """
    if isinstance(thumbnail_size, bool) or not isinstance(thumbnail_size, int) or thumbnail_size < 16:
        raise ValueError(f"`thumbnail_size` must be an int >= 16, got {thumbnail_size!r}")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`path`: {out} is a file; give a folder for the viewer")
    out.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        (out / name).write_bytes(resources.files("sdlab").joinpath("data", "viewer", name).read_bytes())
    data = viewer_data(result, out, thumbnail_size=thumbnail_size, copy_images=copy_images, title=title)
    text = json.dumps(data, ensure_ascii=True, sort_keys=False, allow_nan=False, separators=(",", ":"))
    tmp = out / f".{DATA_FILE}.tmp"
    tmp.write_text(f"window.SDLAB_SWEEP = {text};\n", encoding="utf-8")
    tmp.replace(out / DATA_FILE)
    return out / "index.html"


def viewer_data(
    result, out: Path, *, thumbnail_size: int = 256, copy_images: bool = True, title: str | None = None
) -> dict[str, Any]:
    """The page's data (and, written into `out`, the images it names)."""
    images_dir, thumbs_dir = out / "images", out / "thumbs"
    images_dir.mkdir(parents=True, exist_ok=True)
    thumbs_dir.mkdir(exist_ok=True)
    dims = _dimensions(result)
    rows = result.table
    fields = _score_fields(result, rows)
    cells, written = [], set()
    for cell, row in zip(result.cells, rows):
        entry = _cell_entry(cell, row, dims, fields)
        if cell.ok and Path(cell.path).exists():
            entry.update(_write_images(Path(cell.path), images_dir, thumbs_dir, thumbnail_size, copy_images))
            written.update(p for p in (entry.get("image"), entry.get("thumb")) if p)
        cells.append(entry)
    _remove_stale(images_dir, thumbs_dir, written)
    spec = {k: v for k, v in result.spec.items() if k != "out_dir"}  # no paths of this machine
    return {
        "version": DATA_VERSION,
        "sdlab": _sdlab_version(),
        "title": title or result.title or _default_title(result),
        "dims": dims,
        "fields": fields,
        "cells": cells,
        "spec": spec,
    }


def _sdlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdlab")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _default_title(result) -> str:
    names = " x ".join(f"{a.name} ({len(a)})" for a in result.axes)
    return f"sweep: {names}" if names else "sweep"


def _dimensions(result) -> list[dict[str, Any]]:
    """The grid's dimensions: one per axis, linked axes (which move together) as one."""
    link = [list(g) for g in (result.spec.get("link") or [])]
    dims, seen = [], set()
    for axis in result.axes:
        if axis.name in seen:
            continue
        group = next((g for g in link if axis.name in g), [axis.name])
        members = [result.axis(n) for n in group]
        seen.update(group)
        labels = [" · ".join(a.labels[i] for a in members) for i in range(len(axis))]
        dims.append(
            {
                "name": " + ".join(a.name for a in members),
                "axes": [a.name for a in members],
                "labels": labels,
                "numeric": all(_is_number(v) for a in members for v in a.values),
            }
        )
    return dims


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _score_fields(result, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every numeric per-cell field: the scores (`metrics`) first, then numbers of the table's rows
    (seconds, peak memory, any other) that are neither an axis nor the request's own."""
    axis_names = set(result.axis_names)
    metrics: dict[str, None] = {}
    others: dict[str, None] = {}
    for row in rows:
        for name, value in (row.get("metrics") or {}).items():
            if value is None or _is_number(value):
                metrics.setdefault(name, None)
        for name, value in row.items():
            if name not in axis_names and name not in NOT_SCORES and _is_number(value):
                others.setdefault(name, None)
    return [{"name": n, "kind": "metric"} for n in metrics] + [{"name": n, "kind": "run"} for n in others]


def _finite(value: Any) -> float | int | None:
    if not _is_number(value) or not math.isfinite(value):
        return None
    return value


def _cell_entry(cell, row: dict[str, Any], dims: list[dict], fields: list[dict]) -> dict[str, Any]:
    scores = {}
    metrics = row.get("metrics") or {}
    for f in fields:
        value = metrics.get(f["name"]) if f["kind"] == "metric" else row.get(f["name"])
        scores[f["name"]] = _finite(value)
    entry: dict[str, Any] = {
        "i": cell.index,
        "c": [cell.coords[d["axes"][0]] for d in dims],
        "status": "ok" if cell.ok else ("failed" if cell.error else "missing"),
        "scores": scores,
    }
    if row.get("metric_errors"):
        entry["score_errors"] = dict(row["metric_errors"])
    if cell.error:
        entry["error"] = cell.error
    if cell.ok and Path(cell.path).exists():
        chunks = read_text_chunks(cell.path)
        record = json.loads(chunks[SDLAB_KEY]) if SDLAB_KEY in chunks else {}
        entry["a1111"] = chunks.get(PARAMETERS_KEY, "")
        entry["record"] = record
        entry["params"] = _shown_params(record) if record else _shown_params(cell.params)
    else:  # nothing ran: the planned parameters, said to be planned
        entry["params"] = _shown_params(cell.params)
        entry["record"] = {"planned": cell.request.image_params(0), "model": cell.model}
    return entry


def _shown_params(record: dict[str, Any]) -> dict[str, Any]:
    """The parameters a tooltip shows, in diffusers' names, from a record (or planned params)."""
    names = (
        "prompt",
        "negative_prompt",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "width",
        "height",
        "clip_skip",
        "variation_seed",
        "variation_strength",
        "model",
    )
    shown = {n: record[n] for n in names if record.get(n) not in (None, "", {})}
    loras = record.get("loras")
    if (
        isinstance(loras, list) and loras and isinstance(loras[0], dict)
    ):  # a record: the LoRAs applied, with their weights
        shown["loras"] = ", ".join(_lora_text(d) for d in loras)
    for name in INPUT_FIELDS:  # img2img, inpainting, hires fix, refiner (sdlab.inputs)
        value = record.get(name)
        if value in (None, "", {}) or (name == "mask_blur" and not value):
            continue
        if isinstance(value, dict):  # an input image (by file name, else content) or the refiner
            value = value.get("file") or value.get("name") or f"sha256 {str(value.get('sha256'))[:12]}"
        shown[name] = value
    for key, value in (record.get("pipeline_kwargs") or {}).items():
        shown[key] = value
    return shown


def _lora_text(lora: dict[str, Any]) -> str:
    text = f"{lora.get('name')}: {lora.get('weight'):g}"
    if lora.get("text_encoder_weight") is not None:
        text += f" (text encoder {lora['text_encoder_weight']:g})"
    return text


def _write_images(source: Path, images_dir: Path, thumbs_dir: Path, size: int, copy_images: bool) -> dict[str, Any]:
    """Copy a cell's PNG and write its thumbnail; the folder-relative names and the image size."""
    with Image.open(source) as image:
        width, height = image.size
        needs_thumb = max(width, height) > size or not copy_images
        thumb_rel = None
        if needs_thumb:
            suffix = "jpg" if max(width, height) > size else "png"
            thumb_rel = f"thumbs/{source.stem}-{size}.{suffix}"  # the size in the name: never another size's
            target = thumbs_dir.parent / thumb_rel
            if not target.exists() or target.stat().st_mtime < source.stat().st_mtime:
                small = image.convert("RGB")
                small.thumbnail((size, size), Image.Resampling.LANCZOS)
                tmp = target.with_name(f".tmp-{target.name}")
                small.save(tmp, format="JPEG" if target.suffix == ".jpg" else "PNG", quality=85)
                tmp.replace(target)
    entry: dict[str, Any] = {"w": width, "h": height}
    if copy_images:
        image_rel = f"images/{source.name}"
        shutil.copyfile(source, images_dir.parent / image_rel)
        entry["image"] = image_rel
    entry["thumb"] = thumb_rel or entry.get("image")
    if thumb_rel:
        with Image.open(thumbs_dir.parent / thumb_rel) as t:
            entry["tw"], entry["th"] = t.size
    else:
        entry["tw"], entry["th"] = width, height
    return entry


def _remove_stale(images_dir: Path, thumbs_dir: Path, written: set[str]) -> None:
    """Images an earlier save of another sweep left in the viewer's own folders."""
    for folder in (images_dir, thumbs_dir):
        for file in folder.iterdir():
            if (
                file.is_file()
                and file.suffix.lower() in (".png", ".jpg")
                and f"{folder.name}/{file.name}" not in written
            ):
                file.unlink()
