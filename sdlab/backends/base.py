"""The backend protocol: one way for a request to become images.

A backend turns a `GenerationRequest` into images plus, for each image, the backend's part of
the record (model identity, scheduler, remote job ids, ...). Local diffusers pipelines, ComfyUI
servers and Replicate models are all adapted to it, so `generate`, `sweep`, the widgets, the CLI
and the server drive every one of them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from ..request import Defaults, GenerationRequest

__all__ = ["Backend", "BackendOutput", "Defaults", "ProgressCallback"]

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

    @property
    def num_controlnets(self) -> int:
        """ControlNets the model applies (0: none); a request then carries one control image each."""

    def supports_per_image_guidance(self) -> bool:
        """True if one `run` may mix guidance scales (sdlab's batched guidance)."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise ValueError naming the argument if this backend cannot run `request`."""

    def validate_many(self, requests: Sequence[GenerationRequest]) -> None:
        """`validate` for many requests (a backend with a round trip per check does them in one)."""

    def identity(self) -> dict[str, Any]:
        """What changes pixels besides the request (model, versions, dtype): part of cache keys."""

    def run(
        self, request: GenerationRequest, *, progress: ProgressCallback | None = None, progress_bar: bool | None = None
    ) -> BackendOutput:
        """Make the images of `request`, in order. `progress_bar`: show (True), hide (False) or leave
        as configured (None) a local progress bar; backends without one ignore it."""
