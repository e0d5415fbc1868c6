"""A finished (or interrupted) sweep back from its run directory, without its model:
`load_sweep_result("runs/sweeps")` is the `SweepResult` the sweep returned, for grids, tables and
the HTML viewer of a sweep run elsewhere or earlier.

1. The sweep's definition is its spec JSON (`sweeps/<hash>.json`, the newest when the directory
   holds several sweeps, or the one given), or the grid PNG that carries it.
2. Its cells are planned again from that definition exactly as `sweep` plans them (model-free).
3. Each cell is matched to the manifest row of what ran: the row at the cell's position whose
   request is the cell's request, with the model's defaults taken from that row where the sweep
   left a value open (the same `cell_request` construction). A cell without a matching row (not
   run yet, or interrupted) has no image and no error (its request has its model's defaults as the
   cells that ran had them); the last matching row wins when the directory was run
   more than once (e.g. with new weights).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .axes import Axis
from .metadata import read_text_chunks
from .request import Defaults
from .sweep_result import CORE_PARAMS, SPEC_KEY, SweepCell, SweepResult, load_sweep, manifest_rows
from .sweeps import MANIFEST, _normalise_axes, cell_request, plan_cells


def load_sweep_result(path: str | Path, *, spec: str | Path | None = None) -> SweepResult:
    """The `SweepResult` of a run directory (or of the grid PNG a sweep saved in it).

    Args:
        path: a sweep's run directory, or its grid PNG / spec JSON (the run directory is then the
            folder holding it, else the spec's own `out_dir`).
        spec: which sweep of a directory that holds several: a spec JSON or grid PNG (default:
            the newest spec in `sweeps/`).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"`path`: {path} does not exist")
    if path.is_file():
        spec = path if spec is None else spec
        run_dir = path.parent
    else:
        run_dir = path
    spec_dict = _read_spec(run_dir, spec)
    if not (run_dir / MANIFEST).exists() and spec_dict.get("out_dir") and Path(spec_dict["out_dir"]).is_dir():
        run_dir = Path(spec_dict["out_dir"])
    if not (run_dir / MANIFEST).exists():
        raise ValueError(f"`path`: {run_dir} holds no {MANIFEST}; is it a sweep's run directory?")

    # 1. the axes and cells, planned as `sweep` plans them
    kwargs = _sweep_kwargs(spec_dict)
    axes = _normalise_axes(kwargs.get("axes"), kwargs.get("prompt"), kwargs.get("negative_prompt"))
    axes = [_with_spec_labels(a, s) for a, s in zip(axes, spec_dict["axes"])]
    base = {name: kwargs.get(name) for name in CORE_PARAMS}
    base["variation_strength"] = base["variation_strength"] or 0.0
    base["pipeline_kwargs"] = dict((spec_dict.get("fixed") or {}).get("pipeline_kwargs") or {})
    planned = plan_cells(base, axes, kwargs.get("link"), vary_seeds=bool(kwargs.get("vary_seeds")))

    # 2. each cell's manifest row: same position, same request
    rows_at: dict[int, list[dict]] = {}
    for row in manifest_rows(run_dir / MANIFEST):
        if isinstance(row.get("index"), int) and isinstance(row.get("request"), dict):
            rows_at.setdefault(row["index"], []).append(row)
    matched = [next((r for r in reversed(rows_at.get(i, [])) if _ran(p, r)), None) for i, (_, p) in enumerate(planned)]
    # a cell not run yet gets its model's defaults as the cells that ran got them
    defaults = {str(p.get("model")): _defaults_of(r["request"]) for (_, p), r in zip(planned, matched) if r}
    # the scores of the sweep's own scorers (a row keeps those of earlier sweeps of its image too)
    listed = spec_dict.get("metrics")
    scorers = [m["name"] for m in listed if isinstance(m, dict) and "name" in m] if isinstance(listed, list) else None
    cells = []
    for index, ((coords, params), row) in enumerate(zip(planned, matched)):
        if row is not None:
            cells.append(_cell(index, coords, params, row, run_dir, scorers))
        else:
            request = cell_request(params, defaults.get(str(params.get("model")), Defaults()))
            cells.append(SweepCell(index=index, coords=coords, request=request, model=str(params.get("model") or "")))
    return SweepResult(axes=axes, cells=cells, out_dir=run_dir, spec=spec_dict, title=spec_dict.get("title"))


def _read_spec(run_dir: Path, spec: str | Path | None) -> dict[str, Any]:
    if spec is None:
        found = [p for p in (run_dir / "sweeps").glob("*.json") if not p.name.startswith(".")]
        specs = sorted(found, key=lambda p: p.stat().st_mtime)
        if not specs:
            raise ValueError(f"`path`: {run_dir} holds no sweep definition (sweeps/*.json)")
        return json.loads(specs[-1].read_text(encoding="utf-8"))
    spec = Path(spec)
    if spec.suffix.lower() == ".json":
        return json.loads(spec.read_text(encoding="utf-8"))
    chunks = read_text_chunks(spec)
    if SPEC_KEY not in chunks:
        raise ValueError(f"`spec`: {spec} carries no sdlab sweep definition (no '{SPEC_KEY}' text chunk)")
    return json.loads(chunks[SPEC_KEY])


def _sweep_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """`load_sweep`'s keyword arguments of a spec (it reads specs from files)."""
    with tempfile.TemporaryDirectory(prefix="sdlab-spec-") as folder:
        path = Path(folder) / "spec.json"
        path.write_text(json.dumps(spec, default=str), encoding="utf-8")
        return load_sweep(path)


def _with_spec_labels(axis: Axis, spec_axis: dict[str, Any]) -> Axis:
    labels = tuple(spec_axis.get("labels") or ())
    if len(labels) != len(axis) or labels == axis.labels:
        return axis
    return Axis(axis.name, axis.values, labels, axis.kind, axis.search, axis.parts)


def _ran(params: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether the manifest row is this planned cell: its request is the cell's request, built as
    `sweep` builds it with the row's model defaults where the sweep left a value open."""
    if "model" in params and row.get("model") != str(params["model"]):
        return False
    try:
        return cell_request(params, _defaults_of(row["request"])).to_dict() == row["request"]
    except (ValueError, TypeError, KeyError, IndexError):
        return False


def _defaults_of(request: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        negative_prompt=request["negative_prompt"][0],
        guidance_scale=request["guidance_scale"][0],
        width=request["width"],
        height=request["height"],
        num_inference_steps=request["num_inference_steps"],
    )


def _cell(
    index: int, coords: dict[str, int], params: dict[str, Any], row: dict, run_dir: Path, scorers: list[str] | None
) -> SweepCell:
    request = cell_request(params, _defaults_of(row["request"]))
    cell = SweepCell(index=index, coords=coords, request=request, model=str(row.get("model", "")), key=row["key"])
    cell.seconds, cell.peak_memory_mb, cell.cached = row.get("seconds"), row.get("peak_memory_mb"), True
    if row.get("error"):
        cell.error = str(row["error"])
    elif row.get("file") and (run_dir / row["file"]).exists():
        cell.path = run_dir / row["file"]
    else:
        cell.error = f"the image {row.get('file')!r} is missing from the run directory"
    if "metrics" in SweepCell.__dataclass_fields__:  # scores, where the sweep has them
        cell.metrics = {n: v for n, v in (row.get("metrics") or {}).items() if _scored_by(n, scorers)}
        cell.metric_errors = {n: e for n, e in (row.get("metric_errors") or {}).items() if _scored_by(n, scorers)}
        cell.metric_keys = {n: k for n, k in (row.get("metric_keys") or {}).items() if _scored_by(n, scorers)}
    return cell


def _scored_by(name: str, scorers: list[str] | None) -> bool:
    """Whether a score (or scorer) name belongs to the sweep's scorers ("judge" owns "judge.colour");
    a spec that names none (written before scores) keeps every score its rows carry."""
    return scorers is None or any(name == s or name.startswith(s + ".") for s in scorers)
