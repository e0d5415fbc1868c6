"""load_sweep_result: a sweep's SweepResult back from its run directory, without its model."""

import json

import pytest
from synthetic_sweeps import write_run_dir
from test_sweep import CountingBackend

import sdlab
from sdlab.sweep_reading import load_sweep_result

STEPS = 2


def _sweep(pipe, out_dir, **kwargs):
    kwargs.setdefault("axes", {"seed": [1, 2], "guidance_scale": [1.5, 5]})
    kwargs.setdefault("num_inference_steps", STEPS)
    return sdlab.sweep(pipe, "a red circle", batch_size=8, out_dir=out_dir, verbose=False, **kwargs)


def _same_cells(loaded, ran):
    assert loaded.axis_names == ran.axis_names
    assert [a.labels for a in loaded.axes] == [a.labels for a in ran.axes]
    assert len(loaded) == len(ran)
    for a, b in zip(loaded.cells, ran.cells):
        assert (a.index, a.coords, a.key, a.model) == (b.index, b.coords, b.key, b.model)
        assert a.request.to_dict() == b.request.to_dict()
        assert a.path == b.path and a.seconds == b.seconds and a.error == b.error


def test_a_run_directory_reads_back_as_the_sweep_that_ran(sd1_pipe, tmp_path):
    ran = _sweep(sd1_pipe, tmp_path, axes={"seed": [1, 2], "guidance_scale": [1.5, 5]}, negative_prompt="blurry")
    loaded = load_sweep_result(tmp_path)
    _same_cells(loaded, ran)
    assert all(c.cached for c in loaded.cells)
    assert [{k: v for k, v in r.items() if k != "cached"} for r in loaded.table] == [
        {k: v for k, v in r.items() if k != "cached"} for r in ran.table
    ]
    assert loaded.grid().size == ran.grid().size
    # its grid PNG names the same sweep
    _same_cells(load_sweep_result(ran.save_grid()), ran)


def test_the_model_defaults_come_from_what_ran(sd1_pipe, tmp_path):
    # steps and guidance left to the model: the loaded requests carry the model's values, as recorded
    ran = _sweep(sd1_pipe, tmp_path, axes={"seed": [3, 4]}, num_inference_steps=None)
    loaded = load_sweep_result(tmp_path)
    _same_cells(loaded, ran)
    assert loaded.cells[0].request.num_inference_steps == sdlab.read_params(ran.cells[0].path)["num_inference_steps"]


def test_fixed_pipeline_keywords(sd1_pipe, tmp_path):
    ran = _sweep(sd1_pipe, tmp_path, axes={"seed": [1, 2]}, scheduler="DDIM", eta=0.5)
    loaded = load_sweep_result(tmp_path)
    _same_cells(loaded, ran)
    assert loaded.cells[0].request.pipeline_kwargs == {"eta": 0.5}


def test_two_sweeps_in_one_directory_each_get_their_own_cells(sd1_pipe, tmp_path):
    # the same axes (so the same cell positions) with a different fixed parameter
    first = _sweep(sd1_pipe, tmp_path, num_inference_steps=2)
    first_grid = first.save_grid(tmp_path / "first.png")
    second = _sweep(sd1_pipe, tmp_path, num_inference_steps=1)
    _same_cells(load_sweep_result(tmp_path), second)  # the newest sweep by default
    _same_cells(load_sweep_result(tmp_path, spec=first_grid), first)
    assert {c.request.num_inference_steps for c in load_sweep_result(first_grid).cells} == {2}


def test_an_interrupted_sweep_reads_with_its_cells_not_run(sd1_pipe, tmp_path):
    stopping = CountingBackend(sd1_pipe, interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):
        sdlab.sweep(
            stopping,
            "a red circle",
            axes={"seed": "1-4"},
            batch_size=2,
            out_dir=tmp_path,
            verbose=False,
            num_inference_steps=STEPS,
        )
    loaded = load_sweep_result(tmp_path)
    done = [c for c in loaded.cells if c.ok]
    assert len(done) == 2 and len(loaded) == 4
    not_run = [c for c in loaded.cells if not c.ok]
    assert all(c.error is None and c.path is None and not c.key for c in not_run)
    # a cell not run has the model's defaults as the cells that ran had them
    assert {c.request.num_inference_steps for c in loaded.cells} == {done[0].request.num_inference_steps}


def test_failed_cells_keep_their_error(sd1_pipe, tmp_path):
    failing = CountingBackend(sd1_pipe, fail_seeds={2})
    ran = _sweep(failing, tmp_path, axes={"seed": [1, 2, 3]})
    loaded = load_sweep_result(tmp_path)
    _same_cells(loaded, ran)
    assert [bool(c.error) for c in loaded.cells] == [False, True, False] and "refused" in loaded.cells[1].error


def test_linked_and_model_axes(tiny_dirs, tmp_path):
    models = ["tiny", str(tiny_dirs["sd1"])]
    ran = sdlab.sweep(
        None,
        "a red circle",
        axes={"model": models, "guidance_scale": [2, 4]},
        link=[("model", "guidance_scale")],
        out_dir=tmp_path,
        num_inference_steps=1,
        verbose=False,
    )
    loaded = load_sweep_result(tmp_path)
    _same_cells(loaded, ran)
    assert [c.model for c in loaded.cells] == models


def test_scores_in_the_manifest_reach_the_cells(tmp_path):
    write_run_dir(tmp_path, {"seed": "0-3", "guidance_scale": [1, 2]}, score_error={2})
    rows = {
        json.loads(line)["index"]: json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()
    }
    loaded = load_sweep_result(tmp_path)
    assert len(loaded) == 8 and all(c.ok for c in loaded.cells)
    for cell in loaded.cells:
        assert cell.metrics == rows[cell.index]["metrics"]
    assert loaded.cells[2].metric_errors == {"sharpness": "ValueError: synthetic scorer failure"}
    assert loaded.table[2]["metrics"] == {"judge.colour": rows[2]["metrics"]["judge.colour"]}


def test_what_is_not_a_run_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`path`.*does not exist"):
        load_sweep_result(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="`path`.*no sweep definition"):
        load_sweep_result(tmp_path)


def test_only_the_sweeps_own_scorers_are_read(tmp_path):
    # a row keeps the scores every sweep of its image computed; the result shows its own sweep's
    write_run_dir(tmp_path, {"seed": "0-1"})
    spec_path = tmp_path / "sweeps" / "synthetic.json"
    spec = json.loads(spec_path.read_text())
    spec["metrics"] = [{"name": "judge", "version": 1, "reference": None, "config": {}}]
    spec_path.write_text(json.dumps(spec))
    loaded = load_sweep_result(tmp_path)
    assert [sorted(c.metrics) for c in loaded.cells] == [["judge.colour"], ["judge.colour"]]
    spec["metrics"] = []
    spec_path.write_text(json.dumps(spec))
    assert all(c.metrics == {} for c in load_sweep_result(tmp_path).cells)


def test_a_scored_sweep_reads_back_with_its_scores(sd1_pipe, tmp_path):
    pytest.importorskip("sdlab.metrics", reason="scores come with sweep(metrics=...)")
    ran = _sweep(sd1_pipe, tmp_path / "run", metrics=["sharpness"])
    loaded = load_sweep_result(tmp_path / "run")
    _same_cells(loaded, ran)
    assert [c.metrics for c in loaded.cells] == [c.metrics for c in ran.cells]
    assert all(isinstance(c.metrics["sharpness"], float) for c in loaded.cells)
    from sdlab.sweep_html import viewer_data

    data = viewer_data(loaded, tmp_path / "viewer-data")
    assert data["fields"][0] == {"name": "sharpness", "kind": "metric"}
    assert [e["scores"]["sharpness"] for e in data["cells"]] == [c.metrics["sharpness"] for c in ran.cells]
