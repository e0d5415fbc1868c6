"""Tiny random-weight pipelines of every family, built offline.

Tests and notebooks cannot download a model, so this module builds one: every component from a
config, seeded, on CPU in float32, the way diffusers' own tests build ``get_dummy_components``,
but with the tokenizers shipped in the package (``sdlab.testing.clip_tokenizer``, ``sdlab.testing.t5_tokenizer``).

Each family keeps the traits that matter to code that handles it (text encoders, prediction
type, scheduler, latent channels, ``text_time`` conditioning) at a size that generates a 64x64
image in about a tenth of a second. The VAEs downsample by 8 as the real ones do, so the
native size is ``vae_scale_factor * unet.config.sample_size == 8 * 8 == 64``.

>>> pipe = tiny_pipeline("sdxl", seed=0)
>>> image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]

Besides pipelines in memory, it writes them the ways models arrive on a user's disk: a diffusers
folder (``save_tiny_pipeline``), a Hugging Face hub cache (``fill_hf_cache``) and an original
single-file checkpoint (``save_single_file``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sdlab.testing import _ldm_keys as ldm
from sdlab.testing.clip_tokenizer import load_clip_tokenizer
from sdlab.testing.t5_tokenizer import load_t5_tokenizer

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
]

FAMILIES = ("sd1", "sd2", "sdxl", "flux")
CONTROLNET_FAMILIES = ("sd1", "sdxl")
SINGLE_FILE_FAMILIES = ("sd1", "sd2", "sdxl")

# SD VAEs: four levels (downsampling by 8) of few channels; FLUX's has 16 latent channels.
_VAE = dict(
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    norm_num_groups=8,
    in_channels=3,
    out_channels=3,
    sample_size=64,
)
# The SD-family UNets run on 8x8 latents (64x64 images).
_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    norm_num_groups=32,
)
# The ControlNet hint encoder downsamples by 8 too (four levels), as the real one does.
_CONTROLNET_HINT_CHANNELS = (8, 8, 16, 16)

# The schedulers the real checkpoints ship (scheduler_config.json of SD 1.5, SD 2.1, SDXL base, FLUX.1-dev).
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _check_family(family: str, *, controlnet: bool = False, allowed: tuple[str, ...] = FAMILIES) -> None:
    if family not in allowed:
        raise ValueError(f"`family` must be one of {allowed}, not {family!r}")
    if controlnet and family not in CONTROLNET_FAMILIES:
        raise ValueError(f"`controlnet=True` needs a family in {CONTROLNET_FAMILIES}, not {family!r}")


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, leaving the caller's generator state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _clip_text_encoder(
    tokenizer,
    *,
    hidden_size: int,
    hidden_act: str,
    projection_dim: int,
    num_hidden_layers: int = 5,
    with_projection: bool = False,
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,
        projection_dim=projection_dim,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def _t5_text_encoder(tokenizer, *, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as FLUX's t5-xxl
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _controlnet_from_unet(unet, seed: int):
    """A ControlNet copied from ``unet`` (as real ones start), with random instead of zero outputs.

    A real ControlNet starts with zero output convolutions and learns them, and its trained hint
    encoder carries the control image through. Left untrained, the image would have no effect, so
    the tiny one gets a variance-preserving hint encoder and small random output convolutions.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_CONTROLNET_HINT_CHANNELS)
    hint = controlnet.controlnet_cond_embedding
    with _seeded(seed), torch.no_grad():
        for conv in [hint.conv_in, *hint.blocks]:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
        for conv in [hint.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(std=conv.weight[0].numel() ** -0.5)
            conv.bias.zero_()
    return controlnet.eval()


def tiny_components(family: str, *, seed: int = 0, controlnet: bool = False) -> dict[str, Any]:
    """The components dict of a tiny random-weight pipeline of ``family`` (one of ``FAMILIES``).

    The keys are the ``__init__`` arguments of ``tiny_pipeline``'s class; ``controlnet=True``
    (sd1, sdxl) adds a ``"controlnet"`` matching the UNet. Same ``seed``, same weights; the
    caller's torch random state is left as it was.

    - sd1: CLIP text encoder (quick_gelu, width 32), cross-attention dim 32, epsilon prediction, PNDM.
    - sd2: CLIP text encoder (gelu, width 64, as OpenCLIP), cross-attention dim 64, per-level
      ``attention_head_dim`` and linear projections, upcast attention, DDIM with v-prediction.
    - sdxl: CLIPTextModel (width 32) + CLIPTextModelWithProjection (width 64, 10 layers so the
      single-file checkpoint is detected as ``xl_base``), ``text_time`` added conditioning,
      cross-attention dim 96 (32 + 64), Euler.
    - flux: FluxTransformer2DModel (1 double + 1 single block, guidance embedding as FLUX.1-dev),
      CLIPTextModel + T5EncoderModel, 16-channel VAE with shift and scale, FlowMatchEuler.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        PNDMScheduler,
        UNet2DConditionModel,
    )

    _check_family(family, controlnet=controlnet)
    tokenizer = load_clip_tokenizer()
    components: dict[str, Any] = {}

    # 1. text encoders and tokenizers
    if family == "sd1":
        with _seeded(seed):
            components["text_encoder"] = _clip_text_encoder(
                tokenizer, hidden_size=32, hidden_act="quick_gelu", projection_dim=32
            )
    elif family == "sd2":
        with _seeded(seed):
            components["text_encoder"] = _clip_text_encoder(
                tokenizer, hidden_size=64, hidden_act="gelu", projection_dim=64
            )
    elif family == "sdxl":
        with _seeded(seed):
            components["text_encoder"] = _clip_text_encoder(
                tokenizer, hidden_size=32, hidden_act="quick_gelu", projection_dim=32
            )
        # Wider than text_encoder, as in SDXL: diffusers' single-file loader takes any CLIP whose width
        # matches text_encoder's from `conditioner.embedders.0`.
        with _seeded(seed + 1):
            components["text_encoder_2"] = _clip_text_encoder(
                tokenizer,
                hidden_size=64,
                hidden_act="gelu",
                projection_dim=64,
                num_hidden_layers=10,
                with_projection=True,
            )
        components["tokenizer_2"] = load_clip_tokenizer()
    else:
        t5_tokenizer = load_t5_tokenizer()
        with _seeded(seed):
            components["text_encoder"] = _clip_text_encoder(
                tokenizer, hidden_size=32, hidden_act="quick_gelu", projection_dim=32
            )
        with _seeded(seed + 1):
            components["text_encoder_2"] = _t5_text_encoder(t5_tokenizer)
        components["tokenizer_2"] = t5_tokenizer
    components["tokenizer"] = tokenizer

    # 2. the denoiser
    with _seeded(seed + 2):
        if family == "sd1":
            unet = UNet2DConditionModel(
                **_UNET,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
            )
        elif family == "sd2":
            unet = UNet2DConditionModel(
                **_UNET,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=64,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                upcast_attention=True,
            )
        elif family == "sdxl":
            unet = UNet2DConditionModel(
                **_UNET,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32 + 64,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                transformer_layers_per_block=(1, 2),
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 64,  # 6 time ids + pooled text_encoder_2
            )
        else:
            components["transformer"] = FluxTransformer2DModel(
                patch_size=1,
                in_channels=16 * 4,  # 16 latent channels packed 2x2
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=components["text_encoder_2"].config.d_model,
                pooled_projection_dim=components["text_encoder"].config.hidden_size,
                guidance_embeds=True,
                axes_dims_rope=(4, 4, 8),
            ).eval()
    if family != "flux":
        components["unet"] = unet.eval()

    # 3. the VAE
    with _seeded(seed + 3):
        if family == "flux":
            vae = AutoencoderKL(
                **_VAE,
                latent_channels=16,
                use_quant_conv=False,
                use_post_quant_conv=False,
                scaling_factor=0.3611,
                shift_factor=0.1159,
            )
        else:
            vae = AutoencoderKL(**_VAE, latent_channels=4, scaling_factor=0.13025 if family == "sdxl" else 0.18215)
    components["vae"] = vae.eval()

    # 4. the scheduler
    if family == "sd1":
        components["scheduler"] = PNDMScheduler(
            **_SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False
        )
    elif family == "sd2":
        components["scheduler"] = DDIMScheduler(
            **_SD_BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1
        )
    elif family == "sdxl":
        components["scheduler"] = EulerDiscreteScheduler(**_SD_BETAS, steps_offset=1, timestep_spacing="leading")
    else:
        components["scheduler"] = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )

    # 5. the optional pieces the pipeline classes expect
    if family in ("sd1", "sd2"):
        components.update(safety_checker=None, feature_extractor=None, image_encoder=None)
    else:
        components.update(feature_extractor=None, image_encoder=None)
    if controlnet:
        components["controlnet"] = _controlnet_from_unet(components["unet"], seed + 4)
    return components


def _pipeline_class(family: str, controlnet: bool):
    import diffusers

    name = {
        ("sd1", False): "StableDiffusionPipeline",
        ("sd2", False): "StableDiffusionPipeline",
        ("sdxl", False): "StableDiffusionXLPipeline",
        ("flux", False): "FluxPipeline",
        ("sd1", True): "StableDiffusionControlNetPipeline",
        ("sdxl", True): "StableDiffusionXLControlNetPipeline",
    }[family, controlnet]
    return getattr(diffusers, name)


def tiny_pipeline(family: str = "sd1", *, seed: int = 0, controlnet: bool = False):
    """A tiny random-weight diffusers pipeline of ``family``, on CPU in float32.

    StableDiffusionPipeline (sd1, sd2), StableDiffusionXLPipeline, FluxPipeline, or with
    ``controlnet=True`` StableDiffusionControlNetPipeline / StableDiffusionXLControlNetPipeline.
    The safety checker is None. Native size 64x64 for the SD families; FluxPipeline always
    defaults to 1024x1024 (its ``default_sample_size`` is fixed), so pass ``height=64, width=64``.
    """
    _check_family(family, controlnet=controlnet)
    components = tiny_components(family, seed=seed, controlnet=controlnet)
    pipeline_class = _pipeline_class(family, controlnet)
    kwargs = {"requires_safety_checker": False} if family in ("sd1", "sd2") else {}
    return pipeline_class(**components, **kwargs)


def save_tiny_pipeline(family: str, directory: str | os.PathLike, *, seed: int = 0, controlnet: bool = False) -> Path:
    """Save ``tiny_pipeline(family, ...)`` as a diffusers folder (safetensors); returns ``directory``.

    With ``controlnet=True`` the ControlNet is the folder's ``controlnet/`` component, loadable on
    its own with ``ControlNetModel.from_pretrained(directory / "controlnet")``.
    """
    directory = Path(directory)
    tiny_pipeline(family, seed=seed, controlnet=controlnet).save_pretrained(directory, safe_serialization=True)
    return directory


def save_tiny_controlnet(family: str, directory: str | os.PathLike, seed: int = 0) -> Path:
    """Save the tiny ControlNet of ``family`` (sd1, sdxl) as a standalone ``ControlNetModel`` folder.

    It is the ControlNet of ``tiny_pipeline(family, seed=seed, controlnet=True)``, so it fits the
    UNet of ``tiny_pipeline(family, seed=seed)``.
    """
    _check_family(family, controlnet=True)
    directory = Path(directory)
    controlnet = tiny_components(family, seed=seed, controlnet=True)["controlnet"]
    controlnet.save_pretrained(directory, safe_serialization=True)
    return directory


# --- Hugging Face hub cache -------------------------------------------------------------------

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
# Files the hub stores with git LFS (its default .gitattributes); the rest are plain git blobs.
_LFS_SUFFIXES = {".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".model", ".onnx", ".msgpack", ".h5", ".gguf"}


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill_hf_cache(
    folder: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike, *, revision: str = "main"
) -> Path:
    """Copy the local diffusers ``folder`` into a hub cache as model repo ``repo_id``; returns the snapshot.

    The layout is the one ``huggingface_hub`` writes when it downloads::

        cache_dir/models--org--name/
            blobs/<sha256 for LFS files, git blob sha1 for others>
            snapshots/<40-hex commit>/<path>  -> ../../blobs/<hash>  (symlinks; copies where impossible)
            refs/<revision>                    (the commit; not written when revision is a commit hash)
            trees/<commit>.json                (the cached tree listing huggingface_hub >= 1.x reads offline)

    The commit hash is derived from the content, so the same folder gives the same snapshot path.

    Offline use: ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, into
    ``huggingface_hub.constants.HF_HUB_OFFLINE``; its HTTP layer checks that attribute on every
    request (``constants.is_offline_mode()``). So either set the environment variable before
    anything imports ``huggingface_hub`` (a subprocess, or the shell), or in a running process
    patch ``huggingface_hub.constants.HF_HUB_OFFLINE = True`` (pytest:
    ``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)``). Then::

        DiffusionPipeline.from_pretrained(repo_id, cache_dir=cache_dir)
        huggingface_hub.hf_hub_download(repo_id, "model_index.json", cache_dir=cache_dir)

    resolve ``refs/main`` and load from the snapshot without a request. Passing
    ``local_files_only=True`` does the same without offline mode. Setting only the environment
    variable after import does nothing.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file() and not (folder / "config.json").is_file():
        raise ValueError(f"`folder` must be a diffusers folder (model_index.json or config.json), got {folder}")
    if repo_id.count("/") != 1:
        raise ValueError(f"`repo_id` must look like 'org/name', got {repo_id!r}")

    # 1. hash every file as the hub does
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
    entries: dict[str, dict[str, Any]] = {}
    blob_names: dict[str, str] = {}
    for path in files:
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        if path.suffix in _LFS_SUFFIXES:
            sha256 = hashlib.sha256(data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
            entries[rel] = {
                "size": len(data),
                "blob_id": _git_blob_sha1(pointer.encode()),
                "lfs_sha256": sha256,
                "lfs_size": len(data),
            }
            blob_names[rel] = sha256
        else:
            entries[rel] = {"size": len(data), "blob_id": _git_blob_sha1(data)}
            blob_names[rel] = entries[rel]["blob_id"]
    if _COMMIT_HASH.match(revision):
        commit = revision
    else:
        listing = "".join(f"{rel} {blob_names[rel]}\n" for rel in sorted(blob_names))
        commit = hashlib.sha1(listing.encode()).hexdigest()

    # 2. blobs, snapshot links, ref and tree listing
    storage = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for path in files:
        rel = path.relative_to(folder).as_posix()
        blob = storage / "blobs" / blob_names[rel]
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    if not _COMMIT_HASH.match(revision):
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / revision).write_text(commit)
    (storage / "trees").mkdir(exist_ok=True)
    tree = {"format_version": 1, "files": entries}
    (storage / "trees" / f"{commit}.json").write_text(json.dumps(tree, indent=1), encoding="utf-8")
    return snapshot


# --- original single-file checkpoints ---------------------------------------------------------


def _ldm_state_dict(pipe, family: str) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original layout of ``family``'s checkpoints."""
    state = ldm.with_prefix(ldm.UNET_PREFIX, ldm.unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state |= ldm.with_prefix(ldm.VAE_PREFIX, ldm.vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    if family == "sd1":  # CLIP ViT-L in transformers' names
        state |= ldm.with_prefix("cond_stage_model.transformer.", ldm.clip_to_ldm(pipe.text_encoder.state_dict()))
    elif family == "sd2":  # OpenCLIP ViT-H
        state |= ldm.with_prefix("cond_stage_model.model.", ldm.open_clip_to_ldm(pipe.text_encoder.state_dict()))
    else:  # SDXL: CLIP ViT-L in transformers' names, OpenCLIP ViT-bigG
        state |= ldm.with_prefix(
            "conditioner.embedders.0.transformer.", ldm.clip_to_ldm(pipe.text_encoder.state_dict())
        )
        state |= ldm.with_prefix(
            "conditioner.embedders.1.model.", ldm.open_clip_to_ldm(pipe.text_encoder_2.state_dict())
        )
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_single_file(family: str, path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write ``tiny_pipeline(family, seed=seed)`` as one original-layout ``.safetensors`` checkpoint.

    The keys are those of the LDM / A1111 / ComfyUI checkpoints (``model.diffusion_model.``,
    ``first_stage_model.``, ``cond_stage_model.`` or ``conditioner.embedders.``) for sd1, sd2 and
    sdxl. diffusers cannot rebuild the architecture of a tiny model from the file alone, so load
    it with ``config=`` a diffusers folder of the same tiny pipeline (``save_tiny_pipeline``); the
    scheduler and tokenizers come from that folder too::

        StableDiffusionPipeline.from_single_file(path, config=str(folder), local_files_only=True)

    FLUX is not offered: diffusers' FLUX single-file converter fixes the transformer width at
    FLUX.1's 3072, so no tiny FLUX checkpoint can be loaded.
    """
    from safetensors.torch import save_file

    if family == "flux":
        raise ValueError(
            "`family` 'flux' has no tiny single-file checkpoint: diffusers' FLUX converter fixes "
            "the transformer width at 3072; use save_tiny_pipeline or fill_hf_cache instead"
        )
    _check_family(family, allowed=SINGLE_FILE_FAMILIES)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"`path` must end in .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = tiny_pipeline(family, seed=seed)
    save_file(_ldm_state_dict(pipe, family), str(path), metadata={"format": "pt"})
    return path
