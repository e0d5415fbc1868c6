"""SchedulerBench: pick schedulers and step counts, press Run, read the table and the plots.

    bench = SchedulerBench(pipe)
    bench.schedulers.value = ("Euler", "DPM++ 2M")
    bench.num_inference_steps.value = "5, 10, 20"
    bench.run_button.click()          # on a thread; bench.wait(), then bench.last_result is a BenchResult
    bench.images[("Euler", 10)]       # that setting's images (one per seed), shown beside its numbers
    bench.cancel_button.click()       # during a run: stops at the next denoising step, state "cancelled"

The Run button works on a thread (`background=True`, the default), so Cancel, Kernel > Interrupt
(both stop at the next denoising step) and other cells stay live. The run holds the pipeline from
its first call to its last: a cell using the pipeline waits instead of slipping between the timed
calls, and a run started while a cell holds it shows "waiting for the pipeline" until its turn.
`run()` called from code runs in the caller's thread.

The measuring is `sdlab.bench.benchmark_schedulers`; this widget only collects its arguments. A
busy machine (load average above the core count while timing) is flagged in `status`, never
presented as clean figures.
"""

from __future__ import annotations

import html
import io
from typing import Any

import ipywidgets as widgets

from ..backends import as_backend
from ..executors import Interrupted
from ._common import (
    DEFAULT,
    PIXELATED_STYLE,
    ProgressFeed,
    error_text,
    image_widget,
    or_none,
    replace_children,
    status_html,
)
from ._runs import WidgetRun

DEFAULT_PROMPT = "a large red circle on a blue background"
PREFERRED = ("Euler", "Euler a", "DPM++ 2M", "DDIM", "UniPC")


def _figure_png(plot, **kwargs) -> bytes:
    """Render one of BenchResult's plots on a figure of its own (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=100)
    ax = fig.subplots()
    plot(ax=ax, **kwargs)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class SchedulerBench(widgets.VBox):
    """Benchmark schedulers x step counts on one pipeline.

    Controls: `prompt`, `schedulers` (SelectMultiple), `num_inference_steps` (text: "5, 10, 20" or "5-20 (+5)"),
    `seeds` (how many), `repeats`, `warmup`, `reference_steps`, `reference_scheduler`,
    `peak_tflops` (0: unknown), `run_button`, `cancel_button`. State: `state` ("ready", "waiting"
    for the pipeline, "running", "done", "cancelled", "error"), `thread` (the last run's thread), `last_result` (the last completed `BenchResult`; a cancelled run
    leaves none behind and clears the table), `images` ((scheduler, steps) -> the images of that
    setting), `error`, `status`, `progress`, `table` (HTML), `gallery` (each setting's images
    beside its numbers), `plots` (two PNG images: quality vs time, latency vs steps).

    `load_average` (default `os.getloadavg`'s 1 minute) is passed to `benchmark_schedulers`.
    """

    def __init__(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT, load_average=None, background: bool = True):
        from ..bench import system_load_average
        from ..schedulers import scheduler_names

        self.pipe = pipe
        self.backend = as_backend(pipe)
        self.load_average = load_average or system_load_average
        self.last_result = None
        self.images: dict[tuple[str, int], list] = {}
        self.state = "ready"
        self.error: BaseException | None = None
        self.background = background
        self._run = WidgetRun("sdlab-scheduler-bench")
        names = scheduler_names(getattr(self.backend, "pipe", None))
        chosen = tuple(n for n in PREFERRED if n in names)[:3] or tuple(names[:2])
        defaults = self.backend.defaults
        self.prompt = widgets.Text(value=prompt, description="Prompt", layout=widgets.Layout(width="100%"))
        self.schedulers = widgets.SelectMultiple(options=names, value=chosen, rows=8, description="Schedulers")
        self.num_inference_steps = widgets.Text(
            value="5, 10, 20", description="Steps", placeholder="5, 10, 20 or 5-20 (+5)"
        )
        self.seeds = widgets.BoundedIntText(value=2, min=1, max=16, description="Seeds")
        self.repeats = widgets.BoundedIntText(value=3, min=1, max=20, description="Repeats")
        self.warmup = widgets.BoundedIntText(value=1, min=0, max=10, description="Warm-up")
        self.reference_steps = widgets.BoundedIntText(value=100, min=1, max=1000, description="Ref. steps")
        self.reference_scheduler = widgets.Dropdown(
            options=[(f"default ({defaults.scheduler or 'model'})", DEFAULT)] + [(n, n) for n in names],
            value=DEFAULT,
            description="Ref. sched.",
        )
        self.peak_tflops = widgets.FloatText(
            value=0.0, description="Peak TFLOP/s", tooltip="the GPU's peak for model FLOP utilisation (0: not reported)"
        )
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.run_button.add_class("sdlab-run-bench")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.cancel_button.add_class("sdlab-cancel-bench")
        self.cancel_button.on_click(lambda _: self.cancel())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="300px"))
        self._feed = ProgressFeed(self.progress)
        self.status = widgets.HTML(value=status_html("ready"))
        self.status.add_class("sdlab-status")
        self.table = widgets.HTML()
        self.plots = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.gallery = widgets.VBox()
        self.gallery.add_class("sdlab-bench-images")
        self.output = widgets.Output()
        self.run_button.on_click(lambda _: self._on_run())
        super().__init__(
            children=[
                widgets.HTML(PIXELATED_STYLE),
                self.prompt,
                widgets.HBox(
                    [self.schedulers, widgets.VBox([self.num_inference_steps, self.seeds, self.repeats, self.warmup])]
                ),
                widgets.HBox([self.reference_steps, self.reference_scheduler, self.peak_tflops]),
                widgets.HBox([self.run_button, self.cancel_button, self.progress, self.status]),
                self.output,
                self.table,
                self.gallery,
                self.plots,
            ]
        )
        self.add_class("sdlab-scheduler-bench")

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of `benchmark_schedulers` that the controls describe."""
        from ..axes import parse_values

        if not self.schedulers.value:
            raise ValueError("no scheduler is selected; select at least one")
        return {
            "prompt": self.prompt.value.strip(),
            "schedulers": list(self.schedulers.value),
            "num_inference_steps": parse_values(self.num_inference_steps.value, "int", name="num_inference_steps"),
            "seeds": tuple(range(int(self.seeds.value))),
            "repeats": int(self.repeats.value),
            "warmup": int(self.warmup.value),
            "reference_steps": int(self.reference_steps.value),
            "reference_scheduler": or_none(self.reference_scheduler.value),
            "peak_tflops": float(self.peak_tflops.value) or None,
        }

    def _on_run(self) -> None:
        if not self.background:
            self._run.cancel_event.clear()
            self.run()
        elif not self._run.start(self.run):
            self.status.value = status_html("still running: press Cancel or wait", "busy")

    @property
    def thread(self):
        return self._run.thread

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running benchmark (if any) to end."""
        self._run.wait(timeout)

    def cancel(self) -> None:
        """Stop a running benchmark at its next denoising step (nothing to do when idle)."""
        if self.state in ("running", "waiting"):
            self._run.cancel()
            self.status.value = status_html("cancelling at the next denoising step…", "busy")

    def _progress(self, info: dict) -> None:
        self._run.check("the benchmark")
        self._feed(info)

    def _waiting(self) -> None:
        self.state = "waiting"
        self.status.value = status_html(
            "waiting for the pipeline: a cell or another widget is using it (Cancel stops waiting)", "busy"
        )

    def run(self):
        """Run the benchmark; returns the `BenchResult`, or None on error or cancel (shown in the widget)."""
        from ..bench import benchmark_schedulers

        self.error = None
        self.output.clear_output()
        self.state = "running"
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self._feed.reset()
        self.status.value = status_html("benchmarking…", "busy")
        try:
            arguments = self.arguments()
            with self._run.pipeline_turn(self.backend, on_wait=self._waiting):
                self.state = "running"
                self.status.value = status_html("benchmarking…", "busy")
                result = benchmark_schedulers(
                    self.pipe, progress=self._progress, load_average=self.load_average, **arguments
                )
            plots = [_figure_png(result.plot_quality_vs_time), _figure_png(result.plot_latency_vs_steps)]
        except (Interrupted, KeyboardInterrupt):
            self.state = "cancelled"
            self.table.value = ""
            replace_children(self.gallery, [])
            replace_children(self.plots, [])
            self.images = {}
            done = f"{self.progress.value} of {self.progress.max} calls"
            self.status.value = status_html(f"cancelled after {done}: no results (a partial table would mislead)")
            return None
        except Exception as e:  # noqa: BLE001 - shown in the widget; the kernel lives on
            self.error = e
            self.state = "error"
            self.status.value = status_html(error_text(e), "error")
            with self.output:
                print(error_text(e))
            return None
        finally:
            self.run_button.disabled, self.cancel_button.disabled = False, True
            self._run.cancel_event.clear()
        self._show(result, plots)
        return result

    def _show(self, result, plots: list[bytes]) -> None:
        self.state = "done"
        self.last_result = result
        self.images = dict(result.images)
        self.table.value = result.to_html()
        replace_children(self.gallery, [_setting_row(row, result.images.get(_key(row), [])) for row in result.rows])
        replace_children(
            self.plots, [widgets.Image(value=png, format="png", layout=widgets.Layout(width="480px")) for png in plots]
        )
        failed = sum(1 for r in result.rows if r.get("error"))
        text = f"done: {len(result.rows)} settings" + (f", {failed} failed" if failed else "")
        if result.busy:
            text += f". WARNING: {result.warning}"
        self.status.value = status_html(text, "error" if failed or result.busy else "ok")


def _key(row: dict) -> tuple[str, int]:
    return (row["scheduler"], row["num_inference_steps"])


def _setting_row(row: dict, images: list) -> widgets.HBox:
    """One setting: its name and numbers, then its images (one per seed) at a whole-number scale."""

    def number(key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    text = (
        f"<b>{html.escape(str(row['scheduler']))}</b>, {row['num_inference_steps']} steps<br>"
        f"{number('seconds', '.3f')} s/call<br>SSIM {number('ssim', '.3f')}<br>MAE {number('mae', '.2f')}"
    )
    if row.get("error"):
        text += f"<br><span style='color:#b00020'>{html.escape(str(row['error']))}</span>"
    scale = max(1, 128 // max(1, images[0].width)) if images else 1
    thumbs = [image_widget(im, width=f"{im.width * scale}px", css_class="sdlab-bench-image") for im in images]
    return widgets.HBox(
        [widgets.HTML(text, layout=widgets.Layout(width="180px")), *thumbs],
        layout=widgets.Layout(align_items="center"),
    )
