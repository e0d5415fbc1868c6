"""generate(): seeds, batching, per-image guidance, validation, records."""

import numpy as np
import pytest
from helpers import max_pixel_diff

import sdlab
from sdlab.backends.base import as_backend
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
    batch = sdlab.generate(unet_pipe, ["a red circle", "a blue square"], seed=[11, 12], negative_prompt="green",
                           num_inference_steps=STEPS, guidance_scale=6.0)
    for i, prompt in enumerate(["a red circle", "a blue square"]):
        alone = sdlab.generate(unet_pipe, prompt, seed=batch.seeds[i], negative_prompt="green",
                               num_inference_steps=STEPS, guidance_scale=6.0)
        assert max_pixel_diff(batch.images[i], alone.image) <= 2


def test_sdlab_matches_a_plain_diffusers_call(unet_pipe):
    import torch

    ours = sdlab.generate(unet_pipe, "a red circle", seed=3, negative_prompt="blue", num_inference_steps=STEPS, guidance_scale=5.0)
    plain = unet_pipe("a red circle", negative_prompt="blue", num_inference_steps=STEPS, guidance_scale=5.0,
                      generator=[torch.Generator("cpu").manual_seed(3)], width=64, height=64).images[0]
    assert max_pixel_diff(ours.image, plain) <= 1


def test_mixed_guidance_runs_as_one_batch_and_matches_alone(unet_pipe):
    backend = as_backend(unet_pipe)
    calls = []
    original = type(unet_pipe).__call__

    guidances = (0.0, 1.0, 3.0, 7.5)
    request = GenerationRequest(prompt=("a red circle",) * 4, negative_prompt=("blue",) * 4, seed=(4,) * 4,
                                guidance_scale=guidances, width=64, height=64, num_inference_steps=STEPS)
    result = run_request(backend, request, progress=lambda info: calls.append(info["step"]))
    assert calls == list(range(1, len(calls) + 1)) and len(calls) >= STEPS  # one denoising loop for all four
    for image, g in zip(result.images, guidances):
        alone = sdlab.generate(unet_pipe, "a red circle", seed=4, negative_prompt="blue", guidance_scale=g, num_inference_steps=STEPS)
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
    r = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=STEPS, guidance_scale=4.0, negative_prompt="blur")
    rec = r.records[0]
    for key in ("prompt", "negative_prompt", "seed", "guidance_scale", "width", "height", "num_inference_steps",
                "scheduler", "model", "model_family", "versions", "seconds", "device", "dtype"):
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
    r = sdlab.generate(flux_pipe, "a red circle", seed=[1, 2], num_inference_steps=2, guidance_scale=3.5, width=64, height=64)
    assert len(r.images) == 2 and r.images[0].size == (r.records[0]["width"], r.records[0]["height"])
    alone = sdlab.generate(flux_pipe, "a red circle", seed=2, num_inference_steps=2, guidance_scale=3.5, width=64, height=64)
    assert max_pixel_diff(r.images[1], alone.image) <= 2
    assert r.records[0]["model_family"] == "flux"


def test_flux_size_must_be_a_multiple_of_16(flux_pipe):
    with pytest.raises(ValueError, match="width"):
        sdlab.generate(flux_pipe, "x", width=72, height=64)
