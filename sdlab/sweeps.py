"""Sweeps: grids over any generation parameter that batch across cells, cache, resume and draw.

    result = sdlab.sweep(pipe, "a large red circle on a blue background",
                         axes={"seed": "1-4", "guidance_scale": [1.5, 3, 5, 7]}, batch_size=16)
    result.grid()          # labelled grid, x = seed, y = guidance
    result.table           # one row a cell

How a sweep runs:
1. The axes are expanded into cells (product, or zipped where `link` says so). Every cell is a
   one-image `GenerationRequest`, built (and so validated) exactly as `generate` builds one, with
   the model's defaults filled in: a value `generate` refuses is refused here, before any model work.
2. Each cell gets a cache key: a hash of its request and of its model's identity, which includes
   the weights' content (file hashes, hub commit, or the tensors): new weights, new images.
   Cells already in the run directory (intact) are not generated again.
3. The rest is ordered with expensive axes outermost (model, then scheduler) and grouped into
   batches of cells that can share one pipeline call: different seeds, prompts and guidance
   scales go together (per-image guidance in one batched loop).
4. An executor runs the batches (here, or on Ray). Each image is written atomically as it
   arrives, with its record, and a manifest row is appended; a failing batch is split and
   retried, so one bad cell does not stop the rest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .adapters import apply_lora_axis, is_lora_axis, loras_for
from .axes import (
    Axis,
    apply_order,
    apply_replacements,
    check_search_replace,
    fill_template,
    format_label,
    make_axis,
    placeholders,
    prompt_matrix,
    prompt_order,
    prompt_sr,
)
from .backends import as_backend, model_facts
from .executors import get_executor
from .identity import content_sha256
from .metadata import read_params, save_png
from .metrics import Reference, Scorer, resolve
from .request import GenerationRequest, check_positive_int, describe_value, random_seed
from .sweep_result import CORE_PARAMS, SweepCell, SweepResult, load_sweep, manifest_rows
from .textual_inversion import resolve_embeddings

MANIFEST = "manifest.jsonl"
DEFAULT_OUT_DIR = Path("runs") / "sweeps"

__all__ = [
    "Axis",
    "SweepCell",
    "SweepResult",
    "prompt_matrix",
    "prompt_order",
    "prompt_sr",
    "sweep",
    "sweep_from_file",
    "load_sweep",
]


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
        axis = (
            make_axis(name, values, prompt=prompt, negative_prompt=negative_prompt)
            if not isinstance(values, Axis)
            else values
        )
        if isinstance(values, Axis) and name != values.name:
            axis = Axis(name, values.values, values.labels, values.kind, values.search, values.parts)
        if axis.name in names:
            raise ValueError(f"axis `{axis.name}` is given twice")
        names.add(axis.name)
        out.append(axis)
    check_search_replace(out, prompt, negative_prompt)
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
            raise ValueError(
                f"linked axes {group} must have the same number of values, got {[len(by_name[n]) for n in group]}"
            )
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
    lora_axes: list[tuple[bool, str, Any]] = []
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
        elif axis.name == "embedding":  # textual inversion: which embedding(s), link= it with its trigger word
            params["embeddings"] = value
        elif is_lora_axis(axis.name):  # sdlab.adapters: which LoRA files (first), then their weights
            lora_axes.append((axis.name != "lora", axis.name, value))
        elif axis.name in CORE_PARAMS:
            params[axis.name] = value
        else:
            params["pipeline_kwargs"][axis.name] = value
    for _, name, value in sorted(lora_axes, key=lambda t: t[0]):
        params["loras"] = apply_lora_axis(params.get("loras"), name, value)
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
    base: dict[str, Any], axes: list[Axis], link=None, *, vary_seeds: bool = False
) -> list[tuple[dict[str, int], dict[str, Any]]]:
    """Every cell's (coords, parameters), in grid order (first axis fastest, like A1111's x)."""
    for axis in axes:
        if axis.kind == "sr":
            prompt_axis = next((a for a in axes if a.name == "prompt"), None)
            prompts = [str(v) for v in prompt_axis.values] if prompt_axis is not None else [base.get("prompt") or ""]
            for p in prompts:
                if axis.search not in p and axis.search not in (base.get("negative_prompt") or ""):
                    raise ValueError(f"Prompt S/R: {axis.search!r} is not in the prompt {p!r} or the negative prompt")
    dims = _link_groups(axes, link)
    sizes = [len(d[0]) for d in dims]
    planned = []
    for combo in itertools.product(*[range(n) for n in reversed(sizes)]):
        combo = tuple(reversed(combo))
        coords = {axis.name: i for dim, i in zip(dims, combo) for axis in dim}
        params = _cell_params(base, axes, coords)
        if vary_seeds:
            offset, stride = 0, 1
            for dim, i in zip(dims, combo):
                if any(a.name == "seed" for a in dim):
                    continue
                offset += i * stride
                stride *= len(dim[0])
            params["seed"] = params["seed"] + offset
        planned.append((coords, params))
    missing = placeholders(base.get("prompt")) & {a.name for a in axes if a.kind != "template"}
    if missing:  # pragma: no cover - make_axis already classifies these
        raise ValueError(f"placeholders {sorted(missing)} are not template axes")
    return planned


def cell_request(
    params: dict[str, Any], defaults, *, local: bool = True, controlnet: bool = False
) -> GenerationRequest:
    """A cell's one-image request: the model's defaults where the sweep leaves a value open, then
    the request's own checks (the same as `generate`'s). Init images, masks, strength, hires and
    refiner values (sdlab.inputs) become request fields (on ControlNet models `image` stays the control image)."""
    from . import inputs

    def pick(name):
        value = params.get(name)
        return getattr(defaults, name) if value is None else value

    pipeline_kwargs = dict(params.get("pipeline_kwargs") or {})
    fields = inputs.fit_fields(
        inputs.take_fields(pipeline_kwargs, local=local, controlnet=controlnet),
        count=1,
        width=pick("width"),
        height=pick("height"),
    )

    return GenerationRequest(
        prompt=(params["prompt"],),
        negative_prompt=(pick("negative_prompt"),),
        seed=(params["seed"],),
        guidance_scale=(pick("guidance_scale"),),
        width=pick("width"),
        height=pick("height"),
        num_inference_steps=pick("num_inference_steps"),
        scheduler=params.get("scheduler"),
        pipeline_kwargs=pipeline_kwargs,
        clip_skip=params.get("clip_skip"),
        # strength 0 is no variation (A1111 records none): such a cell is the plain seed's cell
        variation_seed=(params.get("variation_seed") if params.get("variation_strength") else None,),
        variation_strength=(params.get("variation_strength") or 0.0,),
        **fields,
        # LoRAs: the prompt's <lora:name:w> tags (after S/R) and the sweep's `loras` / lora axes
        loras=(loras_for(params["prompt"], params.get("loras")),),
        embeddings=resolve_embeddings(params.get("embeddings")),
    )


def _takes_image_fields(identity: dict[str, Any]) -> bool:
    """Whether a model's `image=` is an init image (sdlab.inputs): local, or ComfyUI's default workflow."""
    if identity.get("backend") == "comfyui":
        from .backends.workflow import Workflow

        return identity.get("workflow_sha256") == Workflow.load(None).sha256()
    return identity.get("backend") == "diffusers"


def cell_key(request: GenerationRequest, identity: dict[str, Any]) -> str:
    """The cache key: the whole request and the model's identity (weights' content, versions)."""
    from .generation import versions

    payload = {"request": request.identity_dict(), "model": identity, "versions": versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def model_label(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    try:
        return as_backend(model).model_id
    except TypeError:
        return type(model).__name__


# ------------------------------------------------------------------ the run directory


class RunDirectory:
    """A sweep's run directory: `cells/` PNGs (each with its record) and `manifest.jsonl`.

    Appends always start on a fresh line (a row cut by a kill never glues to the next); `compact`
    rewrites the manifest with one row per key (the last) when a sweep finishes; temporary PNGs
    left by a kill are removed when the directory is opened."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.root / MANIFEST
        self.rows: dict[str, dict] = {}
        for tmp in self.cells_dir.glob(".tmp-*.png"):
            tmp.unlink(missing_ok=True)
        self._load()

    def _load(self) -> None:
        if not self.manifest_path.exists():
            return
        for row in manifest_rows(self.manifest_path):
            self.rows[row["key"]] = row

    def lookup(self, key: str) -> dict | None:
        """The manifest row of an intact cached image, or None (missing, corrupt or failed)."""
        row = self.rows.get(key)
        if row is None or row.get("error") or not row.get("file"):
            return None
        path = self.root / row["file"]
        if not path.exists():
            return None
        if row.get("sha256") and content_sha256(path) != row["sha256"]:
            return None
        return row

    def append(self, row: dict) -> None:
        self.rows[row["key"]] = row
        line = json.dumps(row, sort_keys=True, default=str) + "\n"
        with open(self.manifest_path, "a+b") as f:
            if f.tell() > 0:  # the last write may have been cut before its newline
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def compact(self) -> None:
        """One row per key (the last written), atomically."""
        tmp = self.manifest_path.with_name(f".{MANIFEST}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in self.rows.values():
                f.write(json.dumps(row, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)


def _slug(cell: SweepCell, axes: list[Axis]) -> str:
    parts = []
    for axis in axes:
        label = axis.labels[cell.coords[axis.name]]
        parts.append(
            f"{axis.name}={label}" if axis.kind not in ("param",) or ":" not in label else label.replace(": ", "=")
        )
    text = "_".join(parts) or "cell"
    safe = "".join(c if c.isalnum() or c in "=.-+" else "-" for c in text)
    while "--" in safe:
        safe = safe.replace("--", "-")
    return safe[:80].strip("-_") or "cell"


def _batches(cells: list[SweepCell], backend, batch_size: int) -> list[list[SweepCell]]:
    """Cells that can share one pipeline call, in chunks of at most `batch_size`."""
    limit = max(1, min(batch_size, int(getattr(backend, "max_batch_size", batch_size) or batch_size)))
    per_image_guidance = bool(backend.supports_per_image_guidance())
    groups: dict[str, list[SweepCell]] = {}
    for cell in cells:
        request = cell.request
        key = request.shared_key()
        if not per_image_guidance:
            key += f"|g={request.guidance_scale[0]!r}"
        groups.setdefault(key, []).append(cell)
    # scheduler outermost among the remaining groups (model is handled by the caller)
    ordered = sorted(groups.values(), key=lambda g: (str(g[0].request.scheduler), g[0].index))
    out = []
    for group in ordered:
        for i in range(0, len(group), limit):
            out.append(group[i : i + limit])
    return out


def _record(outcome, batch: list[SweepCell], run: RunDirectory, axes, on_done) -> None:
    """Write what an executor returned for (part of) a batch: each image with its record, and a
    manifest row per cell; a failed cell gets a row with its error."""
    cells = [batch[i] for i in outcome.indices]
    if outcome.error is not None:
        for cell in cells:
            cell.error = outcome.error
            run.append(
                {
                    "key": cell.key,
                    "error": cell.error,
                    "request": cell.request.to_dict(),
                    "model": cell.model,
                    "index": cell.index,
                }
            )
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
        run.append(
            {
                "key": cell.key,
                "file": str(path.relative_to(run.root)),
                "sha256": content_sha256(path),
                "seconds": cell.seconds,
                "peak_memory_mb": cell.peak_memory_mb,
                "request": cell.request.to_dict(),
                "model": cell.model,
                "index": cell.index,
            }
        )
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
    clip_skip: int | None = None,
    variation_seed: int | None = None,
    variation_strength: float = 0.0,
    loras: Any = None,
    embeddings: Any = None,
    title: str | None = None,
    verbose: bool = True,
    progress: Callable[[dict], None] | None = None,
    executor: Any = None,
    metrics: Sequence[Any] | None = None,
    **pipeline_kwargs: Any,
) -> SweepResult:
    """Generate a grid of images over any parameters, batched, cached and resumable.

    Args:
        pipe: a pipeline (from `load_pipeline`), a backend, a model name/path/id, or None when
            the sweep has a `model` axis.
        prompt: the base prompt (or give a `prompt` axis).
        axes: axis name -> values, in order (x, y, z, ...). Names are generation parameters
            (`seed`, `guidance_scale`, `num_inference_steps`, `scheduler`, `prompt`,
            `negative_prompt`, `size` ("WxH"), `width`, `height`, `clip_skip`, `model`), any other
            pipeline keyword (`controlnet_conditioning_scale`, `control_guidance_end`, ...), or a
            `{placeholder}` in the prompt. Values are lists or A1111 text ("1-5", "0-1 [5]",
            "3.5-9.5 (+1.5)", quoted comma lists). `prompt_sr`, `prompt_matrix` and
            `prompt_order` make prompt axes.
        batch_size: how many images may share one pipeline call (seeds, prompts and guidance
            scales are batched together).
        out_dir: the run directory (default `runs/sweeps`); cells already there are reused.
        link: groups of axes that move together instead of forming a product,
            e.g. `link=[("model", "size")]`.
        vary_seeds: add the cell's position to its seed (A1111's "vary seeds").
        variation_seed, variation_strength: A1111's seed variations for every cell (see `generate`);
            `variation_strength` and `variation_seed` axes explore near a good seed. None (or -1)
            with a strength draws one variation seed, resolved once and recorded.
        loras: LoRAs of every cell (as `generate` takes them). Axes `lora` (a LoRA, or a list of
            LoRAs, per value), `lora_weight` (the weight of every LoRA of the cell) and
            `lora:<name>` (that LoRA's weight) sweep them; cells that differ only in LoRA weights
            share one batched denoising loop, each LoRA layer scaled per image.
        embeddings: textual inversion embeddings of every cell (as `generate` takes them); an
            `embedding` axis sweeps them, e.g. linked with a `{trigger}` template axis:
            `axes={"embedding": ["a.pt", "b.pt"], "trigger": ["a", "b"]}, link=[("embedding", "trigger")]`.
        seed: the seed of every cell without a seed axis; None or -1 draws one random seed,
            resolved once and recorded.
        progress: called with a dict (`step`, `total`, ...) after every denoising step; on Ray
            also with `worker` (its number), `pid` and `batch`.
        executor: where the batches run: "local" (default: this process), "ray" (Ray actors that
            each load the model, given by name/path/id), or an executor object such as
            `sdlab.executors.RayExecutor(num_workers=8, num_gpus_per_worker=1)`. The run
            directory, cache and manifest are the same either way: a sweep started on one
            resumes on the other.
        metrics: scores of every image (`sdlab.metrics`): built-in names ("judge", "sharpness",
            "colourfulness", "saturation", "clip_score"), `Scorer`s such as
            `metrics.similarity(reference={"num_inference_steps": 50})`, or functions
            `f(image, record)`. Scores land in `result.table` and the manifest, cached with the
            cell: a re-run scores nothing again, a metric added later scores only itself, and a
            scorer that fails on a cell records its error there and the sweep goes on.
        **pipeline_kwargs: fixed pipeline keywords for every cell.
    """
    # 1. the sweep's own arguments and axes, checked before anything loads
    batch_size = check_positive_int(batch_size, "batch_size")
    axes_list = _normalise_axes(axes, prompt, negative_prompt)
    names = [a.name for a in axes_list]
    prompt_axis = "prompt" in names or any(a.kind == "matrix" for a in axes_list)
    if prompt is None and not prompt_axis:
        raise ValueError("give a `prompt`, or a `prompt` axis")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError("`prompt` must be a string; sweep several prompts with axes={'prompt': [...]}")
    model_axis = next((a for a in axes_list if a.kind == "model"), None)
    if pipe is None and model_axis is None:
        raise ValueError("`pipe` is None: pass a pipeline, a backend or a model name, or sweep a `model` axis")
    if seed is None or seed == -1:
        seed = random_seed()
    axes_list = [_resolve_seed_axis(a) for a in axes_list]  # -1 on a seed axis: resolved once, recorded
    if variation_seed in (None, -1) and (variation_strength or "variation_strength" in names):
        variation_seed = random_seed()
    base = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "scheduler": scheduler,
        "width": width,
        "height": height,
        "clip_skip": clip_skip,
        "variation_seed": variation_seed,
        "variation_strength": variation_strength,
        "loras": loras,
        "embeddings": embeddings,
        "pipeline_kwargs": dict(pipeline_kwargs),
    }
    planned = plan_cells(base, axes_list, link, vary_seeds=vary_seeds)
    scorers = resolve(metrics)
    _check_references(scorers, axes_list)
    for scorer in scorers:
        if scorer.prepare is not None:  # e.g. CLIP from the cache: missing is an error now, not per cell
            scorer.prepare()

    executor, own_executor = get_executor(executor)
    try:
        check_model = getattr(executor, "check_model", None)
        if check_model is not None:  # e.g. Ray workers load models by name: a loaded pipeline cannot go there
            for value in model_axis.values if model_axis else [pipe]:
                check_model(value)
        # 2. models: the pipe argument (opened now), or each value of the model axis (facts only:
        #    defaults and identity, so cached cells need no load)
        model_values = list(model_axis.values) if model_axis else [pipe]
        primary = None if model_axis else executor.open(pipe)
        facts = [(primary.defaults, primary.identity())] if primary else [model_facts(v) for v in model_values]

        # 3. every cell a one-image request (checked as `generate` checks), and its key
        cells = []
        for index, (coords, params) in enumerate(planned):
            m = model_axis.values.index(params["model"]) if model_axis else 0
            identity = facts[m][1]
            request = cell_request(
                params,
                facts[m][0],
                local=_takes_image_fields(identity),
                controlnet=bool(identity.get("controlnet")),
            )
            cells.append(
                SweepCell(
                    index=index,
                    coords=coords,
                    request=request,
                    model=model_label(model_values[m]),
                    model_index=m,
                    key=cell_key(request, facts[m][1]),
                )
            )
        if primary is not None:  # the backend's own checks (size multiple, keywords), one round trip
            primary.validate_many([c.request for c in cells])
        scorers = [_bind(s, primary) if s.bind is not None else s for s in scorers]
    except BaseException:
        if own_executor:
            executor.close()
        raise

    # 4. what is cached, what is to do
    run = RunDirectory(Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR)
    todo: list[SweepCell] = []
    for cell in cells:
        row = run.lookup(cell.key)
        if row is not None:
            cell.path = run.root / row["file"]
            cell.seconds, cell.peak_memory_mb, cell.cached = row.get("seconds"), row.get("peak_memory_mb"), True
        else:
            todo.append(cell)
    spec = _spec(prompt, negative_prompt, axes_list, link, vary_seeds, base, title, model_values, run.root)
    spec["metrics"] = [
        {"name": s.name, "version": s.version, "reference": s.reference, "config": s.config} for s in scorers
    ]
    (run.root / "sweeps").mkdir(exist_ok=True)
    spec_text = json.dumps(spec, sort_keys=True, default=str)
    spec_path = run.root / "sweeps" / f"{hashlib.sha256(spec_text.encode()).hexdigest()[:16]}.json"
    spec_path.write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
    if verbose:
        total_steps = sum(c.request.num_inference_steps for c in todo)
        print(
            f"sweep: {len(cells)} cells ({' x '.join(str(len(a)) for a in axes_list) or '1'}), "
            f"{len(cells) - len(todo)} cached, {len(todo)} to generate, {total_steps} denoising steps; "
            f"run directory {run.root}" + (f"; {executor.label}" if getattr(executor, "label", None) else "")
        )

    # 5. generate, model by model (each loaded once, expensive axes outermost)
    bar = _progress_bar(len(todo), verbose)
    start = time.perf_counter()
    try:
        for m in sorted({c.model_index for c in todo}):
            model_cells = [c for c in todo if c.model_index == m]
            backend = primary if primary is not None else executor.open(model_values[m])
            backend.validate_many([c.request for c in model_cells])
            batches = _batches(model_cells, backend, batch_size)
            requests = [GenerationRequest.concat([c.request for c in batch]) for batch in batches]
            for outcome in executor.run(backend, requests, progress=progress):
                _record(outcome, batches[outcome.batch], run, axes_list, lambda cell: bar.update(1))
            if primary is None and isinstance(model_values[m], (str, Path)):
                executor.release(backend)
        # 6. scores, each cached with its cell (image content, scorer name and version)
        scored = _score(cells, scorers, run, axes_list)
        if verbose and scored:
            print(f"sweep: {scored} scores computed")
    except KeyboardInterrupt:
        done = sum(1 for c in cells if c.ok or c.error)
        print(
            f"sweep interrupted: {done} of {len(cells)} cells are saved in {run.root}; run the same sweep again to resume"
        )
        raise
    finally:
        bar.close()
        if own_executor:
            executor.close()
        run.compact()
    seconds = time.perf_counter() - start
    result = SweepResult(axes=axes_list, cells=cells, out_dir=run.root, spec=spec, seconds=seconds, title=title)
    if verbose and todo:
        failed = sum(1 for c in cells if c.error)
        print(f"sweep: done in {seconds:.1f}s" + (f", {failed} cells failed (see result.table)" if failed else ""))
    return result


def sweep_from_file(path: str | Path, pipe: Any = None, **overrides: Any) -> SweepResult:
    """The sweep a YAML or TOML sweep file describes (`sdlab.sweep_file`); `pipe` defaults to the
    file's `model`, opened here, and `overrides` replace the file's keywords (e.g. `out_dir`). An
    error about one of the file's keys names that key's line."""
    from .sweep_file import SweepFile, read_sweep_file

    file = path if isinstance(path, SweepFile) else read_sweep_file(path)
    if pipe is None and "model" not in (file.kwargs.get("axes") or {}):
        if not file.model:
            raise ValueError(f"{file.path}: no `model`; name one in the file or pass `pipe`")
        from .backends import open_model

        pipe = open_model(file.model)
    kwargs = {**file.kwargs, **overrides}
    prompt = kwargs.pop("prompt", None)
    try:
        return sweep(pipe, prompt, **kwargs)
    except ValueError as e:
        raise ValueError(file.locate(str(e))) from e


def _bind(scorer: Scorer, backend) -> Scorer:
    """A scorer that needs the sweep's pipeline (e.g. its VAE), given it."""
    from .backends import local_pipeline

    pipe = local_pipeline(backend) if backend is not None else None
    if pipe is None:
        raise ValueError(
            f"`metrics`: {scorer.name!r} needs the sweep's local pipeline (one model, run here); "
            "pass what it needs itself (e.g. similarity(..., vae=pipe.vae))"
        )
    return scorer.bind(pipe)


def _check_references(scorers: list[Scorer], axes: list[Axis]) -> None:
    by_name = {a.name: a for a in axes}
    for scorer in scorers:
        for name, value in (scorer.reference or {}).items():
            if name not in by_name:
                raise ValueError(
                    f"`metrics`: {scorer.name!r} takes its reference on axis {name!r}, which is not in `axes` "
                    f"({', '.join(by_name) or 'none'})"
                )
            _value_index(by_name[name], value, f"`metrics`: {scorer.name!r}'s reference")


def _value_index(axis: Axis, value: Any, what: str) -> int:
    for i, (v, label) in enumerate(zip(axis.values, axis.labels)):
        if (
            v == value
            or label == value
            or (
                isinstance(v, (int, float))
                and isinstance(value, (int, float))
                and abs(v - value) <= 1e-9 * max(1, abs(v))
            )
        ):
            return i
    raise ValueError(f"{what}: axis {axis.name!r} has no value {value!r}; values: {list(axis.labels)}")


def _score(cells: list[SweepCell], scorers: list[Scorer], run: RunDirectory, axes: list[Axis]) -> int:
    """Score every image, reusing the manifest's scores whose cache key still matches; returns how
    many scores were computed. A scorer's exception becomes that cell's `metric_errors` entry."""
    if not scorers:
        return 0
    by_name = {a.name: a for a in axes}
    by_coords = {tuple(sorted(c.coords.items())): c for c in cells}
    loaded: dict[str, tuple] = {}

    def load(cell: SweepCell):
        if cell.key not in loaded:
            from PIL import Image

            with Image.open(cell.path) as im:
                im.load()
                loaded[cell.key] = (im.convert("RGB"), read_params(cell.path))
        return loaded[cell.key]

    def image_key(cell: SweepCell) -> str:
        return f"{cell.key}:{(run.rows.get(cell.key) or {}).get('sha256')}"

    computed = 0
    for cell in cells:
        if not cell.ok:
            continue
        row = dict(run.rows.get(cell.key) or {})
        stored = dict(row.get("metrics") or {})
        errors = dict(row.get("metric_errors") or {})
        keys = dict(row.get("metric_keys") or {})
        cell.metrics, cell.metric_errors, cell.metric_keys = {}, {}, {}
        changed = False
        for scorer in scorers:
            mine = sorted(n for n in stored if n == scorer.name or n.startswith(scorer.name + "."))
            ref_cell = None
            if scorer.reference:
                coords = dict(cell.coords)
                for name, value in scorer.reference.items():
                    coords[name] = _value_index(by_name[name], value, "reference")
                ref_cell = by_coords.get(tuple(sorted(coords.items())))
            key = scorer.cache_key(image_key(cell), image_key(ref_cell) if ref_cell else None)
            cell.metric_keys[scorer.name] = key
            if keys.get(scorer.name) == key and scorer.name not in errors:
                cell.metrics.update({n: stored[n] for n in mine})
                continue
            changed, computed = True, computed + 1
            for n in mine:
                stored.pop(n)
            errors.pop(scorer.name, None)
            keys[scorer.name] = key
            try:
                if scorer.reference and (ref_cell is None or not ref_cell.ok):
                    raise ValueError(f"its reference cell {scorer.reference} has no image")
                image, record = load(cell)
                reference = Reference(*load(ref_cell)) if scorer.reference else None
                values = scorer.score(image, record, reference)
            except Exception as e:  # a scorer's failure is that score's, never the sweep's
                errors[scorer.name] = cell.metric_errors[scorer.name] = f"{type(e).__name__}: {e}"
            else:  # a scorer's names in sorted order, computed or cached alike (the manifest sorts them)
                stored.update(values)
                cell.metrics.update(sorted(values.items()))
        if changed:
            row.update(metrics=stored, metric_errors=errors, metric_keys=keys)
            run.append(row)
    return computed


def _resolve_seed_axis(axis: Axis) -> Axis:
    if axis.name not in ("seed", "variation_seed") or not any(v in (-1, None) for v in axis.values):
        return axis
    values = tuple(random_seed() if v in (-1, None) else v for v in axis.values)
    return Axis(axis.name, values, tuple(format_label(axis.name, v) for v in values), axis.kind)


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="sweep", disable=not enabled or total == 0, leave=True)


def _spec(prompt, negative_prompt, axes, link, vary_seeds, base, title, model_values, out_dir) -> dict:
    """The sweep's definition, JSON-able: enough to run it again (`load_sweep`), and its run directory."""
    return {
        "version": 1,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "axes": [
            {
                "name": a.name,
                "kind": a.kind,
                "values": [describe_value(v) if a.kind != "model" else model_label(v) for v in a.values],
                "labels": list(a.labels),
                "search": a.search,
                "parts": list(a.parts),
            }
            for a in axes
        ],
        "link": [list(g) for g in (link or [])],
        "vary_seeds": vary_seeds,
        "fixed": {
            k: describe_value(v) for k, v in base.items() if k not in ("prompt", "negative_prompt") and v is not None
        },
        "title": title,
        "out_dir": str(Path(out_dir).resolve()),
    }
