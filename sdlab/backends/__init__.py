"""Backends: where a generation request becomes images (local diffusers, ComfyUI, Replicate).

`ComfyUIBackend`, `ReplicateBackend` and `Workflow` load on first use: importing this package
touches no network and imports no HTTP or model library.
"""

from __future__ import annotations

import sys
import threading
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .. import loading
from ..request import Defaults
from .base import Backend, BackendOutput

__all__ = [
    "Backend",
    "BackendOutput",
    "ComfyUIBackend",
    "ComfyUIClient",
    "Defaults",
    "ReplicateBackend",
    "Workflow",
    "as_backend",
    "model_facts",
    "open_backend",
    "open_model",
    "pipeline_lock",
]

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


_BACKENDS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def as_backend(pipe_or_backend: Any) -> Backend:
    """Adapt a diffusers pipeline to the backend protocol; pass backends through unchanged."""
    if isinstance(pipe_or_backend, Backend) and not _is_diffusers_pipeline(pipe_or_backend):
        return pipe_or_backend
    if _is_diffusers_pipeline(pipe_or_backend):
        from .diffusers import DiffusersBackend  # imports torch: only once a pipeline exists

        with _BACKENDS_LOCK:  # one backend a pipeline (its lock and embedding cache), even from two threads at once
            backend = _BACKENDS.get(pipe_or_backend)
            if backend is None:
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


def local_pipeline(backend: Any) -> Any | None:
    """The diffusers pipeline a local backend runs; None for any other backend (remote, Ray)."""
    if "sdlab.backends.diffusers" not in sys.modules:  # no local backend exists yet
        return None
    from .diffusers import DiffusersBackend

    return backend.pipe if isinstance(backend, DiffusersBackend) else None


def pipeline_lock(backend: Any) -> Any | None:
    """The lock a local backend takes around every call (one call at a time per pipeline), or None
    for backends without one (remote servers queue their own jobs). It is reentrant: a client that
    must hold the pipeline for a whole run of calls (a benchmark, a widget's run) takes it once
    and its own calls inside pass straight through, while every other thread waits."""
    if "sdlab.backends.diffusers" not in sys.modules:
        return None
    from .diffusers import DiffusersBackend

    return backend.lock if isinstance(backend, DiffusersBackend) else None


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


def open_model(model: Any = None, **load_kwargs: Any) -> Backend:
    """A backend for any model reference (sweeps, the CLI, the server and Ray workers all open
    models here): a pipeline or backend as it is, a "replicate:"/"comfyui:" spec, or a preset, hub
    id or path loaded by `load_pipeline(model, **load_kwargs)` (None: the embedded default)."""
    if model is not None and not isinstance(model, (str, Path)):
        if load_kwargs:
            raise ValueError(
                f"load options {sorted(load_kwargs)} apply to a model given by name, not to a loaded pipeline"
            )
        return as_backend(model)
    if is_remote_spec(model):
        if load_kwargs:
            raise ValueError(f"load options {sorted(load_kwargs)} apply to local models, not to {model!r}")
        return open_backend(model)
    return as_backend(loading.load_pipeline(model, **{"progress_bar": False, **load_kwargs}))


def model_facts(model: Any) -> tuple[Defaults, dict[str, Any]]:
    """(defaults, identity) of a model without loading it, so a sweep can plan, validate and find its
    cached cells before any weights load. The identity includes the weights' content."""
    if model is not None and not isinstance(model, (str, Path)):
        backend = as_backend(model)
        return backend.defaults, backend.identity()
    if is_remote_spec(model):  # no network: the adapter's own table
        return open_backend(model).defaults, {"model_spec": model}
    return loading.model_defaults(model), {
        "model_spec": str(model),
        "weights": loading.source_identity(model),
        "device_type": loading.resolve_device("auto").split(":")[0],
    }
