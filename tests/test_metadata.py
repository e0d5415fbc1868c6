"""PNG metadata: A1111 infotext and sdlab's JSON record, read back and regenerated."""

import json
import re
import struct

import pytest
from helpers import max_pixel_diff
from PIL import Image, PngImagePlugin

import sdlab
from sdlab.cli import main
from sdlab.metadata import infotext, params_from_infotext, parse_infotext

A1111_TEXT = (
    "masterpiece, a cat wearing a hat, (detailed:1.2)\n"
    "Negative prompt: lowres, blurry\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 512x768, "
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
    record = {
        "prompt": "a red, round circle",
        "negative_prompt": "blue: no",
        "num_inference_steps": 20,
        "scheduler": "Euler a",
        "guidance_scale": 7.5,
        "seed": 0,
        "width": 64,
        "height": 64,
        "model": "tiny",
        "versions": {"sdlab": "0.1.0"},
    }
    text = infotext(record)
    assert text.splitlines()[-1].startswith(
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 0, Size: 64x64"
    )
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
    r = sdlab.generate(
        pipe,
        "a small yellow star",
        seed=42,
        num_inference_steps=3,
        guidance_scale=4.0,
        negative_prompt="red",
        scheduler="DPM++ 2M Karras",
    )
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


# ------------------------------------------------------------------ A1111 v1.10, ported for the tests
# modules/infotext_utils.py (parse_generation_parameters: its regex logic), modules/sd_samplers.py
# (get_sampler_and_scheduler), modules/sd_schedulers.py and modules/sd_samplers_kdiffusion.py (the
# schedule types and each sampler's default), modules/processing.py (create_infotext's joining).

A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
A1111_SCHEDULERS = [  # (name, label, aliases)
    ("automatic", "Automatic", []),
    ("uniform", "Uniform", []),
    ("karras", "Karras", []),
    ("exponential", "Exponential", []),
    ("polyexponential", "Polyexponential", []),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"]),
    ("kl_optimal", "KL Optimal", []),
    ("align_your_steps", "Align Your Steps", []),
    ("simple", "Simple", []),
    ("normal", "Normal", []),
    ("ddim", "DDIM", []),
    ("beta", "Beta", []),
]
A1111_SAMPLER_DEFAULTS = {  # sampler -> options['scheduler']
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential",
    "Euler a": None,
    "Euler": None,
    "LMS": None,
    "Heun": None,
    "DPM2": "karras",
    "DPM2 a": "karras",
    "DPM fast": None,
    "DPM adaptive": None,
    "Restart": "karras",
    "DDIM": None,
    "DDIM CFG++": None,
    "PLMS": None,
    "UniPC": None,
    "LCM": None,
}


def a1111_quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def a1111_parse_generation_parameters(x: str) -> dict:
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(A1111_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative_prompt
    for k, v in A1111_RE_PARAM.findall(lastline):
        if v[0] == '"' and v[-1] == '"':
            v = a1111_unquote(v)
        m = A1111_RE_IMAGESIZE.match(v)
        if m is not None:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    if "Clip skip" not in res:
        res["Clip skip"] = "1"
    if "Schedule type" not in res:
        res["Schedule type"] = "Automatic"
    return res


def a1111_get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    by_key = {
        **{n: (n, label) for n, label, _ in A1111_SCHEDULERS},
        **{label: (n, label) for n, label, _ in A1111_SCHEDULERS},
    }
    found = by_key.get(scheduler_name, A1111_SCHEDULERS[0][:2])
    name = sampler_name or "DPM++ 2M"
    for sched_name, label, aliases in A1111_SCHEDULERS:
        for option in [label, sched_name, *aliases]:
            if name.endswith(" " + option):
                found = (sched_name, label)
                name = name[0 : -(len(option) + 1)]
                break
    sampler = name if name in A1111_SAMPLER_DEFAULTS else "DPM++ 2M"
    if convert_automatic and A1111_SAMPLER_DEFAULTS[sampler] == found[0]:
        found = A1111_SCHEDULERS[0][:2]
    return sampler, found[1]


def a1111_sigmas(res: dict) -> tuple[str, str]:
    """(sampler, the schedule whose sigmas A1111 v1.10 samples with) for pasted infotext: "Automatic"
    is the sampler's default, and no schedule function is the model's own sigmas ("uniform")."""
    sampler, label = a1111_get_sampler_and_scheduler(res.get("Sampler"), res.get("Schedule type"))
    name = {lab: n for n, lab, _ in A1111_SCHEDULERS}[label]
    if name == "automatic":
        name = A1111_SAMPLER_DEFAULTS[sampler] or "uniform"
    return sampler, name


def a1111_create_infotext(prompt, negative_prompt, generation_params: dict) -> str:
    text = ", ".join([k if k == v else f"{k}: {a1111_quote(v)}" for k, v in generation_params.items() if v is not None])
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{text}".strip()


@pytest.mark.parametrize(
    "scheduler, sampler, sigmas",
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "karras"),
        ("DPM++ 2M", "DPM++ 2M", "uniform"),  # a bare name is the model's own sigmas, not A1111's Automatic (Karras)
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "exponential"),
        ("DPM++ 2M SDE", "DPM++ 2M SDE", "uniform"),
        ("Euler SGM Uniform", "Euler", "sgm_uniform"),
        ("Euler a", "Euler a", "uniform"),
        ("DPM2 a Karras", "DPM2 a", "karras"),
    ],
)
def test_sdlab_text_read_by_the_a1111_parser_gives_the_same_settings(scheduler, sampler, sigmas):
    record = {
        "prompt": "a red, round circle: (big:1.2)",
        "negative_prompt": "blue\nsquare, small",
        "num_inference_steps": 20,
        "scheduler": scheduler,
        "guidance_scale": 3.14159265,
        "seed": 4294967295,
        "width": 64,
        "height": 96,
        "clip_skip": 1,
        "model": "tiny",
        "model_hash": "6ce0161689",
        "versions": {"sdlab": "0.1.0"},
    }
    text = infotext(record)
    res = a1111_parse_generation_parameters(text)
    assert res["Prompt"] == record["prompt"] and res["Negative prompt"] == record["negative_prompt"]
    assert a1111_sigmas(res) == (sampler, sigmas)
    assert int(res["Steps"]) == 20 and int(res["Seed"]) == 4294967295
    assert float(res["CFG scale"]) == 3.14159265
    assert (res["Size-1"], res["Size-2"]) == ("64", "96")
    assert res["Clip skip"] == "2"  # sdlab's clip_skip=1 (one layer skipped) is A1111's "Clip skip: 2"
    assert (res["Model"], res["Model hash"]) == ("tiny", "6ce0161689")
    back = params_from_infotext(text)
    assert (back["scheduler"], back["clip_skip"], back["guidance_scale"]) == (scheduler, 1, 3.14159265)


def test_infotext_uses_v1_10_split_and_eta_ddim():
    base = {"prompt": "x", "num_inference_steps": 20, "guidance_scale": 7.0, "seed": 1, "width": 64, "height": 64}
    text = infotext({**base, "scheduler": "DPM++ 2M Karras"})
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0" in text
    ddim = infotext({**base, "scheduler": "DDIM", "scheduler_class": "DDIMScheduler", "pipeline_kwargs": {"eta": 0.5}})
    res = a1111_parse_generation_parameters(ddim)
    assert res["Sampler"] == "DDIM" and res["Eta DDIM"] == "0.5" and "Eta" not in res
    assert params_from_infotext(ddim)["pipeline_kwargs"] == {"eta": 0.5}


@pytest.mark.parametrize(
    "value, written",
    [(3.14159265, "3.14159265"), (12345678.5, "12345678.5"), (0.1, "0.1"), (7.0, "7.0"), (1 / 3, "0.3333333333333333")],
)
def test_floats_are_written_without_losing_precision(value, written):
    record = {
        "prompt": "x",
        "guidance_scale": value,
        "seed": 1,
        "width": 64,
        "height": 64,
        "pipeline_kwargs": {"guidance_rescale": value},
    }
    res = a1111_parse_generation_parameters(infotext(record))
    assert res["CFG scale"] == written and res["Guidance rescale"] == written
    assert float(res["CFG scale"]) == value


A1111_V1_10_TEXT = a1111_create_infotext(
    "masterpiece, 1girl, (red hat:1.2), <lora:add_detail:0.8>",
    "lowres, bad anatomy, (worst quality:1.4)",
    {
        "Steps": 30,
        "Sampler": "DPM++ 2M SDE",
        "Schedule type": "Exponential",
        "CFG scale": 6.5,
        "Seed": 1234567890,
        "Size": "832x1216",
        "Model hash": "31e35c80fc",
        "Model": "sd_xl_base_1.0",
        "VAE hash": "235745af8d",
        "VAE": "sdxl_vae.safetensors",
        "Variation seed": 987654321,
        "Variation seed strength": 0.15,
        "Denoising strength": 0.45,
        "Clip skip": 2,
        "Hires upscale": 1.5,
        "Hires steps": 15,
        "Hires upscaler": "Latent",
        "Lora hashes": "add_detail: 7c6bad76eb54, other_lora: 0123456789ab",
        "TI hashes": "easynegative: c74b4e810b03",
        "Emphasis": "Original",
        "Version": "v1.10.1",
    },
)


def test_a1111_v1_10_text_is_read_into_the_right_fields():
    assert 'Lora hashes: "add_detail: 7c6bad76eb54, other_lora: 0123456789ab"' in A1111_V1_10_TEXT
    p = params_from_infotext(A1111_V1_10_TEXT)
    assert p["prompt"] == "masterpiece, 1girl, (red hat:1.2), <lora:add_detail:0.8>"
    assert p["negative_prompt"] == "lowres, bad anatomy, (worst quality:1.4)"
    assert (p["num_inference_steps"], p["scheduler"], p["guidance_scale"], p["seed"]) == (
        30,
        "DPM++ 2M SDE Exponential",
        6.5,
        1234567890,
    )
    assert (p["width"], p["height"], p["clip_skip"]) == (832, 1216, 1)
    assert (p["model"], p["model_hash"]) == ("sd_xl_base_1.0", "31e35c80fc")
    extra = p["extra"]
    assert extra["Lora hashes"] == "add_detail: 7c6bad76eb54, other_lora: 0123456789ab"
    assert (p["hires_scale"], p["hires_steps"], p["hires_upscaler"], p["hires_strength"]) == (1.5, 15, "latent", 0.45)
    assert "Hires upscale" not in extra and "Denoising strength" not in extra  # applied by regenerate now
    assert (p["variation_seed"], p["variation_strength"]) == (987654321, 0.15)
    assert "Variation seed" not in extra and "Variation seed strength" not in extra
    assert (extra["Version"], extra["TI hashes"], extra["Emphasis"]) == (
        "v1.10.1",
        "easynegative: c74b4e810b03",
        "Original",
    )
    assert not {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Clip skip"} & set(extra)


@pytest.mark.parametrize(
    "sampler, schedule, scheduler",
    [
        ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # v1.10 API runs: Automatic is the sampler's default
        ("DPM++ 2M SDE", "Automatic", "DPM++ 2M SDE Exponential"),
        ("Euler a", "Automatic", "Euler a"),
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),  # before v1.9: no Schedule type, the schedule in the name
        ("DPM++ 2M", None, "DPM++ 2M"),
        ("DPM++ 2M", "karras", "DPM++ 2M Karras"),  # v1.6-v1.8: the global schedule setting by its name
    ],
)
def test_every_older_sampler_form_is_read(sampler, schedule, scheduler):
    params = {"Steps": 20, "Sampler": sampler, "Schedule type": schedule, "CFG scale": 7, "Seed": 1, "Size": "512x512"}
    assert params_from_infotext(a1111_create_infotext("a cat", "", params))["scheduler"] == scheduler


def a1111_exif(text: str) -> bytes:
    """EXIF as A1111 writes it into JPEG and WebP (modules/images.py: piexif.dump of
    {"Exif": {UserComment: piexif.helper.UserComment.dump(geninfo, encoding="unicode")}}): a
    big-endian TIFF block whose IFD0 points to an Exif IFD holding UserComment = b"UNICODE\\0" + UTF-16-BE."""
    comment = b"UNICODE\0" + text.encode("utf_16_be")
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, 26) + struct.pack(">I", 0)
    exif_ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), 44) + struct.pack(">I", 0)
    return b"Exif\0\0" + b"MM\0\x2a" + struct.pack(">I", 8) + ifd0 + exif_ifd + comment


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_params_of_a1111_jpeg_and_webp(tmp_path, fmt, capsys):
    text = A1111_V1_10_TEXT.replace("1girl", "1girl, 日本語")
    path = tmp_path / f"a1111.{fmt.lower()}"
    Image.new("RGB", (16, 16), "red").save(path, format=fmt, exif=a1111_exif(text))
    p = sdlab.read_params(path)
    assert p["source"] == "a1111" and p["prompt"].startswith("masterpiece, 1girl, 日本語")
    assert (p["seed"], p["scheduler"], p["extra"]["Version"]) == (1234567890, "DPM++ 2M SDE Exponential", "v1.10.1")
    assert main(["params", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 1234567890


def test_jpeg_without_parameters_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(path, format="JPEG")
    with pytest.raises(ValueError, match="no generation parameters"):
        sdlab.read_params(path)


def test_regenerate_applies_eta_ddim_from_a1111_text(sd1_pipe, tmp_path):
    r = sdlab.generate(sd1_pipe, "a red circle", seed=5, num_inference_steps=3, scheduler="DDIM", eta=1.0)
    assert "Eta DDIM: 1.0" in infotext(r.records[0])
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(r.records[0]))
    path = tmp_path / "ddim.png"
    r.image.save(path, pnginfo=info)
    assert max_pixel_diff(sdlab.regenerate(path, sd1_pipe).image, r.image) == 0


def a1111_axis_values(text, type_):
    """A1111's X/Y/Z plot reading a plain comma list (csv_string_to_list_strip, then the axis type)."""
    import csv
    import io

    return [type_(v.strip()) for row in csv.reader(io.StringIO(text)) for v in row]


def test_grid_text_carries_a1111_xyz_plot_keys(sd1_pipe, tmp_path):
    axes = {
        "seed": [1, 2],
        "guidance_scale": [2, 4.5],
        "sr": sdlab.prompt_sr(["circle", "square, big", 'say "hi"']),
        "size": ["64x64", "64x96"],  # no A1111 axis type: sdlab's own key
    }
    r = sdlab.sweep(sd1_pipe, "a red circle", axes=axes, out_dir=tmp_path, num_inference_steps=1, verbose=False)
    text = sdlab.metadata.read_text_chunks(r.save_grid())["parameters"]
    res = a1111_parse_generation_parameters(text)
    assert res["Prompt"] == "a red circle" and res["Seed"] == "1" and float(res["CFG scale"]) == 2.0  # the first cell
    assert res["Script"] == "X/Y/Z plot"
    assert (res["X Type"], a1111_axis_values(res["X Values"], int), res["Fixed X Values"]) == ("Seed", [1, 2], "1, 2")
    assert (res["Y Type"], a1111_axis_values(res["Y Values"], float)) == ("CFG Scale", [2.0, 4.5])
    assert res["Z Type"] == "Prompt S/R"
    assert a1111_axis_values(res["Z Values"], str) == ["circle", "square, big", 'say "hi"']
    assert res["sdlab axis 4 size"] == "64x64, 64x96"
    keys = list(res)
    assert keys.index("Script") < keys.index("X Type") < keys.index("X Values") < keys.index("Fixed X Values")
    assert keys.index("Fixed X Values") < keys.index("Y Type") < keys.index("Z Type") < keys.index("Z Values")


@pytest.mark.parametrize(
    "values, axis_type, written",
    [
        (["DPM++ 2M Karras", "Euler Karras"], "Sampler", "DPM++ 2M, Euler"),
        (["DPM++ 2M Karras", "DPM++ 2M SDE Karras"], "Sampler", "DPM++ 2M, DPM++ 2M SDE"),
        (["DPM++ 2M Karras", "DPM++ 2M Exponential"], "Schedule type", "Karras, Exponential"),
        (["Euler a", "DPM++ 2M"], None, None),  # A1111 would read DPM++ 2M under Euler a's "Automatic": Karras
    ],
)
def test_scheduler_axes_become_a1111_sampler_or_schedule_type_axes(values, axis_type, written):
    from sdlab.axes import make_axis
    from sdlab.xyz_plot import xyz_params

    params = dict(xyz_params([make_axis("scheduler", values)]))
    if axis_type is None:
        assert "X Type" not in params and params["sdlab axis 1 scheduler"] == ", ".join(values)
    else:
        assert (params["X Type"], params["X Values"]) == (axis_type, written)


def test_xyz_keys_go_before_version_as_in_create_infotext():
    from sdlab.metadata import add_infotext_params

    record = {"prompt": "x", "num_inference_steps": 2, "seed": 1, "width": 64, "height": 64}
    text = add_infotext_params(infotext({**record, "versions": {"sdlab": "0.1.0"}}), [("Script", "X/Y/Z plot")])
    assert text.endswith(", Script: X/Y/Z plot, Version: sdlab 0.1.0")
    assert add_infotext_params(infotext(record), [("X Values", "1, 2")]).endswith(', X Values: "1, 2"')


# ------------------------------------------------------------------ seed variations and regenerating A1111's images


def test_variation_is_written_and_read_with_a1111s_keys():
    record = {"prompt": "x", "num_inference_steps": 20, "guidance_scale": 7.0, "seed": 1, "width": 64, "height": 64}
    record.update(model="tiny", variation_seed=4294967295, variation_strength=0.15, clip_skip=1)
    text = infotext(record)
    assert (
        "Model: tiny, Variation seed: 4294967295, Variation seed strength: 0.15, Clip skip: 2" in text
    )  # A1111's order
    res = a1111_parse_generation_parameters(text)
    assert (res["Variation seed"], res["Variation seed strength"]) == ("4294967295", "0.15")
    back = params_from_infotext(text)
    assert (back["variation_seed"], back["variation_strength"]) == (4294967295, 0.15)
    assert "Variation seed" not in infotext({**record, "variation_seed": None, "variation_strength": None})


def test_regenerate_keeps_a_variation_from_sdlabs_record_and_from_its_text(sd1_pipe, tmp_path):
    r = sdlab.generate(
        sd1_pipe, "a red circle", seed=9, num_inference_steps=2, variation_seed=3, variation_strength=0.4
    )
    (path,) = r.save(tmp_path)
    assert max_pixel_diff(sdlab.regenerate(path, sd1_pipe).image, r.image) == 0
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext(r.records[0]))  # A1111 text only
    r.image.save(tmp_path / "text.png", pnginfo=info)
    again = sdlab.regenerate(tmp_path / "text.png", sd1_pipe)
    assert max_pixel_diff(again.image, r.image) == 0
    assert (again.records[0]["variation_seed"], again.records[0]["variation_strength"]) == (3, 0.4)


def a1111_png(path, image, prompt, negative, params):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_create_infotext(prompt, negative, params))
    image.save(path, pnginfo=info)
    return path


A1111_REGENERATE_PARAMS = {  # create_infotext's order; Schedule type and Hires/Lora keys come in extra params
    "Steps": 3,
    "Sampler": "DPM++ 2M",
    "CFG scale": 5.5,
    "Seed": 77,
    "Size": "64x64",
    "Model hash": "31e35c80fc",
    "Model": "sd_xl_base_1.0",
    "Variation seed": 12,
    "Variation seed strength": 0.3,
    "Clip skip": 2,
    "Schedule type": "Karras",
    "Hires upscale": 1.5,
    "Hires steps": 2,
    "Hires upscaler": "Latent",
    "Lora hashes": "add_detail: 7c6bad76eb54",
    "Version": "v1.10.1",
}


def test_regenerate_an_a1111_png_applies_what_it_can_and_lists_the_rest_once(sd1_pipe, tmp_path):
    from sdlab.generation import RegenerateWarning

    blank = Image.new("RGB", (64, 64))
    path = a1111_png(
        tmp_path / "a.png", blank, "a (red:1.3) circle <lora:add_detail:0.8>", "blue", A1111_REGENERATE_PARAMS
    )
    with pytest.raises(ValueError, match=r"LoRA\(s\) add_detail \(Lora hash 7c6bad76eb54\)"):  # found by hash or named
        sdlab.regenerate(path, sd1_pipe)
    params = {k: v for k, v in A1111_REGENERATE_PARAMS.items() if k != "Lora hashes"}
    path = a1111_png(tmp_path / "b.png", blank, "a (red:1.3) circle ", "blue", params)
    with pytest.warns(RegenerateWarning) as caught:
        again = sdlab.regenerate(path, sd1_pipe)
    (warning,) = [w.message for w in caught if isinstance(w.message, RegenerateWarning)]  # once
    assert warning.unapplied == (
        "RNG: GPU (A1111's default, not CPU noise)",
        "Model hash: 31e35c80fc (not checked: the loaded model has no single-file hash)",
    )
    expected = sdlab.generate(
        sd1_pipe,
        "a (red:1.3) circle ",  # A1111's syntax in a plain string: encoded as A1111 does
        negative_prompt="blue",
        num_inference_steps=3,
        scheduler="DPM++ 2M Karras",
        guidance_scale=5.5,
        seed=77,
        width=64,
        height=64,
        clip_skip=1,
        variation_seed=12,
        variation_strength=0.3,
        hires_scale=1.5,  # A1111's hires fix is applied now (Denoising strength absent: A1111's default 0.7)
        hires_steps=2,
        hires_upscaler="latent",
    )
    assert again.image.size == (96, 96)
    assert max_pixel_diff(again.image, expected.image) == 0
    record = again.records[0]
    assert (record["prompt_encoding"], record["variation_seed"], record["clip_skip"]) == ("a1111", 12, 1)


def test_regenerate_checks_the_model_hash_of_a_single_file_checkpoint(tiny_dirs, tmp_path):
    import warnings

    from sdlab import testing
    from sdlab.generation import RegenerateWarning
    from sdlab.loading import pipeline_info

    checkpoint = testing.save_single_file("sd1", tmp_path / "tiny.safetensors")
    pipe = sdlab.load_pipeline(checkpoint, config=str(tiny_dirs["sd1"]), progress_bar=False)
    loaded = pipeline_info(pipe).model_hash
    assert loaded
    params = {"Steps": 2, "Sampler": "Euler", "CFG scale": 5.0, "Seed": 3, "Size": "64x64", "RNG": "CPU"}
    blank = Image.new("RGB", (64, 64))
    other = a1111_png(tmp_path / "other.png", blank, "a cat", None, {**params, "Model hash": "0123456789"})
    with pytest.warns(RegenerateWarning, match=f"0123456789.*{loaded}") as caught:
        sdlab.regenerate(other, pipe)
    (warning,) = [w.message for w in caught if isinstance(w.message, RegenerateWarning)]
    assert warning.unapplied == ()
    same = a1111_png(tmp_path / "same.png", blank, "a cat", None, {**params, "Model hash": loaded, "Model": "tiny"})
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", RegenerateWarning
        )  # the right model, CPU noise, nothing unapplied: no warning at all
        sdlab.regenerate(same, pipe)
