"""load_pipeline: presets, folders, the hub cache (offline), single files; devices, dtypes, options."""

import pytest
import torch
from helpers import max_pixel_diff

import sdlab
from sdlab import testing
from sdlab.errors import MissingDependencyError, ModelLoadError
from sdlab.loading import family_from_folder, pipeline_info, resolve_device, resolve_dtype

EXPECTED_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
}


@pytest.mark.parametrize("family", testing.FAMILIES)
def test_family_is_detected_from_a_folder(tiny_dirs, family):
    assert family_from_folder(tiny_dirs[family]) == family
    pipe = sdlab.load_pipeline(tiny_dirs[family], progress_bar=False)
    assert type(pipe).__name__ == EXPECTED_CLASS[family]
    assert pipeline_info(pipe).family == family
    assert pipeline_info(pipe).source == "folder"


def test_sdxl_folder_is_never_loaded_with_the_sd1_class(tiny_dirs):
    pipe = sdlab.load_pipeline(str(tiny_dirs["sdxl"]), progress_bar=False)
    assert hasattr(pipe, "text_encoder_2")


def test_tiny_preset_is_built_offline_with_its_defaults():
    pipe = sdlab.load_pipeline("tiny", progress_bar=False)
    d = pipeline_info(pipe).defaults
    assert (d.width, d.height) == (64, 64)
    r = sdlab.generate(pipe, "a red circle", seed=0, num_inference_steps=2)
    assert r.image.size == (64, 64)


def test_defaults_of_a_non_preset_model_come_from_its_native_size(tiny_dirs):
    pipe = sdlab.load_pipeline(tiny_dirs["sd1"], progress_bar=False)
    d = pipeline_info(pipe).defaults
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert (d.width, d.height) == (native, native)
    assert d.guidance_scale == 7.5


def test_hub_id_resolves_through_a_prefilled_cache_offline(tiny_dirs, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    testing.fill_hf_cache(tiny_dirs["sd1"], "sdlab-test/tiny-sd1", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = sdlab.load_pipeline("sdlab-test/tiny-sd1", cache_dir=str(cache), progress_bar=False)
    assert pipeline_info(pipe).source == "hub" and pipeline_info(pipe).family == "sd1"
    ref = sdlab.load_pipeline(tiny_dirs["sd1"], progress_bar=False)
    a = sdlab.generate(pipe, "a red circle", seed=1, num_inference_steps=2)
    b = sdlab.generate(ref, "a red circle", seed=1, num_inference_steps=2)
    assert max_pixel_diff(a.image, b.image) == 0
    assert a.records[0]["model"] == "sdlab-test/tiny-sd1"


def test_missing_hub_model_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        sdlab.load_pipeline("nobody/no-such-model", cache_dir=str(tmp_path))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_single_file_checkpoint_loads_offline(tiny_dirs, tmp_path, family):
    path = testing.save_single_file(family, tmp_path / f"tiny-{family}.safetensors")
    pipe = sdlab.load_pipeline(path, config=str(tiny_dirs[family]), progress_bar=False)
    assert pipeline_info(pipe).family == family and pipeline_info(pipe).source == "single_file"
    ref = sdlab.load_pipeline(tiny_dirs[family], progress_bar=False)
    a = sdlab.generate(pipe, "a red circle", seed=1, num_inference_steps=2, width=64, height=64)
    b = sdlab.generate(ref, "a red circle", seed=1, num_inference_steps=2, width=64, height=64)
    assert max_pixel_diff(a.image, b.image) <= 1


def test_single_file_with_configs_of_another_family_is_refused(tiny_dirs, tmp_path):
    path = testing.save_single_file("sd1", tmp_path / "tiny-sd1.safetensors")
    with pytest.raises(ValueError, match="config"):
        sdlab.load_pipeline(path, config=str(tiny_dirs["sdxl"]))


def test_unknown_model_names_the_presets():
    with pytest.raises(ModelLoadError, match="sd15"):
        sdlab.load_pipeline("no-such-preset")


def test_pickled_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="safetensors"):
        sdlab.load_pipeline(path)


def test_device_and_dtype_resolution():
    assert resolve_device("auto") in ("cuda", "mps", "cpu")
    assert resolve_dtype("auto", "cpu", "sd1") == torch.float32
    assert resolve_dtype("auto", "cuda", "sd1") == torch.float16
    assert resolve_dtype("auto", "cuda", "flux") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu", "sd1") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", "cpu", "sd1")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        sdlab.load_pipeline("tiny", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_needs_an_accelerator(offload):
    with pytest.raises(ValueError, match="offload"):
        sdlab.load_pipeline("tiny", offload=offload)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="offload"):
        sdlab.load_pipeline("tiny", offload="disk")
    with pytest.raises(ValueError, match="attention"):
        sdlab.load_pipeline("tiny", attention="flash")


def test_xformers_missing_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    with pytest.raises(MissingDependencyError, match="xformers"):
        sdlab.load_pipeline("tiny", attention="xformers")


def test_cpu_options_run_on_cpu():
    pipe = sdlab.load_pipeline("tiny", vae_tiling=True, vae_slicing=True, channels_last=True, progress_bar=False)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    r = sdlab.generate(pipe, "a red circle", seed=0, num_inference_steps=2)
    ref = sdlab.generate(sdlab.load_pipeline("tiny", progress_bar=False), "a red circle", seed=0, num_inference_steps=2)
    assert max_pixel_diff(r.image, ref.image) <= 2


@pytest.mark.slow
def test_compiled_denoiser_runs_on_cpu():
    pipe = sdlab.load_pipeline("tiny", compile=True, progress_bar=False)
    ref = sdlab.load_pipeline("tiny", progress_bar=False)
    a = sdlab.generate(pipe, "a red circle", seed=0, num_inference_steps=2)
    b = sdlab.generate(ref, "a red circle", seed=0, num_inference_steps=2)
    assert max_pixel_diff(a.image, b.image) <= 2


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: model CPU offload moves weights to the GPU per call"
)
def test_model_offload_on_gpu():  # pragma: no cover - CPU-only CI
    pipe = sdlab.load_pipeline("tiny", offload="model", dtype="float16", progress_bar=False)
    r = sdlab.generate(pipe, "a red circle", seed=0, num_inference_steps=2)
    assert r.records[0]["dtype"] == "float16"


def test_scheduler_at_load_time(tiny_dirs):
    pipe = sdlab.load_pipeline(tiny_dirs["sd1"], scheduler="Euler a", progress_bar=False)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert pipeline_info(pipe).defaults.scheduler == "Euler a"


def test_presets_cover_the_families():
    for name in ("sd15", "sdxl", "sd-turbo", "sdxl-turbo", "flux-schnell", "flux-dev", "tiny", "shapes"):
        assert name in sdlab.PRESETS
    assert sdlab.PRESETS["sd-turbo"].defaults.guidance_scale == 0.0
    assert sdlab.PRESETS["sdxl-turbo"].defaults.num_inference_steps <= 4
    assert sdlab.PRESETS["sdxl"].family == "sdxl"


def test_loading_raises_no_deprecation_warning_of_sdlabs_own_making(tiny_dirs):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdlab.load_pipeline(str(tiny_dirs["sd1"]), progress_bar=False)
    assert not [w for w in caught if "torch_dtype" in str(w.message)]


def test_progress_bar_false_shows_no_loading_bar_and_leaves_the_libraries_as_they_were(tiny_dirs, capsys):
    import diffusers
    import transformers

    sdlab.load_pipeline(str(tiny_dirs["sd1"]), progress_bar=False)
    assert "Loading" not in capsys.readouterr().err
    assert diffusers.utils.logging.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()
