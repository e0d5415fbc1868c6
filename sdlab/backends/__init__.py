"""Backends: where a generation request becomes images (local diffusers, ComfyUI, Replicate).

`ComfyUIBackend`, `ReplicateBackend` and `Workflow` load on first use: importing this package
touches no network and imports no HTTP or model library.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .base import Backend, BackendOutput, Defaults, as_backend

__all__ = ["Backend", "BackendOutput", "ComfyUIBackend", "ComfyUIClient", "Defaults", "ReplicateBackend", "Workflow", "as_backend", "open_backend"]

_LAZY = {
    "ComfyUIBackend": ("comfyui", "ComfyUIBackend"),
    "ComfyUIClient": ("comfyui_client", "ComfyUIClient"),
    "ReplicateBackend": ("replicate", "ReplicateBackend"),
    "Workflow": ("workflow", "Workflow"),
}

REMOTE_PREFIXES = ("replicate:", "comfyui:")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_remote_spec(spec: Any) -> bool:
    """True for "replicate:..." and "comfyui:..." model specs."""
    return isinstance(spec, str) and spec.startswith(REMOTE_PREFIXES)


def open_backend(spec: str):
    """A remote backend from a spec string.

    - "replicate:black-forest-labs/flux-schnell" (or "owner/name:version"), optionally with
      "?output_format=webp&timeout=120"; the token comes from REPLICATE_API_TOKEN.
    - "comfyui:http://127.0.0.1:8188", optionally with "?workflow=path.json&ckpt_name=x.safetensors&timeout=600"
      (and "&allow_size_mismatch=true" to accept images of another size than requested).
    """
    if not is_remote_spec(spec):
        raise ValueError(f"`spec` must start with 'replicate:' or 'comfyui:', got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "replicate":
        model, _, query = rest.partition("?")
        options = _options(query, {"output_format", "timeout", "max_concurrency"}, spec)
        from .replicate import ReplicateBackend

        return ReplicateBackend(model, **options)
    parts = urlsplit(rest if "://" in rest else "http://" + rest)
    options = _options(parts.query, {"workflow", "ckpt_name", "timeout", "allow_size_mismatch"}, spec)
    from .comfyui import ComfyUIBackend

    server = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return ComfyUIBackend(server, **options)


def _options(query: str, allowed: set[str], spec: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise ValueError(f"`spec` {spec!r}: unknown option {key!r}; options: {', '.join(sorted(allowed))}")
        if key == "timeout":
            options[key] = float(value)
        elif key == "max_concurrency":
            options[key] = int(value)
        elif key == "allow_size_mismatch":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"`spec` {spec!r}: {key} must be true or false, got {value!r}")
            options[key] = value.lower() in ("true", "1", "yes")
        else:
            options[key] = value
    return options
