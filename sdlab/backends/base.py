"""The backend protocol: one way for a request to become images.

A backend turns a `GenerationRequest` into images plus, for each image, the backend's part of
the record (model identity, scheduler, remote job ids, ...). Local diffusers pipelines, ComfyUI
servers and Replicate models are all adapted to it, so `generate`, `sweep`, the widgets, the CLI
and the server drive every one of them the same way.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from PIL import Image

from ..request import Defaults, GenerationRequest

__all__ = ["Backend", "BackendOutput", "Defaults", "ProgressCallback", "as_backend"]

# Progress callbacks receive a dict so they can grow: {"step": i, "total": n, ...}.
ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass
class BackendOutput:
    """What a backend returns for one request: the images and, per image, its record fields."""

    images: list[Image.Image]
    records: list[dict[str, Any]]
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """What `generate` and `sweep` need from any backend."""

    name: str  # "diffusers", "comfyui", "replicate", ...

    @property
    def model_id(self) -> str:
        """The identity of the model, recorded with every image and part of every cache key."""

    @property
    def defaults(self) -> Defaults: ...

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this."""

    @property
    def max_batch_size(self) -> int:
        """How many images one `run` may carry (1 for backends that make one image a call)."""

    def supports_per_image_guidance(self) -> bool:
        """True if one `run` may mix guidance scales (sdlab's batched guidance)."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise ValueError naming the argument if this backend cannot run `request`."""

    def identity(self) -> dict[str, Any]:
        """What changes pixels besides the request (model, versions, dtype): part of cache keys."""

    def run(self, request: GenerationRequest, *, progress: ProgressCallback | None = None) -> BackendOutput:
        """Make the images of `request`, in order."""


_BACKENDS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def as_backend(pipe_or_backend: Any) -> Backend:
    """Adapt a diffusers pipeline to the backend protocol; pass backends through unchanged."""
    if isinstance(pipe_or_backend, Backend) and not _is_diffusers_pipeline(pipe_or_backend):
        return pipe_or_backend
    if _is_diffusers_pipeline(pipe_or_backend):
        from .diffusers import DiffusersBackend

        backend = _BACKENDS.get(pipe_or_backend)
        if backend is None:  # one backend a pipeline: its embedding cache lives as long as the pipeline
            backend = _BACKENDS[pipe_or_backend] = DiffusersBackend(pipe_or_backend)
        return backend
    raise TypeError(
        f"expected a diffusers pipeline (from sdlab.load_pipeline) or an sdlab backend, "
        f"got {type(pipe_or_backend).__name__}"
    )


def _is_diffusers_pipeline(obj: Any) -> bool:
    import sys

    if "diffusers" not in sys.modules:  # no pipeline can exist yet: don't import diffusers for a remote backend
        return False
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, DiffusionPipeline)
