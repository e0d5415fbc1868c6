"""sweep(): batching across cells, equality with generate, cache, resume, failures, grids."""

import json

import pytest
from helpers import max_pixel_diff
from PIL import Image, PngImagePlugin

import sdlab
from sdlab.backends import as_backend
from sdlab.sweeps import Axis, SweepResult, load_sweep

STEPS = 3


class CountingBackend:
    """The real local backend, counting run() calls and optionally failing on demand."""

    def __init__(self, pipe, fail_seeds=(), oom_above=None, interrupt_after=None):
        self.inner = as_backend(pipe)
        self.calls = []
        self.fail_seeds = set(fail_seeds)
        self.oom_above = oom_above
        self.interrupt_after = interrupt_after
        self.name = self.inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def model_id(self):
        return self.inner.model_id

    @property
    def defaults(self):
        return self.inner.defaults

    @property
    def size_multiple(self):
        return self.inner.size_multiple

    @property
    def max_batch_size(self):
        return self.inner.max_batch_size

    def supports_per_image_guidance(self):
        return self.inner.supports_per_image_guidance()

    def validate(self, request):
        return self.inner.validate(request)

    def identity(self):
        return self.inner.identity()

    def run(self, request, **kwargs):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(len(request))
        if self.oom_above is not None and len(request) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fail_seeds.intersection(request.seed):
            raise sdlab.BackendError(f"backend refused seed {sorted(self.fail_seeds)}")
        return self.inner.run(request, **kwargs)


def grid_sweep(backend, out_dir, **kwargs):
    kwargs.setdefault("axes", {"seed": "1-4", "guidance_scale": [1.5, 3, 5, 7]})
    return sdlab.sweep(
        backend, "a red circle", batch_size=16, out_dir=out_dir, num_inference_steps=STEPS, verbose=False, **kwargs
    )


@pytest.fixture
def counting(sd1_pipe):
    return CountingBackend(sd1_pipe)


def test_seed_by_guidance_grid_is_one_batched_call(counting, tmp_path, sd1_pipe):
    result = grid_sweep(counting, tmp_path)
    assert counting.calls == [16]
    assert isinstance(result, SweepResult) and len(result) == 16
    for seed, g in [(1, 1.5), (3, 5), (4, 7)]:
        alone = sdlab.generate(sd1_pipe, "a red circle", seed=seed, guidance_scale=g, num_inference_steps=STEPS)
        assert max_pixel_diff(result.image(seed=seed, guidance_scale=g), alone.image) <= 2


def test_sdxl_cells_match_generate(sdxl_pipe, tmp_path):
    result = sdlab.sweep(
        sdxl_pipe,
        "a red circle",
        axes={"seed": [1, 2], "guidance_scale": [1.0, 6.0]},
        out_dir=tmp_path,
        num_inference_steps=STEPS,
        verbose=False,
    )
    alone = sdlab.generate(sdxl_pipe, "a red circle", seed=2, guidance_scale=6.0, num_inference_steps=STEPS)
    assert max_pixel_diff(result.image(seed=2, guidance_scale=6.0), alone.image) <= 2


def test_identical_rerun_generates_nothing_and_extension_only_new_cells(counting, tmp_path):
    grid_sweep(counting, tmp_path)
    counting.calls.clear()
    again = grid_sweep(counting, tmp_path)
    assert counting.calls == [] and all(c.cached for c in again.cells)
    extended = grid_sweep(counting, tmp_path, axes={"seed": "1-5", "guidance_scale": [1.5, 3, 5, 7]})
    assert counting.calls == [4]
    assert sum(not c.cached for c in extended.cells) == 4


def test_changing_a_fixed_parameter_misses_the_cache(counting, tmp_path):
    grid_sweep(counting, tmp_path, axes={"seed": [1, 2]})
    counting.calls.clear()
    sdlab.sweep(
        counting, "a red circle", axes={"seed": [1, 2]}, out_dir=tmp_path, num_inference_steps=STEPS + 1, verbose=False
    )
    assert counting.calls == [2]


def test_corrupt_and_missing_files_are_regenerated(counting, tmp_path):
    first = grid_sweep(counting, tmp_path, axes={"seed": [1, 2, 3]})
    first.cells[0].path.write_bytes(b"garbage")
    first.cells[1].path.unlink()
    counting.calls.clear()
    again = grid_sweep(counting, tmp_path, axes={"seed": [1, 2, 3]})
    assert counting.calls == [2]
    assert [c.cached for c in again.cells] == [False, False, True]
    assert Image.open(again.cells[0].path).size == (64, 64)


def test_interrupted_sweep_resumes_where_it_stopped(sd1_pipe, tmp_path):
    stopping = CountingBackend(sd1_pipe, interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        sdlab.sweep(
            stopping,
            "a red circle",
            axes={"seed": "1-8"},
            batch_size=2,
            out_dir=tmp_path,
            num_inference_steps=STEPS,
            verbose=False,
        )
    # a crash can also leave half a manifest line behind
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"key": "abc", "fi')
    resumed = CountingBackend(sd1_pipe)
    result = sdlab.sweep(
        resumed,
        "a red circle",
        axes={"seed": "1-8"},
        batch_size=2,
        out_dir=tmp_path,
        num_inference_steps=STEPS,
        verbose=False,
    )
    assert sum(resumed.calls) == 4 and sum(c.cached for c in result.cells) == 4
    assert all(c.ok for c in result.cells)


def test_a_failing_cell_is_recorded_and_the_rest_goes_on(sd1_pipe, tmp_path):
    failing = CountingBackend(sd1_pipe, fail_seeds={3})
    result = grid_sweep(failing, tmp_path, axes={"seed": "1-4"})
    errors = {row["seed"]: row["error"] for row in result.table}
    assert errors[3] and "refused" in errors[3]
    assert all(errors[s] is None for s in (1, 2, 4))
    grid = result.grid()  # failed cells are drawn grey, never an exception
    assert grid.width > 0
    # the failure is not cached: a rerun tries that cell again
    retry = CountingBackend(sd1_pipe)
    grid_sweep(retry, tmp_path, axes={"seed": "1-4"})
    assert retry.calls == [1]


def test_out_of_memory_splits_the_batch(sd1_pipe, tmp_path):
    oom = CountingBackend(sd1_pipe, oom_above=2)
    result = grid_sweep(oom, tmp_path, axes={"seed": "1-8"})
    assert all(c.ok for c in result.cells)
    assert oom.calls[0] == 8 and max(oom.calls[1:]) <= 4 and sum(n for n in oom.calls if n <= 2) == 8


def test_linked_axes_move_together(counting, tmp_path):
    result = grid_sweep(
        counting,
        tmp_path,
        axes={"guidance_scale": [2, 4, 6], "num_inference_steps": [1, 2, 3]},
        link=[("guidance_scale", "num_inference_steps")],
    )
    assert len(result) == 3
    assert [(r["guidance_scale"], r["num_inference_steps"]) for r in result.table] == [(2, 1), (4, 2), (6, 3)]
    with pytest.raises(ValueError, match="same number"):
        grid_sweep(
            counting,
            tmp_path,
            axes={"guidance_scale": [2, 4], "num_inference_steps": [1, 2, 3]},
            link=[("guidance_scale", "num_inference_steps")],
        )


def test_seeds_fixed_random_and_varied(counting, tmp_path):
    r = grid_sweep(counting, tmp_path, axes={"guidance_scale": [2, 4]}, seed=None)
    seeds = {row["seed"] for row in r.table}
    assert len(seeds) == 1 and r.spec["fixed"]["seed"] == seeds.pop()
    v = grid_sweep(
        counting, tmp_path, axes={"guidance_scale": [2, 4], "num_inference_steps": [1, 2]}, seed=10, vary_seeds=True
    )
    assert [row["seed"] for row in v.table] == [10, 11, 12, 13]
    s = grid_sweep(counting, tmp_path, axes={"seed": [-1, 5]})
    assert s.table[0]["seed"] != -1 and s.axis("seed").values[1] == 5


def test_prompt_axes_in_one_sweep(counting, tmp_path):
    result = sdlab.sweep(
        counting,
        "a {shape} red circle on a blue background",
        axes={"shape": ["large", "small"], "sr1": sdlab.prompt_sr("red, blue"), "sr2": sdlab.prompt_sr("blue, red")},
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
    )
    prompts = {(r["shape"], r["sr1"], r["sr2"]): r["prompt"] for r in result.table}
    assert prompts[("small", "blue", "red")] == "a small blue circle on a red background"
    assert prompts[("large", "red", "blue")] == "a large red circle on a blue background"
    with pytest.raises(ValueError, match="not in the prompt"):
        sdlab.sweep(counting, "a circle", axes={"sr": sdlab.prompt_sr("red, blue")}, out_dir=tmp_path, verbose=False)


def test_matrix_and_prompt_axis(counting, tmp_path):
    m = sdlab.sweep(
        counting,
        None,
        axes={"matrix": sdlab.prompt_matrix("a circle|red|large")},
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
    )
    assert [r["prompt"] for r in m.table] == ["a circle", "a circle, red", "a circle, large", "a circle, red, large"]
    assert counting.calls[-1] == 4  # different prompts share one call
    p = sdlab.sweep(
        counting,
        None,
        axes={"prompt": ["a red circle", "a blue square"]},
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
    )
    assert len(p) == 2


def test_scheduler_axis_groups_calls_by_scheduler(counting, tmp_path):
    r = grid_sweep(counting, tmp_path, axes={"seed": [1, 2], "scheduler": ["Euler a", "DDIM"]})
    assert sorted(counting.calls) == [2, 2]
    rec = sdlab.read_params(r.select(scheduler="DDIM")[0].path)
    assert rec["scheduler"] == "DDIM"


def test_pipeline_keyword_axis(counting, tmp_path):
    r = grid_sweep(counting, tmp_path, axes={"guidance_rescale": [0.0, 0.7]})
    assert len(r) == 2 and all(c.ok for c in r.cells)
    assert r.cells[1].params["pipeline_kwargs"]["guidance_rescale"] == 0.7


def test_bad_input_fails_before_any_generation(counting, tmp_path):
    with pytest.raises(ValueError, match="not_an_argument"):
        grid_sweep(counting, tmp_path, axes={"not_an_argument": [1, 2]})
    with pytest.raises(ValueError, match="width"):
        grid_sweep(counting, tmp_path, axes={"size": ["60x64"]})
    with pytest.raises(ValueError, match="batch_size"):
        sdlab.sweep(counting, "x", axes={"seed": [1]}, batch_size=0, verbose=False, out_dir=tmp_path)
    assert counting.calls == []


def test_model_axis_loads_each_model_once_and_not_when_cached(tiny_dirs, tmp_path):
    from sdlab.backends import open_model
    from sdlab.executors import LocalExecutor

    loads = []
    counting = LocalExecutor(open_model=lambda spec: loads.append(spec) or open_model(spec))
    models = ["tiny", str(tiny_dirs["sd1"])]
    r = sdlab.sweep(
        None,
        "a red circle",
        axes={"model": models, "seed": [1, 2]},
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
        executor=counting,
    )
    assert loads == models and all(c.ok for c in r.cells)
    loads.clear()
    sdlab.sweep(
        None,
        "a red circle",
        axes={"model": models, "seed": [1, 2]},
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
        executor=counting,
    )
    assert loads == []


def test_table_selection_and_records(counting, tmp_path):
    r = grid_sweep(counting, tmp_path)
    row = r.table[0]
    for key in ("seed", "guidance_scale", "path", "seconds", "peak_memory_mb", "error", "cached"):
        assert key in row
    assert len(r.select(seed=2)) == 4 and len(r.select(guidance_scale=[3, 5])) == 8
    with pytest.raises(ValueError, match="no value"):
        r.select(seed=99)
    rec = sdlab.read_params(r.select(seed=2, guidance_scale=3)[0].path)
    assert rec["seed"] == 2 and rec["guidance_scale"] == 3.0 and rec["sweep"]["coords"]["seed"] == "Seed: 2"
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len({m["key"] for m in manifest}) == 16


def test_grid_layouts_and_rebuild_from_the_grid_png(counting, tmp_path):
    r = grid_sweep(counting, tmp_path, axes={"seed": [1, 2], "guidance_scale": [2, 4], "num_inference_steps": [1, 2]})
    g = r.grid()
    assert g.width > 2 * 2 * 64  # two sub-grids side by side
    g2 = r.grid(x="guidance_scale", y="seed", filter={"num_inference_steps": 1})
    assert g2.width < g.width
    # filtering the x or y axis itself drops its other columns and rows, no blank cells
    one_column = r.grid(x="guidance_scale", y="seed", z="num_inference_steps", filter={"guidance_scale": 4})
    full = r.grid(x="guidance_scale", y="seed", z="num_inference_steps")
    assert one_column.height == full.height and one_column.width < full.width * 0.75
    one_each = r.grid(x="guidance_scale", y="seed", filter={"guidance_scale": 2, "seed": 1, "num_inference_steps": 2})
    assert one_each.width < g2.width and one_each.height < g2.height
    path = r.save_grid(tmp_path / "grid.png")
    kwargs = load_sweep(path)
    counting.calls.clear()
    again = sdlab.sweep(counting, batch_size=16, verbose=False, **kwargs)  # out_dir: the run directory
    assert counting.calls == [] and len(again) == len(r)
    fig = r.figure(filter={"num_inference_steps": 1})
    assert len(fig.axes) == 4


def test_cli_sweep(tmp_path, capsys):
    from sdlab.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "sweep",
                "a red circle",
                "--model",
                "tiny",
                "--axis",
                "seed=1-2",
                "--axis",
                "guidance_scale=1,5",
                "--steps",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "grid.png").exists() and len(list((out / "cells").glob("*.png"))) == 4
    assert main(["sweep", "x", "--model", "tiny", "--axis", "seed=1,zz", "--out", str(out)]) == 2
    assert "zz" in capsys.readouterr().err


# ------------------------------------------------------------------ the record is the truth (issue 14)


def _perturbed_unet(folder):
    """Overwrite a folder's UNet weights in place, as a trainer saving a checkpoint does."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05)
    unet.save_pretrained(folder / "unet")


@pytest.mark.parametrize("as_axis", [False, True])
def test_weights_overwritten_in_place_regenerate_every_cell(tiny_dirs, tmp_path, as_axis):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["sd1"], folder)

    def run():
        if as_axis:
            return sdlab.sweep(
                None,
                "a red circle",
                axes={"model": [str(folder)], "seed": [1, 2]},
                out_dir=tmp_path / "run",
                num_inference_steps=2,
                verbose=False,
            )
        return sdlab.sweep(
            str(folder),
            "a red circle",
            axes={"seed": [1, 2]},
            out_dir=tmp_path / "run",
            num_inference_steps=2,
            verbose=False,
        )

    first = run()
    again = run()
    assert not any(c.cached for c in first.cells) and all(c.cached for c in again.cells)
    _perturbed_unet(folder)
    after = run()
    assert not any(c.cached for c in after.cells)
    assert max_pixel_diff(after.image(seed=1), first.image(seed=1)) > 0


def test_weights_changed_in_memory_regenerate_every_cell(tmp_path):
    import torch

    from sdlab import testing

    pipe = testing.tiny_pipeline("sd1")
    kwargs = dict(axes={"seed": [1, 2]}, out_dir=tmp_path, num_inference_steps=2, width=64, height=64, verbose=False)
    first = sdlab.sweep(pipe, "a red circle", **kwargs)
    assert all(c.cached for c in sdlab.sweep(pipe, "a red circle", **kwargs).cells)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(1.5)
    after = sdlab.sweep(pipe, "a red circle", **kwargs)
    assert not any(c.cached for c in after.cells)
    assert max_pixel_diff(after.image(seed=1), first.image(seed=1)) > 0
    assert after.cells[0].key != first.cells[0].key


@pytest.mark.parametrize(
    "where, value",
    [
        ("seed", -5),
        ("seed", 1.5),
        ("seed", 2**64),
        ("guidance_scale", float("nan")),
        ("guidance_scale", 1e308),
        ("num_inference_steps", 0),
        ("clip_skip", -1),
        ("width", 0),
    ],
)
def test_sweeps_refuse_what_generate_refuses_with_the_same_message(counting, sd1_pipe, tmp_path, where, value):
    kwargs = {"seed": 0, "num_inference_steps": 1, where: value}
    with pytest.raises(ValueError) as by_generate:
        sdlab.generate(sd1_pipe, "a red circle", **kwargs)
    with pytest.raises(ValueError) as by_axis:
        sdlab.sweep(
            counting, "a red circle", axes={where: [value]}, out_dir=tmp_path, num_inference_steps=1, verbose=False
        )
    assert str(by_axis.value) == str(by_generate.value)
    if where != "seed":  # the sweep's base value (its seed argument resolves -1 only)
        with pytest.raises(ValueError) as by_base:
            sdlab.sweep(
                counting,
                "a red circle",
                axes={"seed": [1]},
                out_dir=tmp_path,
                verbose=False,
                **{"num_inference_steps": 1, where: value},
            )
        assert str(by_base.value) == str(by_generate.value)
    assert counting.calls == [] and not (tmp_path / "cells").exists()  # refused before any model work


def test_reserved_keywords_are_refused_by_a_sweep_too(counting, tmp_path):
    import torch

    with pytest.raises(ValueError, match="`prompt_embeds`"):
        sdlab.sweep(
            counting, "x", axes={"seed": [1]}, out_dir=tmp_path, verbose=False, prompt_embeds=torch.zeros(1, 77, 32)
        )
    assert counting.calls == []


def test_clip_skip_axis_makes_different_cells(counting, tmp_path):
    r = sdlab.sweep(
        counting,
        "a red circle",
        axes={"clip_skip": [0, 1], "seed": [1]},
        out_dir=tmp_path,
        num_inference_steps=2,
        verbose=False,
    )
    a, b = r.cells
    assert a.key != b.key and max_pixel_diff(r.images[0], r.images[1]) > 0
    assert sdlab.read_params(b.path)["clip_skip"] == 1 and "clip_skip" not in sdlab.read_params(a.path)


def test_a_manifest_row_cut_without_newline_does_not_eat_the_next(counting, tmp_path):
    grid_sweep(counting, tmp_path, axes={"seed": [1, 2]})
    manifest = tmp_path / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write, no newline
    (tmp_path / "cells" / ".tmp-killed.png").write_bytes(b"partial")
    counting.calls.clear()
    again = grid_sweep(counting, tmp_path, axes={"seed": [1, 2]})
    assert counting.calls == [1]  # only the cut cell
    assert not (tmp_path / "cells" / ".tmp-killed.png").exists()
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]  # every line parses: compacted
    assert len(rows) == 2 and {r["key"] for r in rows} == {c.key for c in again.cells}
    counting.calls.clear()
    grid_sweep(counting, tmp_path, axes={"seed": [1, 2]})
    assert counting.calls == []


def test_manifest_rows_carry_the_request_in_its_json_form(counting, tmp_path):
    from sdlab.request import GenerationRequest

    r = grid_sweep(counting, tmp_path, axes={"seed": [7]})
    row = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    assert GenerationRequest.from_dict(row["request"]) == r.cells[0].request


def test_search_replace_axes_that_overlap_are_refused(counting, tmp_path):
    with pytest.raises(ValueError, match="`sr_a`.*`sr_b`.*overlap"):
        sdlab.sweep(
            counting,
            "a dog on a hill",
            axes={"sr_a": sdlab.prompt_sr("dog, cat"), "sr_b": sdlab.prompt_sr("dog, bird")},
            out_dir=tmp_path,
            num_inference_steps=1,
            verbose=False,
        )
    with pytest.raises(ValueError, match="`sr_a`.*`sr_b`.*overlap"):
        sdlab.sweep(
            counting,
            "a hot dog",
            axes={"sr_a": sdlab.prompt_sr("hot dog, pizza"), "sr_b": sdlab.prompt_sr("dog, cat")},
            out_dir=tmp_path,
            num_inference_steps=1,
            verbose=False,
        )
    assert counting.calls == []


# ------------------------------------------------------------------ grids with A1111's X/Y/Z plot keys


def a1111_grid_png(path, prompt, negative_prompt, params):
    """A grid PNG as A1111 v1.10's X/Y/Z plot saves it: the first cell's infotext (create_infotext's
    `key: value` list, values quoted as infotext_utils.quote does) with the script's keys."""

    def quote(value):
        text = str(value)
        return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",\n:") else text

    lines = [prompt] + ([f"Negative prompt: {negative_prompt}"] if negative_prompt else [])
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items()))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "\n".join(lines))
    Image.new("RGB", (160, 96), "white").save(path, pnginfo=info)
    return path


A1111_SEED_CFG_SAMPLER = {  # X: Seed (one -1), Y: CFG Scale as a float range, Z: Sampler from the dropdown
    "Steps": 2,
    "Sampler": "Euler a",
    "Schedule type": "Automatic",
    "CFG scale": 5.0,
    "Seed": 3713413,
    "Size": "64x64",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Script": "X/Y/Z plot",
    "X Type": "Seed",
    "X Values": "-1, 5",
    "Fixed X Values": "3713413, 5",
    "Y Type": "CFG Scale",
    "Y Values": "5-6 (+1.5)",
    "Z Type": "Sampler",
    "Z Values": "Euler a,DPM++ 2M",
    "Version": "v1.10.1",
}


def test_load_sweep_reads_an_a1111_xyz_grid_and_the_sweep_runs(sd1_pipe, tmp_path):
    png = a1111_grid_png(
        tmp_path / "xyz_grid-0001.png", "a red circle on a blue background", "", A1111_SEED_CFG_SAMPLER
    )
    kwargs = load_sweep(png)
    # the seeds A1111 fixed; its float range as A1111 made it (numpy's arange passes the end: 6.5);
    # the samplers under the grid's "Automatic" schedule type (DPM++ 2M's default is Karras)
    assert kwargs["axes"] == {
        "seed": [3713413, 5],
        "guidance_scale": [5.0, 6.5],
        "scheduler": ["Euler a", "DPM++ 2M Karras"],
    }
    assert list(kwargs["axes"]) == ["seed", "guidance_scale", "scheduler"]  # x, y, z
    assert kwargs["prompt"] == "a red circle on a blue background" and not kwargs["negative_prompt"]
    assert (kwargs["num_inference_steps"], kwargs["width"], kwargs["height"]) == (2, 64, 64)
    assert not {"seed", "guidance_scale", "scheduler", "out_dir"} & set(kwargs)
    result = sdlab.sweep(sd1_pipe, out_dir=tmp_path / "run", verbose=False, **kwargs)
    assert len(result) == 8 and not result.failed
    cell = result.select(seed=5, guidance_scale=6.5, scheduler="DPM++ 2M Karras")[0]
    record = sdlab.read_params(cell.path)
    assert (record["seed"], record["guidance_scale"], record["scheduler"]) == (5, 6.5, "DPM++ 2M Karras")


def test_load_sweep_reads_prompt_sr_steps_and_clip_skip_axes(tmp_path):
    params = {
        "Steps": 3,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 7,
        "Seed": 42,
        "Size": "64x64",
        "Clip skip": 2,
        "Script": "X/Y/Z plot",
        "X Type": "Prompt S/R",
        "X Values": 'cat, dog,"fox, red"',  # A1111's CSV: a quote opens a value only right after a comma
        "Y Type": "Steps",
        "Y Values": "1-10 [4]",
        "Z Type": "Clip skip",
        "Z Values": "1-2",
        "Version": "v1.10.1",
    }
    kwargs = load_sweep(a1111_grid_png(tmp_path / "g.png", "a cat on a hill", "blurry, cat", params))
    sr, steps, clip_skip = kwargs["axes"].values()
    assert isinstance(sr, Axis) and sr.kind == "sr" and sr.values == ("cat", "dog", "fox, red")
    assert steps == [1, 4, 7, 10] and clip_skip == [None, 1]  # A1111's "Clip skip: 2" skips one layer
    assert (kwargs["scheduler"], kwargs["guidance_scale"], kwargs["seed"]) == ("DPM++ 2M Karras", 7.0, 42)
    assert kwargs["negative_prompt"] == "blurry, cat" and "clip_skip" not in kwargs


def test_load_sweep_names_a1111_axes_and_settings_it_does_not_apply(tmp_path):
    base = {"Steps": 2, "Sampler": "Euler", "CFG scale": 7, "Seed": 1, "Size": "64x64", "Script": "X/Y/Z plot"}
    hires = {**base, "X Type": "Seed", "X Values": "1, 2", "Y Type": "Hires steps", "Y Values": "10, 20"}
    with pytest.raises(ValueError, match=r"cannot sweep: 'Hires steps' \(Y\)"):
        load_sweep(a1111_grid_png(tmp_path / "a.png", "x", "", hires))
    both = {**base, "X Type": "Sampler", "X Values": "Euler,DPM++ 2M", "Y Type": "Schedule type", "Y Values": "Karras"}
    with pytest.raises(ValueError, match="'Sampler' and 'Schedule type'"):
        load_sweep(a1111_grid_png(tmp_path / "b.png", "x", "", both))
    extras = {**base, "Lora hashes": "a: 1, b: 2", "Hires upscale": 2, "X Type": "Steps", "X Values": "1-3"}
    with pytest.warns(UserWarning, match=r"apply these settings of the grid's first image: Lora hashes$"):
        kwargs = load_sweep(a1111_grid_png(tmp_path / "c.png", "x", "", extras))
    assert kwargs["axes"] == {"num_inference_steps": [1, 2, 3]}
    assert kwargs["hires_scale"] == 2.0  # hires fix is applied to every cell
    models = {**base, "X Type": "Checkpoint name", "X Values": "v1-5-pruned-emaonly.safetensors [6ce0161689],tiny"}
    kwargs = load_sweep(a1111_grid_png(tmp_path / "e.png", "x", "", models))
    assert kwargs["axes"] == {"model": ["v1-5-pruned-emaonly.safetensors", "tiny"]}  # A1111's title, hash dropped
    plain = {k: v for k, v in base.items() if k != "Script"}
    with pytest.raises(ValueError, match="no sweep definition"):
        load_sweep(a1111_grid_png(tmp_path / "d.png", "x", "", plain))


def test_rerunning_a_grid_png_reuses_its_run_directory(counting, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # the default run directory would be a new, empty runs/sweeps here
    r = grid_sweep(counting, tmp_path / "run", axes={"seed": [1, 2], "guidance_scale": [2, 4]})
    grid = r.save_grid(tmp_path / "shared" / "grid.png")
    kwargs = load_sweep(grid)
    assert Path(kwargs["out_dir"]) == (tmp_path / "run").resolve()
    counting.calls.clear()
    again = sdlab.sweep(counting, verbose=False, **kwargs)
    assert counting.calls == [] and all(c.cached for c in again.cells) and len(again) == 4
    shutil.rmtree(tmp_path / "run")
    assert "out_dir" not in load_sweep(grid)  # the folder is gone: nothing to reuse


def test_the_grid_a1111_text_alone_rebuilds_the_same_sweep(counting, tmp_path):
    from sdlab.metadata import read_text_chunks

    axes = {
        "seed": [1, 2],
        "guidance_scale": [2, 4.5],
        "sr": sdlab.prompt_sr("circle, square"),
        "size": ["64x64", "96x64"],  # no A1111 axis type: sdlab's own key
    }
    r = grid_sweep(counting, tmp_path, axes=axes, negative_prompt="blurry, dark")
    text = read_text_chunks(r.save_grid(tmp_path / "grid.png"))["parameters"]
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)  # as A1111 (or any tool keeping only `parameters`) would pass it on
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    kwargs = load_sweep(tmp_path / "a1111.png")
    assert [len(v) for v in kwargs["axes"].values()] == [2, 2, 2, 2] and "out_dir" not in kwargs
    counting.calls.clear()
    again = sdlab.sweep(counting, out_dir=tmp_path, batch_size=16, verbose=False, **kwargs)
    assert counting.calls == [] and [c.key for c in again.cells] == [c.key for c in r.cells]


def test_variation_axes_batch_across_cells_and_match_generate(counting, tmp_path, sd1_pipe):
    axes = {"variation_strength": "0-1 [3]", "variation_seed": [7, 8]}
    result = grid_sweep(counting, tmp_path, axes=axes, seed=5)
    assert counting.calls == [6]  # one batch: variations are per image
    for vseed, strength in [(7, 0.0), (8, 0.5), (7, 1.0)]:
        alone = sdlab.generate(
            sd1_pipe,
            "a red circle",
            seed=5,
            variation_seed=vseed,
            variation_strength=strength,
            num_inference_steps=STEPS,
        )
        assert max_pixel_diff(result.image(variation_seed=vseed, variation_strength=strength), alone.image) <= 2
    params = [c.request.image_params(0) for c in result.cells]
    records = {(p.get("variation_seed"), p.get("variation_strength")) for p in params}
    assert records == {(None, None), (7, 0.5), (8, 0.5), (7, 1.0), (8, 1.0)}
    assert list(result.axis("variation_strength").labels) == [
        "Var. strength: 0",
        "Var. strength: 0.5",
        "Var. strength: 1",
    ]
    again = grid_sweep(counting, tmp_path, axes=axes, seed=5)  # cached: nothing runs again
    assert counting.calls == [6] and len(again) == 6


def test_a_variation_strength_axis_draws_one_variation_seed(counting, tmp_path):
    result = grid_sweep(counting, tmp_path, axes={"variation_strength": [0.3, 0.6]}, seed=5)
    seeds = {c.request.image_params(0)["variation_seed"] for c in result.cells}
    assert len(seeds) == 1 and isinstance(seeds.pop(), int)


def test_load_sweep_keeps_every_fixed_generation_parameter(counting, tmp_path):
    """The sweep's own parameter names are one list: fixed variation settings come back from the grid PNG."""
    r = sdlab.sweep(
        counting,
        "a red circle",
        axes={"seed": [1]},
        out_dir=tmp_path,
        num_inference_steps=1,
        variation_seed=9,
        variation_strength=0.25,
        clip_skip=1,
        verbose=False,
    )
    loaded = load_sweep(r.save_grid())
    assert (loaded["variation_seed"], loaded["variation_strength"], loaded["clip_skip"]) == (9, 0.25, 1)
