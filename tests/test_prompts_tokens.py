"""The token budget and truncation warnings (sdlab.prompts.tokens) on the tiny pipelines.

The shipped tokenizer keeps its vocabulary words whole and spells other words a character at a
time, so a few made-up words make a prompt long.
"""

import json
import warnings

import pytest

import sdlab
from sdlab.metadata import read_params
from sdlab.prompts import TokenLimitWarning, token_budget, verbatim, weighted

HEAD = "a large red circle on a blue background"


def long_prompt(tail: str = "zq", words: int = 12) -> str:
    """HEAD (8 tokens) then made-up words of 3+ characters: well past 77 tokens."""
    return HEAD + ", " + " ".join(tail + "x" * i for i in range(1, words + 1))


def generate_recording(pipe, prompt, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sdlab.generate(pipe, prompt, **{"num_inference_steps": 2, "seed": 1, **kwargs})
    return result, [w for w in caught if issubclass(w.category, TokenLimitWarning)]


def test_short_prompt_fits(sd1_pipe):
    budget = token_budget(sd1_pipe, HEAD)
    (clip,) = budget.counts
    assert (clip.label, clip.count, clip.limit) == ("CLIP", 8 + 2, 77)
    assert not budget.truncated and clip.kept_text == HEAD and budget.dropped_words == ()
    assert "10/77 tokens, 67 free" in repr(budget)


def test_long_prompt_shows_the_dropped_words(sd1_pipe):
    prompt = long_prompt()
    budget = token_budget(sd1_pipe, verbatim(prompt))  # sent as written: the tokenizer cuts it
    clip = budget["CLIP"]
    assert budget.truncated and clip.count > 77
    assert prompt.startswith(clip.kept_text) and prompt.endswith(clip.dropped_text)
    assert len(sd1_pipe.tokenizer(clip.kept_text, add_special_tokens=False)["input_ids"]) == 75
    assert clip.dropped_words[-1] == "zq" + "x" * 12
    assert set(clip.dropped_words) <= set(prompt.replace(",", " ").split())
    assert "over: drops" in repr(budget) and "line-through" in budget._repr_html_()


def test_generating_past_the_limit_warns_once_and_records_the_dropped_words(sd1_pipe, tmp_path):
    prompt = verbatim(long_prompt("wk"))
    result, warned = generate_recording(sd1_pipe, prompt)
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "CLIP reads 77 tokens" in message and "wk" + "x" * 12 in message and "plain string" in message
    record = result.records[0]
    assert record["truncated_words"]["CLIP"] == list(token_budget(sd1_pipe, prompt).dropped_words)
    _, again = generate_recording(sd1_pipe, prompt)
    assert again == []  # once per distinct prompt
    path = result.save(tmp_path)[0]
    assert read_params(path)["truncated_words"] == record["truncated_words"]
    json.dumps(record)


def test_truncated_negative_prompt_warns_and_is_recorded(sd1_pipe):
    result, warned = generate_recording(sd1_pipe, HEAD, negative_prompt=verbatim(long_prompt("nv")))
    assert len(warned) == 1
    assert "truncated_words" not in result.records[0]
    assert result.records[0]["negative_truncated_words"]["CLIP"][-1] == "nv" + "x" * 12


def test_words_past_the_limit_change_nothing(sd1_pipe):
    """What the budget says: two verbatim prompts that differ only in dropped words make the same image."""
    a, _ = generate_recording(sd1_pipe, verbatim(long_prompt("ab")))
    b, _ = generate_recording(sd1_pipe, verbatim(long_prompt("ab")[:-3] + "qqq"))
    assert list(a.image.getdata()) == list(b.image.getdata())


def test_long_plain_prompts_are_read_in_chunks_as_a1111_does(sd1_pipe, sdxl_pipe):
    """A plain string past 77 tokens is encoded in 77-token chunks (A1111), not cut: no warning,
    the words past the limit change the image, and the record says so."""
    for pipe in (sd1_pipe, sdxl_pipe):
        budget = token_budget(pipe, long_prompt("cd"))
        assert not budget.truncated and all(c.chunks >= 2 for c in budget.counts)
        a, warned = generate_recording(pipe, long_prompt("cd"))
        b, _ = generate_recording(pipe, long_prompt("cd")[:-3] + "qqq")
        assert warned == [] and "truncated_words" not in a.records[0]
        assert a.records[0]["prompt_encoding"] == "a1111"
        assert list(a.image.getdata()) != list(b.image.getdata())
    short, _ = generate_recording(sd1_pipe, HEAD)
    assert short.records[0]["prompt_encoding"] == "plain"


def test_sdxl_counts_both_clip_encoders(sdxl_pipe):
    budget = token_budget(sdxl_pipe, verbatim(long_prompt()))
    assert [c.label for c in budget.counts] == ["CLIP-L", "CLIP-G"]
    assert all(c.limit == 77 and c.truncated for c in budget.counts)
    assert budget["CLIP-L"].dropped_words == budget["CLIP-G"].dropped_words
    assert not token_budget(sdxl_pipe, HEAD).truncated


def test_flux_counts_clip_and_t5(flux_pipe):
    budget = token_budget(flux_pipe, long_prompt())
    clip, t5 = budget.counts
    assert (clip.label, clip.role, clip.limit) == ("CLIP", "pooled", 77)
    assert (t5.label, t5.role, t5.limit) == ("T5", "sequence", 512)
    assert clip.truncated and not t5.truncated
    assert t5.count == len(flux_pipe.tokenizer_2(long_prompt())["input_ids"])
    very_long = " ".join([long_prompt()] * 6)
    assert token_budget(flux_pipe, very_long)["T5"].truncated


def test_flux_warns_only_when_t5_drops_words(flux_pipe):
    kwargs = dict(width=64, height=64, num_inference_steps=1)
    result, warned = generate_recording(flux_pipe, long_prompt("fl"), **kwargs)
    assert warned == []  # CLIP only feeds FLUX's pooled vector; T5 reads the whole prompt
    assert list(result.records[0]["truncated_words"]) == ["CLIP"]
    _, warned = generate_recording(flux_pipe, " ".join([long_prompt("fm")] * 6), **kwargs)
    assert len(warned) == 1 and "T5 reads 512 tokens" in str(warned[0].message)


def test_weighted_prompt_budget_counts_chunks(sd1_pipe, sdxl_pipe):
    prompt = weighted(long_prompt())
    for pipe in (sd1_pipe, sdxl_pipe):
        budget = token_budget(pipe, prompt)
        assert not budget.truncated and budget.weighted
        assert all(c.chunks >= 2 for c in budget.counts)
        assert "chunks of 77" in repr(budget)


def test_budget_accepts_a_backend_and_rejects_other_values(sd1_pipe):
    assert token_budget(sdlab.as_backend(sd1_pipe), HEAD).counts == token_budget(sd1_pipe, HEAD).counts
    with pytest.raises(ValueError, match="`prompt`"):
        token_budget(sd1_pipe, 3)


def test_the_token_warning_names_the_callers_line_not_sdlabs(sd1_pipe):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdlab.generate(sd1_pipe, verbatim("stack " * 100), seed=0, num_inference_steps=1)
    warned = [w for w in caught if issubclass(w.category, TokenLimitWarning)]
    assert warned and warned[0].filename == __file__


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_cut_prompt_is_reported_once_not_again_by_diffusers(family, request):
    """sdlab's TokenLimitWarning names the dropped words; diffusers' own "The following part of your
    input was truncated" log line for the same prompt would say it a second time (notebook 02)."""
    import logging

    pipe = request.getfixturevalue(f"{family}_pipe")
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(c.__module__) for c in type(pipe).__mro__ if c.__module__.startswith("diffusers.")]
    for log in loggers:
        log.addHandler(handler)
    try:
        _, warned = generate_recording(pipe, verbatim(long_prompt(f"dup{family}")))
    finally:
        for log in loggers:
            log.removeHandler(handler)
    assert len(warned) == 1
    assert not [r for r in records if "truncated" in r.getMessage()], [r.getMessage() for r in records]
    assert all(log.level == logging.NOTSET or log.level < logging.ERROR for log in loggers)  # levels restored
