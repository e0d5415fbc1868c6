"""GenerationRequest: per-image variation fields (A1111's Var. seed / Var. strength)."""

import pytest

from sdlab.request import GenerationRequest


def _request(**kwargs):
    base = {
        "prompt": ("a", "b"),
        "negative_prompt": (None, None),
        "seed": (1, 2),
        "guidance_scale": (7.0, 7.0),
        "width": 64,
        "height": 64,
        "num_inference_steps": 2,
    }
    return GenerationRequest(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"variation_strength": (0.5, 1.5), "variation_seed": (3, 4)}, "variation_strength"),
        ({"variation_strength": (0.5, True), "variation_seed": (3, 4)}, "variation_strength"),
        ({"variation_strength": (0.5,), "variation_seed": (3, 4)}, "variation_strength"),
        ({"variation_strength": [0.5, 0.5], "variation_seed": (3, 4)}, "variation_strength"),
        ({"variation_strength": (0.5, 0.5), "variation_seed": (3, "4")}, "variation_seed"),
        ({"variation_strength": (0.5, 0.5), "variation_seed": (3, -1)}, "variation seed"),
        ({"variation_strength": (0.5, 0.5), "variation_seed": (3, None)}, "variation_seed"),
        ({"variation_strength": (0.5, 0.5), "variation_seed": (3,)}, "variation_seed"),
    ],
)
def test_the_constructor_checks_variation_fields_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _request(**kwargs)


def test_variation_fields_are_per_image_in_json_select_concat_and_params():
    r = _request(variation_seed=(3, None), variation_strength=(0.25, 0.0))
    assert r.has_variation
    assert GenerationRequest.from_dict(r.to_dict()) == r
    assert r.image_params(0)["variation_seed"] == 3 and r.image_params(0)["variation_strength"] == 0.25
    assert "variation_seed" not in r.image_params(1)  # strength 0: no variation, none recorded (as A1111)
    picked = r.select([1, 0])
    assert (picked.variation_seed, picked.variation_strength) == ((None, 3), (0.0, 0.25))
    both = GenerationRequest.concat([r, picked])
    assert both.variation_seed == (3, None, None, 3) and both.variation_strength == (0.25, 0.0, 0.0, 0.25)
    assert r.shared_key() == _request().shared_key()  # per-image: batches with plain requests


def test_a_request_without_variation_keeps_its_json_and_key():
    plain = _request()
    assert plain.variation_seed == (None, None) and plain.variation_strength == (0.0, 0.0)
    assert "variation_seed" not in plain.to_dict()  # old cache keys stay valid
    assert GenerationRequest.from_dict(plain.to_dict()) == plain


def test_create_counts_variation_seeds_up_and_draws_one_for_a_strength():
    r = GenerationRequest.create("a", seed=5, num_images=3, variation_seed=10, variation_strength=0.5)
    assert r.variation_seed == (10, 11, 12) and r.variation_strength == (0.5,) * 3
    drawn = GenerationRequest.create("a", seed=5, num_images=2, variation_strength=[0.5, 0.0])
    assert isinstance(drawn.variation_seed[0], int) and drawn.variation_seed[1] == drawn.variation_seed[0] + 1
    assert GenerationRequest.create("a", seed=5).variation_seed == (None,)
