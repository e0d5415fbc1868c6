"""What is wrong with a model's files, said at sdlab's edge instead of deep inside a library.

A damaged `.safetensors` file (empty, truncated, a text file or a Git LFS pointer), a config that
is not JSON, or weights missing from the Hugging Face cache while downloads are off: each becomes a
`ModelLoadError` naming the file (or the repo and the cache) and what to do about it.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterable
from pathlib import Path

from .errors import ModelLoadError

# Weight formats diffusers skips when safetensors exist, and weights of other variants.
_EXCLUDE = ("*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.h5", "*non_ema*")
_VARIANTS = ("fp16", "bf16")
_NON_VARIANT_WEIGHTS = (
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
    "*/diffusion_pytorch_model-0*.safetensors",
    "*/model-0*.safetensors",
)
# Exceptions of HTTP clients (httpx, requests) that mean the hub is out of reach, by class name.
_NETWORK_ERRORS = {"NetworkError", "ConnectError", "ConnectTimeout", "TransportError", "ConnectionError"}
# What a single-file checkpoint needs from its reference repo (diffusers downloads the same).
CONFIG_PATTERNS = ("*.json", "*.txt", "*.model")


# ---------------------------------------------------------------- files on disk


def read_json(path: str | Path) -> dict:
    """A JSON object from `path`; a file that is not one is a `ModelLoadError` naming it."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"is not valid JSON ({e})"
        raise ModelLoadError(f"{path} {what}: the file is damaged; restore or re-download it") from e
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{path} holds a JSON {type(data).__name__}, not the object a diffusers config is; restore or re-download it"
        )
    return data


def describe_bad_safetensors(path: str | Path, error: BaseException | None = None) -> str:
    """What is wrong with a `.safetensors` file that does not open, in words, naming the file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty (0 bytes): an interrupted download or copy? Re-download it"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return (
            f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in its repository, "
            "or download the file itself"
        )
    if _looks_like_text(head):
        start = head[:40].decode("utf-8", "replace").split("\n")[0]
        return f"{path} is a text file, not safetensors weights (it starts with {start!r}): download the weights again"
    detail = f" (safetensors: {error})" if error is not None else ""
    return f"{path} is truncated or not a safetensors file ({size:,} bytes){detail}: re-download it"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def open_safetensors(path: str | Path):
    """`safetensors.safe_open` of `path` (header only); a damaged file is a `ModelLoadError`."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as e:
        raise ModelLoadError(describe_bad_safetensors(path, e)) from e


def bad_files(folder: str | Path | None) -> str | None:
    """What is wrong with the first damaged config (`.json`) or weight (`.safetensors`) file under
    `folder`, or None. Only weight headers are read, so this costs little; it runs after a load failed.
    """
    if folder is None or not Path(folder).is_dir():
        return None
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            read_json(path)
        except ModelLoadError as e:
            return str(e)
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            open_safetensors(path)
        except ModelLoadError as e:
            return str(e)
    return None


# ---------------------------------------------------------------- the Hugging Face cache


def hub_cache(cache_dir: str | Path | None = None) -> str:
    """Where Hugging Face models are cached: `cache_dir`, else HF_HUB_CACHE (HF_HOME/hub)."""
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_unreachable(error: BaseException) -> bool:
    """True if `error` comes from the hub being off (HF_HUB_OFFLINE) or out of reach, with the
    files not in the cache."""
    from huggingface_hub import constants

    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub < 0.23
        from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled
    if getattr(constants, "HF_HUB_OFFLINE", False):
        return True
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, socket.gaierror)):
            return True
        if {c.__name__ for c in type(error).__mro__} & _NETWORK_ERRORS:  # httpx's and requests' own classes
            return True
        error = error.__cause__ or error.__context__
    return False


def snapshot_folder(repo_id: str, *, revision=None, cache_dir=None) -> Path | None:
    """The cached snapshot folder of a diffusers repo (where its model_index.json is), or None."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model_index.json", "config.json"):
        found = try_to_load_from_cache(repo_id, name, revision=revision, cache_dir=cache_dir)
        if isinstance(found, str):
            return Path(found).parent
    return None


def cached_components(repo_id: str, *, revision=None, cache_dir=None) -> list[str] | None:
    """The component folders a cached model_index.json lists, or None if it is not cached."""
    folder = snapshot_folder(repo_id, revision=revision, cache_dir=cache_dir)
    if folder is None or not (folder / "model_index.json").is_file():
        return None
    try:
        index = read_json(folder / "model_index.json")
    except ModelLoadError:
        return None
    return sorted(
        k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None
    )


def download_command(
    repo_id: str,
    components: Iterable[str] | None = None,
    *,
    patterns: Iterable[str] | None = None,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> str:
    """The `hf download` command that fetches what diffusers loads from `repo_id`.

    `components`: the pipeline's component folders (None: every folder); `patterns`: explicit
    include patterns instead (e.g. `CONFIG_PATTERNS`). Root-level single-file checkpoints, `.bin`
    copies and weights of other variants are left out.
    """
    parts = ["hf", "download", repo_id]
    if patterns is not None:
        include, exclude = list(patterns), []
    else:
        include = ["model_index.json"] + ([f"{c}/*" for c in components] if components is not None else ["*/*"])
        exclude = list(_EXCLUDE)
        if variant is None:
            exclude += [f"*.{v}.*" for v in _VARIANTS]
        else:
            exclude += [f"*.{v}.*" for v in _VARIANTS if v != variant] + list(_NON_VARIANT_WEIGHTS)
    parts += [arg for p in include for arg in ("--include", _quote(p))]
    parts += [arg for p in exclude for arg in ("--exclude", _quote(p))]
    if revision is not None:
        parts += ["--revision", revision]
    if cache_dir is not None:
        parts += ["--cache-dir", _quote(str(cache_dir))]
    return " ".join(parts)


def _quote(text: str) -> str:
    return f'"{text}"' if re.search(r"[*?\s\[\]]", text) else text


def missing_files(error: BaseException) -> str | None:
    """The "N file(s) are missing (...)" detail huggingface_hub gives for an incomplete snapshot."""
    while error is not None:
        m = re.search(r"\d+ file\(s\) (?:are|is) missing \([^)]*\)", str(error))
        if m:
            return m.group(0)
        error = error.__cause__ or error.__context__
    return None


def offline_error(
    what: str, repo_id: str, command: str, *, cache_dir=None, cause: BaseException | None = None
) -> ModelLoadError:
    """`what` (e.g. "the preset 'sd15'") is not in the cache and the hub is out of reach: say what
    to download, with which command, and where the cache is."""
    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False):
        reason, retry = "downloads are off (HF_HUB_OFFLINE=1)", " (or unset HF_HUB_OFFLINE and sdlab downloads it)"
    else:
        reason, retry = "the Hugging Face hub could not be reached", ""
    missing = missing_files(cause) if cause is not None else None
    detail = f" ({missing})" if missing else ""
    return ModelLoadError(
        f"{what} is not (fully) in the Hugging Face cache at {hub_cache(cache_dir)}{detail} and {reason}. "
        f"Download {repo_id} into that cache where there is network access:\n  {command}\n"
        f"then run again{retry}."
    )
