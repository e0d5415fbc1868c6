"""sdlab's testing wing: what exists for tests and offline demos, apart from the toolkit.

``pipelines``      tiny random-weight pipelines of every family, and the ways they reach disk
``clip_tokenizer`` the small CLIP tokenizer shipped for them (``data/clip_tokenizer``)
``t5_tokenizer``   the small T5 tokenizer of the tiny FLUX pipelines (``data/t5_tokenizer``)
``loras``          tiny random LoRAs fitting a pipeline (diffusers' and kohya's formats)
``fakes``          local stand-ins for ComfyUI and Replicate (``pip install 'sdlab[fakes]'``)

The names of ``pipelines`` are handed on here (``testing.tiny_pipeline(...)``) when first used,
so importing ``sdlab.testing`` or ``sdlab.testing.fakes`` loads neither torch nor diffusers.
"""

from __future__ import annotations

__all__ = [
    "FAMILIES",
    "CONTROLNET_FAMILIES",
    "SINGLE_FILE_FAMILIES",
    "tiny_components",
    "tiny_pipeline",
    "save_tiny_pipeline",
    "save_tiny_controlnet",
    "fill_hf_cache",
    "save_single_file",
    "save_tiny_lora",
]


def __getattr__(name):
    if name == "save_tiny_lora":
        from .loras import save_tiny_lora

        return save_tiny_lora
    if name in __all__:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
