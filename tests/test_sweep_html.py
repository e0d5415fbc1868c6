"""The sweep viewer: the folder save_html writes, and the page driven in headless Chromium from file://.

The browser tests skip without Chromium or Playwright, except on CI (env `CI` set), as
tests/test_browser.py does; their pages are kept in `test-artifacts/viewer-*.png`.
"""

import json
import math
import time

import pytest
from PIL import Image
from synthetic_sweeps import write_run_dir
from test_browser import ARTIFACTS, CHROMIUM_ARGS, _chromium

import sdlab
from sdlab.cli import main
from sdlab.metadata import PARAMETERS_KEY, read_text_chunks
from sdlab.sweep_html import ASSETS, DATA_FILE
from sdlab.sweep_reading import load_sweep_result

PAGE_TIMEOUT_MS = 60_000
VIEWER_AXES = {"seed": [1, 2], "guidance_scale": [1.5, 5], "scheduler": ["Euler", "DDIM"]}


@pytest.fixture(scope="module")
def small_sweep(sd1_pipe, tmp_path_factory):
    """A real sweep on the tiny pipeline: 2 seeds x 2 guidance scales x 2 schedulers, 2 steps."""
    out = tmp_path_factory.mktemp("viewer-sweep")
    return sdlab.sweep(sd1_pipe, "a red circle", axes=VIEWER_AXES, num_inference_steps=2, out_dir=out, verbose=False)


def read_data(folder):
    text = (folder / DATA_FILE).read_text(encoding="utf-8")
    prefix, suffix = "window.SDLAB_SWEEP = ", ";\n"
    assert text.startswith(prefix) and text.endswith(suffix)
    return json.loads(text[len(prefix) : -len(suffix)])


def test_save_html_writes_a_self_contained_folder(small_sweep, tmp_path):
    index = small_sweep.save_html(tmp_path / "viewer")
    folder = index.parent
    assert index.name == "index.html" and all((folder / name).is_file() for name in ASSETS)
    data = read_data(folder)
    assert [d["name"] for d in data["dims"]] == ["seed", "guidance_scale", "scheduler"]
    assert [d["labels"] for d in data["dims"]] == [list(a.labels) for a in small_sweep.axes]
    assert len(data["cells"]) == 8
    for entry, cell in zip(data["cells"], small_sweep.cells):
        assert entry["c"] == [cell.coords[n] for n in small_sweep.axis_names]
        assert entry["status"] == "ok"
        # the page's text and record are the PNG's own (what ran), and its image a copy of it
        chunks = read_text_chunks(cell.path)
        assert entry["a1111"] == chunks[PARAMETERS_KEY]
        assert entry["record"] == json.loads(chunks["sdlab"])
        assert entry["params"]["seed"] == cell.request.seed[0]
        assert entry["params"]["scheduler"] == cell.request.scheduler
        assert not entry["image"].startswith("/") and (folder / entry["image"]).read_bytes() == cell.path.read_bytes()
        assert entry["thumb"] == entry["image"]  # 64 px: its own thumbnail
        assert entry["scores"]["seconds"] == cell.seconds
    assert {f["name"] for f in data["fields"]} >= {"seconds"}
    # nothing of this machine's paths, nothing from a network
    for file in folder.iterdir():
        if file.is_file():
            text = file.read_text(encoding="utf-8")
            assert str(tmp_path) not in text and str(small_sweep.out_dir) not in text, file.name
            assert "http://" not in text and "https://" not in text and "//cdn" not in text, file.name


def test_large_images_get_thumbnails_and_copy_images_false_only_thumbnails(small_sweep, tmp_path):
    folder = small_sweep.save_html(tmp_path / "v", thumbnail_size=32).parent
    entry = read_data(folder)["cells"][0]
    assert entry["thumb"].startswith("thumbs/") and entry["thumb"].endswith(".jpg")
    with Image.open(folder / entry["thumb"]) as thumb:
        assert max(thumb.size) == 32 and (entry["tw"], entry["th"]) == thumb.size
    assert (entry["w"], entry["h"]) == (64, 64) and (folder / entry["image"]).exists()
    # saved again with another size: that size's thumbnails, the others gone
    entry = read_data(small_sweep.save_html(folder, thumbnail_size=48).parent)["cells"][0]
    with Image.open(folder / entry["thumb"]) as thumb:
        assert max(thumb.size) == 48
    assert len(list((folder / "thumbs").iterdir())) == len(small_sweep)
    only = small_sweep.save_html(tmp_path / "thumbs-only", copy_images=False).parent
    data = read_data(only)
    assert not any((only / "images").iterdir())
    assert all("image" not in e and (only / e["thumb"]).exists() for e in data["cells"])


def test_saving_another_sweep_into_the_folder_leaves_no_stale_images(small_sweep, tmp_path):
    folder = small_sweep.save_html(tmp_path / "v").parent
    other = write_run_dir(tmp_path / "other", {"seed": "0-2"})
    load_sweep_result(other).save_html(folder)
    files = sorted(p.name for p in (folder / "images").iterdir())
    assert files == sorted(c.path.name for c in load_sweep_result(other).cells)


def test_scores_failures_and_cells_not_run(tmp_path):
    run = write_run_dir(
        tmp_path / "run", {"seed": "0-3", "guidance_scale": [1, 2]}, failed={1}, not_run={2}, score_error={3}
    )
    result = load_sweep_result(run)
    data = read_data(result.save_html(tmp_path / "v").parent)
    assert [f["name"] for f in data["fields"]][:2] == ["judge.colour", "sharpness"]  # scores first, then run fields
    assert {"name": "seconds", "kind": "run"} in data["fields"]
    cells = data["cells"]
    assert [c["status"] for c in cells[:4]] == ["ok", "failed", "missing", "ok"]
    assert "synthetic failure" in cells[1]["error"] and "image" not in cells[1]
    assert cells[2]["record"]["planned"]["seed"] == 2  # a cell not run shows what is planned, said so
    assert cells[3]["scores"]["sharpness"] is None and "sharpness" in cells[3]["score_errors"]
    for entry, cell in zip(cells, result.cells):
        if cell.ok:
            assert entry["scores"]["judge.colour"] == cell.metrics["judge.colour"]


def test_linked_axes_are_one_dimension(sd1_pipe, tmp_path):
    result = sdlab.sweep(
        sd1_pipe,
        "a red circle",
        axes={"guidance_scale": [2, 4], "num_inference_steps": [1, 2], "seed": [0, 1]},
        link=[("guidance_scale", "num_inference_steps")],
        out_dir=tmp_path / "run",
        verbose=False,
    )
    data = read_data(result.save_html(tmp_path / "v").parent)
    assert [d["name"] for d in data["dims"]] == ["guidance_scale + num_inference_steps", "seed"]
    assert data["dims"][0]["labels"] == ["CFG: 2 · Steps: 1", "CFG: 4 · Steps: 2"]
    assert [c["c"] for c in data["cells"]] == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert [c["record"]["num_inference_steps"] for c in data["cells"]] == [1, 2, 1, 2]


def test_bad_arguments_are_refused(small_sweep, tmp_path):
    with pytest.raises(ValueError, match="thumbnail_size"):
        small_sweep.save_html(tmp_path / "v", thumbnail_size=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`path`.*is a file"):
        small_sweep.save_html(tmp_path / "file")


def test_cli_view_and_sweep_html(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "sweep",
                "a red circle",
                "--model",
                "tiny",
                "--steps",
                "1",
                "--axis",
                "seed=1,2",
                "--out",
                str(out),
                "--html",
            ]
        )
        == 0
    )
    assert (out / "viewer" / "index.html").exists() and len(read_data(out / "viewer")["cells"]) == 2
    assert "viewer:" in capsys.readouterr().out
    assert main(["view", str(out), "--out", str(tmp_path / "v"), "--thumbnail-size", "32"]) == 0
    assert "2 cells, 2 with images" in capsys.readouterr().out
    assert read_data(tmp_path / "v")["cells"][0]["thumb"].startswith("thumbs/")
    assert main(["view", str(tmp_path / "nowhere")]) == 2


# ------------------------------------------------------------------ in the browser


def _open(p, index, chromium, *, viewport=(1280, 900)):
    browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else errors.append(f"not a file: {r.url}"))
    page.goto(index.as_uri(), timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector("body[data-ready=true]", timeout=PAGE_TIMEOUT_MS)
    return browser, page, errors


def _texts(page, selector):
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def _shown_cells(page):
    return [int(i) for i in page.locator("#grid .cell[data-i]").evaluate_all("els => els.map(e => e.dataset.i)")]


def test_the_viewer_in_chromium(small_sweep, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    index = small_sweep.save_html(tmp_path / "viewer")
    by_index = {c.index: c for c in small_sweep.cells}
    labels = {a.name: list(a.labels) for a in small_sweep.axes}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page, errors = _open(p, index, chromium)
        try:
            # 1. x = seed, y = guidance, the scheduler stepped: its first value
            assert _texts(page, ".colhead") == labels["seed"]
            assert _texts(page, ".rowhead") == labels["guidance_scale"]
            assert _texts(page, ".filter .fname") == ["scheduler"]
            shown = _shown_cells(page)
            assert len(shown) == 4 and {by_index[i].coords["scheduler"] for i in shown} == {0}
            page.wait_for_function(
                "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth === 64)",
                timeout=PAGE_TIMEOUT_MS,
            )
            rendering = page.locator("#grid img").first.evaluate("i => getComputedStyle(i).imageRendering")
            assert rendering == "pixelated"  # 64 px shown at 128: nearest-neighbour, crisp

            # 2. axes switched: scheduler across, the seed becomes a filter; filter to the second seed
            page.select_option("#x-axis", label="scheduler")
            assert _texts(page, ".colhead") == labels["scheduler"]
            assert _texts(page, ".filter .fname") == ["seed"]
            page.locator(".filter[data-dim='0'] select").select_option(index=1)
            shown = _shown_cells(page)
            assert len(shown) == 4 and {by_index[i].coords["seed"] for i in shown} == {1}
            page.locator(".filter[data-dim='0'] .step[data-step='1']").click()  # steps round to the first
            assert {by_index[i].coords["seed"] for i in _shown_cells(page)} == {0}
            page.locator(".filter[data-dim='0'] .cycle").click()  # auto-cycle: the next seed, in turn
            page.wait_for_function("() => document.querySelector(\".filter[data-dim='0'] select\").value === '1'")
            page.locator(".filter[data-dim='0'] .cycle").click()
            page.locator(".filter[data-dim='0'] select").select_option(index=0)
            page.wait_for_timeout(1500)
            assert page.locator(".filter[data-dim='0'] select").input_value() == "0"  # stopped

            # 3. hover shows the cell's record
            target = by_index[_shown_cells(page)[1]]
            cell = page.locator(f"#grid .cell[data-i='{target.index}']")
            cell.hover()
            tip = page.locator("#tooltip")
            tip.wait_for(state="visible", timeout=10_000)
            text = tip.inner_text()
            record = sdlab.read_params(target.path)
            for name in ("seed", "scheduler", "guidance_scale", "num_inference_steps", "seconds"):
                value = record[name]
                assert f"{name}\t{value:g}" in text if isinstance(value, float) else f"{name}\t{value}" in text, name

            # 4. the A1111 text copied, to the clipboard and in the large view
            a1111 = read_text_chunks(target.path)[PARAMETERS_KEY]
            cell.locator(".copy").click()
            page.locator("#toast").wait_for(state="visible", timeout=10_000)
            assert page.evaluate("navigator.clipboard.readText()") == a1111
            cell.click(position={"x": 20, "y": 60})
            page.locator("#detail").wait_for(state="visible", timeout=10_000)
            assert page.locator("#detail-a1111").input_value() == a1111
            assert json.loads(page.locator("#detail-record").inner_text()) == json.loads(
                read_text_chunks(target.path)["sdlab"]
            )
            assert page.locator("#detail-image").evaluate("i => i.naturalWidth") in (0, 64)
            page.screenshot(path=str(ARTIFACTS / "viewer-detail.png"))
            page.keyboard.press("Escape")
            assert page.locator("#detail").is_hidden()

            # 5. coloured by a score: every made cell gets its colour, the legend its range
            page.select_option("#field", "seconds")
            page.select_option("#colour", "heat")
            assert page.locator("#legend").is_visible() and "seconds" in page.locator("#legend").inner_text()
            heats = page.locator("#grid .cell .heat").evaluate_all("els => els.map(e => e.style.background)")
            assert len(heats) == 4 and all(h.startswith("rgb(") for h in heats)
            page.select_option("#colour", "border")
            assert page.locator("#grid .cell .ring").count() == 4
            # the view is kept in the address: reloading the link shows the same page
            shown = _shown_cells(page)
            page.reload()
            page.wait_for_selector("body[data-ready=true]", timeout=PAGE_TIMEOUT_MS)
            assert page.locator("#x-axis").input_value() == "2" and page.locator("#colour").input_value() == "border"
            assert page.locator("#field").input_value() == "seconds" and _shown_cells(page) == shown
            assert not errors, errors
            page.screenshot(path=str(ARTIFACTS / "viewer-small.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "viewer-small-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_the_viewer_stays_small_on_2000_cells(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    axes = {
        "seed": "0-24",
        "guidance_scale": [1, 2, 3, 4, 5, 6, 7, 8],
        "scheduler": ["Euler", "Euler a", "DDIM", "DPM++ 2M", "UniPC"],
        "num_inference_steps": [10, 20],
    }
    run = write_run_dir(tmp_path / "run", axes, failed={5}, not_run={7})
    result = load_sweep_result(run)
    assert len(result) == 2000
    index = result.save_html(tmp_path / "viewer")
    colour = {c.index: c.metrics.get("judge.colour") for c in result.cells}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        start = time.monotonic()
        browser, page, errors = _open(p, index, chromium)
        try:
            ready = time.monotonic() - start
            assert ready < 60  # generous: the page reads 2000 cells and draws one page
            # 1. one page of the grid in the DOM, never the sweep
            images = page.locator("img").count()
            assert 4 <= images <= 8 * 8 + 1, images  # the page fits 8 columns at 1280 px (+ the large view's)
            assert page.locator("#grid .cell").count() <= 64
            assert "columns 1–8 of 25" in page.locator("#pager").inner_text()
            page.locator("#pager .page[data-key='pageX'] button[data-go='1']").click()
            assert _texts(page, ".colhead")[0] == "Seed: 8"
            assert page.locator("img").count() <= 65

            # hover: the cell's scores with its parameters
            first = _shown_cells(page)[0]
            page.locator(f"#grid .cell[data-i='{first}']").hover()
            page.locator("#tooltip").wait_for(state="visible", timeout=10_000)
            tip = page.locator("#tooltip").inner_text()
            assert f"judge.colour\t{colour[first]:g}" in tip and "sharpness\t" in tip

            # 2. sorted by a score: columns by their mean, high first
            page.select_option("#field", "judge.colour")
            page.select_option("#sort", "desc")
            heads = _texts(page, ".colhead")
            seed_axis = result.axis("seed")
            shown = [c for c in result.cells if c.coords["scheduler"] == 0 and c.coords["num_inference_steps"] == 0]

            def mean_of(seed_label):
                i = seed_axis.labels.index(seed_label)
                values = [colour[c.index] for c in shown if c.coords["seed"] == i and colour[c.index] is not None]
                return sum(values) / len(values)

            means = [mean_of(h) for h in heads]
            assert means == sorted(means, reverse=True)
            all_means = sorted((mean_of(label) for label in seed_axis.labels), reverse=True)
            assert math.isclose(means[0], all_means[0])  # the best column of all 25 comes first

            # 3. other axes on the grid: 5 schedulers x 2 step counts, the seed and guidance stepped
            page.select_option("#sort", "axis")
            page.select_option("#x-axis", label="scheduler")
            page.select_option("#y-axis", label="num_inference_steps")
            assert page.locator("#grid .cell[data-i]").count() == 10
            assert _texts(page, ".filter .fname") == ["seed", "guidance_scale"]

            # 4. ranked: the whole sweep by score, one page of it, the best first
            page.click("#view-ranked")
            page.select_option("#sort", "desc")
            ranked = [
                int(i) for i in page.locator("#ranked .cell[data-i]").evaluate_all("e => e.map(x => x.dataset.i)")
            ]
            assert 0 < len(ranked) <= 64
            best = sorted((v, -i) for i, v in colour.items() if v is not None)[-1]
            assert ranked[0] == -best[1]
            assert [colour[i] for i in ranked] == sorted((colour[i] for i in ranked), reverse=True)
            assert page.locator("img").count() <= 65
            assert not errors, errors
            page.screenshot(path=str(ARTIFACTS / "viewer-large.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "viewer-large-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_labels_and_prompts_are_shown_as_text(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    prompts = ['a <b>red</b> circle & "quotes"', "<img src=x onerror=alert(1)>"]
    result = load_sweep_result(write_run_dir(tmp_path / "run", {"prompt": prompts}))
    index = result.save_html(tmp_path / "viewer")
    with sync_playwright() as p:
        browser, page, errors = _open(p, index, chromium)
        try:
            assert _texts(page, ".colhead") == prompts
            assert page.locator("#grid img").count() == 2  # no image made from a label
            page.locator("#grid .cell >> nth=1").hover()
            assert prompts[1] in page.locator("#tooltip").inner_text()
            assert not errors, errors
        finally:
            browser.close()


def test_one_axis_and_no_axis(tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    one = load_sweep_result(write_run_dir(tmp_path / "one", {"seed": "0-2"})).save_html(tmp_path / "v1")
    none = load_sweep_result(write_run_dir(tmp_path / "none", {})).save_html(tmp_path / "v0")
    with sync_playwright() as p:
        browser, page, errors = _open(p, one, chromium)
        try:
            assert _texts(page, ".colhead") == ["Seed: 0", "Seed: 1", "Seed: 2"]
            assert page.locator("#y-axis").input_value() == "-1" and page.locator("#grid img").count() == 3
            page.select_option("#y-axis", label="seed")  # taking x's axis swaps them
            assert page.locator("#x-axis").input_value() == "-1" and _texts(page, ".rowhead") == [
                "Seed: 0",
                "Seed: 1",
                "Seed: 2",
            ]
            page.goto(none.as_uri())
            page.wait_for_selector("body[data-ready=true]", timeout=PAGE_TIMEOUT_MS)
            assert page.locator("#grid img").count() == 1
            page.locator("#grid .cell").click(position={"x": 20, "y": 60})
            assert "a large red circle" in page.locator("#detail-a1111").input_value()
            assert not errors, errors
        finally:
            browser.close()


def test_the_hover_shows_lora_weights_and_img2img_strength(sd1_pipe, tmp_path):
    """Cells of a LoRA-weight x strength sweep differ only in those: the tooltip must say them, or
    every cell reads the same."""
    from sdlab.testing import save_tiny_lora

    lora = save_tiny_lora(sd1_pipe, tmp_path / "style.safetensors", seed=1)
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    result = sdlab.sweep(
        sd1_pipe,
        "a red circle",
        axes={"lora_weight": [0.0, 0.5], "strength": [0.5, 1.0]},
        loras={str(lora): 1.0},
        image=init,
        num_inference_steps=2,
        width=64,
        height=64,
        out_dir=tmp_path / "run",
        verbose=False,
    )
    data = read_data(result.save_html(tmp_path / "v").parent)
    shown = [(c["params"]["loras"], c["params"]["strength"]) for c in data["cells"]]
    assert shown == [("style: 0", 0.5), ("style: 0.5", 0.5), ("style: 0", 1.0), ("style: 0.5", 1.0)]
    assert all(c["params"]["image"].startswith("sha256 ") for c in data["cells"])
