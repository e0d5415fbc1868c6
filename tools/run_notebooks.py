"""Execute sdlab's notebooks at full scale and save them, with widget state, in place.

    python tools/run_notebooks.py                      # every notebooks/*.ipynb
    python tools/run_notebooks.py notebooks/04_controlnet.ipynb

(`make notebooks`, `make notebooks NB=notebooks/04_controlnet.ipynb`.) For each notebook:

1. CI is removed from the environment (the notebooks then run at full scale, not SMOKE) and the
   kernel gets one thread for OpenMP and MKL unless OMP_NUM_THREADS / MKL_NUM_THREADS say otherwise.
2. It runs top to bottom with nbclient in a fresh, empty working directory (so sweeps start uncached
   and saved files are numbered from zero), storing the widget state (`store_widget_state`):
   widgets then render when the notebook is opened before running it.
3. nbval markers on a line of their own (`# NBVAL_CHECK_OUTPUT`) are moved to the end of their cell,
   out of the reader's way (nbval reads them anywhere in the cell, but only on a line of their own).
4. The saved outputs are made fit to commit: a tqdm bar's text fallback shows where the bar ended,
   not the 0% it was created at; paths of this machine (the working directory, the repository, the
   venv's site-packages, the home folder, the kernel's /tmp/ipykernel_* cell files) are written
   as relative or neutral names; widget model ids are numbered per notebook, so re-running changes
   only what really changed.
5. The notebook is written back only when every cell ran; a failing notebook is left as it was.

Each notebook's time is printed. `tests/test_notebooks.py` checks the result.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import site
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
NBVAL_CHECK = "NBVAL_CHECK_OUTPUT"
NBVAL_MARKERS = ("NBVAL_CHECK_OUTPUT", "NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP")
CELL_FILE = re.compile(r"/tmp/ipykernel_\d+/\d+\.py")  # where IPython says a warning in a cell came from
MODEL_REF = re.compile(r"IPY_MODEL_([0-9a-f]{32})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default 3600)")
    parser.add_argument(
        "--no-execute", action="store_true", help="only clean the saved outputs (step 4), without running the notebooks"
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((REPO / "notebooks").glob("*.ipynb"))

    os.environ.pop("CI", None)  # full scale: the notebooks shrink under CI (SMOKE)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("PYTHONHASHSEED", "0")

    failed, started = [], time.perf_counter()
    for path in paths:
        began = time.perf_counter()
        try:
            run_notebook(path, timeout=args.timeout, execute=not args.no_execute)
        except Exception as error:  # report it and go on with the next notebook
            failed.append(path)
            print(f"FAILED {path} after {time.perf_counter() - began:.0f} s: {type(error).__name__}", flush=True)
            print(_tail(str(error)), file=sys.stderr, flush=True)
        else:
            print(f"{path}: {time.perf_counter() - began:.0f} s", flush=True)
    done = "cleaned" if args.no_execute else "executed"
    print(f"{len(paths) - len(failed)} of {len(paths)} notebooks {done} in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


def run_notebook(path: Path, *, timeout: int = 3600, execute: bool = True) -> None:
    """Execute `path` in a fresh directory and write it back, cleaned, with its widget state
    (`execute=False`: only clean it)."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if execute and cell.cell_type == "code":  # (moved markers shift the line numbers outputs name)
            cell.source = markers_last(cell.source)
    workdir = Path(tempfile.mkdtemp(prefix=f"sdlab-{path.stem}-"))
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
            store_widget_state=True,
            record_timing=False,
        )
        if execute:
            client.execute()
        clean_notebook(nb, name=path.stem, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    nbformat.write(nb, path)


def clean_notebook(nb, *, name: str, workdir: Path | None = None) -> None:
    """Make an executed notebook fit to commit (in place): tqdm fallbacks, paths, widget ids."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        checked = any(line.strip().lstrip("#").strip() == NBVAL_CHECK for line in cell.source.splitlines())
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view and not checked:  # nbval compares checked cells' text with a live run: leave those
                text = tqdm_text(view.get("model_id"), state)
                if text is not None:
                    output["data"]["text/plain"] = text
    replace = path_replacements(workdir)
    _rewrite_strings(nb.cells, replace)
    if state:
        _rewrite_strings(state, replace)
    renumber_widgets(nb, name)
    nb.metadata.get("kernelspec", {})["display_name"] = "Python 3 (ipykernel)"


def markers_last(source: str) -> str:
    """`source` with its nbval marker lines (`# NBVAL_...` alone on a line) moved to its end."""
    lines = source.rstrip().splitlines()
    markers = [line.strip() for line in lines if line.strip().lstrip("#").strip() in NBVAL_MARKERS]
    if not markers or lines[-len(markers) :] == markers:
        return source
    rest = [line for line in lines if line.strip() not in markers]
    return "\n".join([*rest, *markers])


def tqdm_text(model_id: str | None, state: dict) -> str | None:
    """The text of a tqdm notebook bar as it ended (its HBox: prefix HTML, progress, suffix HTML),
    or None when `model_id` is not such a bar."""
    box = state.get(model_id or "", {}).get("state", {})
    children = [str(c).removeprefix("IPY_MODEL_") for c in box.get("children", [])]
    if box.get("_model_name") != "HBoxModel" or len(children) != 3:
        return None
    left, bar, right = (state.get(c, {}).get("state", {}) for c in children)
    if bar.get("_model_name") not in ("FloatProgressModel", "IntProgressModel"):
        return None
    if "%" not in left.get("value", "") and "%" not in right.get("value", ""):
        return None
    low, high, value = (float(bar.get(k) or 0) for k in ("min", "max", "value"))
    filled = round(10 * (value - low) / (high - low)) if high > low else 10
    text = f"{html.unescape(left.get('value', ''))}|{'█' * filled}{' ' * (10 - filled)}|" + html.unescape(
        right.get("value", "")
    )
    return text.replace("\u2007", " ").replace("\xa0", " ")  # tqdm's HTML spaces, as its text repr has them


def path_replacements(workdir: Path | None = None) -> list[tuple[re.Pattern, str]]:
    """(pattern, replacement) for the paths of this machine, most specific first."""
    pairs: list[tuple[str, str]] = []
    if workdir is not None:
        for form in {str(workdir), str(Path(workdir).resolve())}:
            pairs.append((re.escape(form) + "/?", ""))
    for packages in {*site.getsitepackages(), site.getusersitepackages()}:
        pairs.append((re.escape(str(packages)) + "/?", "site-packages/"))
    pairs.append((re.escape(str(REPO)) + "/?", ""))
    pairs.append((re.escape(str(Path.home())) + "(?=[/\\s'\"]|$)", "~"))
    pairs.append((CELL_FILE.pattern, "<cell>"))
    return [(re.compile(p), r) for p, r in pairs]


def renumber_widgets(nb, name: str) -> None:
    """Replace the random widget model ids by ids numbered in a fixed order (stable diffs): the
    views in cell order, each followed by the models it refers to, then the other models by content."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    order: list[str] = []

    def visit(model_id: str) -> None:
        if model_id in state and model_id not in order:
            order.append(model_id)
            for ref in MODEL_REF.findall(json.dumps(state[model_id].get("state", {}), sort_keys=True)):
                visit(ref)

    for model_id in re.findall(r"[0-9a-f]{32}", json.dumps(nb.cells)):
        visit(model_id)
    for model_id in sorted(state, key=lambda m: re.sub(r"[0-9a-f]{32}", "", json.dumps(state[m], sort_keys=True))):
        visit(model_id)
    ids = {old: hashlib.md5(f"{name}:{n}".encode()).hexdigest() for n, old in enumerate(order)}
    if not ids:
        return
    pattern = re.compile("|".join(map(re.escape, ids)))
    _rewrite_strings(nb.cells, [(pattern, lambda m: ids[m.group(0)])])
    rewritten = {}
    for old in order:
        rewritten[ids[old]] = _rewrite_strings(state[old], [(pattern, lambda m: ids[m.group(0)])])
    nb.metadata.widgets[WIDGET_STATE]["state"] = rewritten


def _rewrite_strings(value, replacements) -> object:
    """Apply `replacements` to every string inside `value` (dicts and lists changed in place)."""
    if isinstance(value, str):
        for pattern, replacement in replacements:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _rewrite_strings(value[key], replacements)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _rewrite_strings(item, replacements)
    return value


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
