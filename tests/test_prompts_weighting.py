"""Weighted and long prompts through compel (sdlab.prompts.weighting) on the tiny pipelines."""

import json
import sys
import warnings

import pytest
import torch
from helpers import max_pixel_diff

import sdlab
from sdlab.errors import MissingDependencyError
from sdlab.metadata import read_params
from sdlab.prompts import TokenLimitWarning, WeightedPrompt, parse_weights, token_budget, weighted, wildcard_axis
from sdlab.request import describe_value

STEPS = 3
HEAD = "a large red circle on a blue background"


def long_prompt(tail: str = "zq", words: int = 12) -> str:
    """HEAD then made-up words spelled a character at a time: about 120 tokens."""
    return HEAD + ", " + " ".join(tail + "x" * i for i in range(1, words + 1))


def run(pipe, prompt, **kwargs):
    """generate(), failing on any TokenLimitWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenLimitWarning)
        return sdlab.generate(pipe, prompt, **{"num_inference_steps": STEPS, "seed": 3, **kwargs})


# ------------------------------------------------------------------ syntax (no model)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("a (red:1.3) circle", [("a ", 1.0), ("red", 1.3), (" circle", 1.0)]),
        ("a ((red)) [blue]", [("a ", 1.0), ("red", 1.21), (" ", 1.0), ("blue", 0.909091)]),
        ("red++ car-- sci-fi", [("red", 1.21), (" ", 1.0), ("car", 0.81), (" sci-fi", 1.0)]),
        ("(a big)1.5 dog, (cat)-", [("a big", 1.5), (" dog, ", 1.0), ("cat", 0.9)]),
        ("(a [b] c:2)", [("a ", 2.0), ("b", 1.818182), (" c", 2.0)]),
        (r"smile \(ok\) \[x\]", [("smile (ok) [x]", 1.0)]),
        ("a (red:1.0) circle", [("a red circle", 1.0)]),
        ("", []),
    ],
)
def test_parse_weights(text, fragments):
    assert parse_weights(text) == fragments


@pytest.mark.parametrize(
    "text, match",
    [
        ("a (red", "never closed"),
        ("a red)", r"unbalanced '\)'"),
        ("(a]", "expected"),
        ("(x:-1)", "negative weight"),
        ("[a:b:3]", "prompt editing"),
        ("[a|b]", "alternation"),
    ],
)
def test_bad_weight_syntax_is_loud(text, match):
    with pytest.raises(ValueError, match=match):
        weighted(text)


def test_weighted_prompt_describes_itself():
    p = weighted("a (red:1.3) circle")
    assert isinstance(p, WeightedPrompt) and str(p) == "a (red:1.3) circle"
    assert p.prompt_sent == "a red circle" and p.is_weighted
    assert weighted(p) is p and weighted(["a", "b"]) == [WeightedPrompt("a"), WeightedPrompt("b")]
    described = describe_value(p)
    assert described == {
        "type": "weighted_prompt",
        "weighting": "compel",
        "text": "a (red:1.3) circle",
        "prompt_sent": "a red circle",
        "weights": [["a ", 1.0], ["red", 1.3], [" circle", 1.0]],
    }
    json.dumps(described)
    with pytest.raises(ValueError, match="`prompt`"):
        weighted(3)


# ------------------------------------------------------------------ images


def test_weights_of_one_equal_the_plain_prompt(sd1_pipe):
    plain = run(sd1_pipe, "a red circle")
    same = run(sd1_pipe, weighted("a (red:1.0) circle"))
    assert max_pixel_diff(plain.image, same.image) == 0
    embeds, pooled = weighted("a red circle").encode(sd1_pipe)
    reference, _ = sd1_pipe.encode_prompt("a red circle", "cpu", 1, False)
    assert pooled is None and torch.allclose(embeds, reference)


def test_sdxl_weights_of_one_equal_the_plain_prompt(sdxl_pipe):
    embeds, pooled = weighted("a (red:1.0) circle").encode(sdxl_pipe)
    reference, _, reference_pooled, _ = sdxl_pipe.encode_prompt(
        "a red circle", device="cpu", do_classifier_free_guidance=False
    )
    assert torch.allclose(embeds, reference, atol=1e-6) and torch.allclose(pooled, reference_pooled, atol=1e-6)
    plain = run(sdxl_pipe, "a red circle", num_inference_steps=2)
    same = run(sdxl_pipe, weighted("a red circle"), num_inference_steps=2)
    assert max_pixel_diff(plain.image, same.image) <= 1


def test_a_higher_weight_changes_the_image_and_is_recorded(sd1_pipe, tmp_path):
    plain = run(sd1_pipe, "a red circle")
    strong = run(sd1_pipe, weighted("a (red:1.6) circle"))
    weak = run(sd1_pipe, weighted("a [[red]] circle"))
    assert max_pixel_diff(plain.image, strong.image) > 0
    assert max_pixel_diff(plain.image, weak.image) > 0
    record = strong.records[0]
    assert record["prompt"] == "a (red:1.6) circle" and record["prompt_weighting"] == "compel"
    assert record["prompt_sent"] == "a red circle"
    assert record["prompt_weights"] == [["a ", 1.0], ["red", 1.6], [" circle", 1.0]]
    path = strong.save(tmp_path)[0]
    assert read_params(path)["prompt_weights"] == record["prompt_weights"]
    again = sdlab.regenerate(path, sd1_pipe)
    assert isinstance(again.request.prompt[0], WeightedPrompt)
    assert max_pixel_diff(again.image, strong.image) == 0


def test_sdxl_weight_changes_the_image(sdxl_pipe):
    plain = run(sdxl_pipe, "a red circle", num_inference_steps=2)
    strong = run(sdxl_pipe, weighted("a (red:1.8) circle"), num_inference_steps=2)
    assert max_pixel_diff(plain.image, strong.image) > 0


def test_long_weighted_prompt_is_read_whole(sd1_pipe):
    """Words past 77 tokens change nothing in a verbatim prompt and change the image when weighted."""
    from sdlab.prompts import verbatim

    a, b = long_prompt("ab"), long_prompt("ab")[:-3] + "qqq"
    embeds, _ = weighted(a).encode(sd1_pipe)
    chunks = token_budget(sd1_pipe, weighted(a))["CLIP"].chunks  # compel splits at phrase ends
    assert chunks >= 2 and embeds.shape[1] == 77 * chunks
    sdlab.as_backend(sd1_pipe)._embeddings.clear()  # the warning comes with encoding, once per prompt
    with pytest.warns(TokenLimitWarning):
        plain = sdlab.generate(sd1_pipe, [verbatim(a), verbatim(b)], seed=[4, 4], num_inference_steps=STEPS)
    assert max_pixel_diff(plain.images[0], plain.images[1]) == 0
    long = run(sd1_pipe, [weighted(a), weighted(b)], seed=[4, 4])  # no TokenLimitWarning
    assert max_pixel_diff(long.images[0], long.images[1]) > 0
    assert "truncated_words" not in long.records[0] and long.records[0]["prompt_sent"] == a


@pytest.mark.parametrize(
    "family, guidance_scale, negatives",
    [
        ("sd1", 5.0, ["blurry", "LONG", "a (blurry:1.3) photo"]),
        ("sdxl", 5.0, None),  # zeroed negatives, padded with zeros
        ("sdxl", 1.0, ["blurry", "LONG", "a (blurry:1.3) photo"]),  # no guidance: negatives unused
    ],
)
def test_mixed_lengths_in_one_batch_equal_each_image_alone(request, family, guidance_scale, negatives):
    """Long and short prompts (and negatives) in one batch: each image equals its seed made alone."""
    unet_pipe = request.getfixturevalue(f"{family}_pipe")
    prompts = [weighted(long_prompt("mx")), "a red circle", weighted("a (blue:1.3) square")]
    if negatives is not None:
        negatives = [weighted(long_prompt("ng")) if n == "LONG" else weighted(n) if "(" in n else n for n in negatives]
    kwargs = dict(guidance_scale=guidance_scale, num_inference_steps=2)
    batch = run(unet_pipe, prompts, negative_prompt=negatives, seed=[1, 2, 3], **kwargs)
    for i, p in enumerate(prompts):
        n = negatives[i] if negatives else None
        alone = run(unet_pipe, p, negative_prompt=n, seed=i + 1, **kwargs)
        assert max_pixel_diff(alone.image, batch.images[i]) <= 2, i  # batched CPU kernels: tiny float differences
    if negatives:
        assert batch.records[1]["negative_prompt_weighting"] == "compel"
        assert batch.records[1]["negative_prompt_sent"] == long_prompt("ng")


def test_weighted_negative_prompt_for_every_prompt(sd1_pipe):
    result = run(sd1_pipe, ["a red circle", "a blue square"], negative_prompt=weighted("(blurry:1.4)"), seed=[1, 2])
    assert [r["negative_prompt"] for r in result.records] == ["(blurry:1.4)"] * 2
    assert result.records[0]["negative_prompt_weights"] == [["blurry", 1.4]]


def test_flux_refuses_weighted_prompts_before_model_work(flux_pipe):
    with pytest.raises(ValueError, match="SD 1.x/2.x or SDXL"):
        sdlab.generate(flux_pipe, weighted("a (red:1.2) circle"), num_inference_steps=1)


def test_missing_compel_says_how_to_install(sd1_pipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "compel", None)  # `import compel` now fails
    with pytest.raises(MissingDependencyError, match="pip install compel"):
        sdlab.generate(sd1_pipe, weighted("a (red:1.2) circle"), num_inference_steps=1)
    assert token_budget(sd1_pipe, weighted(long_prompt())).counts[0].chunks == 2  # counted without compel


def test_sweep_over_a_weighted_wildcard_axis(sd1_pipe, tmp_path):
    axis = wildcard_axis("a ({red|blue}:1.4) circle", weighted=True)
    result = sdlab.sweep(
        sd1_pipe, axes={"prompt": axis, "seed": [1, 2]}, out_dir=tmp_path, num_inference_steps=2, verbose=False
    )
    assert all(cell.ok for cell in result.cells)
    direct = run(sd1_pipe, weighted("a (blue:1.4) circle"), seed=2, num_inference_steps=2)
    cell = next(c for c in result.cells if c.coords == {"prompt": 1, "seed": 1})
    from PIL import Image

    assert max_pixel_diff(Image.open(cell.path), direct.image) <= 2  # batched with the other cells
    assert read_params(cell.path)["prompt_weights"][1] == ["blue", 1.4]
    again = sdlab.sweep(
        sd1_pipe, axes={"prompt": axis, "seed": [1, 2]}, out_dir=tmp_path, num_inference_steps=2, verbose=False
    )
    assert all(c.cached for c in again.cells)


def test_shapes_model_listens_to_weights():
    """The bundled shapes model (when trained) draws a word more strongly with a higher weight."""
    from sdlab.presets import SHAPES_DIR

    if not (SHAPES_DIR / "model_index.json").exists():
        pytest.skip("the bundled shapes model is not in sdlab/models/shapes yet")
    pipe = sdlab.load_pipeline("shapes", progress_bar=False)
    plain = run(pipe, "a large red circle on a blue background", seed=1, num_inference_steps=4)
    strong = run(pipe, weighted("a large (red:1.8) circle on a blue background"), seed=1, num_inference_steps=4)
    same = run(pipe, weighted("a large (red:1.0) circle on a blue background"), seed=1, num_inference_steps=4)
    assert max_pixel_diff(plain.image, same.image) == 0
    assert max_pixel_diff(plain.image, strong.image) > 8  # measured: 109 levels (mean 13)
