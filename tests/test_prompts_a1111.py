"""A1111's prompt syntax in plain strings (sdlab.prompts.a1111) on the tiny pipelines."""

import re
import warnings

import numpy as np
import pytest
import torch

import sdlab
from sdlab.backends.diffusers import DiffusersBackend
from sdlab.metadata import read_params
from sdlab.prompts import TokenLimitWarning, a1111, verbatim
from sdlab.request import GenerationRequest

STEPS = 4


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(int)


def run(pipe, prompt, **kwargs):
    return sdlab.generate(pipe, prompt, **{"num_inference_steps": STEPS, "seed": 3, **kwargs})


# ------------------------------------------------------------------ parsing, as A1111's own doctests give it


@pytest.mark.parametrize(
    "text, schedule",
    [
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("[a|(b:1.1)]", [[t, "a" if t % 2 else "(b:1.1)"] for t in range(1, 11)]),
        ("a [red:blue:0.5] circle", [[5, "a red circle"], [10, "a blue circle"]]),
        ("a [dog::0.3] cat", [[3, "a dog cat"], [10, "a  cat"]]),
        ("[a:b:0]", [[10, "b"]]),  # v1.10: a step below 1 is never reached
        ("[a:b:1.0]", [[10, "a"]]),  # v1.10: a number with a point is a fraction
        ("[a:b:3 ]", [[3, "a"], [10, "b"]]),
        ("x | [a:b:3]", [[10, "x | [a:b:3]"]]),  # a stray '|' makes A1111's grammar fail: no schedule
    ],
)
def test_prompt_schedule_matches_a1111(text, schedule):
    assert [list(e) for e in a1111.prompt_schedule(text, 10)] == schedule


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ],
)
def test_parse_attention_matches_a1111(text, fragments):
    assert a1111.parse_attention(text) == fragments


def test_which_strings_use_the_syntax():
    for text in ("a (red) b", "a [b]", r"a \(b\)", "a BREAK b", "[a:b:3]"):
        assert a1111.has_syntax(text), text
    for text in ("a red circle", "style: photo, a|b", "BREAKING news", None):
        assert not a1111.has_syntax(text), text


# ------------------------------------------------------------------ chunks and encoding


def test_break_and_long_prompts_make_77_token_chunks(sd1_pipe):
    tok = sd1_pipe.tokenizer
    short = a1111.chunk_tokens(tok, a1111.parse_attention("a red circle"))
    assert len(short) == 1 and len(short[0][0]) == 77
    broken = a1111.chunk_tokens(tok, a1111.parse_attention("a red circle BREAK on a blue background"))
    assert len(broken) == 2
    assert broken[1][0][1:4] == tok("on a blue", add_special_tokens=False)["input_ids"]
    long = " ".join(f"w{i}" for i in range(30)) + " (red:1.2)"  # more than 75 tokens, no comma
    count = len(tok(long.replace("(", "").replace(":1.2)", ""), add_special_tokens=False)["input_ids"])
    chunks = a1111.chunk_tokens(tok, a1111.parse_attention(long))
    assert count > 75 and len(chunks) == -(-count // 75) and all(len(ids) == 77 for ids, _ in chunks)
    embeds, _ = a1111.encode(sd1_pipe, long)
    assert embeds.shape[1] == 77 * len(chunks)


def test_comma_backtrack_moves_the_last_phrase_to_the_next_chunk(sd1_pipe):
    tok = sd1_pipe.tokenizer
    words = ["a"] * 70 + [","] + ["b"] * 10  # the chunk fills 4 tokens after the comma
    chunks = a1111.chunk_tokens(tok, [(" ".join(words), 1.0)])
    comma = tok.get_vocab()[",</w>"]
    first = chunks[0][0]
    assert first.index(comma) == 71 and first[72] == tok.eos_token_id  # cut after the comma
    assert chunks[1][0][1:11] == tok(" ".join(["b"] * 10), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("clip_skip", [None, 1])
def test_unweighted_text_encodes_as_the_pipeline_does(unet_pipe, clip_skip):
    backend = DiffusersBackend(unet_pipe)
    ours = a1111.encode(unet_pipe, r"a \(red\) circle", clip_skip=clip_skip)
    reference = backend._encode(verbatim("a (red) circle"), negative=False, clip_skip=clip_skip)  # the pipeline's
    assert torch.equal(ours[0], reference[0])
    if reference[1] is not None:
        assert torch.equal(ours[1], reference[1])


def test_emphasis_multiplies_token_outputs_and_restores_the_mean(sd1_pipe):
    z = torch.randn(1, 77, 8) + 0.5
    weights = torch.ones(77)
    weights[2] = 1.5
    out = a1111.emphasize(z, weights)
    expected = z * weights.reshape(1, -1, 1)
    assert torch.allclose(out, expected * (z.mean() / expected.mean()))
    assert torch.allclose(out.mean(), z.mean())
    zero_mean = z - z.mean()  # the tiny models' CLIP: no rescale by a mean of ~0 (it would give inf)
    assert torch.allclose(a1111.emphasize(zero_mean, weights), zero_mean * weights.reshape(1, -1, 1))
    plain, _ = a1111.encode(sd1_pipe, r"a red circle \(x\)")
    weighted, _ = a1111.encode(sd1_pipe, r"a (red:1.5) circle \(x\)")
    token_weights = torch.ones(77)
    token_weights[len(sd1_pipe.tokenizer("a red", add_special_tokens=False)["input_ids"])] = 1.5
    assert torch.equal(weighted, a1111.emphasize(plain, token_weights))


# ------------------------------------------------------------------ generating


def test_weights_in_a_plain_string_are_applied_and_recorded(sd1_pipe):
    weighted = run(sd1_pipe, "a (red:1.5) circle")
    literal = run(sd1_pipe, verbatim("a (red:1.5) circle"))
    plain = run(sd1_pipe, "a red circle")
    assert np.abs(pixels(weighted) - pixels(literal)).max() > 0
    assert np.abs(pixels(weighted) - pixels(plain)).max() > 0
    record = weighted.records[0]
    assert record["prompt"] == "a (red:1.5) circle" and record["prompt_encoding"] == "a1111"
    assert record["prompt_weights"] == [["a ", 1.0], ["red", 1.5], [" circle", 1.0]]
    assert literal.records[0]["prompt_encoding"] == "verbatim" and plain.records[0]["prompt_encoding"] == "plain"
    # verbatim is the old behaviour: the text as the pipeline itself encodes it
    direct = sd1_pipe(
        prompt="a (red:1.5) circle",
        num_inference_steps=STEPS,
        guidance_scale=literal.records[0]["guidance_scale"],
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    assert np.array_equal(np.asarray(direct).astype(int), pixels(literal))


def test_long_prompt_with_syntax_is_chunked_not_truncated(sd1_pipe):
    long = "a (red:1.2) circle, " + ", ".join(f"zq{'x' * i}" for i in range(1, 13))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenLimitWarning)
        result = run(sd1_pipe, [long, "a blue square"], seed=[3, 3])
    alone = run(sd1_pipe, long)
    assert np.array_equal(pixels(result), pixels(alone))
    assert "truncated_words" not in result.records[0]


def test_prompt_editing_switches_embeddings_at_a1111s_steps(sd1_pipe):
    """Step s (from 0) uses the first schedule entry whose end step is >= s, as A1111's CFGDenoiser."""
    backend = DiffusersBackend(sd1_pipe)
    red = backend._encode("a red circle", negative=False)[0]
    blue = backend._encode("a blue circle", negative=False)[0]
    seen = []
    unet = sd1_pipe.unet
    original = unet.forward

    def spy(sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.append(encoder_hidden_states[-1:].clone())
        return original(sample, timestep, encoder_hidden_states, *args, **kwargs)

    unet.forward = spy
    try:
        edited = backend.run(
            GenerationRequest.create(
                "a [red:blue:2] circle", seed=1, num_inference_steps=4, guidance_scale=1.0, scheduler="Euler"
            )
        )
        seen_edit, seen[:] = list(seen), []
        backend.run(
            GenerationRequest.create(
                "a [red|blue] circle", seed=1, num_inference_steps=4, guidance_scale=1.0, scheduler="Euler"
            )
        )
        seen_alt = list(seen)
    finally:
        del unet.forward

    def names(states):
        return ["red" if torch.equal(s, red) else "blue" if torch.equal(s, blue) else "?" for s in states]

    assert names(seen_edit) == ["red", "red", "red", "blue"]  # [[2, red], [4, blue]]
    assert names(seen_alt) == ["red", "red", "blue", "red"]  # [[1, red], [2, blue], [3, red], [4, blue]]
    assert edited.records[0]["prompt_schedule"] == [[2, "a red circle"], [4, "a blue circle"]]


def test_prompt_editing_in_batches_negatives_and_sdxl(unet_pipe):
    prompts = ["a [red:blue:0.5] circle", "a red circle", "a [red|green] square"]
    negative = "[blurry:ugly:2]"
    batch = run(unet_pipe, prompts, seed=[3, 3, 3], negative_prompt=negative, guidance_scale=5.0)
    for i, prompt in enumerate(prompts):
        alone = run(unet_pipe, prompt, negative_prompt=negative, guidance_scale=5.0)
        assert np.abs(pixels(batch, i) - pixels(alone)).max() <= 2, prompt  # as test_generate's batch test
    assert batch.records[0]["negative_prompt_schedule"] == [[2, "blurry"], [4, "ugly"]]
    # the whole schedule past the last step is the first text; a step below 1 the last
    assert np.array_equal(pixels(run(unet_pipe, "a [red:blue:9] circle")), pixels(run(unet_pipe, "a red circle")))
    assert np.array_equal(pixels(run(unet_pipe, "a [red:blue:0] circle")), pixels(run(unet_pipe, "a blue circle")))


def test_a_when_axis_in_a_sweep(sd1_pipe, tmp_path):
    result = sdlab.sweep(
        sd1_pipe,
        "a [red:blue:{when}] circle",
        axes={"when": [0.2, 0.5, 0.8]},
        num_inference_steps=10,
        out_dir=tmp_path,
        verbose=False,
    )
    records = [read_params(cell.path) for cell in result.cells]
    assert [r["prompt_schedule"] for r in records] == [
        [[end, "a red circle"], [10, "a blue circle"]] for end in (2, 5, 8)
    ]
    assert [r["prompt"] for r in records] == [f"a [red:blue:{w}] circle" for w in (0.2, 0.5, 0.8)]
    images = [np.asarray(image).astype(int) for image in result.images]
    assert np.abs(images[0] - images[2]).max() > 0


# ------------------------------------------------------------------ what cannot be honoured


@pytest.mark.parametrize(
    "prompt, match",
    [
        ("a cat AND a dog", "composable diffusion .`AND`"),
        ("a cat <lora:pixel:0.8>", "LoRA 'pixel' not found"),  # a LoRA tag is applied: its file must exist
        ("a cat <hypernet:anime:1>", "extra network '<hypernet:anime:1>'"),
    ],
)
def test_syntax_sdlab_cannot_honour_is_an_error_naming_it(sd1_pipe, prompt, match):
    with pytest.raises(ValueError, match=match):
        run(sd1_pipe, prompt)
    run(sd1_pipe, verbatim(prompt), num_inference_steps=1)  # sent as text when asked for


def test_flux_refuses_weight_syntax_unless_verbatim(flux_pipe):
    with pytest.raises(ValueError, match=r"'\(red:1.5\)'.*T5"):
        sdlab.generate(flux_pipe, "a (red:1.5) circle", num_inference_steps=1, width=64, height=64)
    with pytest.raises(ValueError, match=r"'\[red:blue:0.5\]'"):
        sdlab.generate(flux_pipe, "a [red:blue:0.5] circle", num_inference_steps=1, width=64, height=64)
    result = sdlab.generate(flux_pipe, verbatim("a (red:1.5) circle"), num_inference_steps=1, width=64, height=64)
    assert result.records[0]["prompt_encoding"] == "verbatim"
    assert (
        sdlab.generate(flux_pipe, "a red circle", num_inference_steps=1, width=64, height=64).records[0][
            "prompt_encoding"
        ]
        == "plain"
    )


# ------------------------------------------------------------------ records rebuild the same encoding


def test_verbatim_and_syntax_survive_from_dict_and_regenerate(sd1_pipe, tmp_path):
    for prompt in (verbatim("a (red:1.5) circle"), "a (red:1.5) [red:blue:0.5] circle"):
        first = run(sd1_pipe, prompt)
        request = GenerationRequest.from_dict(first.request.to_dict())
        assert request.prompt == first.request.prompt
        path = first.save(tmp_path)[0]
        again = sdlab.regenerate(path, sd1_pipe)
        assert np.array_equal(pixels(again), pixels(first))
        assert again.records[0]["prompt_encoding"] == first.records[0]["prompt_encoding"]
    assert type(request.prompt[0]) is str
    assert str(verbatim("a (x)").as_a1111()) == r"a \(x\)"


def test_verbatim_prompt_written_for_a1111_reads_back_as_the_same_text(sd1_pipe):
    from sdlab.metadata import infotext, params_from_infotext

    first = run(sd1_pipe, verbatim("a (red:1.5) circle"))
    text = infotext(first.records[0])
    assert text.splitlines()[0] == r"a \(red:1.5\) circle"  # A1111 would weight unescaped brackets
    prompt = params_from_infotext(text)["prompt"]
    assert a1111.parse_attention(prompt) == [("a (red:1.5) circle", 1.0)]
    again = run(sd1_pipe, prompt)  # A1111 syntax, no weights: the same embeddings as the verbatim text
    assert np.array_equal(pixels(again), pixels(first))


# ------------------------------------------------------------------ remote backends: refused, never literal


def test_remote_backends_refuse_syntax_they_would_read_as_text():
    from fake_comfyui import FakeComfyUI
    from fake_replicate import FakeReplicate

    from sdlab.backends import ComfyUIBackend, ReplicateBackend

    comfy, rep = FakeComfyUI(), FakeReplicate(size_scale=0.125)
    comfy.start()
    rep.start()
    try:
        backend = ComfyUIBackend(comfy.url, poll_interval=0.05, timeout=20)
        size = {"width": 64, "height": 64, "num_inference_steps": 1}
        for prompt, piece in (("a [red:blue:0.5] circle", "[red:blue:0.5]"), ("a [small] cat", "[small]")):
            with pytest.raises(ValueError, match=re.escape(repr(piece))):
                sdlab.generate(backend, prompt, **size)
        with pytest.raises(ValueError, match="BREAK"):
            sdlab.generate(backend, "a cat", negative_prompt="blurry BREAK noisy", **size)
        with pytest.raises(ValueError, match="LoRA 'pixel' not found"):
            sdlab.generate(backend, "a cat <lora:pixel:1>", **size)
        with pytest.raises(ValueError, match="extra network"):
            sdlab.generate(backend, "a cat <hypernet:pixel:1>", **size)
        sent_before = len(comfy.prompts)
        sdlab.generate(backend, verbatim("a [red] (cat:1.2)"), **size)  # escaped for ComfyUI
        assert comfy.prompts[sent_before]["prompt"]["6"]["inputs"]["text"] == r"a \[red\] \(cat:1.2\)"
        sdlab.generate(backend, "a (red:1.2) cat", **size)  # ComfyUI weights this itself
        flux = ReplicateBackend(
            "black-forest-labs/flux-schnell", api_token=rep.token, base_url=rep.url, poll_interval=0.02, backoff=0.02
        )
        with pytest.raises(ValueError, match=r"'\(red:1.2\)'.*plain text"):
            sdlab.generate(flux, "a (red:1.2) fox", width=1024, height=576)
        assert sdlab.generate(flux, verbatim("a (red:1.2) fox"), width=1024, height=576).images
    finally:
        comfy.stop()
        rep.stop()


def test_prompt_editing_on_controlnet_and_refused_where_the_pipeline_guides(tmp_path):
    from PIL import Image

    from sdlab import testing

    pipe = sdlab.load_pipeline(
        "tiny", controlnet=testing.save_tiny_controlnet("sd1", tmp_path / "cn"), progress_bar=False
    )
    control = Image.new("RGB", (64, 64), "white")
    edited = run(pipe, "a [red:blue:2] circle", image=control)
    assert edited.records[0]["prompt_schedule"] == [[2, "a red circle"], [4, "a blue circle"]]
    with pytest.raises(ValueError, match=r"prompt editing / alternation .*StableDiffusionControlNetPipeline"):
        run(pipe, "a [red:blue:2] circle", image=control, guess_mode=True)
    run(pipe, "a (red:1.2) circle", image=control, guess_mode=True)  # weights need no per-step change
