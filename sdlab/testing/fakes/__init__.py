"""Local stand-ins for remote services, for tests and offline notebooks (127.0.0.1 only).

`FakeComfyUI` answers ComfyUI's HTTP and WebSocket API message by message as a real server does
(see comfyui-api.md); `FakeReplicate` speaks Replicate's predictions API to the official client.
Both run an aiohttp application in a background thread and "generate" deterministic pictures
whose pixels depend on the prompt and the seed. Importing this package starts nothing.
"""

from __future__ import annotations

__all__ = ["FakeComfyUI", "FakeReplicate", "fake_image"]


def __getattr__(name):
    if name == "FakeComfyUI":
        from .comfyui import FakeComfyUI

        return FakeComfyUI
    if name == "FakeReplicate":
        from .replicate import FakeReplicate

        return FakeReplicate
    if name == "fake_image":
        from ._common import fake_image

        return fake_image
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
