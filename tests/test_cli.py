"""The sdlab command line: generate, params, presets; help that reads well."""

import subprocess
import sys

from sdlab.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "demo", "presets", "schedulers", "params"):
        assert command in out


def test_generate_writes_pngs_with_parameters(tmp_path, capsys):
    assert (
        main(
            ["generate", "a red circle", "--model", "tiny", "--seed", "0", "3", "--steps", "2", "--out", str(tmp_path)]
        )
        == 0
    )
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    assert main(["params", str(pngs[0])]) == 0
    assert '"seed": 0' in capsys.readouterr().out


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert main(["generate", "x", "--model", "tiny", "--width", "63", "--out", str(tmp_path)]) == 2
    assert "width" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sdlab.cli", "presets"], capture_output=True, text=True, check=True
    ).stdout
    assert "sd15" in out and "flux-schnell" in out


def test_demo_writes_a_labelled_grid(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny", "--out", str(out)]) == 0
    assert (out / "grid.png").exists() and len(list((out / "cells").glob("*.png"))) == 12
    assert "grid:" in capsys.readouterr().out


def _not_pngs(tmp_path):
    from PIL import Image

    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    png = tmp_path / "cut.png"
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    png.write_bytes(png.read_bytes()[:60])
    return {"text": text, "jpeg": jpeg, "truncated": png, "missing": tmp_path / "missing.png", "folder": tmp_path}


def test_params_of_a_file_that_is_not_a_png_is_one_line(tmp_path, capsys):
    for kind, path in _not_pngs(tmp_path).items():
        assert main(["params", str(path)]) != 0, kind
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and str(path) in err, (kind, err)
        assert "Traceback" not in err
