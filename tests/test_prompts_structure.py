"""Prompt structure and presets (sdlab.prompts.structure): no model needed."""

import pytest

from sdlab.prompts import (
    build_negative_prompt,
    build_prompt,
    get_preset,
    list_presets,
    load_presets,
    register_preset,
    structure,
)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Each test starts from the bundled presets only."""
    monkeypatch.setattr(structure, "_registry", None)


def test_subject_style_quality_in_order():
    prompt = build_prompt(
        "a professional portrait of a software engineer",
        style="cinematic lighting, shallow depth of field",
        quality=["photorealistic", "8k", "sharp focus"],
    )
    assert prompt == (
        "a professional portrait of a software engineer, cinematic lighting, shallow depth of field, "
        "photorealistic, 8k, sharp focus"
    )


def test_preset_tags_come_first_and_duplicates_are_dropped():
    photo = get_preset("photo")
    prompt = build_prompt("a red circle", preset="photo", style="golden hour", quality="Sharp Focus")
    tags = prompt.split(", ")
    assert tags[0] == "a red circle"
    assert tags[1 : 1 + len(photo.style)] == list(photo.style)
    assert "golden hour" in tags and tags.index("golden hour") < tags.index(photo.quality[0])
    assert [t.lower() for t in tags].count("sharp focus") == 1


def test_bundled_presets_are_listed_and_well_formed():
    presets = list_presets()
    names = [p.name for p in presets]
    assert names == sorted(names)
    assert {"default", "photo", "anime", "cinematic"} <= set(names)
    for p in presets:
        assert p.style or p.quality or p.negative_prompt
        assert p.description
    assert "photo" in str(get_preset("photo"))


def test_negative_prompt_from_preset_and_extra():
    negative = build_negative_prompt("photo", extra="text, blurry")
    tags = negative.split(", ")
    assert tags[: len(get_preset("photo").negative_prompt)] == list(get_preset("photo").negative_prompt)
    assert tags[-1] == "text" and tags.count("blurry") == 1
    assert build_negative_prompt(extra=["ugly"]) == "ugly"


def test_register_preset_and_replace():
    register_preset("mine", style=["ink", "sketch"], negative_prompt="color", description="mine")
    assert build_prompt("a cat", preset="mine") == "a cat, ink, sketch"
    assert build_negative_prompt("mine") == "color"
    with pytest.raises(ValueError, match="replace=True"):
        register_preset("mine", style="other")
    register_preset("mine", style="other", replace=True)
    assert build_prompt("a cat", preset="mine") == "a cat, other"


def test_load_presets_from_a_user_file(tmp_path):
    path = tmp_path / "presets.toml"
    path.write_text(
        '[noir]\ndescription = "film noir"\nstyle = ["black and white", "hard shadows"]\nnegative_prompt = "color"\n',
        encoding="utf-8",
    )
    loaded = load_presets(path)
    assert [p.name for p in loaded] == ["noir"]
    assert build_prompt("a street", preset="noir") == "a street, black and white, hard shadows"
    with pytest.raises(ValueError, match="replace=True"):
        load_presets(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ('[x]\nstlye = ["typo"]\n', "unknown key"),
        ("[x]\n", "needs"),
        ("x = 1\n", "must be a table"),
        ("[x\n", "not valid TOML"),
        ("[x]\nstyle = [1]\n", "only strings"),
    ],
)
def test_bad_preset_files_are_loud(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_presets(path)


def test_bad_arguments_are_loud():
    with pytest.raises(ValueError, match="`subject`"):
        build_prompt("  ")
    with pytest.raises(ValueError, match="unknown prompt preset 'nope'; known presets: "):
        build_prompt("a cat", preset="nope")
    with pytest.raises(ValueError, match="negative-prompt preset"):
        build_prompt("a cat", preset="default")
    with pytest.raises(ValueError, match="`style`"):
        build_prompt("a cat", style=3)
    with pytest.raises(ValueError, match="give a `preset` or `extra`"):
        build_negative_prompt()
    with pytest.raises(ValueError, match="needs `style`"):
        register_preset("empty")
    with pytest.raises(ValueError, match="does not exist"):
        load_presets("/nonexistent/presets.toml")
