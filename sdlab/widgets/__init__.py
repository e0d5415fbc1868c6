"""Jupyter widgets over sdlab's library: an interactive prompt lab, a sweep explorer, a scheduler bench.

    from sdlab.widgets import PromptLab, SweepExplorer, SchedulerBench
    PromptLab(pipe)                 # prompt, presets, token budget, seed lock, Generate, gallery, enlarge
    SweepExplorer(sdlab.sweep(...)) # x/y/z axes, value filters, the grid, one cell large
    SchedulerBench(pipe)            # schedulers x steps: table, each setting's images, plots; Cancel

Each is an `ipywidgets.VBox` with an explicit Run/Generate button (generation is slow: nothing is
generated when a slider moves), a `status` label and state a test can read (`last_result`).
A button's run works on a thread (`_runs.WidgetRun`), so Cancel, Kernel > Interrupt (both stop
it at the next denoising step, recorded as cancelled; `_interrupt`) and other cells stay live.
A run holds its pipeline from start to end: a cell using the pipeline waits for it, and a run
started while a cell holds it shows "waiting for the pipeline". Errors (bad sizes, unknown
schedulers, a failing model) are shown in the widget, never raised.
"""

from .prompt_lab import PromptLab
from .scheduler_bench import SchedulerBench
from .sweep_explorer import SweepExplorer

__all__ = ["PromptLab", "SchedulerBench", "SweepExplorer"]
