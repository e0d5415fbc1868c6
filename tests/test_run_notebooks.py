"""tools/run_notebooks.py (`make notebooks`) on small notebooks run by a real kernel, and the checks
of tests/test_notebooks.py on notebooks that break them. No model is loaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from test_notebooks import (
    ALL_CHECKS,
    WIDGET_STATE,
    WIDGET_VIEW,
    ci_switch_problems,
    marker_problems,
    path_problems,
    progress_bar_problems,
    text_of,
    warning_problems,
    widget_problems,
)

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "tools" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)

CELLS = [
    'import os\n\nSMOKE = "CI" in os.environ  # under CI: smaller',
    "# NBVAL_CHECK_OUTPUT\nprint('smoke:', SMOKE)",
    'from tqdm.auto import tqdm\n\nfor _ in tqdm(range(3), desc="work"):\n    pass',
    'import warnings\n\nprint("here:", os.getcwd())\nwarnings.warn("shown on purpose")',
    'import ipywidgets\n\nipywidgets.VBox([ipywidgets.Button(description="go"), ipywidgets.IntSlider(3)])',
]


def small_notebook(path: Path, cells=CELLS) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


def as_dict(nb) -> dict:
    return json.loads(json.dumps(nb))


def test_a_plain_execution_breaks_the_checks_and_cleaning_fixes_it(tmp_path):
    """What nbclient saves as such: bars at 0%, the kernel's /tmp cell files and the working
    directory; clean_notebook (run by run_notebook) leaves none of it."""
    from nbclient import NotebookClient

    nb = nbformat.read(small_notebook(tmp_path / "plain.ipynb"), as_version=4)
    NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}, store_widget_state=True
    ).execute()
    raw = as_dict(nb)
    assert progress_bar_problems(raw) and path_problems(raw)
    assert not widget_problems(raw)  # nbclient saved the state; the views render

    run_notebooks.clean_notebook(nb, name="plain", workdir=tmp_path)
    cleaned = as_dict(nb)
    assert progress_bar_problems(cleaned) == [] and path_problems(cleaned) == []
    assert widget_problems(cleaned) == [] and warning_problems(cleaned) == []
    bar = next(o for o in nb.cells[2].outputs if WIDGET_VIEW in o.get("data", {}))
    assert bar["data"]["text/plain"].startswith("work: 100%|██████████| 3/3")
    stderr = "".join(o.get("text", "") for o in nb.cells[3].outputs if o.get("name") == "stderr")
    assert stderr.startswith("<cell>:4: UserWarning: shown on purpose")


def test_run_notebook_writes_a_clean_full_scale_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    path = small_notebook(tmp_path / "small.ipynb")
    assert run_notebooks.main([str(path)]) == 0
    nb = json.loads(path.read_text())
    for check in ALL_CHECKS:
        assert check(nb) == [], check.__name__
    assert text_of(nb["cells"][1]["outputs"][0]["text"]) == "smoke: False\n"  # CI removed: full scale
    assert text_of(nb["cells"][1]["source"]) == "print('smoke:', SMOKE)\n# NBVAL_CHECK_OUTPUT"  # marker last
    assert "here: \n" in text_of(nb["cells"][3]["outputs"][0]["text"])  # the fresh working directory, as ""
    state = nb["metadata"]["widgets"][WIDGET_STATE]["state"]
    numbered = {hashlib.md5(f"small:{i}".encode()).hexdigest() for i in range(len(state))}
    assert set(state) == numbered  # widget ids numbered per notebook, not random
    saved = path.read_bytes()
    assert run_notebooks.main(["--no-execute", str(path)]) == 0
    assert path.read_bytes() == saved  # cleaning again changes nothing


def test_a_failing_notebook_is_left_unchanged(tmp_path):
    path = small_notebook(tmp_path / "broken.ipynb", cells=[CELLS[0], "raise ValueError('no')"])
    before = path.read_bytes()
    assert run_notebooks.main([str(path)]) == 1
    assert path.read_bytes() == before


def nb_with(*, source: str = "x = 1", stderr: str = "", stdout: str = "") -> dict:
    outputs = [
        {"output_type": "stream", "name": n, "text": t} for n, t in (("stderr", stderr), ("stdout", stdout)) if t
    ]
    cells = [
        {"cell_type": "code", "source": 'SMOKE = "CI" in os.environ  # smaller', "outputs": [], "metadata": {}},
        {"cell_type": "code", "source": source, "outputs": outputs, "metadata": {}},
    ]
    return {"cells": cells, "metadata": {}}


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("site-packages/diffusers/x.py:12: FutureWarning: `torch_dtype` is deprecated\n", True),
        ("/work/main/sdlab/loading.py:3: UserWarning: from sdlab\n", True),
        ("<cell>:6: TokenLimitWarning: prompt 'a' ...\n  cut = generate(...)\n", False),
        ("no warning here\n", False),
    ],
)
def test_warnings_are_told_apart_by_where_they_come_from(text, flagged):
    assert bool(warning_problems(nb_with(stderr=text))) is flagged


def test_marker_checks():
    assert marker_problems(nb_with(source="print(1)\n# NBVAL_CHECK_OUTPUT")) == []
    assert marker_problems(nb_with(source="# NBVAL_CHECK_OUTPUT\nprint(1)"))  # not last
    assert marker_problems(nb_with(source="print(1)  # NBVAL_CHECK_OUTPUT"))  # nbval ignores it
    assert run_notebooks.markers_last("# NBVAL_IGNORE_OUTPUT\nx\ny") == "x\ny\n# NBVAL_IGNORE_OUTPUT"


def test_ci_switch_checks():
    assert ci_switch_problems(nb_with()) == []
    assert ci_switch_problems(nb_with(source="steps = 4 if 'CI' in os.environ else 20"))  # a second place
    nb = nb_with()
    nb["cells"][0]["source"] = 'SMOKE = "CI" in os.environ'
    assert ci_switch_problems(nb) == ["say in the CI switch cell (a comment) what it changes"]


def test_bar_and_widget_repr_checks():
    assert progress_bar_problems(nb_with(stderr="sweep:   0%|          | 0/16 [00:00<?, ?img/s]"))
    assert not progress_bar_problems(nb_with(stderr="sweep: 100%|██████████| 16/16 [00:07<00:00]"))
    assert not progress_bar_problems(nb_with(stdout="log: Using seed: 0 |   0%|    | 0/4"))  # quoted, not a bar
    assert widget_problems(nb_with(stdout="PromptLab(children=(HTML(value='<style>..."))
