"""Sweep results: the cells of a finished sweep, its table, labelled grids and figures, and
`load_sweep` (a sweep's definition back from its grid PNG or spec JSON)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .axes import Axis, prompt_sr
from .grid import Label, fit_pixels, join_horizontally, labelled_grid
from .metadata import PARAMETERS_KEY, add_infotext_params, infotext, parse_infotext, read_text_chunks, save_png
from .request import GenerationRequest
from .sweep_html import save_html
from .xyz_plot import is_xyz_text, sweep_from_xyz, xyz_params

SPEC_KEY = "sdlab_sweep"
# The generation parameters a sweep sets by name (other axes are pipeline keywords).
CORE_PARAMS = (
    "prompt",
    "negative_prompt",
    "seed",
    "guidance_scale",
    "num_inference_steps",
    "scheduler",
    "width",
    "height",
    "clip_skip",
    "variation_seed",
    "variation_strength",
)


@dataclass
class SweepCell:
    """One cell: its position on every axis, its one-image request and model, and what became of it."""

    index: int
    coords: dict[str, int]  # axis name -> value index
    request: GenerationRequest  # one image, every parameter resolved
    model: str = ""  # the model's label
    model_index: int = 0
    key: str = ""
    path: Path | None = None
    seconds: float | None = None
    peak_memory_mb: float | None = None
    error: str | None = None
    cached: bool = False
    metrics: dict[str, float | None] = field(default_factory=dict)  # flat score name -> number (None: n/a)
    metric_errors: dict[str, str] = field(default_factory=dict)  # scorer name -> its error
    metric_keys: dict[str, str] = field(default_factory=dict)  # scorer name -> its cache key

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None

    @property
    def params(self) -> dict[str, Any]:
        """The cell's parameters by name (pipeline keywords as given), and its model."""
        r = self.request
        return {
            "prompt": r.prompt[0],
            "negative_prompt": r.negative_prompt[0],
            "seed": r.seed[0],
            "guidance_scale": r.guidance_scale[0],
            "num_inference_steps": r.num_inference_steps,
            "scheduler": r.scheduler,
            "width": r.width,
            "height": r.height,
            "clip_skip": r.clip_skip,
            "pipeline_kwargs": dict(r.pipeline_kwargs),
            "model": self.model,
        }


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
        """One row a cell: axis values, seed, path, seconds, peak memory, error, cached, and scores.

        Scores (`sweep(..., metrics=[...])`) are two plain fields of every row, the same in the
        run directory's `manifest.jsonl` rows:

        - `metrics`: a flat dict, score name -> number (float/int), or None where the score does
          not apply (e.g. the judge's position for a prompt naming none) or is not finite. A
          scorer returning a number gives one name (its own: "sharpness"); one returning a dict
          gives "<scorer>.<key>" for each key ("judge.colour", "similarity.ssim").
        - `metric_errors`: scorer name -> error text ("ValueError: ...") for scorers that failed
          on this cell; their names are absent from `metrics`.

        Rows of cells without scores have both as empty dicts. Manifest rows also carry
        `metric_keys` (scorer name -> the cache key its scores were computed under). `to_pandas()` also spreads
        `metrics` into `metric.<name>` columns."""
        rows = []
        for cell in self.cells:
            row: dict[str, Any] = {"index": cell.index}
            for a in self.axes:
                value = a.values[cell.coords[a.name]]
                row[a.name] = value if isinstance(value, (str, int, float)) else a.labels[cell.coords[a.name]]
            r = cell.request
            row.update(
                {
                    "prompt": r.image_params(0)["prompt"],
                    "seed": r.seed[0],
                    "guidance_scale": r.guidance_scale[0],
                    "num_inference_steps": r.num_inference_steps,
                    "path": str(cell.path) if cell.path else None,
                    "seconds": cell.seconds,
                    "peak_memory_mb": cell.peak_memory_mb,
                    "error": cell.error,
                    "cached": cell.cached,
                    "metrics": dict(cell.metrics),
                    "metric_errors": dict(cell.metric_errors),
                }
            )
            rows.append(row)
        return rows

    @property
    def metric_names(self) -> list[str]:
        """The names of the scores the cells carry (`table` rows' `metrics` keys)."""
        from .score_curves import metric_names

        return metric_names(self)

    def aggregate(
        self, metric: str, *, over: str | Sequence[str] | None = "seed", filter: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Mean, spread, min and max of a score over `over` (default the seeds), one row per
        combination of the other axes (see `sdlab.score_curves.aggregate`)."""
        from .score_curves import aggregate

        return aggregate(self, metric, over=over, filter=filter)

    def peaks(
        self, metric: str, *, x: str, over: str | Sequence[str] | None = "seed", filter: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Per combination of the other axes, the `x` value where the mean of `metric` over `over`
        peaks (see `sdlab.score_curves.peaks`)."""
        from .score_curves import peaks

        return peaks(self, metric, x=x, over=over, filter=filter)

    def plot(self, metric: str, *, x: str, hue: str | None = None, filter: dict[str, Any] | None = None, ax=None):
        """A score against axis `x`, a line per `hue` value, mean and a one-sd band over the other
        axes (matplotlib; returns the Axes)."""
        from .score_curves import plot

        return plot(self, metric, x=x, hue=hue, filter=filter, ax=ax)

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            from .errors import MissingDependencyError

            raise MissingDependencyError("pandas", "SweepResult.to_pandas()") from e
        rows = []
        for row in self.table:
            row = dict(row)
            for name, value in row.get("metrics", {}).items():
                row[f"metric.{name}"] = value
            rows.append(row)
        return pd.DataFrame(rows)

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
            if (
                v == value
                or label == value
                or (isinstance(v, float) and isinstance(value, (int, float)) and math.isclose(v, value))
            ):
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
        names = self.axis_names
        filter = dict(filter or {})
        for name in filter:
            self.axis(name)
        free = [n for n in names if n not in filter]
        given_z = [] if z is None else ([z] if isinstance(z, str) else list(z))
        open_ = [n for n in free if n not in given_z]  # an axis given as z is never also x or y
        x = x if x is not None else (open_[0] if open_ else None)
        y = y if y is not None else next((n for n in open_ if n != x), None)
        for name in (x, y):
            if name is not None:
                self.axis(name)
        if z is None:
            z_names = [n for n in free if n not in (x, y)]
        else:
            z_names = [z] if isinstance(z, str) else list(z)
            for n in z_names:
                self.axis(n)
        pinned = {
            n: {
                self._value_index(self.axis(n), v)
                for v in (filter[n] if isinstance(filter[n], (list, tuple)) else [filter[n]])
            }
            for n in filter
        }
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
                    col_failed = any(index[k].error for yi in y_shown if (k := (xi, yi, combo)) in index)
                    x_labels.append(Label(xa.labels[xi], active=not col_failed))
            z_title = ", ".join(a.labels[i] for a, i in zip(z_axes, combo)) or None
            subgrids.append(
                labelled_grid(rows, x_labels=x_labels, y_labels=y_labels if ya else None, title=z_title, margin=margin)
            )
        image = subgrids[0] if len(subgrids) == 1 else join_horizontally(subgrids, gap=margin * 4)
        title = title if title is not None else self.title
        if title:
            image = labelled_grid([[image]], title=title, margin=0)
        return fit_pixels(image, max_pixels)

    def save_grid(self, path: str | Path | None = None, **grid_kwargs) -> Path:
        """Write the grid as a PNG carrying the sweep's definition (`load_sweep` reads it back), and
        in its A1111 text the first cell's parameters with A1111's X/Y/Z plot keys."""
        path = Path(path) if path is not None else self.out_dir / "grid.png"
        image = self.grid(**grid_kwargs)
        record = self.cells[0].request.image_params(0) if self.cells else {}  # A1111's: the first cell's
        parameters = add_infotext_params(
            infotext(record),
            xyz_params(self.axes, link=self.spec.get("link"), vary_seeds=bool(self.spec.get("vary_seeds"))),
        )
        record["sweep"] = self.spec
        extra = {SPEC_KEY: json.dumps(self.spec, default=str)}
        return save_png(image, path, record, extra_text=extra, parameters=parameters)

    def save_config(self, path: str | Path | None = None) -> Path:
        """Write the sweep file (YAML, or TOML for a .toml path; default `<run directory>/sweep.yaml`)
        that rebuilds this sweep: `sdlab sweep --config <path>` runs it again from its cache."""
        from .sweep_file import sweep_config, write_sweep_file

        return write_sweep_file(Path(path) if path is not None else self.out_dir / "sweep.yaml", sweep_config(self))

    def figure(
        self, x: str | None = None, y: str | None = None, *, filter: dict[str, Any] | None = None, size: float = 2.0
    ):
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

    def save_html(self, path: str | Path | None = None, **viewer_kwargs) -> Path:
        """Write the sweep's viewer: a self-contained folder (HTML, JS, its data and images) that
        opens from disk with no server (default `<run directory>/viewer`); returns its index.html.
        Any two axes across and down, the rest stepped through, parameters and scores on hover, the
        A1111 text copied, cells coloured or sorted by a score (`sdlab.sweep_html.save_html`)."""
        return save_html(self, Path(path) if path is not None else self.out_dir / "viewer", **viewer_kwargs)


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The keyword arguments that rebuild a sweep from its grid image or spec JSON:
    `sdlab.sweep(pipe, **load_sweep("grid.png"))`.

    A grid sdlab wrote gives back its sweep exactly, with `out_dir`, its run directory, while that
    folder exists (so the cells already made are reused). A grid from A1111's X/Y/Z plot gives the
    first image's prompts and parameters and the axes A1111 swept, its values expanded as A1111
    expanded them; an axis type sdlab cannot sweep is an error naming it, and settings of the
    infotext the sweep does not apply are a warning naming them. The model is `pipe`'s."""
    path = Path(path)
    if path.suffix.lower() != ".json":
        chunks = read_text_chunks(path)
        if SPEC_KEY not in chunks:
            return _load_xyz(path, chunks)
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
            axes[a["name"]] = Axis(
                a["name"], tuple(tuple(v) for v in values), tuple(a["labels"]), "order", None, tuple(a["parts"])
            )
        elif a["kind"] == "size":
            axes[a["name"]] = [tuple(v) for v in values]
        else:
            axes[a["name"]] = list(values)
    kwargs: dict[str, Any] = {
        "prompt": spec.get("prompt"),
        "negative_prompt": spec.get("negative_prompt"),
        "axes": axes,
        "link": spec.get("link") or None,
        "vary_seeds": spec.get("vary_seeds", False),
        "title": spec.get("title"),
    }
    fixed = dict(spec.get("fixed") or {})
    extra = fixed.pop("pipeline_kwargs", {}) or {}
    kwargs.update({k: v for k, v in fixed.items() if k in CORE_PARAMS})
    kwargs.update({k: fixed[k] for k in ("loras", "embeddings") if fixed.get(k)})  # by name or path, found again
    kwargs.update(extra)
    if spec.get("out_dir") and Path(spec["out_dir"]).is_dir():
        kwargs["out_dir"] = spec["out_dir"]
    configs = [m.get("config") for m in spec.get("metrics") or []]
    if configs and all(c is not None for c in configs):  # built-in scorers, by the names a sweep file uses
        kwargs["metrics"] = configs
    return kwargs


def _load_xyz(path: Path, chunks: dict[str, str]) -> dict[str, Any]:
    """A sweep from a grid's A1111 text (A1111's X/Y/Z plot keys, or the ones sdlab writes)."""
    text = chunks.get(PARAMETERS_KEY)
    if text is None or not is_xyz_text(parse_infotext(text)):
        raise ValueError(
            f"{path} carries no sweep definition (no '{SPEC_KEY}' text chunk, and no A1111 X/Y/Z plot keys "
            "in its parameters)"
        )
    return sweep_from_xyz(text, source=str(path))


def manifest_rows(path: Path) -> list[dict]:
    """The rows of a sweep's `manifest.jsonl` in file order; a line cut short by a crash is skipped
    (its cell reads as not run, and a sweep simply makes it again)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                rows.append(row)
    return rows
