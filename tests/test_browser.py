"""sdlab's real notebooks in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

The notebooks of `notebooks/` are copied to a temporary root and opened in JupyterLab; `CI` is set,
so they run at their SMOKE scale, and an IPython startup file gives the kernel one torch thread.
Each notebook, trusted as `jupyter trust` (and `make lab`) would, first shows its committed widget
(saved widget state), then runs up to and including its widget's cell (PromptLab in 02,
SweepExplorer in 03, SchedulerBench in 05); the test then uses the widget as a researcher would: Generate, Cancel,
Kernel > Interrupt, a cell run during a widget's run. Assertions are on the rendered page (no
"Error displaying widget", the widgets there, images added, statuses) and on the cells' outputs
(no error). Every wait is bounded. Screenshots of the widgets go to `test-artifacts/` (and to
`$SDLAB_SCREENSHOT_DIR` when set: `make screenshots` writes `docs/screenshots/`).

Without Chromium or Playwright the tests skip, except on CI (env `CI` set), where they must run
(`make browser` installs Debian's `chromium`; never `playwright install`).
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Bounded waits, generous for a loaded machine (an idle one needs a fraction of them).
SERVER_TIMEOUT = 120
PAGE_TIMEOUT_MS = 120_000
RUN_TIMEOUT_MS = 240_000  # a notebook up to its widget cell, at SMOKE scale
CANCEL_TIMEOUT_MS = 60_000  # Cancel or Interrupt to "cancelled": one denoising step, plus the page's round trips
WIDGETS = {  # notebook -> (the widget's class in the notebook's code, its CSS class on the page)
    "02_prompt_engineering.ipynb": ("PromptLab(", "sdlab-promptlab"),
    "03_sweeps.ipynb": ("SweepExplorer(", "sdlab-sweep-explorer"),
    "05_scheduler_benchmark.ipynb": ("SchedulerBench(", "sdlab-scheduler-bench"),
}
# The kernel shares two cores with the server and the browser: one torch thread.
STARTUP = "import torch\n\ntorch.set_num_threads(1)\n"


def _chromium() -> str:
    """The browser executable, or skip (fail on CI) with the reason."""
    reasons = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reasons.append("Playwright for Python is not installed (pip install playwright)")
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        reasons.append("Chromium is not installed (apt-get install chromium)")
    if reasons:
        message = "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(f"the browser test must run on CI: {message}")
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _widget_cell(name: str) -> int:
    """The index of the notebook's cell that displays its widget."""
    marker = WIDGETS[name][0]
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and marker in "".join(c["source"]))


def _trust(root: Path, data_dir: Path) -> None:
    """Trust the copied notebooks, as `jupyter trust` would (JupyterLab renders no widget view of an
    untrusted notebook's saved outputs, only their text repr)."""
    import nbformat
    from nbformat.sign import NotebookNotary

    data_dir.mkdir(parents=True, exist_ok=True)
    notary = NotebookNotary(data_dir=str(data_dir))
    for path in sorted(root.glob("*.ipynb")):
        notary.sign(nbformat.read(path, as_version=4))


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 over a copy of notebooks/ (the venv's python, so its kernel is the venv's)."""
    _chromium()
    tmp_path = tmp_path_factory.mktemp("lab")
    root = tmp_path / "root"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns("runs", "outputs", ".ipynb_checkpoints"))
    _trust(root, tmp_path / "data")
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-threads.py").write_text(STARTUP)
    port, token = _free_port(), secrets.token_hex(16)
    labconfig = tmp_path / "config" / "labconfig"
    labconfig.mkdir(parents=True)  # no "Jupyter news?" prompt (and no news fetched)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)  # every cell rendered, not only those scrolled into view
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    widget_settings = tmp_path / "settings" / "@jupyter-widgets" / "jupyterlab-manager"
    widget_settings.mkdir(parents=True)  # "Save widget state automatically": saved views render on open
    (widget_settings / "plugin.jupyterlab-settings").write_text(json.dumps({"saveState": True}))
    env = dict(
        os.environ,
        CI=os.environ.get("CI") or "1",  # the notebooks' SMOKE scale
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        PYTHONPATH=str(ROOT),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
        f"--LabApp.user_settings_dir={tmp_path / 'settings'}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI and containers run as root
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with {server.returncode}:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {SERVER_TIMEOUT} s")
            time.sleep(0.5)
        yield url, token, tmp_path / "jupyterlab.log"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def browser(jupyterlab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, jupyterlab, request):
    """A fresh page; on failure its screenshot and the server log's tail are kept."""
    failed_before = request.session.testsfailed
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    yield page
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"), full_page=True)
        print(jupyterlab[2].read_text()[-3000:])
    try:  # the notebook's kernel ends with its page: two kernels never share the cores
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    finally:
        page.close()


# ------------------------------------------------------------ the page, through JupyterLab's own API

_SESSION_READY_JS = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    return !!panel.sessionContext.session && panel.content.widgets.length;
}"""
_RUN_THROUGH_JS = """async (index) => {
    const app = window.jupyterapp, nb = app.shell.currentWidget.content;
    await app.commands.execute('notebook:clear-all-cell-outputs');  // and execution counts: done = counted again
    nb.activeCellIndex = 0;
    nb.deselectAll();
    nb.extendContiguousSelectionTo(index);
    app.commands.execute('notebook:run-cell');  // the selected cells; not awaited: the test polls the page
}"""
_CELL_DONE_JS = """(index) => {
    const panel = window.jupyterapp.shell.currentWidget, cell = panel.content.widgets[index];
    return cell.model.executionCount !== null && cell.promptNode.textContent.indexOf('*') < 0
        && panel.sessionContext.session.kernel.status === 'idle';
}"""
_ERRORS_JS = """() => {
    const errors = [];
    window.jupyterapp.shell.currentWidget.content.widgets.forEach((cell, i) => {
        if (cell.model.type !== 'code') return;
        for (const out of cell.model.outputs.toJSON())
            if (out.output_type === 'error') errors.push(`cell ${i}: ${out.ename}: ${out.evalue}`);
    });
    return errors;
}"""
_ADD_CELL_JS = """(code) => {
    const app = window.jupyterapp, nb = app.shell.currentWidget.content;
    nb.activeCellIndex = nb.widgets.length - 1;
    return app.commands.execute('notebook:insert-cell-below').then(() => {
        nb.activeCell.model.sharedModel.setSource(code);
        app.commands.execute('notebook:run-cell');  // not awaited: the cell may wait for the pipeline
        return nb.activeCellIndex;
    });
}"""
_OUTPUTS_JS = """(index) => window.jupyterapp.shell.currentWidget.content.widgets[index].model.outputs.toJSON()"""


def _open(page, url: str, token: str, name: str) -> None:
    # ?reset: a fresh workspace, so the notebooks of earlier tests (and their kernels) are not reopened
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_function(
        "() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget)", timeout=PAGE_TIMEOUT_MS, polling=500
    )
    assert page.evaluate(_SESSION_READY_JS) > 0


def _show_widget(page, name: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Scroll to the notebook's widget cell and wait for its widget to be on the page."""
    page.evaluate(
        "(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;"
        " nb.scrollToCell(nb.widgets[i]); }",
        _widget_cell(name),
    )
    page.locator(f".{WIDGETS[name][1]}").first.wait_for(state="visible", timeout=timeout_ms)


def _run_through_widget(page, name: str) -> None:
    """Check the committed notebook shows its saved widget (finding 6: text reprs until run), then run
    its cells up to and including its widget's cell; the live widget is then on the page."""
    _show_widget(page, name, timeout_ms=30_000)  # saved views render at once, or never
    _assert_no_widget_errors(page)
    index = _widget_cell(name)
    page.evaluate(_RUN_THROUGH_JS, index)
    page.wait_for_function(_CELL_DONE_JS, arg=index, timeout=RUN_TIMEOUT_MS, polling=500)
    assert page.evaluate(_ERRORS_JS) == []
    _show_widget(page, name)
    _assert_no_widget_errors(page)


def _cell(page, code: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> list[dict]:
    """Run `code` in a new cell at the end (as a researcher would); its outputs once it is done."""
    index = page.evaluate(_ADD_CELL_JS, code)
    page.wait_for_function(_CELL_DONE_JS, arg=index, timeout=timeout_ms, polling=200)
    return page.evaluate(_OUTPUTS_JS, index)


def _assert_no_widget_errors(page) -> None:
    text = page.locator("#main").inner_text()
    assert "Error displaying widget" not in text
    for marker, _ in WIDGETS.values():  # a widget shown as its text repr, e.g. `PromptLab(children=(...`
        assert f"{marker}children=" not in text


def _status(page, widget: str) -> str:
    return page.locator(f".{widget} .sdlab-status").first.inner_text()


def _wait_status(page, widget: str, words: str, timeout_ms: int) -> None:
    page.wait_for_function(
        """([widget, words]) => {
            const el = document.querySelector(`.${widget} .sdlab-status`);
            return !!el && el.textContent.includes(words);
        }""",
        arg=[widget, words],
        timeout=timeout_ms,
        polling=200,
    )


def _screenshot(page, widget: str, name: str) -> None:
    """The widget alone, as a small palette PNG, in test-artifacts/ (and $SDLAB_SCREENSHOT_DIR)."""
    from PIL import Image

    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    element = page.locator(f".{widget}").first
    height = int(element.bounding_box()["height"])
    page.set_viewport_size({"width": 1280, "height": min(6000, height + 400)})  # the whole widget on screen
    element.scroll_into_view_if_needed()
    element.screenshot(path=str(path))
    page.set_viewport_size({"width": 1280, "height": 1400})
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128)
    small.save(path, optimize=True)
    if os.environ.get("SDLAB_SCREENSHOT_DIR"):
        folder = Path(os.environ["SDLAB_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)


def _find(widget_class: str) -> str:
    """Code that binds `w` to the kernel's (newest) widget of that class: the notebook displays it unnamed."""
    return (
        "from ipywidgets.widgets.widget import _instances\n"
        f"from sdlab.widgets import {widget_class}\n"
        f"w = [o for o in list(_instances.values()) if isinstance(o, {widget_class})][-1]\n"
    )


# ------------------------------------------------------------ the tests


def test_promptlab_in_notebook_02(page, jupyterlab):
    """The saved widget renders on open; Generate adds an image; Cancel stops a long run; a cell run
    during a widget run waits and gives no error; Kernel > Interrupt stops a widget run (findings 1, 2, 3, 6)."""
    url, token, _ = jupyterlab
    lab = "sdlab-promptlab"
    _open(page, url, token, "02_prompt_engineering.ipynb")
    _run_through_widget(page, "02_prompt_engineering.ipynb")
    gallery = page.locator(f".{lab} .sdlab-gallery img")
    before = gallery.count()

    # 1. Generate adds an image, saved, at its true aspect
    out = _cell(page, _find("PromptLab") + "w.num_inference_steps.value = 4\nw.prompt.value")
    assert not [o for o in out if o["output_type"] == "error"], out
    page.locator(f".{lab} .sdlab-generate").click(timeout=10_000)
    _wait_status(page, lab, "done: 1 image", PAGE_TIMEOUT_MS)
    assert gallery.count() == before + 1 and "saved in" in _status(page, lab)
    thumb = gallery.first
    assert thumb.evaluate("img => img.naturalWidth") == 64
    box = thumb.bounding_box()
    assert abs(box["width"] - box["height"]) <= 1, box  # 64x64 stays square

    # 2. click a thumbnail's "enlarge": the image large, its seed, its buttons
    page.locator(f".{lab} .sdlab-gallery .sdlab-enlarge").first.click(timeout=10_000)
    page.locator(f".{lab} .sdlab-viewer .sdlab-viewer-close").wait_for(state="visible", timeout=30_000)
    large = page.locator(f".{lab} .sdlab-viewer img").first
    box = large.bounding_box()  # with the record and buttons beside it: never narrowed by them
    assert box["width"] >= 4 * 64 and abs(box["width"] - box["height"]) <= 1, box
    assert "seed" in page.locator(f".{lab} .sdlab-viewer").inner_text()
    _screenshot(page, lab, "promptlab.png")

    # 3. a cell run during a widget run waits for the pipeline, then runs without error
    _cell(page, _find("PromptLab") + "w.num_inference_steps.max = 1000\nw.num_inference_steps.value = 40")
    page.locator(f".{lab} .sdlab-generate").click(timeout=10_000)
    _wait_status(page, lab, "generating", 30_000)
    out = _cell(
        page,
        "r = sdlab.generate(pipe, 'a blue square', seed=1, num_inference_steps=2)\nprint('cell ok', r.seeds)",
        timeout_ms=RUN_TIMEOUT_MS,
    )
    assert [o["output_type"] for o in out] == ["stream"] and out[0]["text"] == "cell ok [1]\n", out
    _wait_status(page, lab, "done: 1 image", PAGE_TIMEOUT_MS)  # the widget's run was not disturbed either

    # 4. Cancel stops a long run within a bounded time, shown as cancelled, nothing kept
    _cell(page, _find("PromptLab") + "w.num_inference_steps.value = 1000")
    count = gallery.count()
    page.locator(f".{lab} .sdlab-generate").click(timeout=10_000)
    _wait_status(page, lab, "generating", 30_000)
    start = time.monotonic()
    page.locator(f".{lab} .sdlab-cancel").click(timeout=10_000)
    _wait_status(page, lab, "cancelled", CANCEL_TIMEOUT_MS)
    assert time.monotonic() - start < CANCEL_TIMEOUT_MS / 1000 and gallery.count() == count

    # 5. Kernel > Interrupt (the menu) stops a widget run, which the kernel shows as idle
    page.locator(f".{lab} .sdlab-generate").click(timeout=10_000)
    _wait_status(page, lab, "generating", 30_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").click(timeout=10_000)
    page.locator(".lm-Menu-itemLabel", has_text="Interrupt Kernel").click(timeout=10_000)
    _wait_status(page, lab, "cancelled", CANCEL_TIMEOUT_MS)
    assert gallery.count() == count
    out = _cell(page, _find("PromptLab") + "print(w.state, len(w.history))")
    assert out and out[-1].get("text", "").split()[0] == "cancelled", out
    assert page.evaluate(_ERRORS_JS) == []
    _assert_no_widget_errors(page)


def test_sweep_explorer_in_notebook_03(page, jupyterlab):
    url, token, _ = jupyterlab
    explorer = "sdlab-sweep-explorer"
    _open(page, url, token, "03_sweeps.ipynb")
    _run_through_widget(page, "03_sweeps.ipynb")
    grid = page.locator(f".{explorer} img.sdlab-grid").first
    grid.wait_for(state="visible", timeout=30_000)
    assert grid.evaluate("img => img.naturalWidth") > 64
    tiles = page.locator(f".{explorer} .sdlab-tile")
    assert tiles.count() >= 4
    tiles.last.click(timeout=10_000)
    page.wait_for_function(
        f"() => document.querySelector('.{explorer} .sdlab-cell') !== null", timeout=30_000, polling=200
    )
    assert "seed" in page.locator(f".{explorer}").inner_text()
    _screenshot(page, explorer, "sweep_explorer.png")
    _assert_no_widget_errors(page)


def test_scheduler_bench_in_notebook_05(page, jupyterlab):
    url, token, _ = jupyterlab
    bench = "sdlab-scheduler-bench"
    _open(page, url, token, "05_scheduler_benchmark.ipynb")
    _run_through_widget(page, "05_scheduler_benchmark.ipynb")

    # 1. Cancel stops a long benchmark: cancelled, no half table
    _cell(
        page,
        _find("SchedulerBench")
        + "w.schedulers.value = ('Euler', 'DPM++ 2M')\nw.num_inference_steps.value = '200'\n"
        + "w.seeds.value, w.repeats.value, w.warmup.value, w.reference_steps.value = 1, 3, 0, 200",
    )
    page.locator(f".{bench} .sdlab-run-bench").click(timeout=10_000)
    _wait_status(page, bench, "benchmarking", 30_000)
    page.locator(f".{bench} .sdlab-cancel-bench").click(timeout=10_000)
    _wait_status(page, bench, "cancelled", CANCEL_TIMEOUT_MS)

    # 2. a small run: the table and each setting's images beside its numbers
    _cell(page, _find("SchedulerBench") + "w.num_inference_steps.value = '2, 4'\nw.reference_steps.value = 8")
    page.locator(f".{bench} .sdlab-run-bench").click(timeout=10_000)
    _wait_status(page, bench, "done", RUN_TIMEOUT_MS)
    images = page.locator(f".{bench} .sdlab-bench-images img")
    assert images.count() == 4  # 2 schedulers x 2 step counts x 1 seed
    assert "Euler" in page.locator(f".{bench}").inner_text()
    _screenshot(page, bench, "scheduler_bench.png")
    assert page.evaluate(_ERRORS_JS) == []
    _assert_no_widget_errors(page)
