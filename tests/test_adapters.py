"""LoRAs (sdlab.adapters): loaded per call, recorded by content, scoped, batched across weights."""

import hashlib
import shutil
import warnings

import numpy as np
import pytest
from helpers import max_pixel_diff

import sdlab
from sdlab import adapters
from sdlab.backends import as_backend
from sdlab.generation import build_request, run_request
from sdlab.metadata import infotext, params_from_infotext, read_params
from sdlab.request import GenerationRequest
from sdlab.testing import save_tiny_lora

KW = dict(seed=3, num_inference_steps=3, guidance_scale=4.0)


@pytest.fixture
def lora_dir(tmp_path, sd1_pipe):
    folder = tmp_path / "loras"
    save_tiny_lora(sd1_pipe, folder / "style.safetensors", seed=1)
    save_tiny_lora(sd1_pipe, folder / "other.safetensors", seed=2)
    sdlab.set_lora_dir(folder)
    yield folder
    sdlab.set_lora_dir(None)


def test_lora_per_call_changes_the_image_and_the_pipeline_is_unchanged_after(sd1_pipe, lora_dir):
    base = sdlab.generate(sd1_pipe, "a red circle", **KW)
    with_lora = sdlab.generate(sd1_pipe, "a red circle", loras={"style": 0.8}, **KW)
    assert max_pixel_diff(base.image, with_lora.image) > 0
    assert adapters.foreign_adapters(sd1_pipe) == []  # nothing left in the pipeline
    after = sdlab.generate(sd1_pipe, "a red circle", **KW)
    assert max_pixel_diff(base.image, after.image) == 0  # pixel-identical: notebooks compare in one kernel
    (entry,) = with_lora.records[0]["loras"]
    assert entry["name"] == "style" and entry["weight"] == 0.8
    assert entry["sha256"] == hashlib.sha256((lora_dir / "style.safetensors").read_bytes()).hexdigest()


def test_a1111_tag_in_the_prompt_is_the_same_request_as_loras(sd1_pipe, lora_dir):
    by_tag = sdlab.generate(sd1_pipe, "a red circle <lora:style:0.8>", **KW)
    by_arg = sdlab.generate(sd1_pipe, "a red circle", loras={"style": 0.8}, **KW)
    assert max_pixel_diff(by_tag.image, by_arg.image) == 0
    assert by_tag.records[0]["prompt"] == "a red circle <lora:style:0.8>"  # recorded as written
    assert by_tag.records[0]["loras"][0]["weight"] == 0.8


def test_weights_in_one_batch_equal_each_made_alone(unet_pipe, tmp_path):
    path = save_tiny_lora(
        unet_pipe, tmp_path / "s.safetensors", seed=1, text_encoder=as_backend(unet_pipe).family == "sd1"
    )
    backend = as_backend(unet_pipe)
    weights = [0.0, 0.5, 1.0, -0.5]
    request = build_request(backend, ["a cat"] * 4, seed=[5] * 4, num_inference_steps=3, guidance_scale=4.0)
    request = GenerationRequest(
        **{**request.__dict__, "loras": tuple((adapters.Lora(adapters.resolve_lora(path), w),) for w in weights)}
    )
    batch = run_request(backend, request)
    for w, image, record in zip(weights, batch.images, batch.records):
        alone = sdlab.generate(unet_pipe, "a cat", seed=5, num_inference_steps=3, guidance_scale=4.0, loras={path: w})
        assert max_pixel_diff(image, alone.image) <= 2
        assert record["loras"][0]["weight"] == w
    plain = sdlab.generate(unet_pipe, "a cat", seed=5, num_inference_steps=3, guidance_scale=4.0)
    assert max_pixel_diff(batch.images[0], plain.image) <= 2  # weight 0 is no LoRA
    assert max_pixel_diff(batch.images[2], plain.image) > 0


def test_text_encoder_weight_apart_from_unet_weight(sd1_pipe, lora_dir):
    both = sdlab.generate(sd1_pipe, "a cat", loras={"style": 1.0}, **KW)
    unet_only = sdlab.generate(sd1_pipe, "a cat", loras={"style": (1.0, 0.0)}, **KW)
    te_only = sdlab.generate(sd1_pipe, "a cat", loras={"style": (0.0, 1.0)}, **KW)
    plain = sdlab.generate(sd1_pipe, "a cat", **KW)
    assert max_pixel_diff(both.image, unet_only.image) > 0
    assert max_pixel_diff(te_only.image, plain.image) > 0
    assert unet_only.records[0]["loras"][0]["text_encoder_weight"] == 0.0
    tag = sdlab.generate(sd1_pipe, "a cat <lora:style:0:1>", **KW)  # A1111: <lora:name:te:unet>
    assert max_pixel_diff(tag.image, unet_only.image) == 0
    again = sdlab.generate(sd1_pipe, "a cat", **KW)  # the embedding cache was not given LoRA embeddings
    assert max_pixel_diff(again.image, plain.image) == 0


def test_two_loras_at_once(sd1_pipe, lora_dir):
    one = sdlab.generate(sd1_pipe, "a cat", loras={"style": 0.7}, **KW)
    two = sdlab.generate(sd1_pipe, "a cat <lora:other:0.5>", loras={"style": 0.7}, **KW)
    assert max_pixel_diff(one.image, two.image) > 0
    assert [d["name"] for d in two.records[0]["loras"]] == ["other", "style"]


def test_kohya_file_reads_as_the_same_lora(sd1_pipe, tmp_path):
    diffusers_file = save_tiny_lora(sd1_pipe, tmp_path / "d.safetensors", seed=4)
    kohya_file = save_tiny_lora(sd1_pipe, tmp_path / "k.safetensors", seed=4, kohya=True)
    from safetensors import safe_open

    with safe_open(str(kohya_file), "pt") as f:
        assert any(k.startswith("lora_unet_") for k in f.keys()) and any(k.startswith("lora_te_") for k in f.keys())
    a = sdlab.generate(sd1_pipe, "a cat", loras={diffusers_file: 1.0}, **KW)
    b = sdlab.generate(sd1_pipe, "a cat", loras={kohya_file: 1.0}, **KW)
    assert max_pixel_diff(a.image, b.image) <= 1


def test_bad_loras_are_refused_by_name_before_any_model_work(sd1_pipe, sdxl_pipe, lora_dir, tmp_path):
    steps = []

    def progress(info):
        steps.append(info)

    with pytest.raises(ValueError, match="'nope' not found.*other.*style"):
        sdlab.generate(sd1_pipe, "a cat <lora:nope:1>", progress=progress, **KW)
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(ValueError, match="broken.safetensors"):
        sdlab.generate(sd1_pipe, "a cat", loras={corrupt: 1}, progress=progress, **KW)
    sdxl_lora = save_tiny_lora(sdxl_pipe, tmp_path / "xl.safetensors", text_encoder=False)
    with pytest.raises(ValueError, match="xl.safetensors.*does not fit"):
        sdlab.generate(sd1_pipe, "a cat", loras={sdxl_lora: 1}, progress=progress, **KW)
    with pytest.raises(ValueError, match="weight"):
        sdlab.generate(sd1_pipe, "a cat", loras={"style": float("nan")}, **KW)
    with pytest.raises(ValueError, match="negative_prompt"):
        sdlab.generate(sd1_pipe, "a cat", negative_prompt="<lora:style:1>", **KW)
    assert steps == []
    assert adapters.foreign_adapters(sd1_pipe) == []


def test_adapters_loaded_outside_sdlab_are_refused(sd1_pipe, lora_dir):
    sd1_pipe.load_lora_weights(str(lora_dir / "style.safetensors"), adapter_name="mine")
    try:
        with pytest.raises(ValueError, match="loaded outside sdlab.*mine"):
            sdlab.generate(sd1_pipe, "a cat", **KW)
    finally:
        sd1_pipe.unload_lora_weights()
    sdlab.generate(sd1_pipe, "a cat", **KW)


def test_request_json_round_trip_finds_the_file_by_hash(sd1_pipe, lora_dir, tmp_path):
    request = build_request(as_backend(sd1_pipe), "a cat <lora:style:0.5>", **KW)
    data = request.to_dict()
    assert data["loras"][0][0]["a1111_hash"] == adapters.resolve_lora("style").a1111_hash
    assert GenerationRequest.from_dict(data) == request
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(lora_dir / "style.safetensors"), moved / "renamed.safetensors")
    sdlab.set_lora_dir(moved)
    again = GenerationRequest.from_dict(data)
    assert again.loras[0][0].file.sha256 == request.loras[0][0].file.sha256
    assert again.key() == request.key()  # identity is content, not the path
    sdlab.set_lora_dir(lora_dir)
    with pytest.raises(ValueError, match="style"):
        GenerationRequest.from_dict(data)


def test_a_tag_the_request_does_not_apply_is_refused(sd1_pipe, lora_dir):
    request = build_request(as_backend(sd1_pipe), "a cat <lora:style:0.5>", **KW)
    with pytest.raises(ValueError, match="style"):
        GenerationRequest(**{**request.__dict__, "loras": None})


def _addnet_hash(path) -> str:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def test_infotext_writes_tags_and_lora_hashes_as_a1111(sd1_pipe, lora_dir):
    result = sdlab.generate(sd1_pipe, "a cat <lora:other:0.5>", loras={"style": 0.25}, **KW)
    text = infotext(result.records[0])
    first = text.split("\n")[0]
    assert first == "a cat <lora:other:0.5><lora:style:0.25>"
    style, other = _addnet_hash(lora_dir / "style.safetensors"), _addnet_hash(lora_dir / "other.safetensors")
    assert f'Lora hashes: "other: {other}, style: {style}"' in text
    assert params_from_infotext(text)["lora_hashes"] == {"other": other, "style": style}


def test_regenerate_finds_the_loras_by_hash(sd1_pipe, lora_dir, tmp_path):
    result = sdlab.generate(sd1_pipe, "a cat <lora:style:0.6>", **KW)
    (path,) = result.save(tmp_path / "out")
    renamed = lora_dir / "renamed.safetensors"
    shutil.move(str(lora_dir / "style.safetensors"), renamed)  # same content, another name and path
    again = sdlab.regenerate(path, sd1_pipe)
    assert max_pixel_diff(again.image, result.image) == 0
    assert again.records[0]["loras"][0]["sha256"] == result.records[0]["loras"][0]["sha256"]
    # A1111's text alone (no sdlab JSON): the Lora hashes find the file
    from PIL import Image

    a1111_png = tmp_path / "a1111.png"
    Image.open(path).save(a1111_png, pnginfo=_only_parameters(path))
    assert read_params(a1111_png)["source"] == "a1111"
    with warnings.catch_warnings():  # Lora hashes are applied, not listed as unapplied
        warnings.simplefilter("error", sdlab.generation.RegenerateWarning)
        from_text = sdlab.regenerate(a1111_png, sd1_pipe)
    assert max_pixel_diff(from_text.image, result.image) == 0
    renamed.unlink()
    with pytest.raises(ValueError, match="style.*not in the LoRA folder"):
        sdlab.regenerate(path, sd1_pipe)


def _only_parameters(path):
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", Image.open(path).text["parameters"])
    return info


def test_replicate_refuses_loras_by_name(lora_dir):
    from sdlab.backends.replicate import ReplicateBackend
    from sdlab.request import Defaults

    request = GenerationRequest.create("a cat <lora:style:1>", defaults=Defaults(), seed=1)
    backend = ReplicateBackend("black-forest-labs/flux-schnell", api_token="t", base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="style.*flux-schnell takes no LoRA inputs on Replicate"):
        backend.validate(request)  # nothing is sent: the base_url has no server


@pytest.fixture(scope="module")
def comfy():
    from fake_comfyui import FakeComfyUI

    fake = FakeComfyUI()
    fake.start()
    yield fake
    fake.stop()


def test_comfyui_loras_become_lora_loader_nodes_after_the_checkpoint(comfy, lora_dir):
    from sdlab.backends import ComfyUIBackend

    backend = ComfyUIBackend(comfy.url, poll_interval=0.05, timeout=20)
    size = dict(width=64, height=64, num_inference_steps=2, seed=1)
    plain = sdlab.generate(backend, "a cat", **size)
    half = sdlab.generate(backend, "a cat <lora:style:0.5>", loras={"other": (1.0, 0.25)}, **size)
    full = sdlab.generate(backend, "a cat <lora:style:1>", loras={"other": (1.0, 0.25)}, **size)
    assert max_pixel_diff(plain.image, half.image) > 0 and max_pixel_diff(half.image, full.image) > 0
    graph = next(p for p in comfy.prompts if p["prompt_id"] == half.records[0]["prompt_id"])["prompt"]
    loaders = {nid: n for nid, n in graph.items() if n["class_type"] == "LoraLoader"}
    assert [(n["inputs"]["lora_name"], n["inputs"]["strength_model"], n["inputs"]["strength_clip"])
            for n in loaders.values()] == [("style.safetensors", 0.5, 0.5), ("other.safetensors", 1.0, 0.25)]  # fmt: skip
    first, last = loaders
    assert graph[first]["inputs"]["model"] == ["4", 0] and graph[last]["inputs"]["model"] == [first, 0]
    assert graph["3"]["inputs"]["model"] == [last, 0] and graph["6"]["inputs"]["clip"] == [last, 1]
    assert [d["name"] for d in half.records[0]["loras"]] == ["style", "other"]
    assert (
        graph["6"]["inputs"]["text"] == "a cat "
    )  # as A1111 encodes it: the tag is applied as a LoraLoader, never read as words
    # the workflow's own LoraLoader is used rather than a second one
    own = backend.workflow.copy().graph
    own["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x",
                                                         "strength_model": 1.0, "strength_clip": 1.0}}  # fmt: skip
    for nid, name in (("3", "model"), ("6", "clip"), ("7", "clip")):
        own[nid]["inputs"][name] = ["20", 0 if name == "model" else 1]
    mine = ComfyUIBackend(comfy.url, workflow=own, poll_interval=0.05, timeout=20)
    again = sdlab.generate(mine, "a cat", loras={"style": 0.5}, **size)
    sent = next(p for p in comfy.prompts if p["prompt_id"] == again.records[0]["prompt_id"])["prompt"]
    assert [n["inputs"]["lora_name"] for n in sent.values() if n["class_type"] == "LoraLoader"] == ["style.safetensors"]
    with pytest.raises(ValueError, match="1 LoraLoader node.*2 LoRA"):
        sdlab.generate(mine, "a cat", loras={"style": 0.5, "other": 1}, **size)


# ------------------------------------------------------------------ sweeps


def _cell_image(cell):
    from PIL import Image

    return Image.open(cell.path)


def test_sweep_over_lora_weights_batches_and_matches_cells_alone(sd1_pipe, lora_dir, tmp_path):
    calls = []
    backend = as_backend(sd1_pipe)
    original = backend.run

    def counting(request, **kw):
        calls.append(len(request))
        return original(request, **kw)

    backend.run = counting
    try:
        result = sdlab.sweep(
            sd1_pipe,
            "a cat",
            axes={"lora_weight": [0.0, 0.5, 1.0], "seed": [1, 2]},
            loras={"style": 1.0},
            out_dir=tmp_path / "run",
            num_inference_steps=3,
            guidance_scale=4.0,
            verbose=False,
        )
    finally:
        del backend.run
    assert calls == [6]  # one denoising loop for every weight and seed
    for cell in result.cells:
        weight = cell.request.loras[0][0].weight
        alone = sdlab.generate(
            sd1_pipe, "a cat", seed=cell.request.seed[0], num_inference_steps=3, guidance_scale=4.0,
            loras={"style": weight},
        )  # fmt: skip
        assert max_pixel_diff(_cell_image(cell), alone.image) <= 2


def test_lora_saved_over_the_same_file_regenerates_its_cells(sd1_pipe, lora_dir, tmp_path):
    kw = dict(axes={"lora:style": [0.5, 1.0]}, out_dir=tmp_path / "run", num_inference_steps=2, seed=1, verbose=False)
    first = sdlab.sweep(sd1_pipe, "a cat", **kw)
    assert not any(c.cached for c in first.cells)
    assert all(c.cached for c in sdlab.sweep(sd1_pipe, "a cat", **kw).cells)
    save_tiny_lora(sd1_pipe, lora_dir / "style.safetensors", seed=9)  # a new epoch written over the file
    third = sdlab.sweep(sd1_pipe, "a cat", **kw)
    assert not any(c.cached for c in third.cells)
    assert max_pixel_diff(np.asarray(_cell_image(first.cells[1])), np.asarray(_cell_image(third.cells[1]))) > 0


def test_sweep_lora_axis_over_files_and_prompt_sr_over_tags(sd1_pipe, lora_dir, tmp_path):
    by_file = sdlab.sweep(
        sd1_pipe,
        "a cat",
        axes={"lora": ["style", "other", ["style", "other"]], "lora_weight": [0.5]},
        out_dir=tmp_path / "a",
        num_inference_steps=2,
        seed=1,
        verbose=False,
    )
    assert [[d.file.name for d in c.request.loras[0]] for c in by_file.cells] == [
        ["style"],
        ["other"],
        ["style", "other"],
    ]
    assert all(lora.weight == 0.5 for c in by_file.cells for lora in c.request.loras[0])
    sr = sdlab.sweep(
        sd1_pipe,
        "a cat <lora:style:0.5>",
        axes=[sdlab.prompt_sr(["<lora:style:0.5>", "<lora:style:1>", "<lora:other:0.5>"])],
        out_dir=tmp_path / "b",
        num_inference_steps=2,
        seed=1,
        verbose=False,
    )
    assert [(c.request.loras[0][0].file.name, c.request.loras[0][0].weight) for c in sr.cells] == [
        ("style", 0.5),
        ("style", 1.0),
        ("other", 0.5),
    ]
    same = sdlab.generate(sd1_pipe, "a cat", loras={"other": 0.5}, seed=1, num_inference_steps=2)
    assert max_pixel_diff(_cell_image(sr.cells[2]), same.image) == 0


def test_load_sweep_keeps_the_sweeps_loras(sd1_pipe, lora_dir, tmp_path):
    from sdlab.sweep_result import load_sweep

    kw = dict(axes={"seed": [1, 2]}, out_dir=tmp_path / "run", num_inference_steps=2, verbose=False)
    sdlab.sweep(sd1_pipe, "a cat", loras={"style": 0.5}, **kw)
    (spec,) = (tmp_path / "run" / "sweeps").glob("*.json")
    kwargs = load_sweep(spec)
    assert kwargs["loras"] == {"style": 0.5}
    again = sdlab.sweep(sd1_pipe, **{**kwargs, "verbose": False})
    assert all(c.cached for c in again.cells)


def test_the_record_describes_the_prompt_encoded_without_its_tags(sd1_pipe, lora_dir):
    words = " ".join(["red"] * 72)  # fits one 77-token window; with the tag's text it would not
    tagged = sdlab.generate(sd1_pipe, f"{words} <lora:style:0.5>", **KW)
    plain = sdlab.generate(sd1_pipe, words, loras={"style": 0.5}, **KW)
    assert max_pixel_diff(tagged.image, plain.image) == 0
    for key in ("prompt_encoding", "truncated_words"):
        assert tagged.records[0].get(key) == plain.records[0].get(key)


def test_a_call_with_loras_prints_no_loading_bars_and_leaves_them_as_they_were(sd1_pipe, lora_dir, capfd):
    """Finding: every call with a LoRA printed transformers' "Loading weights" bar (the text
    encoder's LoRA going in), a bar per image in a notebook; the user's bar settings stay."""
    import transformers.utils

    transformers.utils.logging.enable_progress_bar()
    capfd.readouterr()
    sdlab.generate(sd1_pipe, "a cat", loras={"style": 0.5}, **KW)
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers.utils.logging.is_progress_bar_enabled()


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters:RuntimeWarning")  # what the file provokes
def test_a_lora_that_loads_only_in_part_is_refused_by_name(sd1_pipe, tmp_path):
    """A file whose layers diffusers applies only in part (here half of it in diffusers' older
    `.lora.down/.lora.up` keys, as `convert_state_dict_to_diffusers` writes for attention layers:
    diffusers drops those without an error) would be recorded at its weight but half applied."""
    from safetensors.torch import load_file, save_file

    path = save_tiny_lora(sd1_pipe, tmp_path / "whole.safetensors", seed=5)
    state = load_file(str(path))
    mixed = {}
    for key, value in state.items():
        if key.startswith("unet.") and ".to_q." in key:
            key = key.replace("lora_A.weight", "lora.down.weight").replace("lora_B.weight", "lora.up.weight")
        mixed[key] = value
    save_file(mixed, str(tmp_path / "part.safetensors"))
    sdlab.generate(sd1_pipe, "a cat", loras={path: 1.0}, **KW)  # the whole file is fine
    with pytest.raises(ValueError, match=r"part.safetensors.*does not fit.*of its \d+ layers"):
        sdlab.generate(sd1_pipe, "a cat", loras={tmp_path / "part.safetensors": 1.0}, **KW)
    assert adapters.foreign_adapters(sd1_pipe) == []
