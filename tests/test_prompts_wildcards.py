"""Wildcards / dynamic prompts (sdlab.prompts.wildcards): no model needed."""

import pytest

from sdlab.prompts import count_expansions, expand, list_wildcards, wildcard_axis
from sdlab.prompts.wildcards import MAX_COMBINATIONS


def test_combinatorial_in_order_last_choice_fastest():
    assert expand("a {red|green|blue} {car|bike}") == [
        "a red car",
        "a red bike",
        "a green car",
        "a green bike",
        "a blue car",
        "a blue bike",
    ]
    assert count_expansions("a {red|green|blue} {car|bike}") == 6


def test_nested_variants_and_n():
    prompts = expand("a {big {red|blue}|small} circle")
    assert prompts == ["a big red circle", "a big blue circle", "a small circle"]
    assert expand("a {big {red|blue}|small} circle", n=2) == prompts[:2]
    assert count_expansions("a {big {red|blue}|small} circle") == 3


def test_pick_several_with_separator():
    assert expand("{2$$a|b|c}") == ["a, b", "a, c", "b, c"]
    assert expand("{1-2$$ and $$a|b|c}") == ["a", "b", "c", "a and b", "a and c", "b and c"]
    assert count_expansions("{1-2$$a|b|c}") == 6


def test_wildcard_files_bundled_and_user(tmp_path):
    assert {"color", "shape", "scene"} <= set(list_wildcards())
    (tmp_path / "animal.txt").write_text("# animals\ncat\n\n{small|big} dog\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "fish.txt").write_text("trout\n", encoding="utf-8")
    assert expand("a __animal__", wildcards_dir=tmp_path) == ["a cat", "a small dog", "a big dog"]
    assert expand("__sub/fish__", wildcards_dir=tmp_path) == ["trout"]
    assert "animal" in list_wildcards(tmp_path)
    # user folders come first, bundled lists stay available
    assert len(expand("a __animal__ __shape__", wildcards_dir=[tmp_path])) == 3 * len(expand("__shape__"))


def test_wildcards_may_use_wildcards_and_cycles_are_loud(tmp_path):
    assert count_expansions("__scene__") == 2 * 10 * 8 * 10
    (tmp_path / "a.txt").write_text("x __b__\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("y __a__\n", encoding="utf-8")
    with pytest.raises(ValueError, match="refers to itself"):
        expand("__a__", wildcards_dir=tmp_path)


def test_random_is_seeded():
    first = expand("a __size__ __color__ __shape__", mode="random", n=5, seed=7)
    assert first == expand("a __size__ __color__ __shape__", mode="random", n=5, seed=7)
    assert len(first) == 5
    assert first != expand("a __size__ __color__ __shape__", mode="random", n=5, seed=8)
    every = set(expand("a __size__ __color__ __shape__"))
    assert set(first) <= every
    assert len(expand("{a|b}", mode="random", seed=1)) == 1


def test_random_respects_option_weights_and_picks():
    picks = expand("{9::x|1::y}", mode="random", n=300, seed=0)
    assert picks.count("x") > 200
    assert set(expand("{0::x|1::y}", mode="random", n=20, seed=0)) == {"y"}
    for p in expand("{2$$a|b|c}", mode="random", n=20, seed=3):
        parts = p.split(", ")
        assert len(parts) == 2 and len(set(parts)) == 2


def test_escapes_and_weighting_syntax_pass_through():
    assert expand(r"a \{x\} (red:1.2) {\||y} \_\_k\_\_") == ["a {x} (red:1.2) | __k__", "a {x} (red:1.2) y __k__"]


def test_wildcard_axis_labels_by_choice():
    axis = wildcard_axis("a {red|blue} {circle|square}")
    assert axis.name == "prompt" and axis.kind == "param"
    assert axis.values == ("a red circle", "a red square", "a blue circle", "a blue square")
    assert axis.labels == ("red, circle", "red, square", "blue, circle", "blue, square")
    weighted_axis = wildcard_axis("a ({red|blue}:1.2) circle", weighted=True)
    assert [v.text for v in weighted_axis.values] == ["a (red:1.2) circle", "a (blue:1.2) circle"]
    assert weighted_axis.labels == ("red", "blue")


def test_too_many_combinations_need_n():
    template = "{a|b|c|d|e|f|g|h|i|j}" * 5
    assert count_expansions(template) == 10**5 > MAX_COMBINATIONS
    with pytest.raises(ValueError, match="pass n="):
        expand(template)
    assert len(expand(template, n=3)) == 3
    assert len(expand(template, mode="random", n=3, seed=0)) == 3


@pytest.mark.parametrize(
    "template, match",
    [
        ("{a|b", "never closed"),
        ("a}", "unbalanced"),
        ("__nope__", "no wildcard file nope.txt"),
        ("{3$$a|b}", "only 2 options"),
    ],
)
def test_bad_templates_are_loud(template, match):
    with pytest.raises(ValueError, match=match):
        expand(template)


def test_bad_arguments_are_loud(tmp_path):
    with pytest.raises(ValueError, match="`mode`"):
        expand("a", mode="all")
    with pytest.raises(ValueError, match="`n`"):
        expand("a", n=0)
    with pytest.raises(ValueError, match="`seed`"):
        expand("a", mode="random", seed="x")
    with pytest.raises(ValueError, match="`template`"):
        expand(["a"])
    with pytest.raises(ValueError, match="`wildcards_dir`"):
        expand("a", wildcards_dir=tmp_path / "missing")
