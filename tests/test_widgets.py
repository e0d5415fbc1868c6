"""The widgets driven headlessly: set `.value`, `.click()`, assert on state (never on Output)."""

from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

from helpers import max_pixel_diff  # noqa: E402

from sdlab.widgets import PromptLab, SchedulerBench, SweepExplorer  # noqa: E402
from sdlab.widgets._common import png_bytes  # noqa: E402

PROMPT = "a large red circle on a blue background"


@pytest.fixture
def lab(sd1_pipe, tmp_path):
    lab = PromptLab(sd1_pipe, out_dir=str(tmp_path / "images"), sweep_dir=str(tmp_path / "sweeps"), background=False)
    lab.prompt.value = PROMPT
    lab.num_inference_steps.value = 2
    return lab


def test_generate_fills_state_gallery_and_progress(lab, tmp_path):
    lab.seed.value = 3
    lab.generate_button.click()
    assert lab.error is None, lab.status.value
    assert "done" in lab.status.value
    result = lab.last_result
    assert len(result) == 1 and result.records[0]["seed"] == 3
    assert result.records[0]["num_inference_steps"] == 2
    assert (lab.progress.value, lab.progress.max) == (2, 2)
    assert len(lab.history) == 1 and len(lab.gallery.children) == 1
    assert len(lab.images.children) == 1
    assert result.paths and result.paths[0].exists()
    assert not lab.generate_button.disabled

    first = result.image
    lab.generate_button.click()  # the seed is locked: the same image again
    assert max_pixel_diff(first, lab.last_result.image) == 0
    assert len(lab.history) == 2


def test_random_seed_and_several_images(lab):
    lab.lock_seed.value = False
    lab.seed.value = 0
    lab.num_images.value = 2
    lab.generate_button.click()
    seeds = lab.last_result.seeds
    assert lab.seed.value == seeds[0] and seeds[1] == seeds[0] + 1
    assert len(lab.history) == 2  # one gallery entry per image, each with its own seed
    assert lab.lock_seed.description == "random"


def test_errors_are_shown_not_raised(lab):
    lab.width.value = 70
    lab.generate_button.click()
    assert isinstance(lab.error, ValueError)
    assert "`width`=70" in lab.status.value and "multiple of 8" in lab.status.value
    assert lab.last_result is None and not lab.generate_button.disabled

    lab.width.value = 64
    lab.prompt.value = "   "
    lab.generate_button.click()
    assert "`prompt` is empty" in lab.status.value

    lab.run_sweep()  # nothing sent to the sweep form yet
    assert "no sweep yet" in lab.status.value


def test_reuse_restores_controls_and_image(lab):
    lab.seed.value, lab.guidance_scale.value = 5, 3.0
    lab.generate_button.click()
    image = lab.last_result.image
    lab.prompt.value, lab.seed.value, lab.guidance_scale.value, lab.num_inference_steps.value = (
        "a blue square",
        9,
        7.0,
        4,
    )
    lab.reuse(0)
    assert (lab.prompt.value, lab.seed.value, lab.guidance_scale.value) == (PROMPT, 5, 3.0)
    assert lab.num_inference_steps.value == 2 and lab.lock_seed.value
    lab.generate_button.click()
    assert max_pixel_diff(image, lab.last_result.image) == 0


def test_presets_and_token_counter(lab):
    if len(lab.style_preset.options) == 1:
        pytest.skip("sdlab.prompts presets are not available")
    lab.style_preset.value = lab.style_preset.options[1]
    prompt, _ = lab.final_prompts()
    assert prompt.startswith(PROMPT + ", ") and "final prompt" in lab.final_prompt.value
    if lab.token_budget is not None:
        assert "CLIP" in lab.tokens.value
        lab.style_preset.value = "(none)"
        lab.prompt.value = ", ".join(["a large red circle on a blue background"] * 12)
        assert not lab.token_budget.truncated and "chunks" in lab.tokens.value  # read in chunks, as A1111 does
        lab.prompt.value = PROMPT
        lab.style_preset.value = lab.style_preset.options[1]
    lab.generate_button.click()
    assert lab.last_result.records[0]["prompt"] == prompt


def test_send_to_sweep_runs_and_explores(lab):
    lab.seed.value, lab.guidance_scale.value = 4, 5.0
    lab.generate_button.click()
    spec = lab.send_to_sweep(0)
    assert spec["axes"] == {"seed": [4, 5, 6], "guidance_scale": [3.0, 5.0, 7.0]}
    assert spec["prompt"] == PROMPT and spec["num_inference_steps"] == 2
    lab.sweep_seeds.value, lab.sweep_guidance.value = "4-5", "2, 5"
    lab.sweep_button.click()
    assert lab.error is None, lab.status.value
    result = lab.last_sweep
    assert len(result) == 4 and not result.failed
    assert isinstance(lab.explorer, SweepExplorer) and lab.sweep_view.children == (lab.explorer,)
    # the sweep's seed 4 / CFG 5 cell is the gallery image (made in a batch of 4: float rounding)
    assert max_pixel_diff(result.image(seed=4, guidance_scale=5.0), lab.history[0]["image"]) <= 2

    lab.sweep_button.click()  # the same sweep again: every cell from the cache
    assert all(c.cached for c in lab.last_sweep.cells) and "4 cached" in lab.status.value


def test_saved_by_default_and_reloaded_in_a_new_lab(sd1_pipe, tmp_path, monkeypatch):
    import datetime

    import sdlab

    monkeypatch.chdir(tmp_path)
    lab = PromptLab(sd1_pipe, background=False)  # no out_dir: saved into today's run folder
    folder = Path("runs") / "promptlab" / datetime.date.today().isoformat()
    assert str(folder) in lab.run_folder.value and lab.save_images.value
    lab.prompt.value, lab.num_inference_steps.value, lab.seed.value = PROMPT, 2, 7
    lab.generate_button.click()
    lab.seed.value = 8
    lab.generate_button.click()
    assert lab.error is None, lab.status.value
    paths = sorted(folder.glob("*.png"))
    assert len(paths) == 2 and [sdlab.read_params(p)["seed"] for p in paths] == [7, 8]

    again = PromptLab(sd1_pipe, out_dir=str(folder), background=False)  # a new kernel, the same folder
    assert [e["params"]["seed"] for e in again.history] == [8, 7] and len(again.gallery.children) == 2
    assert again.history[0]["params"] == {k: v for k, v in sdlab.read_params(paths[1]).items() if k != "source"}
    assert max_pixel_diff(again.history[0]["image"], lab.history[0]["image"]) == 0

    again.save_images.value = False  # the checkbox turns saving off
    again.prompt.value = PROMPT
    again.num_inference_steps.value = 2
    again.generate_button.click()
    assert again.last_result.paths == [] and len(list(folder.glob("*.png"))) == 2
    assert "not saving" in again.run_folder.value
    off = PromptLab(sd1_pipe, out_dir=None, background=False)
    assert not off.save_images.value and off.history == []


def test_thumbnails_keep_the_aspect_and_show_the_seed(lab):
    lab.seed.value, lab.width.value, lab.height.value = 11, 128, 64
    lab.generate_button.click()
    assert lab.error is None, lab.status.value
    result_image = lab.images.children[0].children[0]
    assert (result_image.layout.width, result_image.layout.height) == ("256px", "128px")
    lab.display_size.value = 512  # results are not fixed at 256 px
    result_image = lab.images.children[0].children[0]
    assert (result_image.layout.width, result_image.layout.height) == ("512px", "256px")
    thumb, caption, _enlarge = lab.gallery.children[0].children[0].children
    assert (thumb.layout.width, thumb.layout.height) == ("128px", "64px")
    assert "seed 11" in caption.value and "128x64" in caption.value and "2 steps" in caption.value


def test_clicking_a_thumbnail_enlarges_it_with_its_record_and_buttons(lab, sd1_pipe):
    """Finding 3: results were fixed at 256 px with no way to enlarge."""
    lab.seed.value, lab.width.value, lab.height.value = 12, 64, 128
    lab.generate_button.click()
    lab.seed.value, lab.width.value, lab.height.value = 13, 128, 64
    lab.generate_button.click()
    assert lab.error is None, lab.status.value
    assert lab.viewer.layout.display == "none" and lab.viewer.params is None
    enlarge = lab.gallery.children[1].children[0].children[2]  # the older image: seed 12, 64x128
    assert enlarge.description == "enlarge"
    enlarge.click()
    assert lab.viewer.layout.display is None and lab.viewer.params["seed"] == 12
    large = lab.viewer.picture.children[0]
    assert (large.layout.width, large.layout.height) == ("256px", "512px")  # its true aspect, 4x
    assert lab.viewer.picture.layout.min_width == "256px"  # the record beside it cannot narrow it
    assert large.value == png_bytes(lab.history[1]["image"])
    assert "seed 12" in lab.viewer.title.value and "64x128" in lab.viewer.info.value
    buttons = {b.description: b for b in lab.viewer.buttons.children}
    assert set(buttons) == {"reuse", "sweep", "A1111 text", "Python", "close"}
    buttons["A1111 text"].click()
    assert "Seed: 12" in lab.copy_text.value and "Size: 64x128" in lab.copy_text.value
    buttons["Python"].click()
    namespace = {"pipe": sd1_pipe}
    exec(lab.copy_text.value, namespace)
    assert max_pixel_diff(namespace["image"], lab.history[1]["image"]) == 0
    buttons["reuse"].click()
    assert (lab.seed.value, lab.width.value, lab.height.value) == (12, 64, 128)
    lab.images.children[0].children[1].click()  # a result's own "enlarge": the newest image
    assert lab.viewer.params["seed"] == 13
    buttons = {b.description: b for b in lab.viewer.buttons.children}
    buttons["close"].click()
    assert lab.viewer.layout.display == "none"


def test_copy_a1111_text_and_python_that_remakes_the_image(lab, sd1_pipe):
    import sdlab

    lab.seed.value, lab.guidance_scale.value, lab.clip_skip.value = 21, 4.5, 1
    lab.scheduler.value = "Euler a"
    lab.generate_button.click()
    assert lab.error is None, lab.status.value
    text = lab.a1111_text(0)
    assert "Seed: 21" in text and "CFG scale: 4.5" in text and "Clip skip: 2" in text
    code = lab.python_code(0)
    namespace = {"pipe": sd1_pipe}
    exec(code, namespace)
    assert max_pixel_diff(namespace["image"], lab.history[0]["image"]) == 0
    assert namespace["result"].records[0]["clip_skip"] == 1
    lab.seed.value, lab.scheduler.value = 22, "DDIM"  # a varied, DDIM image: eta and the variation seed too
    result = sdlab.generate(
        sd1_pipe,
        PROMPT,
        seed=22,
        num_inference_steps=2,
        scheduler="DDIM",
        eta=0.5,
        variation_seed=5,
        variation_strength=0.3,
    )
    lab.history.insert(0, {"image": result.image, "params": result.records[0], "path": None})
    exec(lab.python_code(0), namespace)
    assert "eta=0.5" in lab.python_code(0) and "variation_seed=5" in lab.python_code(0)
    assert max_pixel_diff(namespace["image"], result.image) == 0
    lab._render_gallery()
    code = lab.python_code(0)
    buttons = lab.gallery.children[0].children[2].children
    next(b for b in buttons if b.description == "Python").click()
    assert lab.copy_text.value == code and lab.copy_text.layout.display is None


def test_png_info_loads_the_parameters_into_the_controls(lab, tmp_path):
    from PIL import Image, PngImagePlugin

    text = (
        "a green triangle\nNegative prompt: blurry\nSteps: 7, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 6.5, Seed: 1234, Size: 96x64, Clip skip: 2"
    )
    path = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (96, 64)).save(path, pnginfo=info)
    lab.png_path.value = str(path)
    lab.png_button.click()
    assert lab.error is None, lab.status.value
    got = (lab.prompt.value, lab.negative_prompt.value, lab.seed.value, lab.num_inference_steps.value)
    assert got == ("a green triangle", "blurry", 1234, 7)
    assert (lab.guidance_scale.value, lab.width.value, lab.height.value, lab.clip_skip.value) == (6.5, 96, 64, 1)
    assert lab.scheduler.value == "DPM++ 2M Karras"

    lab.num_inference_steps.value = 2
    lab.generate_button.click()  # an sdlab PNG: its record, read back the same way
    assert lab.error is None, lab.status.value
    lab.prompt.value, lab.seed.value, lab.clip_skip.value = "other", 1, 0
    lab.png_path.value = str(lab.last_result.paths[0])
    lab.png_button.click()
    assert (lab.prompt.value, lab.seed.value, lab.clip_skip.value) == ("a green triangle", 1234, 1)

    lab.png_path.value = str(tmp_path / "missing.png")
    lab.png_button.click()
    assert lab.error is not None and "missing.png" in lab.status.value


def test_cancel_stops_a_running_generation_at_the_next_step(sd1_pipe, tmp_path):
    import threading

    lab = PromptLab(sd1_pipe, out_dir=str(tmp_path / "images"))  # Generate runs on a thread
    lab.prompt.value, lab.num_inference_steps.value = PROMPT, 50
    started, clicked = threading.Event(), threading.Event()

    def on_progress(change):  # on the generation thread: hold step 1 until Cancel was clicked
        if change["new"] == 1:
            started.set()
            clicked.wait(60)

    lab.progress.observe(on_progress, names="value")
    lab.generate_button.click()
    assert started.wait(120), "the generation did not start"
    assert not lab.cancel_button.disabled
    lab.cancel_button.click()
    clicked.set()
    lab.wait(120)
    assert not lab.thread.is_alive()
    assert lab.cancelled and lab.error is None and "cancelled at step" in lab.status.value
    assert lab.progress.value < 50
    assert lab.last_result is None and lab.history == [] and lab.images.children == ()
    assert not (tmp_path / "images").exists() or not list((tmp_path / "images").glob("*.png"))
    assert not lab.generate_button.disabled and lab.cancel_button.disabled

    lab.num_inference_steps.value = 2  # the next run is not cancelled
    lab.generate_button.click()
    lab.wait(120)
    assert not lab.cancelled and len(lab.history) == 1


def test_sweep_explorer_axes_filters_and_cells(lab):
    import sdlab

    result = sdlab.sweep(
        lab.pipe,
        PROMPT,
        axes={"seed": [1, 2, 3], "guidance_scale": [2, 5], "num_inference_steps": [1, 2]},
        out_dir=lab.sweep_dir,
        verbose=False,
    )
    explorer = SweepExplorer(result)
    assert (explorer.x.value, explorer.y.value, explorer.z.value) == ("seed", "guidance_scale", "num_inference_steps")
    full = explorer.grid_image.size
    explorer.z.value = "(none)"  # the steps axis still has 2 values: it becomes sub-grids
    assert explorer.grid_arguments()["z"] == ["num_inference_steps"] and explorer.error is None
    explorer.filters["num_inference_steps"].value = ("Steps: 2",)
    assert explorer.grid_arguments()["filter"] == {"num_inference_steps": 2}
    assert explorer.grid_image.width < full[0]
    explorer.filters["seed"].value = ("Seed: 1", "Seed: 3")
    assert len(explorer.grid_arguments()["subset"].cells) == 4
    explorer.x.value = "guidance_scale"  # momentarily x == y: an error in the status, then fixed
    explorer.y.value = "seed"
    assert explorer.error is None
    explorer.filters["seed"].value = ()
    assert isinstance(explorer.error, ValueError) and "select at least one" in explorer.status.value

    explorer.pick["seed"].value = 2
    explorer.pick["guidance_scale"].value = 1
    assert explorer.cell_params["seed"] == 3 and explorer.cell_params["guidance_scale"] == 5.0
    assert explorer.cell_params["num_inference_steps"] == 1 and explorer.cell.path.exists()


@pytest.fixture
def three_axis_sweep(lab):
    import sdlab

    return sdlab.sweep(
        lab.pipe,
        PROMPT,
        axes={"seed": [1, 2, 3], "guidance_scale": [2, 5], "num_inference_steps": [1, 2]},
        out_dir=lab.sweep_dir,
        verbose=False,
    )


def test_sweep_explorer_no_y_is_one_row_per_subgrid(three_axis_sweep):
    """Finding 4: y "(none)" with a multi-valued axis off x/y drew half-empty grey grids (that axis
    was used as both y and z)."""
    explorer = SweepExplorer(three_axis_sweep)
    explorer.z.value = "(none)"
    explorer.y.value = "(none)"
    assert explorer.error is None, explorer.status.value
    one_row = three_axis_sweep.grid(x="seed", y="guidance_scale", z="num_inference_steps", filter={"guidance_scale": 2})
    # four sub-grids (CFG x steps) of one row of three seeds each: no empty cell
    assert explorer.grid_image.height <= one_row.height
    assert len(explorer.tiles) == 12 and all(t is not None for t in explorer.tiles)
    for z in ("guidance_scale", "num_inference_steps"):
        explorer.z.value = z
        assert explorer.error is None and len(explorer.tiles) == 12


def test_sweep_explorer_sliders_tiles_and_crisp_grid(three_axis_sweep):
    explorer = SweepExplorer(three_axis_sweep)
    assert set(explorer.sliders) == {"seed", "guidance_scale", "num_inference_steps"}
    shown = {n for n, s in explorer.sliders.items() if s.layout.display != "none"}
    assert shown == {"num_inference_steps"}  # seed and CFG are on x and y
    explorer.z.value = "(none)"
    explorer.sliders["num_inference_steps"].value = 1
    assert explorer.filters["num_inference_steps"].value == ("Steps: 2",)
    assert explorer.grid_arguments()["filter"] == {"num_inference_steps": 2}
    assert len(explorer.tiles) == 6 and {t.request.num_inference_steps for t in explorer.tiles} == {2}
    explorer.sliders["num_inference_steps"].value = -1  # all
    assert len(explorer.tiles) == 12

    assert explorer.tile_buttons[-1].description == "Seed: 3, CFG: 5, Steps: 2"  # the axes' order
    explorer.tile_buttons[-1].click()  # the last tile: seed 3, CFG 5, 2 steps
    assert explorer.cell is explorer.tiles[-1]
    assert (explorer.cell_params["seed"], explorer.cell_params["guidance_scale"]) == (3, 5.0)
    assert explorer.cell_params["num_inference_steps"] == 2
    assert [explorer.pick[n].value for n in ("seed", "guidance_scale", "num_inference_steps")] == [2, 1, 1]

    # the grid is enlarged by a whole number, drawn nearest-neighbour
    scale = explorer.grid_scale
    assert isinstance(scale, int) and scale >= 1 and "sdlab-pixelated" in explorer.grid._dom_classes
    assert explorer.grid.layout.width == f"{explorer.grid_image.width * scale}px"
    assert explorer.grid.layout.height == f"{explorer.grid_image.height * scale}px"


def test_scheduler_bench_widget(sd1_pipe):
    bench = SchedulerBench(sd1_pipe, background=False)
    assert set(bench.schedulers.value) <= set(bench.schedulers.options)
    bench.schedulers.value = ("Euler", "DDIM")
    bench.num_inference_steps.value = "1, 2"
    bench.seeds.value, bench.repeats.value, bench.warmup.value, bench.reference_steps.value = 1, 1, 0, 3
    bench.run_button.click()
    assert bench.error is None, bench.status.value
    rows = bench.last_result.table
    assert [(r["scheduler"], r["num_inference_steps"]) for r in rows] == [
        ("Euler", 1),
        ("Euler", 2),
        ("DDIM", 1),
        ("DDIM", 2),
    ]
    assert "Euler" in bench.table.value and len(bench.plots.children) == 2
    assert bench.progress.value == bench.progress.max

    bench.num_inference_steps.value = "0"
    bench.run_button.click()
    assert isinstance(bench.error, ValueError) and "num_inference_steps" in bench.status.value
    assert bench.last_result.table == rows  # the last good result is kept


def _small_bench_widget(pipe, **kwargs):
    bench = SchedulerBench(pipe, **{"background": False, **kwargs})
    bench.schedulers.value = ("Euler", "DDIM")
    bench.num_inference_steps.value = "1, 2"
    bench.seeds.value, bench.repeats.value, bench.warmup.value, bench.reference_steps.value = 2, 1, 0, 3
    return bench


def test_scheduler_bench_shows_each_settings_images(sd1_pipe):
    bench = _small_bench_widget(sd1_pipe, load_average=lambda: 0.0)
    bench.run_button.click()
    assert bench.state == "done" and bench.error is None, bench.status.value
    assert set(bench.images) == {("Euler", 1), ("Euler", 2), ("DDIM", 1), ("DDIM", 2)}
    assert all(len(images) == 2 for images in bench.images.values())  # one per seed
    rows = bench.gallery.children
    assert len(rows) == 4 and "DDIM" in rows[2].children[0].value and "SSIM" in rows[2].children[0].value
    thumbs = rows[0].children[1:]
    assert len(thumbs) == 2 and thumbs[0].value == png_bytes(bench.images[("Euler", 1)][0])
    assert "WARNING" not in bench.status.value and not bench.last_result.busy


def test_scheduler_bench_warns_when_the_machine_was_busy(sd1_pipe):
    import os

    bench = _small_bench_widget(sd1_pipe, load_average=lambda: os.cpu_count() + 1.0)
    bench.num_inference_steps.value = "1"
    bench.run_button.click()
    assert bench.state == "done" and bench.last_result.busy
    assert "WARNING" in bench.status.value and "busy" in bench.status.value
    assert "sdlab-bench-busy" in bench.table.value


def test_scheduler_bench_cancel_stops_the_run(sd1_pipe):
    bench = _small_bench_widget(sd1_pipe)
    bench.cancel_button.click()  # idle: nothing happens
    assert bench.state == "ready" and bench.cancel_button.disabled

    def press_cancel(change):  # the second timed setting begins: the user presses Cancel
        if change["new"] == 2:
            assert not bench.cancel_button.disabled
            bench.cancel_button.click()

    bench.progress.observe(press_cancel, names="value")
    assert bench.run() is None
    assert bench.state == "cancelled" and "cancelled" in bench.status.value and bench.error is None
    assert bench.last_result is None and bench.images == {}
    assert bench.table.value == "" and bench.gallery.children == () and bench.plots.children == ()
    assert bench.progress.value == 2  # stopped inside the second setting, not at its end
    assert not bench.run_button.disabled and bench.cancel_button.disabled

    bench.progress.unobserve(press_cancel, names="value")
    bench.num_inference_steps.value = "1"
    bench.run_button.click()  # the next run is not cancelled by the last one's Cancel
    assert bench.state == "done" and len(bench.last_result.rows) == 2


def test_sweep_explorer_refreshes_do_not_pile_up_widgets(three_axis_sweep):
    """A refresh rebuilt every tile button and left the old ones alive: a 576-cell explorer kept
    about 1,900 buttons (6 MB of a notebook's saved widget state)."""
    from ipywidgets.widgets.widget import _instances

    explorer = SweepExplorer(three_axis_sweep)
    explorer.tile_buttons[0].click()
    before = len(_instances)
    for _ in range(3):
        explorer.sliders["num_inference_steps"].value = 1
        explorer.sliders["num_inference_steps"].value = -1
        explorer.tile_buttons[-1].click()
    assert len(explorer.tiles) == 12
    assert len(_instances) <= before
