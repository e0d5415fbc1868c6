"""PromptLab in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright.

A temporary root holds a small notebook that loads the `tiny` model and displays `PromptLab(pipe)`.
The test runs all cells, clicks Generate and waits for an image in the widget's gallery; the page is
kept as `test-artifacts/promptlab.png`. Without Chromium or Playwright the test skips, except on CI
(env `CI` set), where it must run (the Makefile installs Debian's `chromium`).
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
NOTEBOOK_CELLS = [
    "import torch\n"
    "torch.set_num_threads(1)  # the kernel shares two cores with the server and the browser\n"
    "import sdlab\n"
    "from sdlab.widgets import PromptLab\n"
    "pipe = sdlab.load_pipeline('tiny', progress_bar=False)",
    "lab = PromptLab(pipe, prompt='a large red circle on a blue background')\nlab.num_inference_steps.value = 2\nlab",
]


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


def _notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
        for src in NOTEBOOK_CELLS
    ]
    path.write_text(
        json.dumps(
            {
                "cells": cells,
                "metadata": {
                    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 (the venv's python, so its kernel is the venv's), stopped after."""
    root = tmp_path / "root"
    root.mkdir()
    _notebook(root / "promptlab.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    labconfig = tmp_path / "config" / "labconfig"
    labconfig.mkdir(parents=True)  # no "Jupyter news?" prompt (and no news fetched)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
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
            os.killpg(server.pid, signal.SIGTERM)  # the server and the kernel it started
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=5)
        log.close()


# The open notebook's panel, once JupyterLab has opened it.
_PANEL_JS = "window.jupyterapp && window.jupyterapp.shell.currentWidget"
_SESSION_READY_JS = """async () => {
    const panel = window.jupyterapp.shell.currentWidget;
    await panel.context.ready;
    await panel.sessionContext.ready;
    return !!panel.sessionContext.session && panel.content.widgets.length;
}"""
# Bounded waits, generous for a loaded machine (an idle one needs a fraction of them).
SERVER_TIMEOUT = 120
PAGE_TIMEOUT_MS = 120_000


def test_promptlab_generates_in_the_browser(jupyterlab):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    url, token, log = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "promptlab.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        try:
            page.goto(f"{url}/lab/tree/promptlab.ipynb?token={token}", timeout=PAGE_TIMEOUT_MS)
            page.wait_for_function(f"() => !!({_PANEL_JS})", timeout=PAGE_TIMEOUT_MS, polling=500)
            assert page.evaluate(_SESSION_READY_JS) == 2
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            lab = page.locator(".sdlab-promptlab")
            lab.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
            page.locator(".sdlab-promptlab .sdlab-generate").click(timeout=10_000)
            gallery_image = page.locator(".sdlab-promptlab .sdlab-gallery img").first
            gallery_image.wait_for(state="visible", timeout=PAGE_TIMEOUT_MS)
            status = page.locator(".sdlab-promptlab .sdlab-status").inner_text(timeout=10_000)
            assert "done: 1 image" in status, status
            assert page.locator(".sdlab-promptlab .sdlab-images img").count() == 1
            natural_width = gallery_image.evaluate("img => img.naturalWidth")
            assert natural_width == 64  # the 64x64 PNG the kernel sent
            lab.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "promptlab-failure.png"), full_page=True)
            print(log.read_text()[-3000:])
            raise
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
