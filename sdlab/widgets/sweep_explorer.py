"""SweepExplorer: look through a sweep's grid by any axes, filter values, open one cell large.

    explorer = SweepExplorer(sdlab.sweep(pipe, prompt, axes={...}))
    explorer.x.value, explorer.y.value = "guidance_scale", "seed"
    explorer.filters["seed"].value = ("Seed: 1", "Seed: 2")
    explorer.sliders["num_inference_steps"].value = 1   # ordered axes off x/y: one value (-1: all)
    explorer.pick["seed"].value = 1          # index of the value: the cell shown large
    explorer.tile_buttons[0].click()          # or click a tile's button: that cell shown large
    explorer.cell_params                      # what `sdlab.read_params` reads from its PNG
    explorer.metric.value = "judge.colour_shape"  # a sweep with metrics: its curve beside the grid
    explorer.curve_rows                       # the curve's points (`SweepResult.aggregate` rows)
    explorer.cell_scores                      # the picked cell's scores

Nothing is generated here: the grid is redrawn from the images on disk when a choice changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ipywidgets as widgets

from ..axes import Axis
from ._common import PIXELATED_STYLE, error_text, image_widget, params_html, png_bytes, status_html

NONE = "(none)"
ALL = -1  # a slider's "every value" position


class SweepExplorer(widgets.VBox):
    """Browse a `SweepResult`.

    Controls: `x`, `y`, `z` (axis dropdowns), `filters` (axis name -> SelectMultiple of value
    labels; all selected at first), `pick` (axis name -> Dropdown of value indices: the cell
    shown large), `sliders` (ordered axes not on x/y -> SelectionSlider of value indices, -1:
    all values), `tile_buttons` (one per cell on show: click to see it large). State: `grid_image`
    (the PIL grid on show), `grid_scale` (the whole number it is enlarged by), `tiles` (the cells
    on show, in the order of `tile_buttons`), `cell` (the picked `SweepCell`), `cell_params` (its
    parameters read from the PNG), `error`, `status`.

    Scores (a sweep made with `metrics=`): `metric` (Dropdown of score names) and `hue` (axis of
    the curve's lines, or "(none)") draw `SweepResult.plot` of the values shown against the grid's
    x axis, beside the grid, redrawn whenever axes or filters change; `curve_rows` (its points),
    `curve_image` (the PIL figure), `cell_scores` (the picked cell's scores and scorer errors).
    """

    def __init__(self, result, *, cell_width: str = "320px"):
        self.result = result
        self.error: BaseException | None = None
        self.grid_image = None
        self.cell = None
        self.cell_params: dict[str, Any] | None = None
        self.grid_scale = 1
        self.tiles: list = []
        self.tile_buttons: list[widgets.Button] = []
        names = list(result.axis_names)
        self.x = widgets.Dropdown(options=names or [NONE], value=names[0] if names else NONE, description="x (across)")
        self.y = widgets.Dropdown(
            options=[NONE] + names, value=names[1] if len(names) > 1 else NONE, description="y (down)"
        )
        self.z = widgets.Dropdown(
            options=[NONE] + names, value=names[2] if len(names) > 2 else NONE, description="z (grids)"
        )
        self.filters: dict[str, widgets.SelectMultiple] = {}
        self.pick: dict[str, widgets.Dropdown] = {}
        self.sliders: dict[str, widgets.SelectionSlider] = {}
        for axis in result.axes:
            if len(axis) > 1 and _ordered(axis):
                self.sliders[axis.name] = widgets.SelectionSlider(
                    options=[("all", ALL)] + [(label, i) for i, label in enumerate(axis.labels)],
                    value=ALL,
                    description=axis.name,
                    continuous_update=False,
                    layout=widgets.Layout(width="360px"),
                )
            labels = list(axis.labels)
            self.filters[axis.name] = widgets.SelectMultiple(
                options=labels,
                value=tuple(labels),
                rows=min(6, len(labels)),
                description=axis.name,
                layout=widgets.Layout(width="260px"),
            )
            self.pick[axis.name] = widgets.Dropdown(
                options=[(label, i) for i, label in enumerate(labels)],
                value=0,
                description=axis.name,
                layout=widgets.Layout(width="260px"),
            )
        self.curve_rows: list[dict[str, Any]] = []
        self.curve_image = None
        self.cell_scores: dict[str, Any] = {}
        metric_names = list(result.metric_names)
        self.metric = widgets.Dropdown(
            options=metric_names or [NONE], value=metric_names[0] if metric_names else NONE, description="score"
        )
        self.hue = widgets.Dropdown(options=[NONE] + names, value=NONE, description="lines by")
        self.curve = widgets.Image(format="png")
        self.curve.add_class("sdlab-curve")
        self.curve_box = widgets.VBox(
            [widgets.HBox([self.metric, self.hue]), self.curve],
            layout=widgets.Layout(display=None if metric_names else "none"),
        )
        self.status = widgets.HTML(value=status_html("ready"))
        self.status.add_class("sdlab-status")
        self.grid = widgets.Image(format="png")
        self.grid.add_class("sdlab-grid")
        self.grid.add_class("sdlab-pixelated")  # whole-number scale, nearest neighbour: crisp labels
        self.grid_box = widgets.Box([self.grid], layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.tile_box = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.cell_image = widgets.Box()
        self.cell_info = widgets.HTML()
        self._cell_width = cell_width

        for control in [self.x, self.y, self.z, self.metric, self.hue, *self.filters.values()]:
            control.observe(lambda _change: self.refresh(), names="value")
        self._opening = False  # set while open_cell moves several `pick` dropdowns at once
        for control in self.pick.values():
            control.observe(lambda _change: None if self._opening else self.show_cell(), names="value")
        for name, slider in self.sliders.items():
            slider.observe(lambda change, name=name: self._slide(name, change["new"]), names="value")

        title = result.title or f"sweep of {len(result)} cells in {result.out_dir}"
        super().__init__(
            children=[
                widgets.HTML(PIXELATED_STYLE),
                widgets.HTML(f"<b>{_escape(title)}</b>"),
                widgets.HBox([self.x, self.y, self.z]),
                widgets.HTML("<small>values shown (ctrl/shift-click to choose several)</small>"),
                widgets.HBox(list(self.filters.values()), layout=widgets.Layout(flex_flow="row wrap")),
                widgets.HBox(list(self.sliders.values()), layout=widgets.Layout(flex_flow="row wrap")),
                self.status,
                widgets.HBox([self.grid_box, self.curve_box], layout=widgets.Layout(align_items="flex-start")),
                widgets.HTML("<small>click a cell to see it large with its record</small>"),
                self.tile_box,
                widgets.HTML("<b>Cell</b>"),
                widgets.HBox(list(self.pick.values()), layout=widgets.Layout(flex_flow="row wrap")),
                widgets.HBox([self.cell_image, self.cell_info]),
            ]
        )
        self.add_class("sdlab-sweep-explorer")
        self.refresh()
        self.show_cell()

    # ------------------------------------------------------------ the grid

    def _slide(self, name: str, index: int) -> None:
        """A slider steps an ordered axis through its values (ALL: every value) via its filter."""
        labels = self.result.axis(name).labels
        self.filters[name].value = tuple(labels) if index == ALL else (labels[index],)

    def _subset(self):
        """A view of the result holding only the selected values of each axis."""
        axes, keep = [], {}
        for axis in self.result.axes:
            chosen = set(self.filters[axis.name].value)
            indices = [i for i, label in enumerate(axis.labels) if label in chosen]
            if not indices:
                raise ValueError(f"no value of `{axis.name}` is selected; select at least one")
            keep[axis.name] = {old: new for new, old in enumerate(indices)}
            axes.append(
                Axis(
                    axis.name,
                    tuple(axis.values[i] for i in indices),
                    tuple(axis.labels[i] for i in indices),
                    axis.kind,
                    axis.search,
                    axis.parts,
                )
            )
        cells = []
        for cell in self.result.cells:
            if all(cell.coords[n] in keep[n] for n in keep):
                coords = {n: keep[n][cell.coords[n]] for n in keep}
                cells.append(dataclasses.replace(cell, coords=coords))
        return dataclasses.replace(self.result, axes=axes, cells=cells), axes

    def grid_arguments(self) -> dict[str, Any]:
        """The `x`, `y`, `z` and `filter` given to `SweepResult.grid` for the current choices."""
        subset, axes = self._subset()
        x = None if self.x.value == NONE else self.x.value
        y = None if self.y.value == NONE else self.y.value
        z = None if self.z.value == NONE else self.z.value
        chosen = [n for n in (x, y, z) if n is not None]
        if len(set(chosen)) != len(chosen):
            raise ValueError("x, y and z must be different axes")
        z_names = [z] if z else []
        pinned = {}
        for axis in axes:
            if axis.name in chosen:
                continue
            if len(axis) == 1:
                pinned[axis.name] = axis.values[0] if axis.kind != "size" else axis.labels[0]
            else:  # several values of an axis not on x/y/z: one sub-grid each
                z_names.append(axis.name)
        return {"subset": subset, "x": x, "y": y, "z": z_names or None, "filter": pinned or None}

    def refresh(self) -> None:
        """Redraw the grid for the current axes and filters (no generation)."""
        self.error = None
        try:
            args = self.grid_arguments()
            subset = args.pop("subset")
            image = subset.grid(max_pixels=4_000_000, **args)
        except Exception as e:  # noqa: BLE001 - shown in the widget
            self.error = e
            self.status.value = status_html(error_text(e), "error")
            return
        self.grid_image = image
        self.grid.value = png_bytes(image)
        self.grid_scale = max(1, min(4, 1200 // max(1, image.width)))  # whole numbers only: no blur
        self.grid.layout.width = f"{image.width * self.grid_scale}px"
        self.grid.layout.height = f"{image.height * self.grid_scale}px"
        self.grid.layout.max_width = "none"
        self._show_tiles(subset, args)
        self._show_sliders()
        self._show_curve(subset, args["x"])
        failed = sum(1 for c in self.result.cells if c.error)
        text = f"{image.width}x{image.height} grid of {len(subset.cells)} cells"
        self.status.value = status_html(
            text + (f"; {failed} failed cells in the sweep" if failed else ""), "error" if failed else "ok"
        )

    def _show_sliders(self) -> None:
        on_xy = {self.x.value, self.y.value}
        for name, slider in self.sliders.items():
            slider.layout.display = "none" if name in on_xy else None

    def _show_tiles(self, subset, args) -> None:
        """One button per cell on show, in grid order (sub-grid, row, column)."""
        order = [n for n in [*(args["z"] or []), args["y"], args["x"]] if n]
        pinned = args["filter"] or {}
        shown = [c for c in subset.cells if all(c.coords[n] == 0 for n in pinned)]
        shown.sort(key=lambda c: tuple(c.coords[n] for n in order))
        labels = {a.name: a.labels for a in subset.axes}
        self.tiles = [self._original(c) for c in shown]
        buttons = []
        for cell, view in zip(self.tiles, shown):
            text = ", ".join(labels[n][view.coords[n]] for n in labels if n in order) or "the cell"
            button = widgets.Button(description=text, tooltip=text, layout=widgets.Layout(width="auto"))
            button.add_class("sdlab-tile")
            if cell is not None and cell.error:
                button.button_style = "danger"
            button.on_click(lambda _b, cell=cell: self.open_cell(cell))
            buttons.append(button)
        self.tile_buttons = buttons
        self.tile_box.children = buttons

    def _show_curve(self, subset, x: str | None) -> None:
        """The chosen score against the grid's x axis, over the values shown (mean and one sd)."""
        self.curve_rows, self.curve_image = [], None
        if self.metric.value == NONE or x is None:
            self.curve.value = b""
            return
        import io

        from matplotlib.figure import Figure
        from PIL import Image

        hue = None if self.hue.value in (NONE, x) else self.hue.value
        try:
            keep = {x} | ({hue} if hue else set())
            self.curve_rows = subset.aggregate(self.metric.value, over=[n for n in subset.axis_names if n not in keep])
            figure = Figure(figsize=(4.8, 3.2), dpi=100)
            subset.plot(self.metric.value, x=x, hue=hue, ax=figure.subplots())
            figure.tight_layout()
            buf = io.BytesIO()
            figure.savefig(buf, format="png")
        except Exception as e:  # noqa: BLE001 - shown in the widget
            self.curve.value = b""
            self.status.value = status_html(f"curve: {error_text(e)}", "error")
            return
        self.curve.value = buf.getvalue()
        self.curve_image = Image.open(io.BytesIO(self.curve.value))

    def _original(self, view):
        """The result's own cell behind a cell of the filtered view."""
        return next((c for c in self.result.cells if c.index == view.index), None)

    # ------------------------------------------------------------ one cell

    def open_cell(self, cell) -> None:
        """Show `cell` large with its record (sets `pick` to its coordinates)."""
        self._opening = True
        try:
            for name, index in cell.coords.items():
                self.pick[name].value = index
        finally:
            self._opening = False
        self.show_cell()

    def show_cell(self) -> None:
        """Show the cell picked in `pick` large, with the parameters its PNG carries."""
        from ..metadata import read_params

        wanted = {name: dropdown.value for name, dropdown in self.pick.items()}
        cell = next((c for c in self.result.cells if c.coords == wanted), None)
        self.cell, self.cell_params = cell, None
        self.cell_scores = {}
        if cell is None:
            self.cell_image.children = []
            self.cell_info.value = status_html("no such cell", "error")
            return
        if cell.error or cell.path is None:
            self.cell_image.children = []
            self.cell_info.value = status_html(f"failed: {cell.error or 'no image'}", "error")
            return
        try:
            self.cell_params = read_params(cell.path)
            image = self.result._image(cell)
        except Exception as e:  # noqa: BLE001
            self.cell_image.children = []
            self.cell_info.value = status_html(error_text(e), "error")
            return
        self.cell_image.children = [image_widget(image, width=self._cell_width, css_class="sdlab-cell")]
        self.cell_scores = {**cell.metrics, **{f"{name} (failed)": e for name, e in cell.metric_errors.items()}}
        self.cell_info.value = (
            params_html(self.cell_params) + _scores_html(self.cell_scores) + f"<small>{_escape(str(cell.path))}</small>"
        )


def _scores_html(scores: dict[str, Any]) -> str:
    if not scores:
        return ""
    rows = "".join(
        f"<tr><td>{_escape(name)}</td><td>{_escape(_format_score(value))}</td></tr>" for name, value in scores.items()
    )
    return f"<b>Scores</b><table class='sdlab-scores'>{rows}</table>"


def _format_score(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ordered(axis) -> bool:
    """Numbers (not booleans) can be stepped through with a slider."""
    return axis.kind == "param" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis.values)


def _escape(text: str) -> str:
    import html

    return html.escape(text)
