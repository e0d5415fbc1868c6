"""What the prompt tools need to know of a pipeline, in one place: its family and T5 length.

The tools take a diffusers pipeline or its sdlab backend; sdlab's record of the pipeline
(`sdlab.loading.pipeline_info`) says what it is.
"""

from __future__ import annotations

from typing import Any

from ..loading import pipeline_info


def pipeline_of(pipe: Any) -> Any:
    """The diffusers pipeline of `pipe` (a pipeline, or the sdlab backend wrapping one)."""
    inner = getattr(pipe, "pipe", None)  # an sdlab DiffusersBackend
    return inner if inner is not None else pipe


def family_of(pipe: Any) -> str:
    """ "sd1", "sd2", "sdxl" or "flux"."""
    return pipeline_info(pipeline_of(pipe)).family


def t5_length(pipe: Any) -> int:
    """How many T5 tokens sdlab encodes for a FLUX pipeline (its preset's `max_sequence_length`)."""
    return int(pipeline_info(pipeline_of(pipe)).load_kwargs.get("max_sequence_length", 512))
