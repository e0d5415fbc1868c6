"""Axis values in A1111's syntax and prompt axes (S/R, templates, matrix, order)."""

import pytest

from sdlab.axes import (
    AxisSyntaxError,
    apply_replacements,
    check_search_replace,
    make_axis,
    parse_values,
    prompt_matrix,
    prompt_order,
    prompt_sr,
)


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("1-5", "int", [1, 2, 3, 4, 5]),
        ("1-10 (+3)", "int", [1, 4, 7, 10]),
        ("10-1 (-3)", "int", [10, 7, 4, 1]),
        ("0-100 [5]", "int", [0, 25, 50, 75, 100]),
        ("0-1 [5]", "float", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("3.5-9.5 (+1.5)", "float", [3.5, 5.0, 6.5, 8.0, 9.5]),
        ("1, 2, 5-7", "int", [1, 2, 5, 6, 7]),
        ("7.5", "float", [7.5]),
        ('Euler a, "DPM++ 2M, Karras", DDIM', "str", ["Euler a", "DPM++ 2M, Karras", "DDIM"]),
        ("512x512, 768x512", "size", [(512, 512), (768, 512)]),
        ("1, 2.5, foo", "auto", [1, 2.5, "foo"]),
        # A1111's plain ranges on float axes (step 1)
        ("5-9", "float", [5.0, 6.0, 7.0, 8.0, 9.0]),
        ("1-3, 7, 9-10", "float", [1.0, 2.0, 3.0, 7.0, 9.0, 10.0]),
        ("0.5-2.5", "float", [0.5, 1.5, 2.5]),
        # keywords sdlab does not know: floats stay floats, integers stay integers
        ("0-1 [5]", "auto", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("0-100 [5]", "auto", [0, 25, 50, 75, 100]),
        ("1-2 (+0.5)", "auto", [1.0, 1.5, 2.0]),
        ("1-3", "auto", [1, 2, 3]),
        ("+ 3, - 2", "int", [3, -2]),
    ],
)
def test_a1111_value_syntax(text, kind, expected):
    assert parse_values(text, kind) == expected


def test_bad_syntax_points_at_the_text():
    with pytest.raises(AxisSyntaxError) as info:
        parse_values("1, 2, abc, 4", "int", name="seed")
    message = str(info.value)
    assert "seed" in message and "abc" in message
    lines = message.splitlines()
    assert lines[-1].strip() == "^^^" and lines[-1].index("^") == lines[-2].index("abc")


def test_bad_size_and_empty_values_are_errors():
    with pytest.raises(AxisSyntaxError, match="512x768"):
        parse_values("512 by 512", "size", name="size")
    with pytest.raises(AxisSyntaxError, match="no values"):
        parse_values(" , ", "int", name="seed")
    with pytest.raises(ValueError, match="no values"):
        make_axis("seed", [])


def test_axis_kinds_and_labels():
    assert make_axis("guidance_scale", "1-3 (+1)").labels == ("CFG: 1", "CFG: 2", "CFG: 3")
    assert make_axis("size", ["64x96"]).values == ((64, 96),)
    assert make_axis("colour", ["red"], prompt="a {colour} circle").kind == "template"
    assert make_axis("controlnet_conditioning_scale", "0-1 [3]").values == (0.0, 0.5, 1.0)


def test_several_search_replace_axes_never_collide():
    text = "a red circle on a blue background"
    # swapping the two colours must not turn both into one
    assert apply_replacements(text, {"red": "blue", "blue": "red"}) == "a blue circle on a red background"
    # a replacement that contains another axis' search text is not replaced again
    assert (
        apply_replacements(text, {"red": "reddish blue", "blue": "green"})
        == "a reddish blue circle on a green background"
    )


def test_prompt_sr_first_value_is_the_search_text():
    axis = prompt_sr("red, green, blue")
    assert axis.search == "red" and axis.values == ("red", "green", "blue")


def test_prompt_matrix_and_order():
    m = prompt_matrix("a circle|red|large")
    assert m.values == ("a circle", "a circle, red", "a circle, large", "a circle, red, large")
    assert m.labels[0] == "(base)"
    o = prompt_order(["red", "large", "round"])
    assert len(o) == 6
    with pytest.raises(ValueError, match="at most 7"):
        prompt_order([str(i) for i in range(8)])


def test_float_axes_take_plain_ranges_and_unknown_keywords_keep_fractions():
    assert make_axis("guidance_scale", "5-9").values == (5.0, 6.0, 7.0, 8.0, 9.0)
    assert make_axis("my_pipeline_keyword", "0-1 [5]").values == (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("kind", ["int", "float"])
def test_numbers_with_a_space_are_an_error_not_glued(kind):
    with pytest.raises(AxisSyntaxError, match="'1 5'"):
        parse_values("1 5", kind, name="seed")
    with pytest.raises(AxisSyntaxError):
        make_axis("guidance_scale" if kind == "float" else "seed", "2, 1 5")


def test_unterminated_quote_points_at_it():
    text = 'Euler a, "DPM++ 2M, DDIM'
    with pytest.raises(AxisSyntaxError) as info:
        parse_values(text, "str", name="scheduler")
    lines = str(info.value).splitlines()
    assert "scheduler" in lines[0] and "never closed" in lines[0]
    assert lines[-1].strip() == "^" and lines[-1].index("^") == lines[-2].index('"')


@pytest.mark.parametrize("text", ["", "   ", " , "])
def test_an_empty_axis_says_it_is_empty(text):
    with pytest.raises(AxisSyntaxError, match="axis `seed` is empty"):
        make_axis("seed", text)


@pytest.mark.parametrize(
    "first, second, prompt",
    [
        ("dog, cat", "dog, bird", "a dog on a hill"),  # equal search texts: one axis silently cancels the other
        ("hot dog, pizza", "dog, cat", "a hot dog"),  # one search text inside the other
        ("red car, blue car", "car park, garage", "a red car park"),  # overlapping where they occur
    ],
)
def test_overlapping_search_replace_axes_are_refused_naming_both(first, second, prompt):
    axes = [prompt_sr(first, name="A"), prompt_sr(second, name="B")]
    with pytest.raises(ValueError, match="`A`.*`B`.*overlap"):
        check_search_replace(axes, prompt, None)


def test_separate_search_replace_axes_are_fine():
    check_search_replace(
        [prompt_sr("red, blue", name="A"), prompt_sr("circle, square", name="B")], "a red circle", None
    )
