"""Sweep files (YAML and TOML): read, checked with lines, run, and written back by save_config."""

import textwrap

import pytest
from test_sweep import STEPS, CountingBackend

import sdlab
from sdlab import metrics
from sdlab.sweep_file import read_sweep_file
from sdlab.sweeps import sweep_from_file

YAML = """\
model: tiny
prompt: a red circle on a blue background
axes:
  guidance_scale: 1.5, 5
  colour: {prompt_sr: "red, green"}
  seed: 1-2
parameters:
  num_inference_steps: 2
metrics:
  - sharpness
  - similarity: {reference: {guidance_scale: 5}}
"""

TOML = """\
model = "tiny"
prompt = "a red circle on a blue background"
metrics = ["saturation", {similarity = {reference = {seed = 2}}}]

[axes]
seed = "1-2"
guidance_scale = [1.5, 5]

[parameters]
num_inference_steps = 2
"""


@pytest.fixture
def counting(sd1_pipe):
    return CountingBackend(sd1_pipe)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name,text", [("sweep.yaml", YAML), ("sweep.toml", TOML)])
def test_a_sweep_file_runs_and_save_config_rebuilds_it_from_cache(counting, tmp_path, name, text, sd1_pipe):
    file = read_sweep_file(write(tmp_path, name, text))
    assert file.model == "tiny"
    result = sweep_from_file(file, counting, out_dir=tmp_path / "run", verbose=False)
    assert len(result) == 8 if name.endswith("yaml") else 4
    assert all(c.request.num_inference_steps == 2 for c in result.cells)
    assert all(r["metrics"] for r in result.table)
    for suffix in (".yaml", ".toml"):
        path = result.save_config(tmp_path / f"again{suffix}")
        again = CountingBackend(sd1_pipe)
        rebuilt = sweep_from_file(read_sweep_file(path), again, verbose=False)
        assert again.calls == [] and rebuilt.out_dir == result.out_dir  # every cell (and score) from the cache
        assert [c.key for c in rebuilt.cells] == [c.key for c in result.cells]
        assert [r["metrics"] for r in rebuilt.table] == [r["metrics"] for r in result.table]
        assert rebuilt.spec["axes"] == result.spec["axes"]


@pytest.mark.parametrize(
    "text,line,match",
    [
        ("prompt: x\naxes:\n  seed: 1-2\nmetric: [judge]\n", 4, "`metric`: unknown key"),
        ("prompt: x\nbatch_size: eight\n", 2, "`batch_size`: must be an integer"),
        ("prompt: x\naxes:\n  seed: 1-2\n  colour: {prompt_xx: a}\n", 4, "`axes.colour`: a mapping value is one of"),
        ("prompt: x\nmetrics:\n  - sharp\n", 2, "unknown metric 'sharp'"),
        ("prompt: x\nmetrics:\n  - similarity: {refrence: {seed: 1}}\n", 2, "no option 'refrence'"),
        ("prompt: x\nparameters:\n  seed: [1, 2]\n", 3, "`parameters.seed`: must be one value"),
    ],
)
def test_yaml_errors_name_the_key_and_its_line(tmp_path, text, line, match):
    with pytest.raises(ValueError, match=match) as e:
        read_sweep_file(write(tmp_path, "bad.yaml", text))
    assert f"bad.yaml, line {line}:" in str(e.value)


def test_toml_errors_name_the_key_and_its_line(tmp_path):
    path = write(tmp_path, "bad.toml", 'prompt = "x"\n\n[axes]\nseed = "1-2"\nsed = 3\n')
    with pytest.raises(ValueError, match=r"bad.toml, line 5: `axes.sed`: values are a list"):
        read_sweep_file(path)
    path = write(tmp_path, "bad2.toml", 'prompt = "x"\ntitel = "t"\n')
    with pytest.raises(ValueError, match=r"bad2.toml, line 2: `titel`: unknown key"):
        read_sweep_file(path)


def test_errors_the_sweep_raises_name_the_line_of_their_key(counting, tmp_path):
    path = write(tmp_path, "s.yaml", "prompt: a red circle\naxes:\n  seed: 1-2\n  guidance_scale: 1, zz\n")
    with pytest.raises(ValueError, match=r"s.yaml, line 4: .*zz"):
        sweep_from_file(read_sweep_file(path), counting, out_dir=tmp_path / "run", verbose=False)
    path = write(tmp_path, "s2.yaml", "prompt: a red circle\nbatch_size: 0\n")
    with pytest.raises(ValueError, match=r"s2.yaml, line 2: .*batch_size"):
        sweep_from_file(read_sweep_file(path), counting, out_dir=tmp_path / "run", verbose=False)
    assert counting.calls == []


def test_save_config_refuses_a_python_function_metric(counting, tmp_path):
    def mine(image, record):
        return 1.0

    result = sdlab.sweep(
        counting,
        "a red circle",
        axes={"seed": [1]},
        num_inference_steps=STEPS,
        out_dir=tmp_path,
        verbose=False,
        metrics=[mine, metrics.judge()],
    )
    with pytest.raises(ValueError, match="metric 'mine' is a Python function"):
        result.save_config()


def test_cli_sweep_config(tmp_path, capsys):
    from sdlab.cli import main

    path = write(tmp_path, "s.yaml", YAML.replace('  colour: {prompt_sr: "red, green"}\n', ""))
    out = tmp_path / "run"
    assert main(["sweep", "--config", str(path), "--out", str(out)]) == 0
    assert (out / "grid.png").exists() and len(list((out / "cells").glob("*.png"))) == 4
    rows = [__import__("json").loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all("sharpness" in r["metrics"] and "similarity.ssim" in r["metrics"] for r in rows)
    assert main(["sweep", "a prompt", "--config", str(path)]) == 2
    assert "drop a prompt" in capsys.readouterr().err
    bad = write(tmp_path, "bad.yaml", "prompt: x\naxis:\n  seed: 1\n")
    assert main(["sweep", "--config", str(bad)]) == 2
    assert "bad.yaml, line 2: `axis`: unknown key" in capsys.readouterr().err
