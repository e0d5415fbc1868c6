"""generate(): seeds, batching, per-image guidance, validation, records."""

import pytest
from helpers import max_pixel_diff
from PIL import Image

import sdlab
from sdlab.backends import as_backend
from sdlab.generation import run_request
from sdlab.request import GenerationRequest

STEPS = 3


def test_seed_zero_is_a_seed(sd1_pipe):
    a = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=STEPS)
    b = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=STEPS)
    assert a.records[0]["seed"] == 0
    assert max_pixel_diff(a.image, b.image) == 0


def test_random_seed_is_recorded_and_reproduces(sd1_pipe):
    a = sdlab.generate(sd1_pipe, "a red circle", num_inference_steps=STEPS)
    seed = a.records[0]["seed"]
    assert isinstance(seed, int) and seed >= 0
    b = sdlab.generate(sd1_pipe, "a red circle", seed=seed, num_inference_steps=STEPS)
    assert max_pixel_diff(a.image, b.image) == 0


def test_int_seed_with_num_images_counts_up(sd1_pipe):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=7, num_images=3, num_inference_steps=STEPS)
    assert r.seeds == [7, 8, 9]
    assert max_pixel_diff(r.images[0], r.images[1]) > 0


def test_seed_list_gives_one_image_per_seed(sd1_pipe):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=[5, 0, 5], num_inference_steps=STEPS)
    assert r.seeds == [5, 0, 5]
    assert max_pixel_diff(r.images[0], r.images[2]) <= 2  # batched CPU kernels: tiny float differences


def test_image_in_batch_equals_same_seed_alone(unet_pipe):
    batch = sdlab.generate(
        unet_pipe,
        ["a red circle", "a blue square"],
        seed=[11, 12],
        negative_prompt="green",
        num_inference_steps=STEPS,
        guidance_scale=6.0,
    )
    for i, prompt in enumerate(["a red circle", "a blue square"]):
        alone = sdlab.generate(
            unet_pipe,
            prompt,
            seed=batch.seeds[i],
            negative_prompt="green",
            num_inference_steps=STEPS,
            guidance_scale=6.0,
        )
        assert max_pixel_diff(batch.images[i], alone.image) <= 2


def test_sdlab_matches_a_plain_diffusers_call(unet_pipe):
    import torch

    ours = sdlab.generate(
        unet_pipe, "a red circle", seed=3, negative_prompt="blue", num_inference_steps=STEPS, guidance_scale=5.0
    )
    plain = unet_pipe(
        "a red circle",
        negative_prompt="blue",
        num_inference_steps=STEPS,
        guidance_scale=5.0,
        generator=[torch.Generator("cpu").manual_seed(3)],
        width=64,
        height=64,
    ).images[0]
    assert max_pixel_diff(ours.image, plain) <= 1


def test_mixed_guidance_runs_as_one_batch_and_matches_alone(unet_pipe):
    backend = as_backend(unet_pipe)
    calls = []
    original = type(unet_pipe).__call__

    guidances = (0.0, 1.0, 3.0, 7.5)
    request = GenerationRequest(
        prompt=("a red circle",) * 4,
        negative_prompt=("blue",) * 4,
        seed=(4,) * 4,
        guidance_scale=guidances,
        width=64,
        height=64,
        num_inference_steps=STEPS,
    )
    result = run_request(backend, request, progress=lambda info: calls.append(info["step"]))
    assert calls == list(range(len(calls))) and len(calls) > STEPS  # step 0, then one denoising loop for all four
    for image, g in zip(result.images, guidances):
        alone = sdlab.generate(
            unet_pipe, "a red circle", seed=4, negative_prompt="blue", guidance_scale=g, num_inference_steps=STEPS
        )
        assert max_pixel_diff(image, alone.image) <= 2
    # guidance changes the picture
    assert max_pixel_diff(result.images[0], result.images[3]) > 0
    assert original is type(unet_pipe).__call__


def test_prompt_embeddings_are_cached_per_distinct_prompt(sd1_pipe):
    backend = as_backend(sd1_pipe)
    backend._embeddings.clear()
    sdlab.generate(sd1_pipe, ["one prompt", "one prompt", "two prompt"], seed=[1, 2, 3], num_inference_steps=1)
    texts = {key[2] for key in backend._embeddings}  # (family, clip_skip, text, ...)
    assert {"one prompt", "two prompt"} <= texts
    assert len([k for k in backend._embeddings if k[2] == "one prompt"]) == 1


def test_scheduler_per_call_is_recorded_and_restored(sd1_pipe):
    before = type(sd1_pipe.scheduler).__name__
    r = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=STEPS, scheduler="Euler a")
    assert r.records[0]["scheduler"] == "Euler a"
    assert r.records[0]["scheduler_class"] == "EulerAncestralDiscreteScheduler"
    assert type(sd1_pipe.scheduler).__name__ == before


def test_records_hold_every_parameter(sd1_pipe):
    r = sdlab.generate(
        sd1_pipe, "a red circle", seed=0, num_inference_steps=STEPS, guidance_scale=4.0, negative_prompt="blur"
    )
    rec = r.records[0]
    for key in (
        "prompt",
        "negative_prompt",
        "seed",
        "guidance_scale",
        "width",
        "height",
        "num_inference_steps",
        "scheduler",
        "model",
        "model_family",
        "versions",
        "seconds",
        "device",
        "dtype",
    ):
        assert key in rec, key
    assert rec["model"] == "tiny" and rec["model_family"] == "sd1"
    assert set(rec["versions"]) >= {"sdlab", "diffusers", "torch", "transformers"}


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"width": 60}, "width"),
        ({"height": 100}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"num_images": 0}, "num_images"),
        ({"seed": -5}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": [1, 2], "num_images": 3}, "seed"),
        ({"scheduler": "DPM++ 9M"}, "scheduler"),
        ({"not_a_pipeline_argument": 1}, "not_a_pipeline_argument"),
        ({"negative_prompt": ["a", "b"]}, "negative_prompt"),
    ],
)
def test_bad_input_names_the_argument(sd1_pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sdlab.generate(sd1_pipe, "a red circle", **kwargs)


def test_empty_prompt_list_is_an_error(sd1_pipe):
    with pytest.raises(ValueError, match="prompt"):
        sdlab.generate(sd1_pipe, [])


def test_unknown_scheduler_lists_valid_names(sd1_pipe):
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M Karras"):
        sdlab.generate(sd1_pipe, "x", scheduler="nope")


def test_flux_generates_and_batches_seeds(flux_pipe):
    r = sdlab.generate(
        flux_pipe, "a red circle", seed=[1, 2], num_inference_steps=2, guidance_scale=3.5, width=64, height=64
    )
    assert len(r.images) == 2 and r.images[0].size == (r.records[0]["width"], r.records[0]["height"])
    alone = sdlab.generate(
        flux_pipe, "a red circle", seed=2, num_inference_steps=2, guidance_scale=3.5, width=64, height=64
    )
    assert max_pixel_diff(r.images[1], alone.image) <= 2
    assert r.records[0]["model_family"] == "flux"


def test_flux_size_must_be_a_multiple_of_16(flux_pipe):
    with pytest.raises(ValueError, match="width"):
        sdlab.generate(flux_pipe, "x", width=72, height=64)


# ------------------------------------------------------------------ the record is the truth (issue 14)


def _perturb(module, seed=1):
    """Write new weights into `module` in place, as a trainer or load_state_dict would."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_clip_skip_changes_pixels_matches_compel_and_is_recorded_in_both_conventions(sd1_pipe):
    from sdlab.prompts import weighted

    plain = sdlab.generate(sd1_pipe, "a red circle", seed=3, guidance_scale=1.0, num_inference_steps=STEPS)
    skipped = sdlab.generate(
        sd1_pipe, "a red circle", seed=3, guidance_scale=1.0, num_inference_steps=STEPS, clip_skip=1
    )
    assert max_pixel_diff(plain.image, skipped.image) > 0
    # compel's penultimate-layer embeddings are an independent implementation of clip_skip=1
    via_compel = sdlab.generate(
        sd1_pipe, weighted("a red circle"), seed=3, guidance_scale=1.0, num_inference_steps=STEPS, clip_skip=1
    )
    assert max_pixel_diff(skipped.image, via_compel.image) <= 2
    record = skipped.records[0]
    assert record["clip_skip"] == 1 and "diffusers" in record["clip_skip_convention"]
    text = sdlab.metadata.infotext(record)
    assert "Clip skip: 2" in text  # A1111 counts the last layer as 1
    assert sdlab.metadata.params_from_infotext(text)["clip_skip"] == 1
    assert "clip_skip" not in plain.records[0]


def test_clip_skip_with_guidance_and_on_sdxl(sd1_pipe, sdxl_pipe):
    for pipe in (sd1_pipe, sdxl_pipe):
        a = sdlab.generate(pipe, "a red circle", seed=1, guidance_scale=5.0, num_inference_steps=STEPS)
        b = sdlab.generate(pipe, "a red circle", seed=1, guidance_scale=5.0, num_inference_steps=STEPS, clip_skip=1)
        assert max_pixel_diff(a.image, b.image) > 0


def test_clip_skip_is_refused_where_it_cannot_apply(flux_pipe, sd1_pipe):
    with pytest.raises(ValueError, match="clip_skip"):
        sdlab.generate(flux_pipe, "x", seed=0, width=64, height=64, num_inference_steps=1, clip_skip=1)
    for bad in (-1, 13, 1.5, True):
        with pytest.raises(ValueError, match="clip_skip"):
            sdlab.generate(sd1_pipe, "x", seed=0, num_inference_steps=1, clip_skip=bad)


@pytest.mark.parametrize(
    "key", ["prompt_embeds", "negative_prompt_embeds", "prompt_2", "clip_skip", "max_sequence_length", "callback"]
)
def test_keywords_sdlab_owns_are_refused_by_name_before_model_work(sd1_pipe, key):
    import torch

    value = torch.zeros(1, 77, 32)
    with pytest.raises(ValueError, match=f"`{key}`"):
        GenerationRequest.create("x", pipeline_kwargs={key: value})
    if key != "clip_skip":  # clip_skip is generate's own argument
        with pytest.raises(ValueError, match=f"`{key}`"):
            sdlab.generate(sd1_pipe, "x", seed=0, num_inference_steps=1, **{key: value})


def test_generate_leaves_the_users_pipeline_as_it_was():
    from sdlab import testing

    for pipe in (testing.tiny_pipeline("sd1"), testing.tiny_pipeline("sd1", controlnet=True)):
        modules = [pipe.unet] + ([pipe.controlnet] if getattr(pipe, "controlnet", None) is not None else [])
        kwargs = {"image": Image.new("RGB", (64, 64))} if len(modules) > 1 else {}
        sdlab.generate(
            pipe, ["a", "b"], seed=[1, 2], guidance_scale=5.0, num_inference_steps=1, width=64, height=64, **kwargs
        )
        for module in modules:
            assert "forward" not in module.__dict__  # the class's own forward again, nothing of sdlab's
            assert module.forward.__func__ is type(module).forward


def test_a_user_patch_of_forward_survives_a_call():
    from sdlab import testing

    pipe = testing.tiny_pipeline("sd1")
    calls = []
    original = pipe.unet.forward

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    pipe.unet.forward = spy
    sdlab.generate(pipe, "a", seed=1, guidance_scale=5.0, num_inference_steps=1, width=64, height=64)
    assert pipe.unet.forward is spy and calls  # sdlab's wrapper called through it, then put it back


def test_guidance_that_can_make_no_image_is_refused():
    for bad in (1e308, float("inf"), float("nan"), -0.5, 101):
        with pytest.raises(ValueError, match="guidance_scale"):
            GenerationRequest.create("x", guidance_scale=bad)


def test_nan_latents_are_an_error_not_a_black_image():
    import torch

    from sdlab import testing

    pipe = testing.tiny_pipeline("sd1")
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(sdlab.BackendError, match="NaN"):
        sdlab.generate(pipe, "a", seed=1, num_inference_steps=2, width=64, height=64)


def test_embedding_cache_follows_text_encoder_weights_changed_in_place():
    from sdlab import testing

    pipe = testing.tiny_pipeline("sd1")
    before = sdlab.generate(pipe, "a red circle", seed=2, num_inference_steps=STEPS, width=64, height=64)
    _perturb(pipe.text_encoder)
    after = sdlab.generate(pipe, "a red circle", seed=2, num_inference_steps=STEPS, width=64, height=64)
    fresh = testing.tiny_pipeline("sd1")
    _perturb(fresh.text_encoder)
    truth = sdlab.generate(fresh, "a red circle", seed=2, num_inference_steps=STEPS, width=64, height=64)
    assert max_pixel_diff(before.image, after.image) > 0
    assert max_pixel_diff(after.image, truth.image) == 0


def test_records_identify_weights_by_content(tiny_dirs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["sd1"], copy)
    a = sdlab.generate(
        sdlab.load_pipeline(str(tiny_dirs["sd1"]), progress_bar=False), "x", seed=0, num_inference_steps=1
    )
    b = sdlab.generate(sdlab.load_pipeline(str(copy), progress_bar=False), "x", seed=0, num_inference_steps=1)
    assert a.records[0]["model_weights"] == b.records[0]["model_weights"]  # same content, other path
    assert len(a.records[0]["model_weights"]["folder_sha256"]) == 64


# ------------------------------------------------------------ seed variations (A1111's Var. seed / Var. strength)


def _gen(pipe, **kwargs):
    return sdlab.generate(pipe, "a red circle", num_inference_steps=STEPS, guidance_scale=6.0, **kwargs)


def test_variation_strength_0_1_and_equal_seeds_match_a1111(unet_pipe):
    seed_image = _gen(unet_pipe, seed=3).image
    other_image = _gen(unet_pipe, seed=9).image
    # strength 1 is the variation seed's noise (the seed's generator only advances, as in A1111)
    full = _gen(unet_pipe, seed=3, variation_seed=9, variation_strength=1.0)
    assert max_pixel_diff(full.image, other_image) == 0
    # a variation seed equal to the seed: the seed's own noise, at any strength
    for strength in (0.3, 0.5, 0.9):
        same = _gen(unet_pipe, seed=3, variation_seed=3, variation_strength=strength)
        assert max_pixel_diff(same.image, seed_image) <= 1
    half = _gen(unet_pipe, seed=3, variation_seed=9, variation_strength=0.5).image
    assert max_pixel_diff(half, seed_image) > 10 and max_pixel_diff(half, other_image) > 10
    assert (full.records[0]["variation_seed"], full.records[0]["variation_strength"]) == (9, 1.0)


def test_variations_batch_per_image_and_equal_each_image_alone(unet_pipe):
    # "Euler a": ancestral (the seed's generator must advance as the pipeline's own draw) with
    # init_noise_sigma far from 1 (the pipeline scales the latents sdlab gives, as its own)
    kwargs = {"scheduler": "Euler a", "seed": [1, 2, 3], "variation_seed": [7, 8, 9]}
    batch = _gen(unet_pipe, variation_strength=[0.2, 0.0, 0.6], **kwargs)
    assert [r.get("variation_strength") for r in batch.records] == [0.2, None, 0.6]
    for i, (seed, vseed, strength) in enumerate(zip([1, 2, 3], [7, 8, 9], [0.2, 0.0, 0.6])):
        alone = _gen(unet_pipe, scheduler="Euler a", seed=seed, variation_seed=vseed, variation_strength=strength)
        assert max_pixel_diff(batch.images[i], alone.image) <= 2
    plain = _gen(unet_pipe, scheduler="Euler a", seed=2)  # strength 0: exactly the seed's image, no variation
    assert max_pixel_diff(batch.images[1], plain.image) <= 2
    assert (
        max_pixel_diff(
            _gen(unet_pipe, seed=2, variation_seed=8, variation_strength=0.0).image, _gen(unet_pipe, seed=2).image
        )
        == 0
    )


def test_variation_noise_is_a1111s_slerp():
    import torch

    from sdlab.backends.diffusers import slerp, variation_noise

    shape = (4, 8, 8)
    low = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(5))
    high = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(6))
    mixed = variation_noise(shape, torch.Generator("cpu").manual_seed(5), 6, 0.25)
    # A1111 (modules/rng.py): norms along dim 1 of one image's [C, H, W] noise
    low_n, high_n = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(1))
    expected = (torch.sin(0.75 * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(0.25 * omega) / torch.sin(omega)
    ).unsqueeze(1) * high
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert torch.equal(variation_noise(shape, torch.Generator("cpu").manual_seed(5), 6, 0.0), low)
    assert torch.equal(slerp(1.0, low, high), high)


def test_flux_variations(flux_pipe):
    def flux(**kwargs):
        return sdlab.generate(flux_pipe, "a red circle", num_inference_steps=2, width=64, height=64, **kwargs)

    full = flux(seed=3, variation_seed=9, variation_strength=1.0)
    assert max_pixel_diff(full.image, flux(seed=9).image) == 0
    batch = flux(seed=[3, 4], variation_seed=[9, 10], variation_strength=[0.0, 0.4])
    assert max_pixel_diff(batch.images[0], flux(seed=3).image) <= 2
    assert max_pixel_diff(batch.images[1], flux(seed=4, variation_seed=10, variation_strength=0.4).image) <= 2
    assert max_pixel_diff(batch.images[1], flux(seed=4).image) > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variation_strength": 1.5}, "variation_strength"),
        ({"variation_strength": "0.5"}, "variation_strength"),
        ({"variation_seed": "x", "variation_strength": 0.5}, "variation_seed"),
        ({"variation_seed": [1, 2], "variation_strength": 0.5}, "variation_seed"),
    ],
)
def test_bad_variation_names_the_argument(sd1_pipe, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        sdlab.generate(sd1_pipe, "a red circle", seed=1, num_inference_steps=STEPS, **kwargs)


def test_variation_strength_without_a_seed_draws_one_and_records_it(sd1_pipe):
    a = _gen(sd1_pipe, seed=1, variation_strength=0.4)
    vseed = a.records[0]["variation_seed"]
    assert isinstance(vseed, int)
    b = _gen(sd1_pipe, seed=1, variation_seed=vseed, variation_strength=0.4)
    assert max_pixel_diff(a.image, b.image) == 0


def test_variations_are_refused_where_latents_are_not_the_initial_noise(sd1_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    img2img = StableDiffusionImg2ImgPipeline(**sd1_pipe.components)
    with pytest.raises(ValueError, match="`variation_seed`/`variation_strength`.*StableDiffusionImg2ImgPipeline"):
        sdlab.generate(
            img2img,
            "x",
            image=Image.new("RGB", (64, 64)),
            seed=1,
            variation_seed=2,
            variation_strength=0.5,
            num_inference_steps=STEPS,
        )


def test_concurrent_calls_on_one_pipeline_wait_for_each_other():
    """A widget's thread and a notebook cell on the same pipeline: both finish, each image as if alone."""
    import threading

    from sdlab import testing

    pipe = testing.tiny_pipeline("sd1")
    errors, results = [], {}

    def work(name, size, guidance):
        try:
            for _ in range(3):
                results[name] = sdlab.generate(
                    pipe,
                    "a red circle",
                    seed=1,
                    width=size,
                    height=size,
                    guidance_scale=guidance,
                    num_inference_steps=4,
                )
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=("a", 64, 5.0)), threading.Thread(target=work, args=("b", 128, 1.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    alone = sdlab.generate(
        pipe, "a red circle", seed=1, width=128, height=128, guidance_scale=1.0, num_inference_steps=4
    )
    assert max_pixel_diff(results["b"].image, alone.image) == 0


# ------------------------------------------------------------------ A1111 prompt syntax (sdlab.prompts.a1111)


def test_plain_string_without_syntax_is_encoded_as_before(unet_pipe):
    """No brackets, no BREAK: the pipeline's own encoding, pixel for pixel, recorded as "plain"."""
    import torch

    result = sdlab.generate(unet_pipe, "a red circle", seed=5, num_inference_steps=STEPS, guidance_scale=6.0)
    direct = unet_pipe(
        prompt="a red circle",
        num_inference_steps=STEPS,
        guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert max_pixel_diff(direct, result.image) == 0
    assert result.records[0]["prompt_encoding"] == "plain"
    verbatim = sdlab.generate(
        unet_pipe, sdlab.prompts.verbatim("a red circle"), seed=5, num_inference_steps=STEPS, guidance_scale=6.0
    )
    assert max_pixel_diff(verbatim.image, result.image) == 0


def test_a1111_weights_in_a_plain_string_are_not_literal_text(sd1_pipe):
    import torch

    prompt = "a (red:1.5) circle"
    result = sdlab.generate(sd1_pipe, prompt, seed=5, num_inference_steps=STEPS, guidance_scale=6.0)
    literal = sd1_pipe(
        prompt=prompt, num_inference_steps=STEPS, guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(5)
    ).images[0]
    assert max_pixel_diff(literal, result.image) > 0
    assert result.records[0]["prompt_encoding"] == "a1111"
    assert result.records[0]["prompt_weights"][1] == ["red", 1.5]
