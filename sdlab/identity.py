"""Content identity of weights: what a model *is*, not what it is called.

Cache keys and records name models, ControlNets (and later adapters) by content:
- a local file: its SHA-256 (A1111's `Model hash` is the first 10 hex digits), computed once and
  remembered by path, size and modification time, so overwriting a checkpoint in place changes it;
- a local folder: a hash over the SHA-256 of every weight and config file in it;
- a Hugging Face hub model: the commit the cache holds for the revision loaded;
- weights changed in memory after loading (a notebook that trains or loads a state dict into the
  pipeline's modules): a hash of the tensors themselves, noticed through PyTorch's version counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

# the files whose content makes a model: weights, configs, tokenizers
_CONTENT_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json", ".txt", ".model", ".gguf"}
_HASH_CACHE_NAME = "file-hashes.json"
_lock = threading.Lock()
_memory: dict[str, dict[str, Any]] = {}


def cache_dir() -> Path:
    """Where sdlab remembers file hashes: $SDLAB_CACHE_DIR, else $XDG_CACHE_HOME/sdlab (~/.cache/sdlab)."""
    explicit = os.environ.get("SDLAB_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdlab"


def _stat_key(path: Path) -> tuple[str, str]:
    st = path.stat()
    return str(path), f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _load_disk_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache_dir() / _HASH_CACHE_NAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_disk_cache(entries: dict[str, dict[str, Any]]) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_HASH_CACHE_NAME}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / _HASH_CACHE_NAME)
    except OSError:  # a read-only home: hashes are then remembered for this process only
        pass


def content_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, read in chunks (not remembered: for files that are new)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, remembered by path, size, mtime and inode (a file written
    again, even with the same size, is hashed again)."""
    path = Path(path).resolve()
    name, stamp = _stat_key(path)
    with _lock:
        entry = _memory.get(name)
        if entry is None or entry.get("stamp") != stamp:
            entry = _load_disk_cache().get(name)
        if entry is not None and entry.get("stamp") == stamp:
            _memory[name] = entry
            return entry["sha256"]
    value = content_sha256(path)
    if _stat_key(path)[1] != stamp:  # written while we read it: do not remember a torn hash
        return value
    with _lock:
        _memory[name] = {"stamp": stamp, "sha256": value}
        entries = _load_disk_cache()
        entries[name] = _memory[name]
        _save_disk_cache(entries)
    return value


def short_hash(sha256: str) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's SHA-256."""
    return sha256[:10]


def folder_sha256(folder: str | Path) -> str:
    """A hash over the relative path and SHA-256 of every weight, config and tokenizer file."""
    folder = Path(folder).resolve()
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in _CONTENT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n".encode())
    return digest.hexdigest()


def hub_commit(repo_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> str | None:
    """The commit of `repo_id` at `revision` in the local Hugging Face cache (None if not cached)."""
    if revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return None
    root = Path(cache_dir or constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    try:
        return (root / "refs" / (revision or "main")).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def path_identity(path: str | Path) -> dict[str, Any]:
    """The content identity of a local file or folder of weights."""
    path = Path(path)
    if path.is_file():
        return {"sha256": file_sha256(path)}
    return {"folder_sha256": folder_sha256(path)}


def modules_version(modules: dict[str, Any]) -> tuple:
    """A cheap stamp that changes whenever a tensor of `modules` is modified or replaced in place
    (PyTorch bumps a tensor's version on every in-place write, e.g. `load_state_dict`, optimizer steps)."""
    stamp = []
    for name, module in sorted(modules.items()):
        for tensor in _tensors(module):
            stamp.append((name, id(tensor), tensor._version))
    return tuple(stamp)


def modules_sha256(modules: dict[str, Any]) -> str:
    """A hash of the tensors themselves (used only once weights changed in memory)."""
    import torch

    digest = hashlib.sha256()
    for name, module in sorted(modules.items()):
        for key, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").flatten().contiguous()
            digest.update(f"{name}.{key}:{t.dtype}:{tuple(t.shape)}\0".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _tensors(module) -> list:
    return [*module.parameters(), *module.buffers()]


def image_sha256(image: Any) -> str:
    """The content hash of an input image (an init image, a mask): its mode, size and pixels for a
    PIL image; dtype, shape and values for a tensor or array (latents handed between passes)."""
    digest = hashlib.sha256()
    if hasattr(image, "tobytes") and hasattr(image, "mode") and hasattr(image, "size"):  # PIL
        digest.update(f"image:{image.mode}:{image.size[0]}x{image.size[1]}\0".encode())
        digest.update(image.tobytes())
        return digest.hexdigest()
    try:
        import torch

        if isinstance(image, torch.Tensor):
            t = image.detach().to("cpu").float().contiguous()
            digest.update(f"tensor:{tuple(t.shape)}\0".encode())
            digest.update(t.numpy().tobytes())
            return digest.hexdigest()
    except ImportError:  # pragma: no cover
        pass
    import numpy as np

    array = np.ascontiguousarray(image)
    digest.update(f"array:{array.dtype}:{array.shape}\0".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()
