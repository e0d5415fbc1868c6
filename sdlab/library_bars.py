"""diffusers' and transformers' own progress bars (their "Loading weights" and "Loading pipeline
components" bars), switched for one load and put back as they were."""

from __future__ import annotations


def loading_bars(enabled: tuple | bool | None):
    """Set diffusers' and transformers' loading progress bars (None: leave them); returns how they were."""
    import diffusers.utils
    import transformers.utils

    modules = (diffusers.utils.logging, transformers.utils.logging)
    before = tuple(m.is_progress_bar_enabled() for m in modules)
    if enabled is not None:
        wanted = enabled if isinstance(enabled, tuple) else (enabled,) * len(modules)
        for module, on in zip(modules, wanted):
            module.enable_progress_bar() if on else module.disable_progress_bar()
    return before
