"""SchedulerBench: pick schedulers and step counts, press Run, read the table and the plots.

    bench = SchedulerBench(pipe)
    bench.schedulers.value = ("Euler", "DPM++ 2M")
    bench.num_inference_steps.value = "5, 10, 20"
    bench.run_button.click()          # bench.last_result is a sdlab.bench.BenchResult

The measuring is `sdlab.bench.benchmark_schedulers`; this widget only collects its arguments.
"""

from __future__ import annotations

import io
from typing import Any

import ipywidgets as widgets

from ..backends import as_backend
from ._common import DEFAULT, ProgressFeed, error_text, or_none, status_html

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
    `peak_tflops` (0: unknown), `run_button`. State: `last_result` (a `BenchResult`), `error`,
    `status`, `progress`, `table` (HTML), `plots` (two PNG images: quality vs time, latency vs steps).
    """

    def __init__(self, pipe: Any, *, prompt: str = DEFAULT_PROMPT):
        from ..schedulers import scheduler_names

        self.pipe = pipe
        self.backend = as_backend(pipe)
        self.last_result = None
        self.error: BaseException | None = None
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
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="300px"))
        self._feed = ProgressFeed(self.progress)
        self.status = widgets.HTML(value=status_html("ready"))
        self.status.add_class("sdlab-status")
        self.table = widgets.HTML()
        self.plots = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.output = widgets.Output()
        self.run_button.on_click(lambda _: self.run())
        super().__init__(
            children=[
                self.prompt,
                widgets.HBox(
                    [self.schedulers, widgets.VBox([self.num_inference_steps, self.seeds, self.repeats, self.warmup])]
                ),
                widgets.HBox([self.reference_steps, self.reference_scheduler, self.peak_tflops]),
                widgets.HBox([self.run_button, self.progress, self.status]),
                self.output,
                self.table,
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

    def run(self):
        """Run the benchmark; returns the `BenchResult`, or None on error (shown in the widget)."""
        from ..bench import benchmark_schedulers

        self.error = None
        self.output.clear_output()
        self.run_button.disabled = True
        self._feed.reset()
        self.status.value = status_html("benchmarking…", "busy")
        try:
            result = benchmark_schedulers(self.pipe, progress=self._feed, **self.arguments())
            plots = [_figure_png(result.plot_quality_vs_time), _figure_png(result.plot_latency_vs_steps)]
        except Exception as e:  # noqa: BLE001 - shown in the widget; the kernel lives on
            self.error = e
            self.status.value = status_html(error_text(e), "error")
            with self.output:
                print(error_text(e))
            return None
        finally:
            self.run_button.disabled = False
        self.last_result = result
        self.table.value = result.to_html()
        self.plots.children = [
            widgets.Image(value=png, format="png", layout=widgets.Layout(width="480px")) for png in plots
        ]
        failed = sum(1 for r in result.rows if r.get("error"))
        text = f"done: {len(result.rows)} settings" + (f", {failed} failed" if failed else "")
        self.status.value = status_html(text, "error" if failed else "ok")
        return result
