"""Loading pipelines: presets, hub ids, local diffusers folders and single-file checkpoints.

The family (SD 1.x, SD 2.x, SDXL, FLUX) is detected from the model itself (`model_index.json`,
component configs, or the keys of a single-file checkpoint), never assumed from a class name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import identity
from .errors import MissingDependencyError, ModelLoadError
from .library_bars import loading_bars
from .model_files import (
    CONFIG_PATTERNS,
    bad_files,
    cached_components,
    download_command,
    hub_cache,
    hub_unreachable,
    offline_error,
    open_safetensors,
    read_json,
    snapshot_folder,
)
from .presets import CONTROLNET_PRESETS, PRESETS, Preset, default_model, family_defaults
from .request import Defaults

OFFLOAD_MODES = (None, "model", "sequential")
ATTENTION_BACKENDS = ("sdpa", "xformers")
DTYPES = ("auto", "float32", "float16", "bfloat16")

PIPELINE_CLASS_FAMILY = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionControlNetPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionXLControlNetPipeline": "sdxl",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
    "FluxControlNetPipeline": "flux",
}
TEXT2IMAGE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
}
CONTROLNET_CLASS = {
    "sd1": "StableDiffusionControlNetPipeline",
    "sd2": "StableDiffusionControlNetPipeline",
    "sdxl": "StableDiffusionXLControlNetPipeline",
}
# diffusers.loaders.single_file_utils.infer_diffusers_model_type -> family
SINGLE_FILE_FAMILY = {
    "v1": "sd1",
    "v2": "sd2",
    "inpainting": "sd1",
    "inpainting_v2": "sd2",
    "xl_base": "sdxl",
    "xl_inpaint": "sdxl",
    "playground-v2-5": "sdxl",
    "flux-dev": "flux",
    "flux-schnell": "flux",
    "flux-fill": "flux",
    "flux-depth": "flux",
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, resolved: what `load_pipeline` was given and what it found."""

    name: str  # what the caller passed (preset name, hub id, path)
    kind: str  # "builtin", "folder", "hub", "single_file"
    location: str  # the hub id or the absolute path
    family: str
    preset: Preset | None = None


# ---------------------------------------------------------------- device and dtype


def resolve_device(device: Any = "auto") -> str:
    """ "auto": CUDA, then MPS, then CPU. An explicit device is checked, not silently replaced."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    device = str(device)
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={device!r} but CUDA is not available on this machine; use 'auto' or 'cpu'")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"`device`={device!r} but MPS is not available on this machine; use 'auto' or 'cpu'")
    if kind not in ("cuda", "mps", "cpu", "xpu"):
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    return device


def resolve_dtype(dtype: Any, device: str, family: str):
    """ "auto": float32 on CPU; half precision on a GPU (bfloat16 for FLUX, float16 otherwise)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {DTYPES} or a torch.dtype, got {dtype!r}")
    if dtype == "auto":
        if device.startswith("cpu"):
            return torch.float32
        return torch.bfloat16 if family == "flux" else torch.float16
    return getattr(torch, dtype)


# ---------------------------------------------------------------- family detection


def _read_json(path: Path) -> dict:
    return read_json(path)  # a file that is not a JSON object is a ModelLoadError naming it


def family_from_configs(model_index: Mapping[str, Any], read_config) -> str:
    """The family from `model_index.json` and, for SD, the text encoder / UNet configs.

    `read_config(subfolder)` returns that component's config dict or None.
    """
    cls = model_index.get("_class_name", "")
    family = PIPELINE_CLASS_FAMILY.get(cls)
    components = {
        k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None
    }
    if family is None:
        if "transformer" in components and "text_encoder_2" in components:
            family = "flux"
        elif "unet" in components and "text_encoder_2" in components:
            family = "sdxl"
        elif "unet" in components and "text_encoder" in components:
            family = "sd"
        else:
            raise ModelLoadError(
                f"cannot tell the model family of pipeline class {cls!r} (components: {sorted(components)}); "
                "sdlab supports SD 1.x/2.x, SDXL and FLUX text-to-image pipelines"
            )
    if family != "sd":
        return family
    text_config = read_config("text_encoder") or {}
    unet_config = read_config("unet") or {}
    if unet_config.get("cross_attention_dim") == 1024 or text_config.get("hidden_act") == "gelu":
        return "sd2"
    return "sd1"


def family_from_folder(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.exists():
        raise ModelLoadError(f"{folder} has no model_index.json: it is not a diffusers pipeline folder")

    def read_config(sub):
        p = folder / sub / "config.json"
        return _read_json(p) if p.exists() else None

    return family_from_configs(_read_json(index), read_config)


def family_from_hub(repo_id: str, *, revision=None, cache_dir=None, token=None) -> str:
    from huggingface_hub import hf_hub_download

    def download(filename):
        return hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, token=token)

    try:
        index_path = download("model_index.json")
    except Exception as e:
        if hub_unreachable(e):
            command = download_command(repo_id, revision=revision, cache_dir=cache_dir)
            raise offline_error(f"model_index.json of {repo_id!r}", repo_id, command, cache_dir=cache_dir) from e
        raise ModelLoadError(
            f"could not fetch model_index.json of {repo_id!r} from the Hugging Face hub or its cache: "
            f"{type(e).__name__}: {e}. Check the id, your network, or HF_HUB_OFFLINE and the cache."
        ) from e
    index = _read_json(Path(index_path))

    def read_config(sub):
        try:
            path = download(f"{sub}/config.json")
        except Exception:
            return None
        return _read_json(Path(path))

    return family_from_configs(index, read_config)


class _LazyCheckpoint(Mapping):
    """A safetensors file as a mapping that reads a tensor only when it is looked at."""

    def __init__(self, path: Path):
        self._file = open_safetensors(path)  # a damaged file is a ModelLoadError saying what is wrong
        self._keys = list(self._file.keys())
        self._key_set = set(self._keys)

    def __getitem__(self, key):
        if key not in self._key_set:
            raise KeyError(key)
        return self._file.get_tensor(key)

    def __contains__(self, key):
        return key in self._key_set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def family_from_single_file(path: Path) -> str:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    if path.suffix not in (".safetensors",):
        raise ModelLoadError(
            f"{path.name}: only .safetensors single-file checkpoints are loaded (pickled .ckpt files can run code); "
            "convert it first"
        )
    checkpoint = _LazyCheckpoint(path)
    try:
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception as e:  # pragma: no cover - diffusers internals
        raise ModelLoadError(f"could not recognise the checkpoint {path}: {e}") from e
    family = SINGLE_FILE_FAMILY.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"{path.name} looks like a {model_type!r} checkpoint, which sdlab does not load; "
            f"supported: {sorted(set(SINGLE_FILE_FAMILY))}"
        )
    return family


# ---------------------------------------------------------------- source resolution


def resolve_source(model: str | Path | None, **hub_kwargs) -> ModelSource:
    """What `model` names: a preset, a local folder, a single file, or a hub id."""
    if model is None:
        model = default_model()
    if isinstance(model, Path):
        model = str(model)
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"`model` must be a preset name, a hub id or a path, got {model!r}")
    if model in PRESETS:
        preset = PRESETS[model]
        if preset.source.startswith("builtin:"):
            return ModelSource(model, "builtin", preset.source, preset.family, preset)
        path = Path(preset.source)
        if path.is_absolute() or path.exists():
            if not (path / "model_index.json").exists():
                raise ModelLoadError(f"the preset {model!r} points at {path}, which holds no model (yet)")
            return ModelSource(model, "folder", str(path), family_from_folder(path), preset)
        return ModelSource(model, "hub", preset.source, preset.family, preset)
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource(model, "folder", str(path.resolve()), family_from_folder(path))
    if path.is_file():
        return ModelSource(model, "single_file", str(path.resolve()), family_from_single_file(path))
    if model.endswith((".safetensors", ".ckpt")) or "/" not in model or model.startswith((".", "~")):
        raise ModelLoadError(
            f"`model`={model!r} is not a preset, an existing path or a hub id (org/name); presets: {', '.join(PRESETS)}"
        )
    family = family_from_hub(model, **hub_kwargs)
    return ModelSource(model, "hub", model, family)


# ---------------------------------------------------------------- controlnet


def controlnet_family(config: Mapping[str, Any]) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if config.get("_class_name", "").startswith("Flux"):
        return "flux"
    if config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


# ControlNet classes `load_controlnets` loads (others, e.g. ControlNet-XS or union models, need other pipelines).
CONTROLNET_MODEL_CLASSES = ("ControlNetModel",)


def _controlnet_location(spec: str, hub_kwargs) -> tuple[Any, Mapping[str, Any]]:
    """(location, config) of one ControlNet given by preset name, folder or hub id.

    A builtin preset ("tiny") comes back as the ControlNetModel itself, built in memory.
    """
    preset = CONTROLNET_PRESETS.get(spec)
    if preset is not None:
        if preset.source.startswith("builtin:"):
            from . import testing

            model = testing.tiny_components(preset.family, controlnet=True)["controlnet"]
            return model, dict(model.config)
        path = Path(preset.source)
        if path.is_absolute() and not (path / "config.json").exists():
            raise ModelLoadError(f"the ControlNet preset {spec!r} points at {path}, which holds no ControlNet (yet)")
        spec = preset.source
    path = Path(spec).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.exists():
            raise ModelLoadError(f"{path} has no config.json: it is not a ControlNet folder")
        return str(path.resolve()), _read_json(cfg)
    if "/" not in spec or spec.count("/") > 1 or spec.startswith((".", "~")):
        raise ModelLoadError(
            f"`controlnet`={spec!r} is not a ControlNet preset, an existing folder or a hub id (org/name); "
            f"presets: {', '.join(CONTROLNET_PRESETS)}"
        )
    from huggingface_hub import hf_hub_download

    try:
        cfg = hf_hub_download(spec, "config.json", **_controlnet_hub_kwargs(hub_kwargs))
    except Exception as e:
        if hub_unreachable(e):
            raise _controlnet_offline_error(spec, e, hub_kwargs) from e
        raise ModelLoadError(
            f"could not fetch the config of ControlNet {spec!r} from the Hugging Face hub or its cache: "
            f"{type(e).__name__}: {e}. Check the id, your network, or HF_HUB_OFFLINE and the cache."
        ) from e
    return spec, _read_json(Path(cfg))


def _controlnet_offline_error(repo_id: str, error: Exception, hub_kwargs) -> ModelLoadError:
    """The hub ControlNet `repo_id` is not cached and the hub is out of reach: what to download."""
    cache_dir = hub_kwargs.get("cache_dir")
    command = download_command(
        repo_id, patterns=("config.json", "diffusion_pytorch_model.safetensors"), cache_dir=cache_dir
    )
    return offline_error(f"the ControlNet {repo_id!r}", repo_id, command, cache_dir=cache_dir, cause=error)


def _controlnet_hub_kwargs(hub_kwargs) -> dict[str, Any]:
    """The hub options that apply to a ControlNet repo: the cache and token, not the base's `revision`."""
    return {k: v for k, v in hub_kwargs.items() if v is not None and k != "revision"}


def load_controlnets(
    controlnet: Any, family: str, dtype, hub_kwargs, base_cross_attention_dim=None
) -> tuple[Any, list[str], list[dict]]:
    """ControlNet model(s) for a base of `family`, their names and content identities; refused
    before loading if of another family.

    Every config is read (folder, hub cache) and checked against the base before any weights load.
    """
    from diffusers import ControlNetModel

    specs = list(controlnet) if isinstance(controlnet, (list, tuple)) else [controlnet]
    if not specs:
        raise ValueError("`controlnet` is an empty list")
    if family not in CONTROLNET_CLASS:
        raise ValueError(f"ControlNet is supported for SD 1.x/2.x and SDXL bases, not {family!r}")
    planned = []
    for spec in specs:
        if isinstance(spec, ControlNetModel):
            planned.append((spec, dict(spec.config), type(spec).__name__))
            continue
        if not isinstance(spec, (str, Path)):
            raise ValueError(
                f"`controlnet` entries must be preset names, hub ids, folders or ControlNetModel, got {spec!r}"
            )
        location, config = _controlnet_location(str(spec), hub_kwargs)
        planned.append((location, config, str(spec)))
    for _, config, name in planned:
        cls_name = config.get("_class_name", "ControlNetModel")
        cn_family = controlnet_family(config)
        if cls_name not in CONTROLNET_MODEL_CLASSES and cn_family != "flux":
            raise ModelLoadError(
                f"`controlnet` {name!r} is a {cls_name}; sdlab loads {', '.join(CONTROLNET_MODEL_CLASSES)} checkpoints "
                "(SD 1.x/2.x and SDXL ControlNets)"
            )
        base_kind = "sdxl" if family == "sdxl" else "sd"
        cn_kind = {"sdxl": "sdxl", "flux": "flux"}.get(cn_family, "sd")
        mismatch = cn_kind != base_kind
        dim = config.get("cross_attention_dim")
        if not mismatch and base_cross_attention_dim is not None and dim is not None:
            mismatch = int(dim) != int(base_cross_attention_dim)
        elif (
            not mismatch and base_cross_attention_dim is None
        ):  # base config unknown: SD1 vs SD2 by the ControlNet's dim
            mismatch = {cn_family, family} == {"sd1", "sd2"}
        if mismatch:
            raise ValueError(
                f"`controlnet` {name!r} is a {cn_family} ControlNet (cross-attention dim {dim}) but the base model "
                f"is {family} (cross-attention dim {base_cross_attention_dim}); they cannot be combined"
            )
    models, names, identities = [], [], []
    for location, _, name in planned:
        if isinstance(location, ControlNetModel):
            model = location
            identities.append({"tensors_sha256": identity.modules_sha256({"controlnet": model})})
        else:
            try:
                model = ControlNetModel.from_pretrained(
                    location, **dtype_kwarg(dtype), **_controlnet_hub_kwargs(hub_kwargs)
                )
            except (OSError, ValueError) as e:
                local = Path(location).is_dir()
                problem = bad_files(
                    location if local else snapshot_folder(location, cache_dir=hub_kwargs.get("cache_dir"))
                )
                if problem is not None:
                    raise ModelLoadError(f"could not load the ControlNet {name!r}: {problem}") from e
                if isinstance(e, ValueError):
                    raise
                if not local and hub_unreachable(e):
                    raise _controlnet_offline_error(location, e, hub_kwargs) from e
                raise ModelLoadError(f"could not load the ControlNet {name!r} ({location}): {e}") from e
            if Path(location).is_dir():
                identities.append(identity.path_identity(location))
            else:
                commit = identity.hub_commit(location, cache_dir=hub_kwargs.get("cache_dir"))
                identities.append(
                    {"hub": location, "commit": commit}
                    if commit
                    else {"tensors_sha256": identity.modules_sha256({"controlnet": model})}
                )
        models.append(model)
        names.append(name)
    return (models[0] if len(models) == 1 else models), names, identities


def _component_config(source: ModelSource, sub: str, hub_kwargs) -> dict | None:
    """A component's config.json without loading weights (None where it cannot be read cheaply)."""
    try:
        if source.kind == "folder":
            p = Path(source.location) / sub / "config.json"
            return _read_json(p) if p.exists() else None
        if source.kind == "hub":
            from huggingface_hub import hf_hub_download

            kw = {k: v for k, v in hub_kwargs.items() if v is not None}
            return _read_json(Path(hf_hub_download(source.location, f"{sub}/config.json", **kw)))
    except Exception:
        return None
    return None


def _saved_controlnet(source: ModelSource, hub_kwargs) -> bool:
    """True if a pipeline folder or hub repo was saved with a ControlNet (a `controlnet` entry of
    class ControlNetModel in its model_index.json), which then loads with it."""
    index = None
    try:
        if source.kind == "folder":
            index = _read_json(Path(source.location) / "model_index.json")
        elif source.kind == "hub":
            from huggingface_hub import hf_hub_download

            kw = {k: v for k, v in hub_kwargs.items() if v is not None}
            index = _read_json(Path(hf_hub_download(source.location, "model_index.json", **kw)))
    except Exception:
        return False
    entry = (index or {}).get("controlnet")
    return isinstance(entry, list) and len(entry) == 2 and entry[1] in CONTROLNET_MODEL_CLASSES


# ---------------------------------------------------------------- load_pipeline


def load_pipeline(
    model: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: Any = "auto",
    scheduler: str | None = None,
    offload: str | None = None,
    attention: str = "sdpa",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    controlnet: Any = None,
    config: str | None = None,
    variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
    progress_bar: bool = True,
):
    """Load a text-to-image pipeline of the right family, ready to generate.

    Args:
        model: a preset name (`sdlab.presets.PRESETS`), a Hugging Face id, a local diffusers folder
            or a single-file `.safetensors` checkpoint. None means the embedded default model.
        device: "auto" (CUDA, then MPS, then CPU) or an explicit device.
        dtype: "auto" (float32 on CPU, float16 on GPU, bfloat16 for FLUX), a name or a torch.dtype.
        scheduler: an A1111 name ("DPM++ 2M Karras") or diffusers class name; default: the preset's
            or the model's own.
        offload: None, "model" (model CPU offload) or "sequential" (sequential CPU offload). Needs
            an accelerator; the pipeline is then not moved to the device (offload manages devices).
        attention: "sdpa" (PyTorch's scaled dot-product attention, the default) or "xformers".
        vae_tiling, vae_slicing: decode large images or batches in pieces to save memory.
        compile: `torch.compile` the denoiser (worth it on GPUs for many images).
        channels_last: put the UNet in channels-last memory format (faster convolutions on GPUs).
        controlnet: a ControlNet preset, hub id, folder or `ControlNetModel`, or a list of them.
        config: for single-file checkpoints, a diffusers folder or hub id with the component configs.
        variant: a weight variant such as "fp16", only if the repository has it.
    """
    import diffusers
    import torch

    # 1. validate options before any model work
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"`offload` must be one of {OFFLOAD_MODES}, got {offload!r}")
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"`attention` must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    resolved_device = resolve_device(device)
    if offload is not None and not resolved_device.startswith(("cuda", "xpu")):
        raise ValueError(
            f"`offload`={offload!r} moves weights between CPU and an accelerator, but the device is "
            f"{resolved_device!r}; use offload=None on this machine"
        )
    if attention == "xformers":
        if importlib.util.find_spec("xformers") is None:
            raise MissingDependencyError("xformers", "attention='xformers'", extra="xformers")
        if not resolved_device.startswith("cuda"):
            raise ValueError("`attention`='xformers' needs a CUDA device; use attention='sdpa'")
    if attention == "sdpa" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        raise ValueError("`attention`='sdpa' needs PyTorch 2; upgrade torch or install xformers")
    hub_kwargs = {"revision": revision, "cache_dir": cache_dir, "token": token}

    # 2. what is the model, and of which family
    source = resolve_source(model, **hub_kwargs)
    if source.kind == "single_file" and config is not None and Path(str(config)).is_dir():
        # Key-based detection cannot tell a tiny SD 2.x file from SD 1.x; the configs can.
        config_family = family_from_folder(Path(str(config)))
        if (config_family == "sdxl") != (source.family == "sdxl") or (config_family == "flux") != (
            source.family == "flux"
        ):
            raise ValueError(
                f"`config` {config} is a {config_family} model but the checkpoint {Path(source.location).name} "
                f"looks like {source.family}; pass the configs of the checkpoint's own family"
            )
        source = replace(source, family=config_family)
    family = source.family
    torch_dtype = resolve_dtype(dtype, resolved_device, family)
    if compile and not hasattr(torch, "compile"):
        raise ValueError("`compile`=True needs torch.compile (PyTorch 2)")

    builtin_pipe = None
    if source.kind == "builtin":  # built in memory (cheap); its UNet config checks a ControlNet
        from . import testing

        builtin_pipe = testing.tiny_pipeline(family)
    cn_model, cn_names, cn_identities = (None, [], [])
    if controlnet is not None:
        if builtin_pipe is not None:
            base_dim = builtin_pipe.unet.config.cross_attention_dim
        else:
            base_dim = (_component_config(source, "unet", hub_kwargs) or {}).get("cross_attention_dim")
        cn_model, cn_names, cn_identities = load_controlnets(controlnet, family, torch_dtype, hub_kwargs, base_dim)

    # a pipeline saved with its ControlNet loads with it (unless another is given)
    saved_controlnet = controlnet is None and family in CONTROLNET_CLASS and _saved_controlnet(source, hub_kwargs)
    if saved_controlnet:
        cn_names = [f"{source.name if source.kind == 'hub' else source.location}/controlnet"]

    # 3. load with the class of that family
    cls_name = CONTROLNET_CLASS[family] if cn_model is not None or saved_controlnet else TEXT2IMAGE_CLASS[family]
    cls = getattr(diffusers, cls_name)
    kwargs: dict[str, Any] = dtype_kwarg(torch_dtype)
    if family in ("sd1", "sd2"):
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if cn_model is not None:
        kwargs["controlnet"] = cn_model
    bars = loading_bars(None if progress_bar else False)  # diffusers' and transformers' bars: off for this load only
    try:
        if source.kind == "builtin":
            pipe = builtin_pipe
            if (
                cn_model is not None
            ):  # the same components plus the ControlNet(s); a list becomes a MultiControlNetModel
                extra = {"requires_safety_checker": False} if family in ("sd1", "sd2") else {}
                pipe = cls(**pipe.components, controlnet=cn_model, **extra)
            if torch_dtype != torch.float32:  # built in float32
                pipe = pipe.to(dtype=torch_dtype)
        elif source.kind == "single_file":
            sf_kwargs = dict(kwargs)
            if config is not None:
                sf_kwargs["config"] = config
            pipe = cls.from_single_file(
                source.location,
                **sf_kwargs,
                **{k: v for k, v in hub_kwargs.items() if v is not None and k != "revision"},
            )
        else:
            if variant is not None:
                kwargs["variant"] = variant
            kwargs.update(source.preset.load_kwargs if source.preset else {})
            kwargs.pop("max_sequence_length", None)
            pipe = cls.from_pretrained(
                source.location, **kwargs, **{k: v for k, v in hub_kwargs.items() if v is not None}
            )
    except ModelLoadError:
        raise
    except (OSError, ValueError) as e:
        known = _explain_load_failure(source, e, config=config, variant=variant, hub_kwargs=hub_kwargs)
        if known is not None:
            raise known from e
        if isinstance(e, ValueError):
            raise
        raise ModelLoadError(f"could not load {source.name!r} ({source.kind} {source.location}): {e}") from e
    finally:
        loading_bars(bars)

    # 4. memory and speed options; offload manages devices itself, so never also .to(device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if vae_slicing:
        pipe.vae.enable_slicing()
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if channels_last and hasattr(pipe, "unet"):
        pipe.unet.to(memory_format=torch.channels_last)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=resolved_device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=resolved_device)
    else:
        pipe.to(resolved_device)
    if compile:
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        denoiser.compile(mode="reduce-overhead" if resolved_device.startswith("cuda") else None, fullgraph=False)
    pipe.set_progress_bar_config(disable=not progress_bar)

    # 5. defaults and scheduler
    defaults = source.preset.defaults if source.preset else _defaults_for(pipe, family)
    from .schedulers import describe_scheduler, set_scheduler

    chosen = scheduler or defaults.scheduler
    if chosen is not None:
        set_scheduler(pipe, chosen)
    pipe._sdlab_info = PipelineInfo(
        model=source.name if source.kind in ("builtin", "hub") or source.preset else source.location,
        source=source.kind,
        location=source.location,
        family=family,
        preset=source.preset.name if source.preset else None,
        controlnet=cn_names or None,
        device=resolved_device,
        dtype=str(torch_dtype).replace("torch.", ""),
        offload=offload,
        attention=attention,
        compile=bool(compile),
        defaults=replace(defaults, scheduler=chosen or describe_scheduler(pipe.scheduler)),
        load_kwargs=dict(source.preset.load_kwargs) if source.preset else {},
        weights=_source_identity(source, hub_kwargs, pipe),
        controlnet_weights=cn_identities or None,
    )
    pipe._sdlab_info.mark_loaded(pipe)
    return pipe


# The component folders `load_pipeline` loads for each family (the safety checker is never loaded).
FAMILY_COMPONENTS = {
    "sd1": ("feature_extractor", "scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sd2": ("feature_extractor", "scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sdxl": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"),
    "flux": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"),
}


def _explain_load_failure(
    source: ModelSource, error: Exception, *, config, variant, hub_kwargs
) -> ModelLoadError | None:
    """A `ModelLoadError` saying what really went wrong when diffusers failed to load `source`:
    a damaged weight file (named), weights missing from the cache while the hub is out of reach
    (the `hf download` command), a single file whose configs need the hub (`config=`). None if
    none of these explains `error`."""
    revision, cache_dir = hub_kwargs.get("revision"), hub_kwargs.get("cache_dir")
    folder = None
    if source.kind == "folder":
        folder = source.location
    elif source.kind == "hub":
        folder = snapshot_folder(source.location, revision=revision, cache_dir=cache_dir)
    problem = bad_files(folder)
    if problem is not None:
        return ModelLoadError(f"could not load {source.name!r}: {problem}")
    if not hub_unreachable(error):
        return None
    if source.kind == "hub":
        if source.preset is not None:
            components, what = FAMILY_COMPONENTS[source.family], f"the preset {source.name!r} ({source.location})"
        else:
            components, what = (
                cached_components(source.location, revision=revision, cache_dir=cache_dir),
                repr(source.name),
            )
            if components is not None:
                components = [c for c in components if c != "safety_checker"]
        command = download_command(source.location, components, variant=variant, revision=revision, cache_dir=cache_dir)
        return offline_error(what, source.location, command, cache_dir=cache_dir, cause=error)
    if source.kind == "single_file" and config is None:
        repo, command = _single_file_config_command(source, cache_dir)
        return ModelLoadError(
            f"{Path(source.location).name} is a single-file checkpoint loaded without `config=`: building its pipeline "
            f"needs the component configs of a {source.family} model (diffusers looks up {repo}), which are not in the "
            f"Hugging Face cache at {hub_cache(cache_dir)}, and the hub is out of reach. Pass `config=` a local diffusers "
            f"folder (or a cached hub id) of a {source.family} model, or download the configs:\n  {command}\nthen run again."
        )
    return None


def _single_file_config_command(source: ModelSource, cache_dir) -> tuple[str, str]:
    """The repo whose configs diffusers looks up for a single-file checkpoint, and the `hf download` command."""
    try:
        from diffusers.loaders.single_file_utils import fetch_diffusers_config

        repo = fetch_diffusers_config(_LazyCheckpoint(Path(source.location)))["pretrained_model_name_or_path"]
    except Exception:  # pragma: no cover - diffusers internals
        repo = next(p.source for p in PRESETS.values() if p.family == source.family and "/" in p.source)
    return repo, download_command(repo, patterns=CONFIG_PATTERNS, cache_dir=cache_dir)


def dtype_kwarg(dtype) -> dict[str, Any]:
    """The dtype keyword of `from_pretrained`: `dtype` where diffusers takes it (it deprecates
    `torch_dtype` with a FutureWarning), `torch_dtype` in older releases."""
    import diffusers.utils

    return {"dtype": dtype} if hasattr(diffusers.utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _defaults_for(pipe, family: str) -> Defaults:
    """Defaults for a model that is not a preset: its native size and its family's settings."""
    native = None
    scale = getattr(pipe, "vae_scale_factor", 8)
    if getattr(pipe, "unet", None) is not None:
        native = int(pipe.unet.config.sample_size) * scale
    elif family == "flux":
        native = int(getattr(pipe, "default_sample_size", 128)) * scale
    distilled = family == "flux" and not getattr(pipe.transformer.config, "guidance_embeds", True)
    return family_defaults(family, native, guidance_distilled=distilled)


def pipeline_info(pipe) -> PipelineInfo:
    """What sdlab knows of a pipeline: model, family, defaults, weights (for pipelines it did not
    load, a guess from the pipeline's class and `name_or_path`)."""
    info = getattr(pipe, "_sdlab_info", None)
    if isinstance(info, PipelineInfo):
        return info
    cls = type(pipe).__name__
    family = PIPELINE_CLASS_FAMILY.get(cls, "sd")
    if family == "sd":
        te = getattr(getattr(pipe, "text_encoder", None), "config", None)
        family = "sd2" if te is not None and getattr(te, "hidden_act", "") == "gelu" else "sd1"
    from .schedulers import describe_scheduler

    name = str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or cls)
    weights: dict[str, Any] | None = None
    if Path(name).exists():
        weights = identity.path_identity(name)
    elif "/" in name and (commit := identity.hub_commit(name)) is not None:
        weights = {"hub": name, "commit": commit}
    info = PipelineInfo(
        model=name,
        source="object",
        location=name,
        family=family,
        device=str(getattr(pipe, "device", "cpu")),
        dtype=str(getattr(pipe, "dtype", "float32")).replace("torch.", ""),
        defaults=replace(_defaults_for(pipe, family), scheduler=describe_scheduler(pipe.scheduler)),
        weights=weights,  # None: unknown files, so the tensors themselves are hashed when first needed
    )
    info.mark_loaded(pipe)
    pipe._sdlab_info = info
    return info


@dataclass
class PipelineInfo:
    """sdlab's facts about one pipeline (one typed object on the pipeline, set by `load_pipeline`)."""

    model: str  # the name the user gave (preset, hub id) or the path
    source: str  # "builtin", "folder", "hub", "single_file" or "object" (not loaded by sdlab)
    location: str
    family: str
    defaults: Defaults
    preset: str | None = None
    controlnet: list[str] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    offload: str | None = None
    attention: str = "sdpa"
    compile: bool = False
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] | None = None  # content identity at load time (identity.py)
    controlnet_weights: list[dict[str, Any]] | None = None
    scheduler_name: str | None = None  # the A1111 name last set by sdlab.set_scheduler
    _stamp: tuple = field(default=(), repr=False)
    _memory_identity: tuple[tuple, dict[str, Any]] | None = field(default=None, repr=False)

    def mark_loaded(self, pipe) -> None:
        """Remember the weights' version stamp: later in-place changes are then noticed."""
        self._stamp = identity.modules_version(_modules(pipe))
        self._memory_identity = None

    def weights_identity(self, pipe) -> dict[str, Any]:
        """The content identity of the weights `pipe` holds now: the load-time identity while no
        tensor changed since loading, else a hash of the tensors (computed once per change)."""
        modules = _modules(pipe)
        stamp = identity.modules_version(modules)
        if stamp == self._stamp and self.weights is not None:
            return {**self.weights, **({"controlnet": self.controlnet_weights} if self.controlnet_weights else {})}
        if self._memory_identity is None or self._memory_identity[0] != stamp:
            changed = {"tensors_sha256": identity.modules_sha256(modules)}
            if stamp != self._stamp:
                changed["changed_in_memory"] = True
            self._memory_identity = (stamp, changed)
        return self._memory_identity[1]

    @property
    def model_hash(self) -> str | None:
        """A1111's short model hash, for a single-file checkpoint (None otherwise)."""
        sha = (self.weights or {}).get("sha256")
        return identity.short_hash(sha) if sha else None


def _modules(pipe) -> dict[str, Any]:
    import torch

    return {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}


def _source_identity(source: ModelSource, hub_kwargs, pipe) -> dict[str, Any]:
    """A loaded model's weights by content (see identity.py)."""
    if source.kind in ("folder", "single_file"):
        return identity.path_identity(source.location)
    if source.kind == "hub":
        commit = identity.hub_commit(
            source.location, revision=hub_kwargs.get("revision"), cache_dir=hub_kwargs.get("cache_dir")
        )
        if commit is not None:
            return {"hub": source.location, "commit": commit}
    return {"tensors_sha256": identity.modules_sha256(_modules(pipe))}  # built in memory (builtin)


def model_defaults(model: str | Path | None, **hub_kwargs) -> Defaults:
    """The defaults `load_pipeline(model)` will use, read from the preset or the configs (no weights load)."""
    source = resolve_source(model, **hub_kwargs)
    if source.preset is not None:
        return source.preset.defaults
    native = None
    unet = _component_config(source, "unet", hub_kwargs)
    vae = _component_config(source, "vae", hub_kwargs)
    if unet is not None and unet.get("sample_size"):
        scale = 2 ** (len((vae or {}).get("block_out_channels", [0, 0, 0, 0])) - 1)
        sample = unet["sample_size"]
        native = int(sample[0] if isinstance(sample, (list, tuple)) else sample) * scale
    distilled = False
    if source.family == "flux":  # FluxPipeline's default_sample_size (128) times the VAE's scale
        transformer = _component_config(source, "transformer", hub_kwargs) or {}
        distilled = not transformer.get("guidance_embeds", True)
        if vae is not None:
            native = 128 * 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    return family_defaults(source.family, native, guidance_distilled=distilled)


def source_identity(model: str, **hub_kwargs) -> dict[str, Any] | None:
    """The content identity of a model spec without loading it (None where only loading tells:
    builtin models, or a hub model not in the cache)."""
    source = resolve_source(model, **hub_kwargs)
    if source.kind in ("folder", "single_file"):
        return identity.path_identity(source.location)
    if source.kind == "hub":
        commit = identity.hub_commit(
            source.location, revision=hub_kwargs.get("revision"), cache_dir=hub_kwargs.get("cache_dir")
        )
        return {"hub": source.location, "commit": commit} if commit else None
    return None
