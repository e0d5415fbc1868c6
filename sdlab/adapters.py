"""Adapters: LoRA files found, identified by content, checked against a pipeline, applied for one call.

    sdlab.set_lora_dir("loras/")
    sdlab.generate(pipe, "a red outlined circle", loras={"outlined": 0.8})
    sdlab.generate(pipe, "a red outlined circle <lora:outlined:0.8>")  # A1111's syntax, same request

A LoRA is named by a file path, a folder (diffusers' `pytorch_lora_weights.safetensors`), a name in
the LoRA folder (`set_lora_dir`, or $SDLAB_LORA_DIR: the file's name with or without its suffix),
or a hub id found offline in the Hugging Face cache. Its identity is its content (SHA-256); records
also carry A1111's short hash (`Lora hashes`: the first 12 hex digits of the SHA-256 of a
safetensors file's tensor data, kohya's "addnet" hash; of the whole file otherwise).

Scoped: the backend puts the adapters of a request into the pipeline for one call (diffusers'
`load_lora_weights`, from tensors read once per content hash) and removes them afterwards
(`unload_lora_weights`), so the pipeline generates exactly as before. Each LoRA layer's output is
multiplied by a per-row weight (a forward hook on its `lora_B`), so images with different LoRA
weights share one batched denoising loop, as per-image guidance does.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import identity
from .library_bars import loading_bars

LORA_SUFFIXES = (".safetensors", ".bin")
MAX_LORA_WEIGHT = 100.0
_STATE_CACHE_SIZE = 16
# A1111's extra network in a prompt: <lora:name:te_weight:unet_weight> (unet defaults to te, te to 1)
LORA_TAG = re.compile(r"<lora:([^:>]+)((?::[^:>]*)*)>")

_lock = threading.Lock()
_lora_dir: Path | None = None
_states: OrderedDict[str, dict] = OrderedDict()  # sha256 -> tensors as read from the file
_a1111_hashes: dict[str, str] = {}  # sha256 -> A1111 short hash


def set_lora_dir(path: str | Path | None) -> None:
    """The folder where LoRAs are found by name (in `loras=`, `<lora:name:w>` and `regenerate`)."""
    global _lora_dir
    if path is not None and not Path(path).is_dir():
        raise ValueError(f"`set_lora_dir`: {str(path)!r} is not a folder")
    _lora_dir = None if path is None else Path(path)


def lora_dir() -> Path | None:
    """The LoRA folder: `set_lora_dir`'s, else $SDLAB_LORA_DIR, else None."""
    if _lora_dir is not None:
        return _lora_dir
    env = os.environ.get("SDLAB_LORA_DIR")
    return Path(env) if env else None


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file: how prompts and records name it, where it is, and what it is (its SHA-256)."""

    name: str
    path: str
    sha256: str

    @property
    def a1111_hash(self) -> str:
        """A1111's short hash (its `Lora hashes` infotext): 12 hex digits of kohya's addnet hash."""
        return a1111_hash(self)


@dataclass(frozen=True)
class Lora:
    """A LoRA file applied with a weight on the UNet (and on the text encoders: `text_encoder_weight`,
    the same as `weight` when None, as A1111's `<lora:name:w>`)."""

    file: LoraFile
    weight: float = 1.0
    text_encoder_weight: float | None = None

    def __post_init__(self):
        if not isinstance(self.file, LoraFile):
            raise ValueError(f"a Lora's `file` is a LoraFile (from sdlab.adapters.resolve_lora), got {self.file!r}")
        object.__setattr__(self, "weight", check_weight(self.weight, f"LoRA {self.file.name!r} weight"))
        if self.text_encoder_weight is not None:
            te = check_weight(self.text_encoder_weight, f"LoRA {self.file.name!r} text_encoder_weight")
            object.__setattr__(self, "text_encoder_weight", None if te == self.weight else te)

    @property
    def te_weight(self) -> float:
        return self.weight if self.text_encoder_weight is None else self.text_encoder_weight

    def describe(self, *, path: bool = True) -> dict[str, Any]:
        """JSON-able: name, content hash, A1111 hash, weights (and where the file was)."""
        out = {"name": self.file.name, "sha256": self.file.sha256, "a1111_hash": self.file.a1111_hash}
        out["weight"] = self.weight
        if self.text_encoder_weight is not None:
            out["text_encoder_weight"] = self.text_encoder_weight
        if path:
            out["path"] = self.file.path
        return out

    def tag(self) -> str:
        """A1111's prompt tag for this LoRA as applied."""
        w = _number(self.weight)
        if self.text_encoder_weight is None:
            return f"<lora:{self.file.name}:{w}>"
        return f"<lora:{self.file.name}:{_number(self.text_encoder_weight)}:{w}>"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_weight(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if abs(value) > MAX_LORA_WEIGHT:
        raise ValueError(f"`{name}` must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}, got {value!r}")
    return float(value)


# ------------------------------------------------------------------ finding files


def _file(path: Path, name: str | None = None) -> LoraFile:
    path = path.resolve()
    return LoraFile(name=name or path.stem, path=str(path), sha256=identity.file_sha256(path))


def _in_folder(folder: Path) -> Path | None:
    for candidate in ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin"):
        if (folder / candidate).is_file():
            return folder / candidate
    files = sorted(p for p in folder.iterdir() if p.suffix in LORA_SUFFIXES)
    return files[0] if len(files) == 1 else None


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in LORA_SUFFIXES)


def resolve_lora(ref: str | Path | LoraFile) -> LoraFile:
    """The LoRA file `ref` names: a file, a folder, a name in the LoRA folder, or a cached hub id.
    An unknown name is a ValueError listing what the LoRA folder holds."""
    if isinstance(ref, LoraFile):
        return ref
    if not isinstance(ref, (str, Path)) or not str(ref).strip():
        raise ValueError(f"a LoRA is named by a file, a folder, a name in the LoRA folder or a hub id, got {ref!r}")
    path = Path(ref).expanduser()
    if path.is_file():
        return _file(path)
    if path.is_dir():
        found = _in_folder(path)
        if found is None:
            raise ValueError(
                f"LoRA folder {str(path)!r} holds no pytorch_lora_weights.safetensors (or single LoRA file)"
            )
        return _file(found, name=path.name)
    folder = lora_dir()
    if folder is not None:
        text = str(ref)
        for p in _folder_files(folder):
            rel = p.relative_to(folder).as_posix()
            if text in (p.name, p.stem, rel, rel.rsplit(".", 1)[0]):
                return _file(p)
    hub = _from_hub_cache(str(ref))
    if hub is not None:
        return hub
    if folder is None:
        where = "no LoRA folder is set (sdlab.set_lora_dir or $SDLAB_LORA_DIR)"
    else:
        names = [p.stem for p in _folder_files(folder)]
        where = f"the LoRA folder {str(folder)!r} holds {names if names else 'no LoRA files'}"
    raise ValueError(f"LoRA {str(ref)!r} not found: it is not a file or folder, {where}, and no hub cache has it")


def _from_hub_cache(ref: str) -> LoraFile | None:
    if ref.count("/") != 1 or ref.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not cached (offline): not a hub LoRA we can use
        return None
    found = _in_folder(folder)
    return None if found is None else _file(found, name=ref.split("/")[1])


def find_by_hash(value: str) -> LoraFile | None:
    """The file in the LoRA folder whose SHA-256 starts with `value`, or whose A1111 hash is `value`."""
    folder = lora_dir()
    if folder is None or not value:
        return None
    value = value.lower()
    for p in _folder_files(folder):
        f = _file(p)
        if f.sha256.startswith(value) or f.a1111_hash == value[:12]:
            return f
    return None


def a1111_hash(file: LoraFile) -> str:
    """A1111's `Lora hashes` value: kohya's addnet hash (SHA-256 of the tensor data after a
    safetensors header) for .safetensors, the file's SHA-256 otherwise; 12 hex digits."""
    with _lock:
        cached = _a1111_hashes.get(file.sha256)
    if cached:
        return cached
    if not file.path.endswith(".safetensors"):
        value = file.sha256[:12]
    else:
        digest = hashlib.sha256()
        with open(file.path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(n + 8)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        value = digest.hexdigest()[:12]
    with _lock:
        _a1111_hashes[file.sha256] = value
    return value


# ------------------------------------------------------------------ from arguments and prompts


def parse_tags(text: str) -> list[tuple[str, float, float | None]]:
    """A1111's `<lora:name:w>` tags in `text`: (name, unet weight, text encoder weight or None)."""
    out = []
    for m in LORA_TAG.finditer(text):
        name = m.group(1).strip()
        params = [p for p in m.group(2).split(":")[1:]]
        positional = [p for p in params if "=" not in p]
        named = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            te = float(positional[0]) if positional and positional[0].strip() else 1.0
            te = float(named.get("te", te))
            unet = float(positional[1]) if len(positional) > 1 else te
            unet = float(named.get("unet", unet))
        except ValueError:
            raise ValueError(f"A1111 tag {m.group(0)!r}: its weights must be numbers") from None
        out.append((name, unet, None if te == unet else te))
    return out


def strip_tags(text: str) -> str:
    """The prompt without its `<lora:...>` tags, as A1111 encodes it."""
    return LORA_TAG.sub("", text)


def loras_for(prompt: Any, loras: Any = None) -> tuple[Lora, ...]:
    """The LoRAs of one image: the `<lora:name:w>` tags of its prompt (a string), then `loras`
    (name/path/LoraFile -> weight, or -> (unet weight, text encoder weight); or Lora objects)."""
    out: list[Lora] = []
    if isinstance(prompt, str):
        for name, unet, te in parse_tags(prompt):
            out.append(Lora(resolve_lora(name), unet, te))
    if loras is None:
        return _no_duplicates(out)
    if isinstance(loras, Lora):
        loras = [loras]
    if isinstance(loras, Mapping):
        items = list(loras.items())
    elif isinstance(loras, (list, tuple)):
        items = [(x, None) for x in loras]
    else:
        raise ValueError(f"`loras` must be a mapping of LoRA name to weight, got {type(loras).__name__}")
    for ref, weight in items:
        if isinstance(ref, Lora):
            out.append(ref)
            continue
        file = resolve_lora(ref)
        if weight is None:
            weight = 1.0
        if isinstance(weight, (list, tuple)):
            if len(weight) != 2:
                raise ValueError(f"`loras[{ref!r}]` is a weight or a (unet, text_encoder) pair, got {weight!r}")
            out.append(Lora(file, weight[0], weight[1]))
        else:
            out.append(Lora(file, weight))
    return _no_duplicates(out)


def _no_duplicates(loras: list[Lora]) -> tuple[Lora, ...]:
    seen: dict[str, str] = {}
    for lora in loras:
        if lora.file.sha256 in seen or lora.file.name in seen.values():
            raise ValueError(
                f"LoRA {lora.file.name!r} is given twice (in the prompt's <lora:...> tags and/or `loras`); give it once"
            )
        seen[lora.file.sha256] = lora.file.name
    return tuple(loras)


def check_request_loras(prompts: Sequence[Any], loras: Sequence[tuple[Lora, ...]]) -> None:
    """A request's LoRAs against its prompts: every `<lora:name:w>` tag is applied with its weight."""
    for i, (prompt, entries) in enumerate(zip(prompts, loras)):
        for lora in entries:
            if not isinstance(lora, Lora):
                raise ValueError(f"`loras` of image {i} must hold sdlab.adapters.Lora entries, got {lora!r}")
        if not isinstance(prompt, str):
            continue
        by_name = {lora.file.name: lora for lora in entries}
        for name, unet, te in parse_tags(prompt):
            lora = by_name.get(name)
            if lora is None or lora.weight != unet or lora.text_encoder_weight != te:
                raise ValueError(
                    f"the prompt of image {i} says <lora:{name}:...> but the request applies "
                    f"{lora.tag() if lora else 'no such LoRA'}: build it with GenerationRequest.create"
                )
    files = {tuple(lora.file.sha256 for lora in entries) for entries in loras}
    if len(files) > 1:
        raise ValueError("the images of one request must use the same LoRA files (weights may differ)")


# ------------------------------------------------------------------ applying to a pipeline


def read_state(file: LoraFile) -> dict:
    """The tensors of a LoRA file, read once per content hash; a corrupt file is a ValueError naming it."""
    with _lock:
        state = _states.get(file.sha256)
        if state is not None:
            _states.move_to_end(file.sha256)
            return state
    try:
        if file.path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(file.path)
        else:
            import torch

            state = torch.load(file.path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"LoRA file {file.path!r} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"LoRA file {file.path!r} holds no tensors")
    with _lock:
        _states[file.sha256] = state
        while len(_states) > _STATE_CACHE_SIZE:
            _states.popitem(last=False)
    return state


def adapter_name(file: LoraFile) -> str:
    return f"sdlab_{file.sha256[:16]}"


def _components(pipe) -> dict[str, Any]:
    import torch

    names = ("unet", "transformer", "text_encoder", "text_encoder_2")
    return {n: getattr(pipe, n) for n in names if isinstance(getattr(pipe, n, None), torch.nn.Module)}


def _lora_layers(module, name: str) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_B", {})]


def foreign_adapters(pipe) -> list[str]:
    """Adapters in the pipeline that sdlab did not put there (sdlab removes its own after each call)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    names = set()
    for component in _components(pipe).values():
        for m in component.modules():
            if isinstance(m, BaseTunerLayer):
                names.update(getattr(m, "lora_B", {}).keys() or ["?"])
    return sorted(names)


def check_no_foreign_adapters(pipe) -> None:
    found = foreign_adapters(pipe)
    if found:
        raise ValueError(
            f"the pipeline holds LoRA adapters loaded outside sdlab ({', '.join(found)}), which sdlab would not "
            f"record: remove them (pipe.unload_lora_weights()) and pass the files as `loras=` (or <lora:name:w>)"
        )


def _count_pairs(state: dict) -> int:
    return sum(1 for k in state if k.endswith(("down.weight", "lora_A.weight")))


_fits: dict[tuple, dict[str, bool]] = {}


def check_fits(pipe, file: LoraFile) -> dict[str, bool]:
    """Whether the LoRA's layers fit this pipeline's UNet and text encoders (names and shapes), by
    loading it once and removing it again; a LoRA of another family or a corrupt file is a
    ValueError naming the file. Returns which components it changes ({"unet": True, ...})."""
    key = (id(pipe), type(pipe).__name__, file.sha256)
    with _lock:
        if key in _fits:
            return _fits[key]
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"{type(pipe).__name__} cannot take LoRAs (diffusers has no LoRA loader for it)")
    state = read_state(file)
    pairs = _count_pairs(state)
    name = adapter_name(file)
    check_no_foreign_adapters(pipe)
    try:
        import logging

        from diffusers.utils import logging as dlogging

        previous = dlogging.get_verbosity()
        dlogging.set_verbosity(logging.ERROR)  # a family mismatch is reported below, not as warnings
        bars = loading_bars(False)  # transformers' "Loading weights" bar, once per LoRA: not the user's load
        try:
            pipe.load_lora_weights(dict(state), adapter_name=name)
        finally:
            dlogging.set_verbosity(previous)
            loading_bars(bars)
        parts = {n: len(_lora_layers(m, name)) for n, m in _components(pipe).items()}
    except Exception as e:
        _unload(pipe)
        raise ValueError(
            f"LoRA {file.path!r} does not fit this {type(pipe).__name__} ({type(e).__name__}: {str(e)[:300]}); "
            f"is it a LoRA for another model family?"
        ) from None
    _unload(pipe)
    if pairs == 0 or sum(parts.values()) < pairs:
        raise ValueError(
            f"LoRA {file.path!r} does not fit this {type(pipe).__name__}: {sum(parts.values())} of its {pairs} "
            f"layers match the model's; is it a LoRA for another model family?"
        )
    result = {n: count > 0 for n, count in parts.items()}
    with _lock:
        _fits[key] = result
    return result


def _unload(pipe) -> None:
    unload = getattr(pipe, "unload_lora_weights", None)
    if unload is not None:
        unload()


class LoraCall:
    """The LoRAs of one call in the pipeline, each layer's output scaled per row; removed on exit.

    `unet_scales(weights per row)` / `text_scale(weights)` set what the hooks multiply by: a number
    for the whole batch, or a per-row tensor laid out as the denoiser's batch is."""

    def __init__(self, pipe, loras: tuple[Lora, ...]):
        self.pipe = pipe
        self.files = [lora.file for lora in loras]
        self.names = [adapter_name(f) for f in self.files]
        self.unet: dict[str, Any] = {n: 1.0 for n in self.names}
        self.text: dict[str, float] = {n: 1.0 for n in self.names}
        self._hooks: list = []

    def __enter__(self) -> LoraCall:
        check_no_foreign_adapters(self.pipe)
        try:
            bars = loading_bars(False)  # transformers' "Loading weights" bar at every call: not the user's load
            try:
                with warnings.catch_warnings():  # PEFT warns of "multiple adapters": sdlab means it
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    for file, name in zip(self.files, self.names):
                        self.pipe.load_lora_weights(dict(read_state(file)), adapter_name=name)
            finally:
                loading_bars(bars)
            if len(self.names) > 1:
                self.pipe.set_adapters(self.names, adapter_weights=[1.0] * len(self.names))
            for component_name, component in _components(self.pipe).items():
                scales = self.text if component_name.startswith("text_encoder") else self.unet
                for name in self.names:
                    for layer in _lora_layers(component, name):
                        self._hooks.append(layer.lora_B[name].register_forward_hook(_scaler(scales, name)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        _unload(self.pipe)

    def set_unet(self, weights: dict[str, Any]) -> None:
        self.unet.update(weights)

    def set_text(self, weights: dict[str, float]) -> None:
        self.text.update(weights)


def _scaler(scales: dict, name: str):
    def hook(_module, _inputs, output):
        scale = scales[name]
        if isinstance(scale, (int, float)):
            return output if scale == 1.0 else output * scale
        if output.shape[0] != scale.shape[0]:
            from .errors import BackendError

            raise BackendError(
                f"a LoRA layer saw a batch of {output.shape[0]} rows where sdlab laid out {scale.shape[0]}; "
                f"per-image LoRA weights cannot be applied to this pipeline",
                backend="diffusers",
            )
        return output * scale.to(output).view(-1, *([1] * (output.ndim - 1)))

    return hook


def loras_to_regenerate(params: dict[str, Any], image: str) -> dict:
    """`loras=` that makes an image again: sdlab's record (files by SHA-256) or A1111's text (the
    prompt's `<lora:name:w>` tags, files by `Lora hashes`, else by name), each file found at its
    recorded path or in the LoRA folder by hash. Missing files are one ValueError naming them all."""
    found: dict = {}
    missing: list[str] = []
    if params.get("source") == "sdlab" or params.get("loras"):
        for d in params.get("loras") or []:
            path = d.get("path")
            file = None
            if path and Path(path).is_file() and identity.file_sha256(path) == d["sha256"]:
                file = LoraFile(name=d["name"], path=str(path), sha256=d["sha256"])
            else:
                hit = find_by_hash(d["sha256"])
                file = None if hit is None else LoraFile(name=d["name"], path=hit.path, sha256=hit.sha256)
            if file is None:
                missing.append(f"{d['name']} (sha256 {d['sha256'][:12]})")
            else:
                found[file] = (d["weight"], d.get("text_encoder_weight", d["weight"]))
    else:
        hashes = params.get("lora_hashes") or {}
        for name, unet, te in parse_tags(params.get("prompt") or ""):
            short = hashes.get(name)
            file = find_by_hash(short) if short else None
            if file is None and not short:
                try:
                    file = resolve_lora(name)
                except ValueError:
                    file = None
            if file is None:
                missing.append(f"{name}" + (f" (Lora hash {short})" if short else ""))
            else:
                found[LoraFile(name=name, path=file.path, sha256=file.sha256)] = (unet, unet if te is None else te)
    if missing:
        folder = lora_dir()
        raise ValueError(
            f"{image} was made with LoRA(s) {', '.join(missing)}, which are not "
            f"{'in the LoRA folder ' + repr(str(folder)) if folder else 'found (no LoRA folder is set: sdlab.set_lora_dir)'}"
        )
    return found


# ------------------------------------------------------------------ sweep axes


def is_lora_axis(name: str) -> bool:
    """Sweep axes over LoRAs: `lora` (files), `lora_weight` (every LoRA's weight), `lora:<name>`."""
    return name in ("lora", "lora_weight") or name.startswith("lora:")


def apply_lora_axis(loras: Any, axis: str, value: Any) -> dict:
    """A cell's `loras` mapping with one LoRA axis's value applied."""
    current: dict = {}
    if isinstance(loras, Mapping):
        current = dict(loras)
    elif isinstance(loras, (list, tuple)):
        current = {ref: 1.0 for ref in loras}
    elif loras is not None:
        current = {loras: 1.0}
    if axis == "lora":  # which files: keep the weights already set for them (a later weight axis sets them)
        refs = [] if value is None or value == "none" else value if isinstance(value, (list, tuple)) else [value]
        weight = next(iter(current.values()), 1.0) if len(current) == 1 else 1.0
        return {ref: current.get(ref, weight) for ref in refs}
    weight = check_weight(value, axis)
    if axis == "lora_weight":
        if not current:
            raise ValueError("axis `lora_weight` needs LoRAs: pass `loras=` or a `lora` axis")
        return {ref: weight for ref in current}
    name = axis.split(":", 1)[1]
    for ref in current:  # the LoRA given by path or file under this name
        if name in (str(ref), Path(str(ref)).stem, getattr(ref, "name", None)):
            return {**current, ref: weight}
    return {**current, name: weight}
