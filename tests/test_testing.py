"""sdlab.testing: tiny pipelines of every family, and the ways they reach disk, all offline."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import diffusers
import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint
from PIL import Image
from transformers import AutoTokenizer

from sdlab import testing
from sdlab.testing.clip_tokenizer import read_vocabulary
from sdlab.testing.t5_tokenizer import T5_TOKENIZER_DIR, build_t5_tokenizer, load_t5_tokenizer

PROMPT = "a red circle on a blue background"


@functools.cache
def _pipe(family: str, controlnet: bool = False):
    pipe = testing.tiny_pipeline(family, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _control_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _generate(pipe, *, seed: int = 0, prompt: str = PROMPT, **kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    if isinstance(pipe, diffusers.FluxPipeline):
        kwargs = {"height": 64, "width": 64, **kwargs}
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np", **kwargs).images


@functools.cache
def _reference_image(family: str) -> np.ndarray:
    return _generate(_pipe(family))


def _modules(components: dict) -> dict[str, torch.nn.Module]:
    return {name: c for name, c in components.items() if isinstance(c, torch.nn.Module)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``saved(family, controlnet=False)``: the tiny pipeline's diffusers folder, written once per module."""
    root = tmp_path_factory.mktemp("tiny")

    @functools.cache
    def folder(family: str, controlnet: bool = False):
        name = family + ("-controlnet" if controlnet else "")
        return testing.save_tiny_pipeline(family, root / name, controlnet=controlnet)

    return folder


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub offline mode in this process (the env var alone is read only at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- components and pipelines -------------------------------------------------------------------


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_components_fit_their_pipeline_class(family):
    pipe = _pipe(family)
    expected, _ = pipe._get_signature_keys(type(pipe))
    assert set(expected) <= set(testing.tiny_components(family))
    assert pipe.vae_scale_factor == 8
    if family == "flux":
        assert pipe.vae.config.latent_channels == 16
        assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    else:
        assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 64
    for module in _modules(pipe.components).values():
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in module.parameters())


def test_family_traits():
    sd1, sd2, sdxl, flux = (testing.tiny_components(f) for f in testing.FAMILIES)
    assert sd1["text_encoder"].config.hidden_act == "quick_gelu"
    assert sd1["unet"].config.cross_attention_dim == 32
    assert sd1["scheduler"].config.prediction_type == "epsilon"
    assert sd2["text_encoder"].config.hidden_act == "gelu"
    assert sd2["unet"].config.cross_attention_dim == 64
    assert list(sd2["unet"].config.attention_head_dim) == [2, 4]
    assert sd2["scheduler"].config.prediction_type == "v_prediction"
    assert type(sdxl["text_encoder_2"]).__name__ == "CLIPTextModelWithProjection"
    assert sdxl["unet"].config.addition_embed_type == "text_time"
    assert type(flux["text_encoder_2"]).__name__ == "T5EncoderModel"


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_seed_decides_the_weights(family):
    state = torch.random.get_rng_state()
    a = _modules(testing.tiny_components(family, seed=0))
    b = _modules(testing.tiny_components(family, seed=0))
    c = _modules(testing.tiny_components(family, seed=1))
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's generator is untouched
    assert all(_same_weights(a[name], b[name]) for name in a)
    assert not any(_same_weights(a[name], c[name]) for name in a)


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_pipeline_generates_deterministically(family):
    pipe = _pipe(family)
    image = _reference_image(family)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
    np.testing.assert_array_equal(_generate(pipe, seed=0), image)
    assert np.abs(_generate(pipe, seed=1) - image).max() > 0.01
    assert np.abs(_generate(pipe, prompt="a green triangle") - image).max() > 1e-3


def test_pipeline_classes():
    expected = {
        ("sd1", False): diffusers.StableDiffusionPipeline,
        ("sd2", False): diffusers.StableDiffusionPipeline,
        ("sdxl", False): diffusers.StableDiffusionXLPipeline,
        ("flux", False): diffusers.FluxPipeline,
        ("sd1", True): diffusers.StableDiffusionControlNetPipeline,
        ("sdxl", True): diffusers.StableDiffusionXLControlNetPipeline,
    }
    for (family, controlnet), cls in expected.items():
        assert type(_pipe(family, controlnet)) is cls
    assert _pipe("sd1").safety_checker is None


@pytest.mark.parametrize("family", testing.CONTROLNET_FAMILIES)
def test_controlnet_pipeline_follows_the_control_image(family):
    pipe = _pipe(family, controlnet=True)
    image = _generate(pipe, image=_control_image(0))
    assert image.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(_generate(pipe, image=_control_image(0)), image)
    assert np.abs(_generate(pipe, image=_control_image(1)) - image).max() > 1e-3
    # the ControlNet is added to the plain pipeline's UNet: at scale 0 it is the plain pipeline
    np.testing.assert_allclose(
        _generate(pipe, image=_control_image(0), controlnet_conditioning_scale=0.0), _reference_image(family), atol=1e-6
    )


def test_invalid_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="family"):
        testing.tiny_components("sd3")
    with pytest.raises(ValueError, match="controlnet"):
        testing.tiny_pipeline("flux", controlnet=True)
    with pytest.raises(ValueError, match="controlnet"):
        testing.save_tiny_controlnet("sd2", tmp_path / "cn")
    with pytest.raises(ValueError, match="family"):
        testing.save_single_file("flux", tmp_path / "flux.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        testing.save_single_file("sd1", tmp_path / "sd1.ckpt")
    with pytest.raises(ValueError, match="diffusers folder"):
        testing.fill_hf_cache(tmp_path, "org/name", tmp_path / "hub")


# --- on disk --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_save_and_from_pretrained_round_trip(family, saved):
    folder = saved(family)
    assert list(folder.glob("*/*.safetensors")) and not list(folder.glob("*/*.bin"))
    loaded = diffusers.DiffusionPipeline.from_pretrained(folder)
    assert type(loaded) is type(_pipe(family))
    np.testing.assert_allclose(_generate(loaded), _reference_image(family), atol=1e-5)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' call
@pytest.mark.parametrize("family", testing.CONTROLNET_FAMILIES)
def test_controlnet_saved_with_the_pipeline_and_alone(family, tmp_path, saved):
    folder = saved(family, controlnet=True)
    alone = testing.save_tiny_controlnet(family, tmp_path / "controlnet")
    expected = _pipe(family, controlnet=True).controlnet
    for path in (folder / "controlnet", alone):
        assert _same_weights(diffusers.ControlNetModel.from_pretrained(path), expected)
    testing.fill_hf_cache(alone, "sdlab-test/controlnet", tmp_path / "hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        cached = diffusers.ControlNetModel.from_pretrained("sdlab-test/controlnet", cache_dir=tmp_path / "hub")
    assert _same_weights(cached, expected)


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_hub_cache_round_trip_offline(family, tmp_path, saved, offline):
    folder = saved(family)
    cache = tmp_path / "hub"
    repo_id = f"sdlab-test/tiny-{family}"
    snapshot = testing.fill_hf_cache(folder, repo_id, cache)

    storage = cache / f"models--sdlab-test--tiny-{family}"
    assert (storage / "refs" / "main").read_text() == snapshot.name and len(snapshot.name) == 40
    assert (snapshot / "model_index.json").is_symlink()
    assert testing.fill_hf_cache(folder, repo_id, cache) == snapshot  # same content, same commit
    index = huggingface_hub.hf_hub_download(repo_id, "model_index.json", cache_dir=cache)
    assert json.loads(Path(index).read_text())["_class_name"] == type(_pipe(family)).__name__

    loaded = diffusers.DiffusionPipeline.from_pretrained(repo_id, cache_dir=cache)
    np.testing.assert_allclose(_generate(loaded), _reference_image(family), atol=1e-5)


def test_hub_cache_pinned_to_a_commit(tmp_path, saved, offline):
    folder = saved("sd1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = testing.fill_hf_cache(folder, "sdlab-test/pinned", tmp_path / "hub", revision=commit)
    assert snapshot.name == commit
    path = huggingface_hub.hf_hub_download(
        "sdlab-test/pinned", "unet/config.json", cache_dir=tmp_path / "hub", revision=commit
    )
    assert Path(path).as_posix().endswith(f"snapshots/{commit}/unet/config.json")
    assert Path(path).read_text() == (folder / "unet" / "config.json").read_text()
    assert not (tmp_path / "hub" / "models--sdlab-test--pinned" / "refs").exists()


# --- original single-file checkpoints --------------------------------------------------------------

_PIPELINE_FOR = {
    "sd1": diffusers.StableDiffusionPipeline,
    "sd2": diffusers.StableDiffusionPipeline,
    "sdxl": diffusers.StableDiffusionXLPipeline,
}
_DETECTED_AS = {"sd1": "v1", "sd2": "v1", "sdxl": "xl_base"}


@pytest.mark.parametrize("family", testing.SINGLE_FILE_FAMILIES)
def test_single_file_round_trip(family, tmp_path, saved, offline):
    folder = saved(family)
    path = testing.save_single_file(family, tmp_path / f"{family}.safetensors")
    checkpoint = load_single_file_checkpoint(str(path))
    assert infer_diffusers_model_type(checkpoint) == _DETECTED_AS[family]
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in checkpoint)
    assert any(k.startswith("first_stage_model.decoder.up.") for k in checkpoint)

    loaded = _PIPELINE_FOR[family].from_single_file(str(path), config=str(folder), local_files_only=True)
    original = _pipe(family)
    for name, module in _modules(original.components).items():
        assert _same_weights(getattr(loaded, name), module), name
    np.testing.assert_allclose(_generate(loaded), _reference_image(family), atol=1e-5)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_without_config_reads_the_default_repo_from_the_cache(family, tmp_path, saved, offline):
    # With no `config=`, diffusers looks up the config repo of the detected model type
    # (DIFFUSERS_DEFAULT_PIPELINE_PATHS) in the hub cache: a tiny folder filled in under that name serves.
    default_repo = {
        "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    }[family]
    testing.fill_hf_cache(saved(family), default_repo, tmp_path / "hub")
    path = testing.save_single_file(family, tmp_path / f"{family}.safetensors")
    loaded = _PIPELINE_FOR[family].from_single_file(str(path), cache_dir=str(tmp_path / "hub"))
    np.testing.assert_allclose(_generate(loaded), _reference_image(family), atol=1e-5)


# --- the shipped T5 tokenizer ------------------------------------------------------------------------


def test_t5_tokenizer_is_shaped_like_t5s(tmp_path):
    tokenizer = load_t5_tokenizer()
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("a red circle").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["\u2581a", "\u2581red", "\u2581circle", "</s>"]
    assert tokenizer.decode(tokenizer("Zebra, 42!").input_ids, skip_special_tokens=True) == "Zebra, 42!"
    padded = tokenizer("a cat", padding="max_length", max_length=8, truncation=True)
    assert padded.input_ids[-1] == 0 and sum(padded.attention_mask) == 3
    auto = AutoTokenizer.from_pretrained(str(T5_TOKENIZER_DIR))
    assert auto("a red circle").input_ids == ids
    # the shipped files are what the builder writes from the shipped word list
    rebuilt = build_t5_tokenizer(read_vocabulary(), tmp_path / "t5")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (rebuilt / name).read_text() == (T5_TOKENIZER_DIR / name).read_text(), name


# --- the testing wing: light to import; the stand-ins have their own extra ---------------------------


def test_importing_the_testing_wing_loads_no_model_library():
    code = (
        "import sys, sdlab.testing, sdlab.testing.fakes, sdlab.testing.clip_tokenizer; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_stand_ins_without_aiohttp_name_their_own_extra(monkeypatch):
    from sdlab.errors import MissingDependencyError
    from sdlab.testing.fakes import FakeComfyUI

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if aiohttp were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'sdlab\[fakes\]'"):
        FakeComfyUI().start()
