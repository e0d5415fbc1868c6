"""Backends: where a generation request becomes images (local diffusers, ComfyUI, Replicate)."""

from .base import Backend, BackendOutput, Defaults, as_backend

__all__ = ["Backend", "BackendOutput", "Defaults", "as_backend"]
