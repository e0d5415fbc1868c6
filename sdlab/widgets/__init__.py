"""Jupyter widgets over sdlab's library: an interactive prompt lab, a sweep explorer, a scheduler bench.

    from sdlab.widgets import PromptLab, SweepExplorer, SchedulerBench
    PromptLab(pipe)                 # prompt, presets, token budget, seed lock, Generate, gallery
    SweepExplorer(sdlab.sweep(...)) # x/y/z axes, value filters, the grid, one cell large
    SchedulerBench(pipe)            # schedulers x steps: table, each setting's images, plots; Cancel

Each is an `ipywidgets.VBox` with an explicit Run/Generate button (generation is slow: nothing is
generated when a slider moves), a `status` label and state a test can read (`last_result`).
Generation runs synchronously in the button handler, on the kernel's thread: widget updates
(the progress bar) are sent as they happen, and the kernel is busy until the images are there.
Errors (bad sizes, unknown schedulers, a failing model) are shown in the widget, never raised.
"""

from .prompt_lab import PromptLab
from .scheduler_bench import SchedulerBench
from .sweep_explorer import SweepExplorer

__all__ = ["PromptLab", "SchedulerBench", "SweepExplorer"]
