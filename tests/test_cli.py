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
    assert main(["generate", "a red circle", "--model", "tiny", "--seed", "0", "3", "--steps", "2", "--out", str(tmp_path)]) == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    assert main(["params", str(pngs[0])]) == 0
    assert '"seed": 0' in capsys.readouterr().out


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert main(["generate", "x", "--model", "tiny", "--width", "63", "--out", str(tmp_path)]) == 2
    assert "width" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "sdlab.cli", "presets"], capture_output=True, text=True, check=True).stdout
    assert "sd15" in out and "flux-schnell" in out


def test_demo_writes_a_labelled_grid(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "tiny", "--out", str(out)]) == 0
    assert (out / "grid.png").exists() and len(list((out / "cells").glob("*.png"))) == 12
    assert "grid:" in capsys.readouterr().out
