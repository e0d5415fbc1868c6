"""Run directories of large sweeps without any model work: the spec, manifest rows and cell PNGs a
sweep writes (planned by the sweep's own functions), with tiny solid-colour images and made-up
scores, for the viewer and `load_sweep_result` at thousands of cells."""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path

from PIL import Image

from sdlab.identity import content_sha256
from sdlab.metadata import png_info
from sdlab.request import Defaults
from sdlab.sweeps import MANIFEST, _normalise_axes, _slug, _spec, cell_key, cell_request, plan_cells

PROMPT = "a large red circle on a blue background"


def write_run_dir(root, axes: dict, *, size: int = 8, failed=(), not_run=(), score_error=(), scores=True) -> Path:
    """A sweep's run directory with every cell of `axes` made (a `size`-pixel PNG carrying its
    record), except the cell indices in `failed` (an error row) and `not_run` (no row); cells in
    `score_error` have a failed scorer. Scores: "judge.colour" and "sharpness" per cell."""
    root = Path(root)
    (root / "cells").mkdir(parents=True, exist_ok=True)
    axes_list = _normalise_axes(axes, PROMPT, None)
    base = {
        "prompt": PROMPT,
        "negative_prompt": None,
        "seed": 0,
        "guidance_scale": None,
        "num_inference_steps": None,
        "scheduler": None,
        "width": None,
        "height": None,
        "clip_skip": None,
        "variation_seed": None,
        "variation_strength": 0.0,
        "pipeline_kwargs": {},
    }
    defaults = Defaults(width=64, height=64, num_inference_steps=20, guidance_scale=5.0)
    identity = {"model": "synthetic"}
    rows = []
    for index, (coords, params) in enumerate(plan_cells(base, axes_list)):
        if index in not_run:
            continue
        request = cell_request(params, defaults)
        key = cell_key(request, identity)
        row = {"key": key, "request": request.to_dict(), "model": "synthetic", "index": index}
        if index in failed:
            rows.append(dict(row, error="RuntimeError: synthetic failure"))
            continue
        record = dict(request.image_params(0), model="synthetic", seconds=0.01 + index % 7 / 100)
        record["sweep"] = {"key": key, "coords": {a.name: a.labels[coords[a.name]] for a in axes_list}}
        hue = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) / 65535
        colour = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.7, 0.9))
        path = root / "cells" / f"{_slug_for(coords, axes_list, request)}__{key[:12]}.png"
        Image.new("RGB", (size, size), colour).save(path, format="PNG", pnginfo=png_info(record))
        row.update(file=str(path.relative_to(root)), sha256=content_sha256(path), seconds=record["seconds"])
        row["peak_memory_mb"] = None
        if scores:
            row["metrics"] = {"judge.colour": round(hue, 4), "sharpness": float(index % 13)}
            row["metric_errors"] = {}
            if index in score_error:
                del row["metrics"]["sharpness"]
                row["metric_errors"] = {"sharpness": "ValueError: synthetic scorer failure"}
        rows.append(row)
    with open(root / MANIFEST, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    spec = _spec(PROMPT, None, axes_list, None, False, base, None, ["synthetic"], root)
    (root / "sweeps").mkdir(exist_ok=True)
    (root / "sweeps" / "synthetic.json").write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
    return root


def _slug_for(coords, axes_list, request):
    from sdlab.sweep_result import SweepCell

    return _slug(SweepCell(index=0, coords=coords, request=request), axes_list)
