"""Sweeps: grids over any generation parameter that batch across cells, cache, resume and draw.

    result = sdlab.sweep(pipe, "a large red circle on a blue background",
                         axes={"seed": "1-4", "guidance_scale": [1.5, 3, 5, 7]}, batch_size=16)
    result.grid()          # labelled grid, x = seed, y = guidance
    result.table           # one row a cell

How a sweep runs:
1. The axes are expanded into cells (product, or zipped where `link` says so); every cell is a
   complete set of generation parameters with its seed resolved.
2. Each cell gets a cache key: a hash of its parameters, the model's identity and the versions
   that change pixels. Cells already in the run directory (intact) are not generated again.
3. The rest is ordered with expensive axes outermost (model, then scheduler) and grouped into
   batches of cells that can share one pipeline call: different seeds, prompts and guidance
   scales go together (per-image guidance in one batched loop).
4. Each image is written atomically as it arrives, with its record, and a manifest row is
   appended; a failing batch is split and retried, so one bad cell does not stop the rest.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from .axes import (
    Axis,
    apply_order,
    apply_replacements,
    fill_template,
    make_axis,
    placeholders,
    prompt_matrix,
    prompt_order,
    prompt_sr,
)
from .backends.base import as_backend
from .executors import get_executor
from .request import GenerationRequest, check_positive_int, describe_value, random_seed

SPEC_KEY = "sdlab_sweep"
MANIFEST = "manifest.jsonl"
CORE_PARAMS = ("prompt", "negative_prompt", "seed", "guidance_scale", "num_inference_steps", "scheduler", "width", "height")
DEFAULT_OUT_DIR = Path("runs") / "sweeps"

__all__ = ["Axis", "SweepCell", "SweepResult", "prompt_matrix", "prompt_order", "prompt_sr", "sweep", "load_sweep"]


@dataclass
class SweepCell:
    """One cell: its position on every axis, its full parameters, and what became of it."""

    index: int
    coords: dict[str, int]  # axis name -> value index
    params: dict[str, Any]  # prompt, negative_prompt, seed, ..., pipeline_kwargs, model
    key: str = ""
    path: Path | None = None
    seconds: float | None = None
    peak_memory_mb: float | None = None
    error: str | None = None
    cached: bool = False
    model_index: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None


# ------------------------------------------------------------------ planning


def _normalise_axes(axes, prompt, negative_prompt) -> list[Axis]:
    if axes is None:
        return []
    if isinstance(axes, dict):
        items = list(axes.items())
    else:
        items = [(a.name, a) if isinstance(a, Axis) else a for a in axes]
    out, names = [], set()
    for name, values in items:
        axis = make_axis(name, values, prompt=prompt, negative_prompt=negative_prompt) if not isinstance(values, Axis) else values
        if isinstance(values, Axis) and name != values.name:
            axis = Axis(name, values.values, values.labels, values.kind, values.search, values.parts)
        if axis.name in names:
            raise ValueError(f"axis `{axis.name}` is given twice")
        names.add(axis.name)
        out.append(axis)
    return out


def _link_groups(axes: list[Axis], link) -> list[list[Axis]]:
    """Axes grouped into product dimensions: linked axes move together (zip)."""
    by_name = {a.name: a for a in axes}
    groups: list[list[str]] = []
    seen: set[str] = set()
    for group in link or []:
        if isinstance(group, str):
            raise ValueError("`link` takes groups of axis names, e.g. link=[('model', 'size')]")
        group = list(group)
        for name in group:
            if name not in by_name:
                raise ValueError(f"`link` names axis {name!r}, which is not in `axes` ({', '.join(by_name)})")
            if name in seen:
                raise ValueError(f"axis {name!r} is in two `link` groups")
            seen.add(name)
        lengths = {len(by_name[n]) for n in group}
        if len(lengths) != 1:
            raise ValueError(f"linked axes {group} must have the same number of values, got {[len(by_name[n]) for n in group]}")
        groups.append(group)
    dims: list[list[Axis]] = []
    for axis in axes:
        if axis.name in seen:
            group = next(g for g in groups if axis.name in g)
            if group[0] == axis.name:
                dims.append([by_name[n] for n in group])
        else:
            dims.append([axis])
    return dims


def _cell_params(base: dict[str, Any], axes: list[Axis], coords: dict[str, int]) -> dict[str, Any]:
    params = dict(base)
    params["pipeline_kwargs"] = dict(base.get("pipeline_kwargs") or {})
    templates: dict[str, str] = {}
    replacements: dict[str, str] = {}
    orders: list[tuple[Axis, tuple]] = []
    for axis in axes:
        value = axis.values[coords[axis.name]]
        if axis.kind == "size":
            params["width"], params["height"] = value
        elif axis.kind == "template":
            templates[axis.name] = value
        elif axis.kind == "sr":
            replacements[axis.search] = value
        elif axis.kind == "matrix":
            params["prompt"] = value
        elif axis.kind == "order":
            orders.append((axis, value))
        elif axis.kind == "model":
            params["model"] = value
        elif axis.name in CORE_PARAMS:
            params[axis.name] = value
        else:
            params["pipeline_kwargs"][axis.name] = value
    for axis, order in orders:
        params["prompt"] = apply_order(params["prompt"], axis.parts, order)
    if templates:
        params["prompt"] = fill_template(params["prompt"], templates)
        params["negative_prompt"] = fill_template(params["negative_prompt"], templates)
    if replacements:
        params["prompt"] = apply_replacements(params["prompt"], replacements)
        params["negative_prompt"] = apply_replacements(params["negative_prompt"], replacements)
    return params


def plan_cells(
    base: dict[str, Any],
    axes: list[Axis],
    link=None,
    *,
    vary_seeds: bool = False,
) -> list[SweepCell]:
    """Every cell of the sweep, in grid order (first axis fastest), with parameters resolved."""
    for axis in axes:
        if axis.kind == "sr":
            hay = (base.get("prompt") or "") + "\n" + (base.get("negative_prompt") or "")
            prompts = [base.get("prompt") or ""]
            prompt_axis = next((a for a in axes if a.name == "prompt"), None)
            if prompt_axis is not None:
                prompts = [str(v) for v in prompt_axis.values]
            for p in prompts:
                if axis.search not in p and axis.search not in (base.get("negative_prompt") or ""):
                    raise ValueError(f"Prompt S/R: {axis.search!r} is not in the prompt {p!r} or the negative prompt")
            del hay
        if axis.kind == "template":
            pass
    dims = _link_groups(axes, link)
    sizes = [len(d[0]) for d in dims]
    cells = []
    # first dimension fastest, like A1111 (x varies fastest)
    for flat, combo in enumerate(itertools.product(*[range(n) for n in reversed(sizes)])):
        combo = tuple(reversed(combo))
        coords = {}
        for dim, i in zip(dims, combo):
            for axis in dim:
                coords[axis.name] = i
        params = _cell_params(base, axes, coords)
        if vary_seeds:
            offset = 0
            stride = 1
            for dim, i in zip(dims, combo):
                if any(a.name == "seed" for a in dim):
                    continue
                offset += i * stride
                stride *= len(dim[0])
            params["seed"] = int(params["seed"]) + offset
        cells.append(SweepCell(index=flat, coords=coords, params=params))
    missing = placeholders(base.get("prompt")) & {a.name for a in axes if a.kind != "template"}
    if missing:  # pragma: no cover - make_axis already classifies these
        raise ValueError(f"placeholders {sorted(missing)} are not template axes")
    return cells


# ------------------------------------------------------------------ cache keys and the run directory


def _jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {k: describe_value(v) for k, v in params.items() if k not in ("pipeline_kwargs", "model")}
    out["pipeline_kwargs"] = {k: describe_value(v) for k, v in sorted((params.get("pipeline_kwargs") or {}).items())}
    model = params.get("model")
    if model is not None:
        out["model"] = model if isinstance(model, str) else _model_label(model)
    return out


def cell_key(params: dict[str, Any], identity: dict[str, Any]) -> str:
    """The cache key: every parameter of the cell plus the model identity and pixel-changing versions."""
    payload = {"params": _jsonable_params({k: v for k, v in params.items() if k != "model"}), "identity": identity}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDirectory:
    """A sweep's run directory: `cells/` PNGs (each with its record) and `manifest.jsonl`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / MANIFEST
        self.rows: dict[str, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.manifest_path.exists():
            return
        with open(self.manifest_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that cell is simply redone
                if isinstance(row, dict) and "key" in row:
                    self.rows[row["key"]] = row

    def lookup(self, key: str) -> dict | None:
        """The manifest row of an intact cached image, or None (missing, corrupt or failed)."""
        row = self.rows.get(key)
        if row is None or row.get("error") or not row.get("file"):
            return None
        path = self.root / row["file"]
        if not path.exists():
            return None
        if row.get("sha256") and _file_sha256(path) != row["sha256"]:
            return None
        return row

    def append(self, row: dict) -> None:
        self.rows[row["key"]] = row
        with open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _slug(cell: SweepCell, axes: list[Axis]) -> str:
    parts = []
    for axis in axes:
        label = axis.labels[cell.coords[axis.name]]
        parts.append(f"{axis.name}={label}" if axis.kind not in ("param",) or ":" not in label else label.replace(": ", "="))
    text = "_".join(parts) or "cell"
    safe = "".join(c if c.isalnum() or c in "=.-+" else "-" for c in text)
    while "--" in safe:
        safe = safe.replace("--", "-")
    return safe[:80].strip("-_") or "cell"


# ------------------------------------------------------------------ models


def _model_label(model: Any) -> str:
    if isinstance(model, str):
        return model
    try:
        return as_backend(model).model_id
    except TypeError:
        return type(model).__name__


def _open_model(spec: Any):
    """A backend for a model axis value: a pipeline/backend object, or a spec to load."""
    if not isinstance(spec, str):
        return as_backend(spec)
    if spec.startswith(("replicate:", "comfyui:")):
        from . import backends

        return backends.open_backend(spec)
    from .loading import load_pipeline

    return as_backend(load_pipeline(spec, progress_bar=False))


def _spec_identity(spec: str) -> dict[str, Any]:
    """Identity of a model not loaded yet (so cached cells need no load)."""
    from .generate import versions
    from .loading import resolve_device

    return {"model_spec": spec, "device_type": resolve_device("auto").split(":")[0], "versions": versions()}


def _release(backend) -> None:
    """Free a model before the next one loads (sweeps over many checkpoints must not pile up)."""
    del backend
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------ execution


def _request_for(cell: SweepCell, backend) -> GenerationRequest:
    p = cell.params
    return GenerationRequest(
        prompt=(p["prompt"],),
        negative_prompt=(p["negative_prompt"],),
        seed=(int(p["seed"]),),
        guidance_scale=(float(p["guidance_scale"]),),
        width=int(p["width"]),
        height=int(p["height"]),
        num_inference_steps=int(p["num_inference_steps"]),
        scheduler=p["scheduler"],
        pipeline_kwargs=dict(p["pipeline_kwargs"]),
    )


def _batches(cells: list[SweepCell], backend, batch_size: int) -> list[list[SweepCell]]:
    """Cells that can share one pipeline call, in chunks of at most `batch_size`."""
    limit = max(1, min(batch_size, int(getattr(backend, "max_batch_size", batch_size) or batch_size)))
    per_image_guidance = bool(backend.supports_per_image_guidance())
    groups: dict[str, list[SweepCell]] = {}
    for cell in cells:
        request = _request_for(cell, backend)
        key = request.shared_key()
        if not per_image_guidance:
            key += f"|g={request.guidance_scale[0]!r}"
        groups.setdefault(key, []).append(cell)
    # scheduler outermost among the remaining groups (model is handled by the caller)
    ordered = sorted(groups.values(), key=lambda g: (str(g[0].params.get("scheduler")), g[0].index))
    out = []
    for group in ordered:
        for i in range(0, len(group), limit):
            out.append(group[i:i + limit])
    return out


def _validate(backend, requests: list[GenerationRequest]) -> None:
    """Bad input is an error before any model work (a remote backend checks all in one round trip)."""
    many = getattr(backend, "validate_many", None)
    if many is not None:
        many(requests)
        return
    for request in requests:
        backend.validate(request)


def _record(outcome, batch: list[SweepCell], run: RunDirectory, axes, on_done) -> None:
    """Write what an executor returned for (part of) a batch: each image with its record, and a
    manifest row per cell; a failed cell gets a row with its error."""
    from .metadata import save_png

    cells = [batch[i] for i in outcome.indices]
    if outcome.error is not None:
        for cell in cells:
            cell.error = outcome.error
            run.append({"key": cell.key, "error": cell.error, "params": _jsonable_params(cell.params), "index": cell.index})
            on_done(cell)
        return
    peak = outcome.peak_memory_mb
    for cell, image, record in zip(cells, outcome.result.images, outcome.result.records):
        record = dict(record)
        record["sweep"] = {"key": cell.key, "coords": {a.name: a.labels[cell.coords[a.name]] for a in axes}}
        path = run.cells_dir / f"{_slug(cell, axes)}__{cell.key[:12]}.png"
        save_png(image, path, record)
        cell.path, cell.seconds, cell.error = path, record.get("seconds"), None
        cell.peak_memory_mb = round(peak, 1) if peak is not None else None
        run.append({
            "key": cell.key,
            "file": str(path.relative_to(run.root)),
            "sha256": _file_sha256(path),
            "seconds": cell.seconds,
            "peak_memory_mb": cell.peak_memory_mb,
            "params": _jsonable_params(cell.params),
            "index": cell.index,
        })
        on_done(cell)


# ------------------------------------------------------------------ the public entry point


def sweep(
    pipe: Any,
    prompt: str | None = None,
    *,
    axes: dict[str, Any] | Sequence[Axis] | None = None,
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    link: Sequence[Sequence[str]] | None = None,
    vary_seeds: bool = False,
    negative_prompt: str | None = None,
    seed: int | None = 0,
    width: int | None = None,
    height: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    scheduler: str | None = None,
    title: str | None = None,
    verbose: bool = True,
    progress: Callable[[dict], None] | None = None,
    executor: Any = None,
    **pipeline_kwargs: Any,
) -> "SweepResult":
    """Generate a grid of images over any parameters, batched, cached and resumable.

    Args:
        pipe: a pipeline (from `load_pipeline`), a backend, a model name/path/id, or None when
            the sweep has a `model` axis.
        prompt: the base prompt (or give a `prompt` axis).
        axes: axis name -> values, in order (x, y, z, ...). Names are generation parameters
            (`seed`, `guidance_scale`, `num_inference_steps`, `scheduler`, `prompt`,
            `negative_prompt`, `size` ("WxH"), `width`, `height`, `model`), any other pipeline
            keyword (`controlnet_conditioning_scale`, `control_guidance_end`, ...), or a
            `{placeholder}` in the prompt. Values are lists or A1111 text ("1-5", "0-1 [5]",
            "3.5-9.5 (+1.5)", quoted comma lists). `prompt_sr`, `prompt_matrix` and
            `prompt_order` make prompt axes.
        batch_size: how many images may share one pipeline call (seeds, prompts and guidance
            scales are batched together).
        out_dir: the run directory (default `runs/sweeps`); cells already there are reused.
        link: groups of axes that move together instead of forming a product,
            e.g. `link=[("model", "size")]`.
        vary_seeds: add the cell's position to its seed (A1111's "vary seeds").
        seed: the seed of every cell without a seed axis; None or -1 draws one random seed,
            resolved once and recorded.
        progress: called with a dict (`step`, `total`, ...) after every denoising step; on Ray
            also with `worker` (its number), `pid` and `batch`.
        executor: where the batches run: "local" (default: this process), "ray" (Ray actors that
            each load the model, given by name/path/id), or an executor object such as
            `sdlab.executors.RayExecutor(num_workers=8, num_gpus_per_worker=1)`. The run
            directory, cache and manifest are the same either way: a sweep started on one
            resumes on the other.
        **pipeline_kwargs: fixed pipeline keywords for every cell.
    """
    from .generate import versions

    batch_size = check_positive_int(batch_size, "batch_size")
    axes_list = _normalise_axes(axes, prompt, negative_prompt)
    names = [a.name for a in axes_list]
    prompt_axis = "prompt" in names or any(a.kind == "matrix" for a in axes_list)
    if prompt is None and not prompt_axis:
        raise ValueError("give a `prompt`, or a `prompt` axis")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError("`prompt` must be a string; sweep several prompts with axes={'prompt': [...]}")
    for a in axes_list:
        if a.kind == "matrix" and prompt is None:
            pass
    model_axis = next((a for a in axes_list if a.kind == "model"), None)
    if pipe is None and model_axis is None:
        raise ValueError("`pipe` is None: pass a pipeline, a backend or a model name, or sweep a `model` axis")
    executor, own_executor = get_executor(executor)
    check_model = getattr(executor, "check_model", None)
    if check_model is not None:  # e.g. Ray workers load models by name: a loaded pipeline cannot go there
        for value in (model_axis.values if model_axis else [pipe]):
            check_model(value)
    if seed is None or seed == -1:
        seed = random_seed()
    resolved_axes = []
    for a in axes_list:  # -1 on a seed axis is resolved once and recorded
        if a.name == "seed":
            values = tuple(random_seed() if v in (-1, None) else int(v) for v in a.values)
            a = Axis("seed", values, tuple(f"Seed: {v}" for v in values), a.kind)
        resolved_axes.append(a)
    axes_list = resolved_axes

    # 1. models: the pipe argument, or each value of the model axis
    model_values = list(model_axis.values) if model_axis else [pipe]
    primary = None
    if model_axis is None:
        try:
            primary = executor.open(pipe)
        except BaseException:
            if own_executor:
                executor.close()
            raise
    identities = []
    for value in model_values:
        if model_axis is None:
            identities.append(primary.identity())
        elif isinstance(value, str):
            identities.append(_spec_identity(value))
        else:
            identities.append(as_backend(value).identity())

    base = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": int(seed),
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "scheduler": scheduler,
        "width": width,
        "height": height,
        "pipeline_kwargs": dict(pipeline_kwargs),
    }
    cells = plan_cells(base, axes_list, link, vary_seeds=vary_seeds)

    # 2. defaults of each model fill what the sweep leaves open; then keys
    run = RunDirectory(Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR)
    backends: dict[int, Any] = {}
    for cell in cells:
        m = model_axis.values.index(cell.params["model"]) if model_axis else 0
        cell.model_index = m
        defaults = _defaults_for_value(model_values[m], primary if model_axis is None else None)
        for key in ("width", "height", "num_inference_steps", "guidance_scale"):
            if cell.params.get(key) is None:
                cell.params[key] = getattr(defaults, key)
        if cell.params.get("negative_prompt") is None:
            cell.params["negative_prompt"] = defaults.negative_prompt
        cell.key = cell_key(cell.params, identities[m])

    # 3. what is cached, what is to do
    todo: list[SweepCell] = []
    for cell in cells:
        row = run.lookup(cell.key)
        if row is not None:
            cell.path = run.root / row["file"]
            cell.seconds, cell.peak_memory_mb, cell.cached = row.get("seconds"), row.get("peak_memory_mb"), True
        else:
            todo.append(cell)
    total_steps = sum(int(c.params["num_inference_steps"] or 0) for c in todo)  # 0: known once loaded
    if primary is not None:  # bad input is an error before any model work, not a failed cell
        try:
            _validate(primary, [_request_for(cell, primary) for cell in todo])
        except BaseException:
            if own_executor:
                executor.close()
            raise
    spec = _spec(prompt, negative_prompt, axes_list, link, vary_seeds, base, title, model_values)
    (run.root / "sweeps").mkdir(exist_ok=True)
    spec_text = json.dumps(spec, sort_keys=True, default=str)
    spec_path = run.root / "sweeps" / f"{hashlib.sha256(spec_text.encode()).hexdigest()[:16]}.json"
    spec_path.write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
    if verbose:
        print(
            f"sweep: {len(cells)} cells ({' x '.join(str(len(a)) for a in axes_list) or '1'}), "
            f"{len(cells) - len(todo)} cached, {len(todo)} to generate, {total_steps} denoising steps; "
            f"run directory {run.root}" + (f"; {executor.label}" if getattr(executor, "label", None) else "")
        )

    # 4. generate, model by model (each loaded once, expensive axes outermost)
    bar = _progress_bar(len(todo), verbose)
    start = time.perf_counter()

    def on_done(cell: SweepCell) -> None:
        bar.update(1)

    try:
        for m in sorted({c.model_index for c in todo}):
            model_cells = [c for c in todo if c.model_index == m]
            backend = primary if model_axis is None else executor.open(model_values[m])
            for c in model_cells:  # a model's own defaults may only be known once it is loaded
                _fill_from_backend(c, backend)
            _validate(backend, [_request_for(c, backend) for c in model_cells])
            batches = _batches(model_cells, backend, batch_size)
            requests = [GenerationRequest.concat([_request_for(c, backend) for c in batch]) for batch in batches]
            for outcome in executor.run(backend, requests, progress=progress):
                _record(outcome, batches[outcome.batch], run, axes_list, on_done)
            if model_axis is not None and isinstance(model_values[m], str):
                executor.release(backend)
    except KeyboardInterrupt:
        done = sum(1 for c in cells if c.ok or c.error)
        print(f"sweep interrupted: {done} of {len(cells)} cells are saved in {run.root}; run the same sweep again to resume")
        raise
    finally:
        bar.close()
        if own_executor:
            executor.close()
    seconds = time.perf_counter() - start
    result = SweepResult(axes=axes_list, cells=cells, out_dir=run.root, spec=spec, seconds=seconds, title=title)
    if verbose and todo:
        failed = sum(1 for c in cells if c.error)
        print(f"sweep: done in {seconds:.1f}s" + (f", {failed} cells failed (see result.table)" if failed else ""))
    return result


def _defaults_for_value(value, primary):
    from .backends.base import Defaults

    if primary is not None:
        return primary.defaults
    if isinstance(value, str):
        from .presets import PRESETS

        preset = PRESETS.get(value)
        if preset is not None:
            return preset.defaults
        if value.startswith(("replicate:", "comfyui:")):  # remote specs: defaults need no network
            from . import backends

            return backends.open_backend(value).defaults
        return Defaults(None, None, None, None)  # filled once the model is loaded
    return as_backend(value).defaults


def _fill_from_backend(cell: SweepCell, backend) -> None:
    d = backend.defaults
    for key in ("width", "height", "num_inference_steps", "guidance_scale"):
        if cell.params.get(key) is None:
            cell.params[key] = getattr(d, key)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="sweep", disable=not enabled or total == 0, leave=True)


def _spec(prompt, negative_prompt, axes, link, vary_seeds, base, title, model_values) -> dict:
    """The sweep's definition, JSON-able: enough to run it again (`load_sweep`)."""
    return {
        "version": 1,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "axes": [
            {"name": a.name, "kind": a.kind, "values": [describe_value(v) if a.kind != "model" else _model_label(v) for v in a.values],
             "labels": list(a.labels), "search": a.search, "parts": list(a.parts)}
            for a in axes
        ],
        "link": [list(g) for g in (link or [])],
        "vary_seeds": vary_seeds,
        "fixed": {k: describe_value(v) for k, v in base.items() if k not in ("prompt", "negative_prompt") and v is not None},
        "title": title,
    }


# ------------------------------------------------------------------ results


@dataclass
class SweepResult:
    """The cells of a sweep, their images and a labelled grid."""

    axes: list[Axis]
    cells: list[SweepCell]
    out_dir: Path
    spec: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    title: str | None = None

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    def axis(self, name: str) -> Axis:
        for a in self.axes:
            if a.name == name:
                return a
        raise ValueError(f"no axis {name!r}; axes: {', '.join(self.axis_names)}")

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row a cell: axis values, seed, path, seconds, peak memory, error, cached."""
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {"index": cell.index}
            for a in self.axes:
                value = a.values[cell.coords[a.name]]
                row[a.name] = value if isinstance(value, (str, int, float)) else a.labels[cell.coords[a.name]]
            row.update({
                "prompt": cell.params.get("prompt"),
                "seed": cell.params.get("seed"),
                "guidance_scale": cell.params.get("guidance_scale"),
                "num_inference_steps": cell.params.get("num_inference_steps"),
                "path": str(cell.path) if cell.path else None,
                "seconds": cell.seconds,
                "peak_memory_mb": cell.peak_memory_mb,
                "error": cell.error,
                "cached": cell.cached,
            })
            rows.append(row)
        return rows

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            from .errors import MissingDependencyError

            raise MissingDependencyError("pandas", "SweepResult.to_pandas()") from e
        return pd.DataFrame(self.table)

    @property
    def images(self) -> list[Image.Image | None]:
        return [self._image(c) for c in self.cells]

    @property
    def failed(self) -> list[SweepCell]:
        return [c for c in self.cells if c.error]

    def _image(self, cell: SweepCell) -> Image.Image | None:
        if cell.path is None or not Path(cell.path).exists():
            return None
        with Image.open(cell.path) as im:
            im.load()
            return im.copy()

    def _value_index(self, axis: Axis, value: Any) -> int:
        for i, (v, label) in enumerate(zip(axis.values, axis.labels)):
            if v == value or label == value or (isinstance(v, float) and isinstance(value, (int, float)) and math.isclose(v, value)):
                return i
        raise ValueError(f"axis {axis.name!r} has no value {value!r}; values: {list(axis.labels)}")

    def select(self, **values: Any) -> list[SweepCell]:
        """The cells with the given axis values (by value or label), e.g. select(seed=1)."""
        wanted = {}
        for name, value in values.items():
            axis = self.axis(name)
            options = value if isinstance(value, (list, tuple, set)) and axis.kind != "size" else [value]
            wanted[name] = {self._value_index(axis, v) for v in options}
        return [c for c in self.cells if all(c.coords[n] in idx for n, idx in wanted.items())]

    def image(self, **values: Any) -> Image.Image:
        """The image of the one cell with these axis values."""
        cells = self.select(**values)
        if len(cells) != 1:
            raise ValueError(f"{len(cells)} cells match {values}; name a value on every axis")
        image = self._image(cells[0])
        if image is None:
            raise ValueError(f"the cell {values} has no image: {cells[0].error or 'missing'}")
        return image

    def grid(
        self,
        x: str | None = None,
        y: str | None = None,
        z: str | Sequence[str] | None = None,
        *,
        title: str | None = None,
        margin: int = 4,
        max_pixels: int | None = 64_000_000,
        filter: dict[str, Any] | None = None,
    ) -> Image.Image:
        """A labelled grid: `x` across, `y` down, one sub-grid per `z` value (default: the first
        three axes; further axes become sub-grids too unless pinned with `filter`)."""
        from .grid import Label, fit_pixels, join_horizontally, labelled_grid

        names = self.axis_names
        filter = dict(filter or {})
        for name in filter:
            self.axis(name)
        free = [n for n in names if n not in filter]
        x = x if x is not None else (free[0] if free else None)
        y = y if y is not None else next((n for n in free if n != x), None)
        for name in (x, y):
            if name is not None:
                self.axis(name)
        if z is None:
            z_names = [n for n in free if n not in (x, y)]
        else:
            z_names = [z] if isinstance(z, str) else list(z)
            for n in z_names:
                self.axis(n)
        pinned = {n: {self._value_index(self.axis(n), v) for v in (filter[n] if isinstance(filter[n], (list, tuple)) else [filter[n]])} for n in filter}
        rest = [n for n in free if n not in (x, y) and n not in z_names]
        if rest:
            raise ValueError(f"axes {rest} are neither x, y, z nor filtered")
        xa = self.axis(x) if x else None
        ya = self.axis(y) if y else None
        z_axes = [self.axis(n) for n in z_names]

        def shown(axis) -> list[int]:  # an axis's value indices, only the filtered ones if filtered
            return sorted(pinned[axis.name]) if axis.name in pinned else list(range(len(axis)))

        x_shown = shown(xa) if xa else [0]
        y_shown = shown(ya) if ya else [0]
        z_combos = list(itertools.product(*[shown(a) for a in z_axes])) or [()]
        index = {}
        for cell in self.cells:
            if any(cell.coords[n] not in idx for n, idx in pinned.items()):
                continue
            k = (cell.coords[x] if x else 0, cell.coords[y] if y else 0, tuple(cell.coords[a.name] for a in z_axes))
            index[k] = cell
        subgrids = []
        for combo in z_combos:
            rows, y_labels = [], []
            for yi in y_shown:
                row = []
                for xi in x_shown:
                    cell = index.get((xi, yi, combo))
                    row.append(self._image(cell) if cell else None)
                rows.append(row)
                if ya:
                    y_labels.append(Label(ya.labels[yi]))
            x_labels = None
            if xa:
                x_labels = []
                for xi in x_shown:
                    col_failed = any((index.get((xi, yi, combo)) or SweepCell(0, {}, {})).error for yi in y_shown)
                    x_labels.append(Label(xa.labels[xi], active=not col_failed))
            z_title = ", ".join(a.labels[i] for a, i in zip(z_axes, combo)) or None
            subgrids.append(labelled_grid(rows, x_labels=x_labels, y_labels=y_labels if ya else None, title=z_title, margin=margin))
        image = subgrids[0] if len(subgrids) == 1 else join_horizontally(subgrids, gap=margin * 4)
        title = title if title is not None else self.title
        if title:
            image = labelled_grid([[image]], title=title, margin=0)
        return fit_pixels(image, max_pixels)

    def save_grid(self, path: str | Path | None = None, **grid_kwargs) -> Path:
        """Write the grid as a PNG carrying the sweep's definition (`load_sweep` reads it back)."""
        from .metadata import save_png

        path = Path(path) if path is not None else self.out_dir / "grid.png"
        image = self.grid(**grid_kwargs)
        first = next((c for c in self.cells if c.ok), None)
        record = dict(first.params) if first else {}
        record = _jsonable_params(record) if record else {}
        record["sweep"] = self.spec
        return save_png(image, path, record, extra_text={SPEC_KEY: json.dumps(self.spec, default=str)})

    def figure(self, x: str | None = None, y: str | None = None, *, filter: dict[str, Any] | None = None, size: float = 2.0):
        """A matplotlib figure of the grid (x across, y down) for notebooks."""
        import matplotlib.pyplot as plt

        names = [n for n in self.axis_names if n not in (filter or {})]
        x = x or (names[0] if names else None)
        y = y or next((n for n in names if n != x), None)
        xa, ya = (self.axis(x) if x else None), (self.axis(y) if y else None)
        cols, rows = (len(xa) if xa else 1), (len(ya) if ya else 1)
        fig, axs = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
        for yi in range(rows):
            for xi in range(cols):
                ax = axs[yi][xi]
                ax.set_xticks([])
                ax.set_yticks([])
                sel = dict(filter or {})
                if xa:
                    sel[x] = xa.values[xi] if xa.kind != "size" else xa.labels[xi]
                if ya:
                    sel[y] = ya.values[yi] if ya.kind != "size" else ya.labels[yi]
                cells = self.select(**sel)
                image = self._image(cells[0]) if cells else None
                if image is not None:
                    ax.imshow(image)
                elif cells and cells[0].error:
                    ax.text(0.5, 0.5, "failed", ha="center", va="center", color="grey")
                if yi == 0 and xa:
                    ax.set_title(xa.labels[xi], fontsize=9)
                if xi == 0 and ya:
                    ax.set_ylabel(ya.labels[yi], fontsize=9)
        fig.tight_layout()
        return fig

    def _repr_png_(self):
        import io

        buf = io.BytesIO()
        self.grid(max_pixels=4_000_000).save(buf, format="PNG")
        return buf.getvalue()


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The keyword arguments that rebuild a sweep from its grid PNG or spec JSON:
    `sdlab.sweep(pipe, **load_sweep("grid.png"))`."""
    from .metadata import read_text_chunks

    path = Path(path)
    if path.suffix.lower() == ".png":
        chunks = read_text_chunks(path)
        if SPEC_KEY not in chunks:
            raise ValueError(f"{path} carries no sweep definition (no '{SPEC_KEY}' text chunk)")
        spec = json.loads(chunks[SPEC_KEY])
    else:
        spec = json.loads(path.read_text(encoding="utf-8"))
    axes: dict[str, Any] = {}
    for a in spec["axes"]:
        values = a["values"]
        if any(isinstance(v, dict) and v.get("type") in ("image", "tensor", "array") for v in values):
            raise ValueError(f"axis {a['name']!r} holds images or tensors, which a PNG cannot carry; pass them again")
        if a["kind"] == "sr":
            axes[a["name"]] = prompt_sr(values, name=a["name"])
        elif a["kind"] == "matrix":
            axes[a["name"]] = Axis(a["name"], tuple(values), tuple(a["labels"]), "matrix", None, tuple(a["parts"]))
        elif a["kind"] == "order":
            axes[a["name"]] = Axis(a["name"], tuple(tuple(v) for v in values), tuple(a["labels"]), "order", None, tuple(a["parts"]))
        elif a["kind"] == "size":
            axes[a["name"]] = [tuple(v) for v in values]
        else:
            axes[a["name"]] = list(values)
    kwargs: dict[str, Any] = {"prompt": spec.get("prompt"), "negative_prompt": spec.get("negative_prompt"), "axes": axes,
                              "link": spec.get("link") or None, "vary_seeds": spec.get("vary_seeds", False), "title": spec.get("title")}
    fixed = dict(spec.get("fixed") or {})
    extra = fixed.pop("pipeline_kwargs", {}) or {}
    kwargs.update({k: v for k, v in fixed.items() if k in CORE_PARAMS})
    kwargs.update(extra)
    return kwargs


# ------------------------------------------------------------------ command line


def _parse_axis_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"`--axis` takes NAME=VALUES, e.g. seed=1-4 or 'guidance_scale=1,3,5', got {text!r}")
    name, values = text.split("=", 1)
    return name.strip(), values


def _cmd_sweep(args) -> int:
    from .cli import load_from_args, load_kwargs

    axes: dict[str, Any] = {}
    for text in args.axis or []:
        name, values = _parse_axis_arg(text)
        axes[name] = values
    for i, text in enumerate(args.sr or []):
        a = prompt_sr(text)
        axes[a.name] = a
    if args.matrix:
        axes["matrix"] = prompt_matrix(args.matrix)
    link = [tuple(n.strip() for n in group.split(",")) for group in (args.link or [])]
    model_axis = "model" in axes
    executor = None
    if args.executor == "ray":  # each worker loads the model itself, with these options
        from .executors import RayExecutor
        from .presets import default_model

        executor = RayExecutor(args.ray_address, num_workers=args.workers, num_gpus_per_worker=args.gpus_per_worker,
                               load_kwargs=load_kwargs(args))
        pipe = None if model_axis else (args.model or default_model())
    else:
        pipe = None if model_axis else load_from_args(args)
    try:
        result = _sweep_from_args(args, pipe, axes, link, executor)
    finally:
        if executor is not None:
            executor.close()
    path = result.save_grid(Path(args.out) / "grid.png" if args.out else None, x=args.x, y=args.y, z=args.z)
    failed = len(result.failed)
    print(f"grid: {path}" + (f" ({failed} failed cells)" if failed else ""))
    return 1 if failed == len(result) else 0


def _sweep_from_args(args, pipe, axes, link, executor) -> "SweepResult":
    from .cli import generation_kwargs

    return sweep(pipe, args.prompt, axes=axes, batch_size=args.batch_size, out_dir=args.out, link=link or None,
                 vary_seeds=args.vary_seeds, seed=args.seed, title=args.title, executor=executor,
                 **generation_kwargs(args))


def register_cli(subparsers) -> None:
    from .cli import add_generation_arguments, add_model_arguments

    p = subparsers.add_parser(
        "sweep",
        help="a labelled grid over seeds, guidance, steps, schedulers, prompts ...",
        description="Sweep generation parameters into a labelled grid; cells are batched, cached and resumable.",
        epilog='example: sdlab sweep "a red circle" --axis seed=1-4 --axis "guidance_scale=1.5,3,5,7" --out runs/demo',
    )
    p.add_argument("prompt", nargs="?", default=None)
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--axis", action="append", metavar="NAME=VALUES", help="an axis, e.g. seed=1-4, 'guidance_scale=0-10 [5]', 'scheduler=Euler a,DDIM' (repeatable; order = x, y, z)")
    p.add_argument("--sr", action="append", metavar="SEARCH,REPLACE,...", help="a prompt search/replace axis (repeatable)")
    p.add_argument("--matrix", default=None, metavar="'base|a|b'", help="a prompt matrix axis")
    p.add_argument("--link", action="append", metavar="A,B", help="axes that move together (zip), e.g. model,size")
    p.add_argument("--vary-seeds", action="store_true", help="add each cell's position to its seed")
    p.add_argument("--seed", type=int, default=0, help="seed of cells without a seed axis (-1: random, recorded)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="run directory (default runs/sweeps); cached cells are reused")
    p.add_argument("--title", default=None)
    p.add_argument("-x", default=None, help="axis across the grid")
    p.add_argument("-y", default=None, help="axis down the grid")
    p.add_argument("-z", default=None, help="axis of sub-grids")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="ray: spread the batches over Ray workers, each loading --model itself (pip install 'sdlab[ray]')")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (model copies), with --executor ray")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default: 1 if the cluster has GPUs)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address, e.g. ray://head:10001 (default: RAY_ADDRESS, else a local one)")
    p.set_defaults(func=_cmd_sweep)
