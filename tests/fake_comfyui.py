"""The local fake ComfyUI server used by the tests (its code lives in the package, so notebooks can
start it too): `FakeComfyUI().start()` listens on 127.0.0.1 and answers as comfyui-api.md records."""

from sdlab.testing.fakes.comfyui import CHECKPOINTS, COMFYUI_VERSION, FakeComfyUI

__all__ = ["CHECKPOINTS", "COMFYUI_VERSION", "FakeComfyUI"]
