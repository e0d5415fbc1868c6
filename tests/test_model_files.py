"""Damaged model files and weights missing from the cache offline: a ModelLoadError that names the
file (or the repo, the cache and the `hf download` command), never a raw library error."""

import shlex
import shutil

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects

import sdlab
from sdlab import testing
from sdlab.errors import ModelLoadError
from sdlab.loading import pipeline_info

DAMAGES = {
    "empty": (b"", "empty"),
    "text": (b"<html><body>404 Not Found</body></html>\n", "text file"),
    "git-lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 3438167536\n", "Git LFS pointer"),
}


def _damage(path, kind):
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return "truncated"
    data, words = DAMAGES[kind]
    path.write_bytes(data)
    return words


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _copy(folder, tmp_path, name="model"):
    return shutil.copytree(folder, tmp_path / name)


# ---------------------------------------------------------------- damaged files (issue 17, item 16)


@pytest.mark.parametrize("kind", ["empty", "text", "git-lfs", "truncated"])
def test_a_damaged_single_file_checkpoint_is_named(tiny_dirs, tmp_path, kind):
    path = testing.save_single_file("sd1", tmp_path / "model.safetensors")
    words = _damage(path, kind)
    with pytest.raises(ModelLoadError, match=words) as e:
        sdlab.load_pipeline(path, config=str(tiny_dirs["sd1"]))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("kind", ["empty", "text", "git-lfs", "truncated"])
def test_damaged_weights_in_a_pipeline_folder_are_named(tiny_dirs, tmp_path, kind):
    folder = _copy(tiny_dirs["sd1"], tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    words = _damage(weights, kind)
    with pytest.raises(ModelLoadError, match=words) as e:
        sdlab.load_pipeline(folder, progress_bar=False)
    assert str(weights) in str(e.value)


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("model_index.json", "{not json", "not valid JSON"),
        ("unet/config.json", "", "empty"),
        ("text_encoder/config.json", "nope", "not valid JSON"),
        ("vae/config.json", "[1, 2]", "JSON list"),
    ],
)
def test_a_config_that_is_not_a_json_object_is_named(tiny_dirs, tmp_path, name, text, words):
    folder = _copy(tiny_dirs["sd1"], tmp_path)
    (folder / name).write_text(text)
    with pytest.raises(ModelLoadError, match=words) as e:
        sdlab.load_pipeline(folder, progress_bar=False)
    assert str(folder / name) in str(e.value)


def test_damaged_configs_passed_to_a_single_file_are_named(tiny_dirs, tmp_path):
    path = testing.save_single_file("sd1", tmp_path / "model.safetensors")
    configs = _copy(tiny_dirs["sd1"], tmp_path, "configs")
    (configs / "model_index.json").write_text("")
    with pytest.raises(ModelLoadError, match="model_index.json is empty"):
        sdlab.load_pipeline(path, config=str(configs))


def test_damaged_controlnet_files_are_named(tmp_path):
    folder = testing.save_tiny_controlnet("sd1", tmp_path / "cn")
    weights = folder / "diffusion_pytorch_model.safetensors"
    _damage(weights, "text")
    with pytest.raises(ModelLoadError, match="text file") as e:
        sdlab.load_pipeline("tiny", controlnet=str(folder), progress_bar=False)
    assert str(weights) in str(e.value)
    (folder / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        sdlab.load_pipeline("tiny", controlnet=str(folder), progress_bar=False)


def test_damaged_weights_in_the_hub_cache_are_named(tiny_dirs, tmp_path, offline):
    cache = tmp_path / "hub"
    snapshot = testing.fill_hf_cache(tiny_dirs["sd1"], "sdlab-test/damaged", cache)
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    target = weights.resolve()
    weights.unlink()  # the cache's blob may be shared: damage a copy in place of the link
    target_copy = tmp_path / "blob"
    shutil.copy(target, target_copy)
    _damage(target_copy, "truncated")
    weights.symlink_to(target_copy)
    with pytest.raises(ModelLoadError, match="truncated") as e:
        sdlab.load_pipeline("sdlab-test/damaged", cache_dir=str(cache), progress_bar=False)
    assert "unet/diffusion_pytorch_model.safetensors" in str(e.value)


# ---------------------------------------------------------------- offline, not in the cache (item 17)


def _download_patterns(message: str) -> tuple[str, list[str], list[str]]:
    """The repo and the --include/--exclude patterns of the `hf download` line in `message`."""
    line = next(line.strip() for line in message.splitlines() if line.strip().startswith("hf download "))
    args = shlex.split(line)[2:]
    repo, include, exclude = args[0], [], []
    for flag, value in zip(args[1::2], args[2::2]):
        {"--include": include, "--exclude": exclude, "--cache-dir": []}[flag].append(value)
    return repo, include, exclude


def test_a_preset_not_in_the_cache_offline_says_what_to_download(tmp_path, offline):
    cache = tmp_path / "empty-cache"
    with pytest.raises(ModelLoadError) as e:
        sdlab.load_pipeline("sdxl", cache_dir=str(cache))
    message = str(e.value)
    assert "local_files_only" not in message  # not an option of load_pipeline
    assert str(cache) in message and "HF_HUB_OFFLINE" in message
    repo, include, _ = _download_patterns(message)
    assert repo == "stabilityai/stable-diffusion-xl-base-1.0"
    assert {"model_index.json", "unet/*", "text_encoder_2/*", "tokenizer_2/*", "vae/*"} <= set(include)
    assert f"--cache-dir {cache}" in message


def test_the_download_command_fetches_what_load_pipeline_reads(tiny_dirs, tmp_path, offline):
    """A hub repo laid out like the real ones (a root single-file checkpoint, .bin copies, fp16 and
    non-EMA weights, a safety checker) whose weights are not cached: the command the error gives
    selects the files that load, and none of the extras."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_dirs["sd1"], repo)
    extras = [
        "v1-5-pruned-emaonly.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "text_encoder/pytorch_model.bin",
        "safety_checker/model.safetensors",
    ]
    for name in extras:
        (repo / name).parent.mkdir(exist_ok=True)
        shutil.copy(repo / "unet" / "diffusion_pytorch_model.safetensors", repo / name)
    # only model_index.json is cached so far
    partial = tmp_path / "partial"
    (partial).mkdir()
    shutil.copy(repo / "model_index.json", partial / "model_index.json")
    cache = tmp_path / "hub"
    testing.fill_hf_cache(partial, "sdlab-test/realistic", cache)
    with pytest.raises(ModelLoadError) as e:
        sdlab.load_pipeline("sdlab-test/realistic", cache_dir=str(cache), progress_bar=False)
    name, include, exclude = _download_patterns(str(e.value))
    assert name == "sdlab-test/realistic"

    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    chosen = set(filter_repo_objects(files, allow_patterns=include, ignore_patterns=exclude))
    assert not chosen & set(extras)
    downloaded = tmp_path / "downloaded"
    for f in chosen:
        (downloaded / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo / f, downloaded / f)
    fresh = tmp_path / "hub2"
    testing.fill_hf_cache(downloaded, "sdlab-test/realistic", fresh)
    pipe = sdlab.load_pipeline("sdlab-test/realistic", cache_dir=str(fresh), progress_bar=False)
    assert pipeline_info(pipe).source == "hub"


def test_a_hub_id_not_in_the_cache_offline_says_what_to_download(tmp_path, offline):
    with pytest.raises(ModelLoadError, match="model_index.json") as e:
        sdlab.load_pipeline("nobody/no-such-model", cache_dir=str(tmp_path))
    assert _download_patterns(str(e.value))[0] == "nobody/no-such-model"
    assert str(tmp_path) in str(e.value)


def test_a_single_file_without_config_offline_points_to_config(tmp_path, offline):
    path = testing.save_single_file("sd1", tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match="`config=`") as e:
        sdlab.load_pipeline(path, cache_dir=str(tmp_path / "empty-cache"))
    repo, include, _ = _download_patterns(str(e.value))
    assert repo == "stable-diffusion-v1-5/stable-diffusion-v1-5" and "*.json" in include


def test_a_controlnet_preset_not_in_the_cache_offline_says_what_to_download(tmp_path, offline):
    with pytest.raises(ModelLoadError) as e:
        sdlab.load_pipeline("tiny", controlnet="canny-sd15", cache_dir=str(tmp_path))
    repo, include, _ = _download_patterns(str(e.value))
    assert repo == "lllyasviel/sd-controlnet-canny" and "config.json" in include
    assert str(tmp_path) in str(e.value)
