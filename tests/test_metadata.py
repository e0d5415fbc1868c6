"""PNG metadata: A1111 infotext and sdlab's JSON record, read back and regenerated."""

import json

import pytest
from helpers import max_pixel_diff
from PIL import Image, PngImagePlugin

import sdlab
from sdlab.metadata import infotext, params_from_infotext, parse_infotext

A1111_TEXT = (
    "masterpiece, a cat wearing a hat, (detailed:1.2)\n"
    "Negative prompt: lowres, blurry\n"
    'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, '
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.10.1'
)


def test_parse_a1111_infotext():
    p = params_from_infotext(A1111_TEXT)
    assert p["prompt"] == "masterpiece, a cat wearing a hat, (detailed:1.2)"
    assert p["negative_prompt"] == "lowres, blurry"
    assert p["num_inference_steps"] == 28
    assert p["scheduler"] == "DPM++ 2M Karras"
    assert p["guidance_scale"] == 6.5
    assert p["seed"] == 1234567
    assert (p["width"], p["height"]) == (512, 768)
    assert p["model"] == "v1-5-pruned-emaonly"
    assert p["extra"]["Lora hashes"] == "a: 1, b: 2"


def test_infotext_round_trips_through_the_a1111_parser():
    record = {"prompt": "a red, round circle", "negative_prompt": "blue: no", "num_inference_steps": 20,
              "scheduler": "Euler a", "guidance_scale": 7.5, "seed": 0, "width": 64, "height": 64, "model": "tiny",
              "versions": {"sdlab": "0.1.0"}}
    text = infotext(record)
    assert text.splitlines()[-1].startswith("Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 0, Size: 64x64")
    p = params_from_infotext(text)
    assert p["prompt"] == record["prompt"] and p["negative_prompt"] == record["negative_prompt"]
    assert p["seed"] == 0 and p["scheduler"] == "Euler a" and p["guidance_scale"] == 7.5
    assert parse_infotext(text)["Version"] == "sdlab 0.1.0"


def test_saved_png_carries_both_chunks(sd1_pipe, tmp_path):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=2)
    (path,) = r.save(tmp_path)
    with Image.open(path) as im:
        assert "parameters" in im.text and "sdlab" in im.text
        assert json.loads(im.text["sdlab"])["seed"] == 0
        assert "Seed: 0" in im.text["parameters"]
    params = sdlab.read_params(path)
    assert params["source"] == "sdlab" and params["seed"] == 0 and params["prompt"] == "a red circle"


def test_save_never_overwrites(sd1_pipe, tmp_path):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=0, num_inference_steps=1)
    first = r.save(tmp_path)
    second = r.save(tmp_path)
    assert first != second and all(p.exists() for p in first + second)


def test_read_params_of_an_a1111_png(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    p = sdlab.read_params(path)
    assert p["source"] == "a1111" and p["seed"] == 1234567 and p["scheduler"] == "DPM++ 2M Karras"


def test_read_params_without_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ValueError, match="no generation parameters"):
        sdlab.read_params(path)


@pytest.mark.parametrize("fixture", ["sd1_pipe", "sdxl_pipe"])
def test_regenerate_is_pixel_identical(request, fixture, tmp_path):
    pipe = request.getfixturevalue(fixture)
    r = sdlab.generate(pipe, "a small yellow star", seed=42, num_inference_steps=3, guidance_scale=4.0,
                       negative_prompt="red", scheduler="DPM++ 2M Karras")
    (path,) = r.save(tmp_path)
    again = sdlab.regenerate(path, pipe)
    assert isinstance(again, sdlab.GenerationResult)
    assert max_pixel_diff(again.image, r.image) == 0
    assert again.records[0]["scheduler"] == "DPM++ 2M Karras"


def test_regenerate_from_an_a1111_png(sd1_pipe, tmp_path):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=9, num_inference_steps=2, guidance_scale=3.0, scheduler="Euler")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(r.records[0]))  # A1111 text only, no sdlab chunk
    path = tmp_path / "only-a1111.png"
    r.image.save(path, pnginfo=info)
    again = sdlab.regenerate(path, sd1_pipe)
    assert max_pixel_diff(again.image, r.image) == 0
