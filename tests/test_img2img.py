"""img2img, inpainting, hires fix and the SDXL refiner (sdlab.inputs, sdlab.backends.img2img, .passes):
from the pipeline already loaded, recorded by content, regenerated, swept, refused where not applied."""

import warnings

import numpy as np
import pytest
from helpers import max_pixel_diff
from PIL import Image

import sdlab
from sdlab import testing
from sdlab.backends import as_backend
from sdlab.metadata import infotext, params_from_infotext, read_params
from sdlab.request import GenerationRequest
from sdlab.testing.img2img import save_tiny_refiner, tiny_inpainting_pipeline

SIZE = dict(width=64, height=64, num_inference_steps=4)


def _init(color=(200, 30, 30)):
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste(color, (16, 16, 48, 48))
    return image


def _mask():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 32, 32))
    return mask


# ------------------------------------------------------------------ the request


def test_request_validates_image_fields_by_name():
    with pytest.raises(ValueError, match="`mask_image` needs an `image`"):
        GenerationRequest.create("x", mask_image=_mask(), width=64, height=64)
    with pytest.raises(ValueError, match="`strength`"):
        GenerationRequest.create("x", strength=0.5, width=64, height=64)
    with pytest.raises(ValueError, match="`strength` must be"):
        GenerationRequest.create("x", image=_init(), strength=1.5, width=64, height=64)
    with pytest.raises(ValueError, match="`hires_upscaler`"):
        GenerationRequest.create("x", hires_scale=2, hires_upscaler="esrgan", width=64, height=64)
    with pytest.raises(ValueError, match="txt2img option"):
        GenerationRequest.create("x", image=_init(), hires_scale=2, width=64, height=64)
    with pytest.raises(ValueError, match="`refiner_switch`"):
        GenerationRequest.create("x", refiner="r", refiner_switch=1.0, width=64, height=64)
    with pytest.raises(ValueError, match="`image` has 3 entries"):
        GenerationRequest.create("x", image=[_init()] * 3, num_images=2, width=64, height=64)
    with pytest.raises(ValueError, match="cannot be fitted"):
        GenerationRequest.create("x", image=_init(), width=60, height=64)


def test_init_images_are_fitted_hashed_and_keep_their_file_name(tmp_path):
    path = tmp_path / "init.png"
    Image.new("RGB", (128, 64), (10, 200, 10)).save(path)
    request = GenerationRequest.create("x", image=path, seed=1, width=64, height=64)
    assert request.image[0].size == (64, 64) and request.strength == 0.75  # fitted; A1111's default
    assert np.asarray(request.image[0])[0, 0].tolist() == [255, 255, 255]  # padded white, aspect kept
    params = request.image_params(0)
    assert params["image"]["file"] == "init.png" and len(params["image"]["sha256"]) == 64
    data = request.to_dict()
    assert "file" not in data["image"][0]  # the key is content only
    with pytest.raises(ValueError, match="`image` is an image described by its hash"):
        GenerationRequest.from_dict(data)
    plain = GenerationRequest.create("x", seed=1, width=64, height=64)
    assert "image" not in plain.to_dict() and "strength" not in plain.to_dict()  # txt2img keys unchanged
    other = GenerationRequest.create("x", image=_init((0, 0, 255)), seed=1, width=64, height=64)
    assert other.key() != request.key()


def test_per_image_fields_survive_select_and_concat():
    a = GenerationRequest.create("x", image=_init(), seed=1, width=64, height=64, strength=0.5)
    b = GenerationRequest.create("x", image=_init((0, 0, 255)), seed=2, width=64, height=64, strength=0.5)
    both = GenerationRequest.concat([a, b])
    assert len(both.image) == 2 and both.select([1]).image == b.image
    c = GenerationRequest.create("x", image=_init(), seed=3, width=64, height=64, strength=0.6)
    with pytest.raises(ValueError, match="cannot be batched"):
        GenerationRequest.concat([a, c])


# ------------------------------------------------------------------ local backend


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_img2img_and_inpaint_share_the_loaded_weights(family, request):
    pipe = request.getfixturevalue(f"{family}_pipe")
    backend = as_backend(pipe)
    result = sdlab.generate(pipe, "a red circle", image=_init(), strength=0.5, seed=[3, 4], **SIZE)
    alone = sdlab.generate(pipe, "a red circle", image=_init(), strength=0.5, seed=4, **SIZE)
    assert max_pixel_diff(result.images[1], alone.images[0]) <= 2  # batched equals alone
    assert max_pixel_diff(result.images[0], result.images[1]) > 0
    assert result.records[0]["pipeline"].endswith("Img2ImgPipeline")
    assert result.records[0]["strength"] == 0.5 and result.records[0]["image"]["sha256"]
    inpaint = sdlab.generate(pipe, "a red circle", image=_init(), mask_image=_mask(), strength=0.9, seed=1, **SIZE)
    assert inpaint.records[0]["pipeline"].endswith("InpaintPipeline")
    for task in ("image2image", "inpainting"):
        derived = backend._derived_pipelines[task][1]
        denoiser = "transformer" if family == "flux" else "unet"
        own = dict(getattr(pipe, denoiser).named_parameters())
        for name, tensor in getattr(derived, denoiser).named_parameters():
            assert tensor.data_ptr() == own[name].data_ptr()  # the same tensors, no copy
        assert derived.vae is pipe.vae and derived.text_encoder is pipe.text_encoder


def test_img2img_strength_changes_the_image_and_is_deterministic(sd1_pipe):
    low = sdlab.generate(sd1_pipe, "x", image=_init(), strength=0.25, seed=5, **SIZE)
    high = sdlab.generate(sd1_pipe, "x", image=_init(), strength=1.0, seed=5, **SIZE)
    again = sdlab.generate(sd1_pipe, "x", image=_init(), strength=0.25, seed=5, **SIZE)
    assert max_pixel_diff(low.image, again.image) == 0
    assert max_pixel_diff(low.image, high.image) > 0
    # the step callback counts the steps img2img runs: int(4 * 0.25) = 1
    steps = []
    sdlab.generate(sd1_pipe, "x", image=_init(), strength=0.5, seed=5, scheduler="Euler", progress=steps.append, **SIZE)
    assert [s["step"] for s in steps] == [0, 1, 2] and steps[-1]["total"] == 2


def test_img2img_per_image_guidance_in_one_call(sd1_pipe):
    backend = as_backend(sd1_pipe)
    base = GenerationRequest.create("x", image=_init(), strength=0.75, seed=[1, 2], **SIZE)
    from dataclasses import replace

    mixed = replace(base, guidance_scale=(1.0, 6.0))
    out = backend.run(mixed)
    alone = backend.run(replace(base.select([1]), guidance_scale=(6.0,)))
    assert max_pixel_diff(out.images[1], alone.images[0]) <= 2


def test_refusals_by_name(sd1_pipe, tmp_path):
    with pytest.raises(ValueError, match="variation"):
        sdlab.generate(sd1_pipe, "x", image=_init(), variation_strength=0.3, seed=1, **SIZE)
    with pytest.raises(ValueError, match="prompt editing"):
        sdlab.generate(sd1_pipe, "[a:b:2] x", image=_init(), seed=1, **SIZE)
    with pytest.raises(ValueError, match="runs no denoising step"):
        sdlab.generate(sd1_pipe, "x", image=_init(), strength=0.1, seed=1, **SIZE)
    with pytest.raises(ValueError, match="SDXL base"):
        sdlab.generate(sd1_pipe, "x", refiner=str(tmp_path), seed=1, **SIZE)


def test_controlnet_pipeline_keeps_image_as_control_image():
    pipe = testing.tiny_pipeline("sd1", controlnet=True)
    control = Image.new("RGB", (64, 64), "white")
    result = sdlab.generate(pipe, "x", image=control, seed=1, **SIZE)
    assert "image" not in result.records[0] and result.records[0]["pipeline_kwargs"]["image"]["type"] == "image"
    with pytest.raises(ValueError, match="`strength`"):
        sdlab.generate(pipe, "x", image=control, strength=0.5, seed=1, **SIZE)


def test_inpainting_checkpoint_nine_channels(tmp_path):
    pipe = tiny_inpainting_pipeline("sd1")
    assert pipe.unet.config.in_channels == 9
    result = sdlab.generate(pipe, "x", image=_init(), mask_image=_mask(), seed=[1, 2], guidance_scale=5.0, **SIZE)
    alone = sdlab.generate(pipe, "x", image=_init(), mask_image=_mask(), seed=2, guidance_scale=5.0, **SIZE)
    assert max_pixel_diff(result.images[1], alone.images[0]) <= 2
    assert result.records[0]["pipeline"] == "StableDiffusionInpaintPipeline"
    with pytest.raises(ValueError, match="inpainting checkpoint"):
        sdlab.generate(pipe, "x", seed=1, **SIZE)


def test_mask_blur_and_only_masked_are_applied_and_recorded(sd1_pipe):
    plain = sdlab.generate(sd1_pipe, "x", image=_init(), mask_image=_mask(), strength=0.9, seed=1, **SIZE)
    blurred = sdlab.generate(
        sd1_pipe, "x", image=_init(), mask_image=_mask(), strength=0.9, seed=1, mask_blur=4, **SIZE
    )
    assert max_pixel_diff(plain.image, blurred.image) > 0
    text = infotext(blurred.records[0])
    assert "Denoising strength: 0.9" in text and "Mask blur: 4" in text
    cropped = sdlab.generate(
        sd1_pipe, "x", image=_init(), mask_image=_mask(), strength=0.9, seed=1, padding_mask_crop=8, **SIZE
    )
    assert "Inpaint area: Only masked, Masked area padding: 8" in infotext(cropped.records[0])
    assert max_pixel_diff(cropped.image, plain.image) > 0


# ------------------------------------------------------------------ records and regenerate


def test_regenerate_asks_for_the_init_image_and_checks_it(sd1_pipe, tmp_path):
    path = tmp_path / "init.png"
    _init().save(path)
    result = sdlab.generate(sd1_pipe, "x", image=path, mask_image=_mask(), strength=0.75, seed=3, **SIZE)
    saved = result.save(tmp_path / "out")[0]
    assert read_params(saved)["image"]["file"] == "init.png"
    with pytest.raises(ValueError, match=r"input `image` \(init.png\).*regenerate\(path, pipe, image=\.\.\.\)"):
        sdlab.regenerate(saved, sd1_pipe)
    again = sdlab.regenerate(saved, sd1_pipe, image=path, mask_image=_mask())
    assert max_pixel_diff(again.image, result.image) == 0
    with pytest.warns(sdlab.generation.RegenerateWarning, match="not the one it was made from"):
        sdlab.regenerate(saved, sd1_pipe, image=_init((0, 0, 255)), mask_image=_mask())


# ------------------------------------------------------------------ hires fix


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_two_passes_recorded_in_a1111_keys(sd1_pipe, upscaler, tmp_path):
    result = sdlab.generate(sd1_pipe, "x", seed=[1, 2], hires_scale=1.5, hires_steps=3, hires_upscaler=upscaler, **SIZE)
    assert result.images[0].size == (96, 96)
    record = result.records[0]
    assert record["pipeline"] == "StableDiffusionPipeline + StableDiffusionImg2ImgPipeline (hires)"
    text = infotext(record)
    label = {"latent": "Latent", "lanczos": "Lanczos"}[upscaler]
    assert "Size: 64x64, " in text
    assert f"Denoising strength: 0.7, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: {label}" in text
    alone = sdlab.generate(sd1_pipe, "x", seed=2, hires_scale=1.5, hires_steps=3, hires_upscaler=upscaler, **SIZE)
    assert max_pixel_diff(result.images[1], alone.image) <= 2
    plain = sdlab.generate(sd1_pipe, "x", seed=1, **SIZE)
    assert plain.image.size == (64, 64)
    saved = result.save(tmp_path)[0]
    assert max_pixel_diff(sdlab.regenerate(saved, sd1_pipe).image, result.images[0]) <= 2  # made in a batch of 2


def test_regenerate_applies_an_a1111_hires_text(sd1_pipe, tmp_path):
    text = (
        "x\nSteps: 4, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 9, Size: 64x64, "
        "Model hash: 0123456789, Denoising strength: 0.5, Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent, "
        "RNG: CPU"
    )
    params = params_from_infotext(text)
    assert params["hires_scale"] == 2.0 and params["hires_strength"] == 0.5 and params["hires_steps"] == 2
    assert "Denoising strength" not in params["extra"]
    path = tmp_path / "a1111.png"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (128, 128)).save(path, pnginfo=info)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = sdlab.regenerate(path, sd1_pipe)
    unapplied = [
        u for w in caught if isinstance(w.message, sdlab.generation.RegenerateWarning) for u in w.message.unapplied
    ]
    assert not any("Hires" in u or "Denoising" in u for u in unapplied)
    assert made.image.size == (128, 128) and made.records[0]["hires_steps"] == 2
    direct = sdlab.generate(
        sd1_pipe,
        "x",
        seed=9,
        guidance_scale=7,
        scheduler="Euler",
        hires_scale=2,
        hires_steps=2,
        hires_strength=0.5,
        **SIZE,
    )
    assert max_pixel_diff(made.image, direct.image) == 0


def test_a1111_img2img_text_asks_for_its_init_image(sd1_pipe, tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters", "x\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64, Denoising strength: 0.6"
    )
    path = tmp_path / "i2i.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    with pytest.raises(ValueError, match="input `image`"):
        sdlab.regenerate(path, sd1_pipe)
    made = sdlab.regenerate(path, sd1_pipe, image=_init())
    assert made.records[0]["strength"] == 0.6


# ------------------------------------------------------------------ refiner


def test_sdxl_refiner_takes_over_at_the_switch(sdxl_pipe, tmp_path):
    folder = save_tiny_refiner(tmp_path / "refiner")
    result = sdlab.generate(sdxl_pipe, "a red circle", seed=[1, 2], refiner=str(folder), refiner_switch=0.6, **SIZE)
    record = result.records[0]
    assert record["pipeline"] == "StableDiffusionXLPipeline + StableDiffusionXLImg2ImgPipeline (refiner)"
    assert record["refiner"]["folder_sha256"] and record["refiner_switch"] == 0.6
    assert "Refiner: refiner, Refiner switch at: 0.6" in infotext(record)
    alone = sdlab.generate(sdxl_pipe, "a red circle", seed=2, refiner=str(folder), refiner_switch=0.6, **SIZE)
    assert max_pixel_diff(result.images[1], alone.image) <= 2
    later = sdlab.generate(sdxl_pipe, "a red circle", seed=1, refiner=str(folder), refiner_switch=0.9, **SIZE)
    base = sdlab.generate(sdxl_pipe, "a red circle", seed=1, **SIZE)
    assert max_pixel_diff(later.image, result.images[0]) > 0 and max_pixel_diff(base.image, result.images[0]) > 0
    refiner = as_backend(sdxl_pipe)._refiners[str(folder)][0]
    assert refiner.text_encoder is None and refiner.unet is not sdxl_pipe.unet  # its own components
    swept = sdlab.sweep(
        sdxl_pipe,
        "a red circle",
        axes={"refiner_switch": [0.6, 0.9]},
        refiner=str(folder),
        seed=1,
        out_dir=tmp_path / "run",
        verbose=False,
        **SIZE,
    )
    assert max_pixel_diff(swept.images[0], result.images[0]) <= 2 and max_pixel_diff(swept.images[1], later.image) <= 2


def test_refiner_by_preset_name_from_the_hub_cache_offline(sdxl_pipe, tmp_path, monkeypatch):
    """`refiner="sdxl-refiner"` is the SDXL refiner 1.0 by its hub id, found offline in the cache,
    and makes the same image as the same weights given as a folder; the record names the hub id."""
    import huggingface_hub

    from sdlab import testing
    from sdlab.presets import PRESETS

    preset = PRESETS["sdxl-refiner"]
    assert preset.source == "stabilityai/stable-diffusion-xl-refiner-1.0" and preset.family == "sdxl"
    folder = save_tiny_refiner(tmp_path / "refiner")
    cache = tmp_path / "hub"
    testing.fill_hf_cache(folder, preset.source, cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    kw = dict(seed=1, refiner_switch=0.6, **SIZE)
    by_name = sdlab.generate(sdxl_pipe, "a red circle", refiner="sdxl-refiner", **kw)
    by_folder = sdlab.generate(sdxl_pipe, "a red circle", refiner=str(folder), **kw)
    assert max_pixel_diff(by_name.image, by_folder.image) == 0
    assert by_name.records[0]["refiner_model"] == preset.source


# ------------------------------------------------------------------ sweeps


def test_sweep_over_images_and_strength_batched_cached_and_content_keyed(sd1_pipe, tmp_path):
    a, b = _init(), _init((0, 0, 255))
    axes = {"seed": [1, 2], "image": [a, b], "strength": [0.5, 0.75]}
    calls = []
    backend = as_backend(sd1_pipe)
    original = backend.run

    def counting(request, **kwargs):
        calls.append(len(request))
        return original(request, **kwargs)

    backend.run = counting
    try:
        first = sdlab.sweep(sd1_pipe, "x", axes=axes, out_dir=tmp_path, verbose=False, num_inference_steps=4)
        assert sorted(calls) == [4, 4]  # per-image init images and seeds share a call at one strength
        calls.clear()
        again = sdlab.sweep(sd1_pipe, "x", axes=axes, out_dir=tmp_path, verbose=False, num_inference_steps=4)
        assert calls == [] and all(c.cached for c in again.cells)
        b.putpixel((20, 20), (0, 0, 0))  # new pixels, same object and label: regenerated
        changed = sdlab.sweep(sd1_pipe, "x", axes=axes, out_dir=tmp_path, verbose=False, num_inference_steps=4)
        assert sorted(calls) == [2, 2] and sum(not c.cached for c in changed.cells) == 4  # b's cells, per strength
    finally:
        backend.run = original
    record = read_params(first.cells[0].path)
    assert record["strength"] == 0.5 and record["image"]["sha256"]


def test_image_axis_labels_name_files_not_paths(sd1_pipe, tmp_path):
    path = tmp_path / "red.png"
    _init().save(path)
    result = sdlab.sweep(
        sd1_pipe, "x", axes={"image": [path]}, strength=0.5, out_dir=tmp_path / "run", verbose=False, **SIZE
    )
    assert result.axis("image").labels == ("image: red.png",)
    assert read_params(result.cells[0].path)["image"]["file"] == "red.png"


def test_sweep_hires_axes(sd1_pipe, tmp_path):
    result = sdlab.sweep(
        sd1_pipe,
        "x",
        axes={"hires_strength": [0.3, 0.6], "hires_scale": [1.5]},
        hires_steps=4,
        out_dir=tmp_path,
        verbose=False,
        num_inference_steps=3,
    )
    records = [read_params(c.path) for c in result.cells]
    assert [r["hires_strength"] for r in records] == [0.3, 0.6] and records[0]["hires_width"] == 96


# ------------------------------------------------------------------ remote backends


def test_remote_backends_refuse_image_inputs_by_name():
    from sdlab.backends.replicate import ReplicateBackend

    backend = ReplicateBackend("black-forest-labs/flux-schnell", api_token="t", base_url="http://127.0.0.1:9")
    request = GenerationRequest.create("x", image=_init(), seed=1, width=64, height=64)
    with pytest.raises(ValueError, match="`image`, `strength`.*Replicate"):
        backend.validate(request)
    with pytest.raises(ValueError, match="`hires_scale`.*Replicate"):
        backend.validate(GenerationRequest.create("x", hires_scale=2, seed=1, width=64, height=64))


def test_sketch_img2img_mode(sd1_pipe):
    from sdlab.controlnet import generate_from_sketch

    sketch = Image.new("RGB", (64, 64), "white")
    sketch.paste((0, 0, 0), (20, 20, 44, 44))
    result = generate_from_sketch(sd1_pipe, sketch, "a shape", mode="img2img", strength=0.6, seed=1, **SIZE)
    assert result.records[0]["strength"] == 0.6 and result.records[0]["image"]["sha256"]


def test_inpainting_keeps_the_outside_of_the_mask(sd1_pipe):
    init, mask = _init(), _mask()
    result = sdlab.generate(sd1_pipe, "x", image=init, mask_image=mask, strength=1.0, seed=[1, 2], **SIZE)
    outside = np.asarray(mask) == 0
    for image in result.images:
        assert np.array_equal(np.asarray(image)[outside], np.asarray(init)[outside])  # A1111's overlay
        assert not np.array_equal(np.asarray(image)[~outside], np.asarray(init)[~outside])
    assert "A1111" in result.records[0]["inpaint_overlay"]


def test_comfyui_img2img_and_inpaint_templates_upload_the_init_image(tmp_path):
    from sdlab.backends.comfyui import ComfyUIBackend
    from sdlab.testing.fakes.comfyui import FakeComfyUI

    fake = FakeComfyUI()
    fake.start()
    try:
        backend = ComfyUIBackend(fake.url, poll_interval=0.05, timeout=20)
        result = sdlab.generate(backend, "a cat", image=_init(), strength=0.4, seed=[1, 2], **SIZE)
        graph = fake.prompts[-1]["prompt"]
        classes = {node["class_type"] for node in graph.values()}
        assert {"LoadImage", "VAEEncode"} <= classes and "EmptyLatentImage" not in classes
        sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")["inputs"]
        assert sampler["denoise"] == 0.4 and graph[sampler["latent_image"][0]]["class_type"] == "VAEEncode"
        load = next(n for n in graph.values() if n["class_type"] == "LoadImage")["inputs"]["image"]
        uploaded = Image.open(fake.root / "input" / load)
        assert uploaded.size == (64, 64) and max_pixel_diff(uploaded.convert("RGB"), _init()) == 0
        assert len(result.images) == 2 and result.records[0]["strength"] == 0.4 and result.records[0]["image"]["sha256"]
        sdlab.generate(backend, "a cat", image=_init(), mask_image=_mask(), strength=0.9, seed=1, **SIZE)
        graph = fake.prompts[-1]["prompt"]
        inpaint = next(n for n in graph.values() if n["class_type"] == "InpaintModelConditioning")["inputs"]
        sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")["inputs"]
        assert sampler["positive"][1] == 0 and sampler["negative"][1] == 1 and sampler["latent_image"][1] == 2
        load = graph[inpaint["pixels"][0]]["inputs"]["image"]
        alpha = np.asarray(Image.open(fake.root / "input" / load).getchannel("A"))
        assert alpha[10, 10] == 0 and alpha[50, 50] == 255  # transparent = repaint (ComfyUI's MASK = 1 - alpha)
        with pytest.raises(ValueError, match="`mask_blur`: not supported by the ComfyUI backend"):
            sdlab.generate(backend, "a cat", image=_init(), mask_image=_mask(), mask_blur=4, seed=1, **SIZE)
    finally:
        fake.stop()


def test_replicate_takes_image_where_the_model_does():
    pytest.importorskip("replicate")
    from sdlab.backends.replicate import ReplicateBackend
    from sdlab.testing.fakes.replicate import FakeReplicate

    fake = FakeReplicate(size_scale=0.125)
    fake.start()
    try:
        options = dict(api_token=fake.token, base_url=fake.url, poll_interval=0.02, backoff=0.02)
        dev = ReplicateBackend("black-forest-labs/flux-dev", **options)
        made = sdlab.generate(dev, "x", image=_init(), prompt_strength=0.6, seed=1)
        assert made.records[0]["pipeline_kwargs"]["image"]["type"] == "image"
        schnell = ReplicateBackend("black-forest-labs/flux-schnell", **options)
        with pytest.raises(ValueError, match=r"unknown argument\(s\) \['image'\]"):
            sdlab.generate(schnell, "x", image=_init(), seed=1)
    finally:
        fake.stop()


def test_a_local_refiner_keys_cells_by_content_not_by_path(sdxl_pipe, tmp_path):
    import shutil

    from sdlab.sweeps import cell_key

    folder = save_tiny_refiner(tmp_path / "refiner")
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "refiner-copy")
    identity = {"model": "m"}
    keys = [
        cell_key(GenerationRequest.create("a red circle", seed=1, refiner=str(path), **SIZE), identity)
        for path in (folder, copy)
    ]
    assert keys[0] == keys[1]
    (copy / "unet" / "config.json").write_text((copy / "unet" / "config.json").read_text() + " ")
    changed = GenerationRequest.create("a red circle", seed=1, refiner=str(copy), **SIZE)
    assert cell_key(changed, identity) != keys[0]
