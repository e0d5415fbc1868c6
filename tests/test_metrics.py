"""sdlab.metrics: scorers, scores in sweeps (cached, added later, resumed, failing), aggregation, plots."""

import json
import math

import numpy as np
import pytest
from PIL import Image
from test_sweep import STEPS, CountingBackend

import sdlab
from sdlab import metrics
from sdlab.bundled.world import COLOURS, caption, parse_caption, render, sample_scene


def counted(name, calls, value=lambda image, record: float(np.asarray(image).mean())):
    def fn(image, record):
        calls.append(record["seed"])
        return value(image, record)

    return metrics.Scorer(name, fn)


def run(backend, out_dir, scorers, **kwargs):
    kwargs.setdefault("axes", {"seed": "1-3", "guidance_scale": [1.5, 5]})
    kwargs.setdefault("batch_size", 8)
    return sdlab.sweep(
        backend,
        "a red circle",
        out_dir=out_dir,
        num_inference_steps=STEPS,
        verbose=False,
        metrics=scorers,
        **kwargs,
    )


@pytest.fixture
def counting(sd1_pipe):
    return CountingBackend(sd1_pipe)


# ------------------------------------------------------------------ scores in sweeps


def test_scores_land_in_table_and_manifest_and_a_rerun_computes_nothing(counting, tmp_path, sd1_pipe):
    calls = []
    result = run(counting, tmp_path, [counted("mean", calls), "sharpness"])
    assert len(calls) == 6 and counting.calls == [6]
    for row, cell, image in zip(result.table, result.cells, result.images):
        assert row["metrics"]["mean"] == pytest.approx(float(np.asarray(image).mean()))
        assert row["metrics"]["sharpness"] > 0 and row["metric_errors"] == {}
        assert cell.metrics == row["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert {r["key"]: r["metrics"] for r in rows} == {c.key: c.metrics for c in result.cells}

    again = CountingBackend(sd1_pipe)
    rerun = run(again, tmp_path, [counted("mean", calls), "sharpness"])
    assert again.calls == [] and len(calls) == 6  # nothing generated, nothing scored
    assert [r["metrics"] for r in rerun.table] == [r["metrics"] for r in result.table]


def test_a_metric_added_to_a_finished_sweep_scores_only_itself(counting, tmp_path):
    first, second = [], []
    run(counting, tmp_path, [counted("mean", first)])
    counting.calls.clear()
    result = run(counting, tmp_path, [counted("mean", first), counted("seed_score", second, lambda i, r: r["seed"])])
    assert counting.calls == [] and len(first) == 6 and len(second) == 6
    assert [r["metrics"]["seed_score"] for r in result.table] == [r["seed"] for r in result.table]
    assert all("mean" in r["metrics"] for r in result.table)


def test_a_new_scorer_version_scores_again(counting, tmp_path):
    calls = []
    run(counting, tmp_path, [counted("mean", calls)])
    fn = counted("mean", calls).fn
    run(counting, tmp_path, [metrics.Scorer("mean", fn, version="2")])
    assert len(calls) == 12


def test_a_failing_scorer_is_recorded_per_cell_and_the_sweep_goes_on(counting, tmp_path):
    def picky(image, record):
        if record["seed"] == 2:
            raise RuntimeError("no seed 2")
        return 1.0

    result = run(counting, tmp_path, [picky, "saturation"])
    bad = [r for r in result.table if r["seed"] == 2]
    assert len(bad) == 2 and all(r["metric_errors"] == {"picky": "RuntimeError: no seed 2"} for r in bad)
    assert all("picky" not in r["metrics"] and "saturation" in r["metrics"] for r in bad)
    good = [r for r in result.table if r["seed"] != 2]
    assert all(r["metrics"]["picky"] == 1.0 and r["metric_errors"] == {} for r in good)
    assert all(c.ok for c in result.cells)


def test_scores_survive_an_interrupted_sweep(sd1_pipe, tmp_path):
    calls = []
    stopping = CountingBackend(sd1_pipe, interrupt_after=1)
    with pytest.raises(KeyboardInterrupt):
        run(stopping, tmp_path, [counted("mean", calls)], axes={"seed": "1-4"}, batch_size=2)
    assert calls == []  # scoring comes after the images
    resumed = CountingBackend(sd1_pipe)
    result = run(resumed, tmp_path, [counted("mean", calls)], axes={"seed": "1-4"}, batch_size=2)
    assert sum(resumed.calls) == 2 and len(calls) == 4
    assert all("mean" in r["metrics"] for r in result.table)
    again = run(CountingBackend(sd1_pipe), tmp_path, [counted("mean", calls)], axes={"seed": "1-4"}, batch_size=2)
    assert len(calls) == 4 and all("mean" in r["metrics"] for r in again.table)


def test_a_regenerated_image_is_scored_again(counting, tmp_path):
    calls = []
    result = run(counting, tmp_path, [counted("mean", calls)])
    result.cells[0].path.unlink()
    run(counting, tmp_path, [counted("mean", calls)])
    assert len(calls) == 7


def test_similarity_to_a_reference_cell(counting, tmp_path, sd1_pipe):
    sim = metrics.similarity(reference={"num_inference_steps": 4}, vae=sd1_pipe.vae)
    result = run(counting, tmp_path, [sim], axes={"num_inference_steps": [1, 2, 4], "seed": [1, 2]})
    for cell in result.cells:
        m = cell.metrics
        ref = result.image(num_inference_steps=4, seed=cell.request.seed[0])
        expected = metrics.image_distance(
            result.image(num_inference_steps=cell.request.num_inference_steps, seed=cell.request.seed[0]), ref
        )
        assert m["similarity.ssim"] == pytest.approx(expected["ssim"])
        if cell.request.num_inference_steps == 4:
            assert m["similarity.ssim"] == pytest.approx(1.0) and m["similarity.mae"] == 0
            assert m["similarity.psnr"] is None and m["similarity.latent_mse"] == 0  # inf is not JSON: None
        else:
            assert m["similarity.mae"] > 0 and m["similarity.latent_mse"] > 0


def test_a_reference_not_on_the_axes_fails_before_any_generation(counting, tmp_path):
    with pytest.raises(ValueError, match="num_inference_steps.*50"):
        run(
            counting,
            tmp_path,
            [metrics.similarity(reference={"num_inference_steps": 50})],
            axes={"num_inference_steps": [1, 2]},
        )
    with pytest.raises(ValueError, match="scheduler"):
        run(counting, tmp_path, [metrics.similarity(reference={"scheduler": "DDIM"})])
    with pytest.raises(ValueError, match="unknown metric 'sharp'"):
        run(counting, tmp_path, ["sharp"])
    with pytest.raises(ValueError, match="two scorers are named 'judge'"):
        run(counting, tmp_path, ["judge", "judge"])
    assert counting.calls == []


# ------------------------------------------------------------------ the scorers


def test_image_statistics_order_images_as_expected():
    flat = Image.new("RGB", (32, 32), (128, 128, 128))
    checker = Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    vivid = Image.new("RGB", (32, 32), (230, 20, 20))
    assert metrics._sharpness(flat) == 0 and metrics._sharpness(checker) > 1000
    assert metrics._colourfulness(flat) == 0 and metrics._colourfulness(vivid) > 50
    assert metrics._saturation(flat) == 0 and metrics._saturation(vivid) > 0.8


def test_parse_caption_reads_every_caption_the_world_writes():
    for seed in range(400):
        scene = sample_scene(seed)
        for text in (caption(scene, seed), caption(scene, variant=False)):
            got = parse_caption(text)
            assert {k: got[k] for k in ("shape", "colour", "background", "size")} == {
                "shape": scene.shape,
                "colour": scene.colour,
                "background": scene.background,
                "size": scene.size,
            }
            assert got.get("position", scene.position) == scene.position
    assert parse_caption("a red circle") == {"shape": "circle", "colour": "red"}


def test_judge_scores_rendered_scenes_against_their_prompts():
    scorer = metrics.judge()
    scene = sample_scene(3)
    image = render(scene, 64)
    right = scorer.score(image, {"prompt": caption(scene, variant=False)})
    assert right["judge.colour"] == right["judge.shape"] == right["judge.background"] == 1.0
    assert right["judge.all"] == 1.0
    other = next(c for c in COLOURS if c not in (scene.colour, scene.background))
    wrong = scorer.score(image, {"prompt": f"a {other} {scene.shape}"})
    assert wrong["judge.colour"] == 0.0 and wrong["judge.shape"] == 1.0 and wrong["judge.colour_shape"] == 0.5
    assert wrong["judge.background"] is None and wrong["judge.all"] == 0.0
    assert "judge.outlined" not in right  # only a prompt that asks for outlines scores them


def test_judge_scores_outlines_only_when_the_prompt_asks_for_them():
    scorer = metrics.judge()
    scene = sample_scene(3, outlined=True)
    prompt = caption(scene, variant=False)
    assert "outlined" in prompt
    drawn = scorer.score(render(scene, 64), {"prompt": prompt})
    assert drawn["judge.outlined"] == drawn["judge.colour_shape"] == drawn["judge.all"] == 1.0
    filled = scorer.score(render(sample_scene(3), 64), {"prompt": prompt})
    assert filled["judge.outlined"] == 0.0 and filled["judge.colour_shape"] == 1.0 and filled["judge.all"] == 0.0


def test_scores_must_be_numbers():
    with pytest.raises(TypeError, match="scores are numbers"):
        metrics.flatten("x", {"a": "high"})
    assert metrics.flatten("x", {"a": math.inf, "b": 2}) == {"x.a": None, "x.b": 2.0}


# ------------------------------------------------------------------ CLIP score from the HF cache


def tiny_clip_folder(folder):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sdlab.testing.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_score_from_a_filled_hub_cache(counting, tmp_path, monkeypatch):
    import huggingface_hub

    from sdlab.testing import fill_hf_cache

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    fill_hf_cache(tiny_clip_folder(tmp_path / "clip"), "openai/clip-vit-base-patch32", cache)
    scorer = metrics.clip_score(cache_dir=cache)
    assert scorer.version.startswith("openai/clip-vit-base-patch32@") and not scorer.version.endswith("not-cached")
    prompts = ["a red circle", "a blue star", "a green square", "a small yellow triangle"]
    result = run(counting, tmp_path / "run", [scorer], axes={"prompt": prompts})
    assert all(r["metric_errors"] == {} for r in result.table)
    # the same model, its image and text features taken apart: 100 x cosine, floored at 0
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tmp_path / "clip").eval()
    processor = CLIPProcessor.from_pretrained(tmp_path / "clip")
    for row, image in zip(result.table, result.images):
        inputs = processor(text=[row["prompt"]], images=[image], return_tensors="pt", padding=True)
        with torch.no_grad():
            i = model.get_image_features(pixel_values=inputs["pixel_values"])
            t = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        i, t = (getattr(f, "pooler_output", f) for f in (i, t))  # transformers 5 returns outputs
        expected = 100 * max(float(torch.nn.functional.cosine_similarity(i, t)[0]), 0.0)
        assert row["metrics"]["clip_score"] == pytest.approx(expected, abs=1e-4)
    assert len({r["metrics"]["clip_score"] for r in result.table}) > 1


def test_clip_score_without_weights_names_the_model_to_download(counting, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(metrics.MissingModelError, match="huggingface-cli download openai/clip-vit-large-patch14"):
        run(counting, tmp_path, [metrics.clip_score("openai/clip-vit-large-patch14", cache_dir=tmp_path / "empty")])
    assert counting.calls == []


# ------------------------------------------------------------------ aggregation and curves


def test_aggregate_over_seeds_and_plot(counting, tmp_path):
    result = run(counting, tmp_path, [lambda_score()], axes={"seed": [1, 2, 4], "guidance_scale": [1.5, 5]})
    rows = result.aggregate("seed_plus_g", over="seed")
    assert [(r["guidance_scale"], r["n"], r["missing"]) for r in rows] == [(1.5, 3, 0), (5, 3, 0)]
    assert rows[0]["mean"] == pytest.approx((1 + 2 + 4) / 3 + 1.5) and rows[1]["max"] == 9
    assert rows[0]["std"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    by_seed = result.aggregate("seed_plus_g", over="guidance_scale")
    assert [r["seed"] for r in by_seed] == [1, 2, 4] and by_seed[2]["mean"] == pytest.approx(4 + 3.25)
    pinned = result.aggregate("seed_plus_g", over="seed", filter={"guidance_scale": 5})
    assert len(pinned) == 1 and pinned[0]["min"] == 6
    with pytest.raises(ValueError, match="no cell has a score 'nope'.*seed_plus_g"):
        result.aggregate("nope")
    with pytest.raises(ValueError, match="no axis 'steps'"):
        result.aggregate("seed_plus_g", over="steps")

    import matplotlib

    matplotlib.use("Agg")
    ax = result.plot("seed_plus_g", x="guidance_scale")
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1.5, 5] and list(line.get_ydata()) == [r["mean"] for r in rows]
    ax = result.plot("seed_plus_g", x="guidance_scale", hue="seed")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Seed: 1", "Seed: 2", "Seed: 4"]
    assert list(ax.get_lines()[2].get_ydata()) == [5.5, 9]


def lambda_score():
    def seed_plus_g(image, record):
        return record["seed"] + record["guidance_scale"]

    return seed_plus_g


# ------------------------------------------------------------------ SweepExplorer's curve and scores


def test_sweep_explorer_draws_the_curve_of_the_values_shown(counting, tmp_path):
    pytest.importorskip("ipywidgets")
    from sdlab.widgets import SweepExplorer

    def failing_on_seed_2(image, record):
        if record["seed"] == 2:
            raise ValueError("seed 2")
        return 1.0

    result = run(
        counting,
        tmp_path,
        [lambda_score(), failing_on_seed_2],
        axes={"guidance_scale": [1.5, 5], "seed": [1, 2, 4], "num_inference_steps": [1, 2]},
    )
    explorer = SweepExplorer(result)
    assert explorer.metric.options == ("seed_plus_g", "failing_on_seed_2")
    assert explorer.curve_image is not None and explorer.error is None
    # x is the grid's x (guidance); the mean over seeds and steps
    assert [(r["guidance_scale"], r["n"], r["mean"]) for r in explorer.curve_rows] == [
        (1.5, 6, pytest.approx(7 / 3 + 1.5)),
        (5, 6, pytest.approx(7 / 3 + 5)),
    ]
    explorer.filters["seed"].value = ("Seed: 4",)  # filtering the grid filters the curve
    assert [r["mean"] for r in explorer.curve_rows] == [5.5, 9]
    explorer.filters["seed"].value = ("Seed: 1", "Seed: 2", "Seed: 4")
    explorer.hue.value = "seed"
    assert [(r["guidance_scale"], r["seed"], r["n"]) for r in explorer.curve_rows][:2] == [(1.5, 1, 2), (5, 1, 2)]
    explorer.metric.value = "failing_on_seed_2"
    assert {r["seed"]: r["missing"] for r in explorer.curve_rows} == {1: 0, 2: 2, 4: 0}

    explorer.pick["seed"].value = 1  # seed 2, the failing scorer's error shown with the scores
    assert explorer.cell_scores["seed_plus_g"] == 2 + 1.5
    assert explorer.cell_scores["failing_on_seed_2 (failed)"] == "ValueError: seed 2"
    assert "Scores" in explorer.cell_info.value and explorer.cell_params["seed"] == 2


def test_sweep_explorer_without_scores_hides_the_curve(counting, tmp_path):
    pytest.importorskip("ipywidgets")
    from sdlab.widgets import SweepExplorer

    explorer = SweepExplorer(run(counting, tmp_path, None, axes={"seed": [1, 2]}))
    assert explorer.curve_box.layout.display == "none" and explorer.curve_rows == [] and explorer.error is None
    assert explorer.cell_scores == {}


# ------------------------------------------------------------------ the bundled model


def test_bundled_model_sweep_judged_against_its_prompts(tmp_path):
    from sdlab.bundled.judge import judge as judge_image

    pipe = sdlab.load_pipeline("shapes")
    prompts = ["a large red circle on a blue background", "a small yellow star at the top left on a black background"]
    sim = metrics.similarity(reference={"num_inference_steps": 6}, vae=pipe.vae)
    result = sdlab.sweep(
        pipe,
        axes={"prompt": prompts, "num_inference_steps": [2, 6]},
        out_dir=tmp_path,
        verbose=False,
        metrics=["judge", "colourfulness", sim],
    )
    for cell, row, image in zip(result.cells, result.table, result.images):
        seen, wanted = judge_image(image), parse_caption(cell.request.prompt[0])
        for attribute in ("colour", "shape", "background", "size"):
            assert row["metrics"][f"judge.{attribute}"] == float(getattr(seen, attribute) == wanted[attribute])
        expected_position = float(seen.position == "top left") if "top left" in row["prompt"] else None
        assert row["metrics"]["judge.position"] == expected_position
        assert row["metrics"]["colourfulness"] > 0
        if cell.request.num_inference_steps == 6:
            assert row["metrics"]["similarity.latent_mse"] == 0
        else:
            assert row["metrics"]["similarity.latent_mse"] > 0
    converged = result.select(num_inference_steps=6)
    assert all(c.metrics["judge.colour_shape"] == 1.0 for c in converged)  # the model's figures: it draws these
    again = sdlab.sweep(
        pipe,
        axes={"prompt": prompts, "num_inference_steps": [2, 6]},
        out_dir=tmp_path,
        verbose=False,
        metrics=["judge", "colourfulness", sim],
    )
    assert all(c.cached for c in again.cells) and [c.metrics for c in again.cells] == [c.metrics for c in result.cells]


def test_peaks_name_the_best_value_of_an_axis_per_other_axes(counting, tmp_path):
    def score(image, record):  # peaks at guidance 5 for seed 1, ties 1.5 and 5 for seed 2
        return {1: {1.5: 0.2, 5: 0.9, 8: 0.5}, 2: {1.5: 0.7, 5: 0.7, 8: 0.1}}[record["seed"]][record["guidance_scale"]]

    result = run(counting, tmp_path, [score], axes={"guidance_scale": [1.5, 5, 8], "seed": [1, 2]})
    best = result.peaks("score", x="guidance_scale", over=[])
    assert [(r["seed"], r["guidance_scale"], r["mean"], r["tied"]) for r in best] == [
        (1, 5, 0.9, [5]),
        (2, 1.5, 0.7, [1.5, 5]),
    ]
    overall = result.peaks("score", x="guidance_scale", over="seed")
    assert len(overall) == 1 and overall[0]["guidance_scale"] == 5 and overall[0]["mean"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="`x` must not be"):
        result.peaks("score", x="seed", over="seed")


def test_the_scheduler_benchmark_compares_images_with_the_same_function():
    from sdlab import bench

    assert bench.image_distance is metrics.image_distance
    a = Image.new("RGB", (16, 16), (10, 20, 30))
    b = Image.new("RGB", (16, 16), (12, 20, 30))
    d = metrics.image_distance(a, b)
    assert d["mae"] == pytest.approx(2 / 3) and d["ssim"] < 1 and metrics.image_distance(a, a)["psnr"] == math.inf


def test_an_interrupt_while_scoring_keeps_the_scores_made(counting, tmp_path):
    calls = []

    def s(image, record):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(record["seed"])
        return float(record["seed"])

    with pytest.raises(KeyboardInterrupt):
        run(counting, tmp_path, [metrics.Scorer("s", s)], axes={"seed": [1, 2, 3, 4]})
    again = []  # the same scorer name and version: the two scores made are reused
    result = run(counting, tmp_path, [metrics.Scorer("s", counted("s", again).fn)], axes={"seed": [1, 2, 3, 4]})
    assert len(again) == 2 and [r["metrics"]["s"] for r in result.table][:2] == [1.0, 2.0]
    assert counting.calls == [4]


def test_load_sweep_gives_back_the_built_in_metrics(counting, tmp_path, capsys):
    result = run(counting, tmp_path, ["sharpness", metrics.similarity(reference={"seed": 1})], axes={"seed": [1, 2]})
    kwargs = sdlab.load_sweep(result.save_grid())
    assert kwargs["metrics"] == ["sharpness", {"similarity": {"reference": {"seed": 1}, "name": "similarity"}}]
    capsys.readouterr()
    again = sdlab.sweep(counting, **kwargs)
    out = capsys.readouterr().out
    assert "2 cached, 0 to generate" in out and "scores computed" not in out
    assert again.out_dir == result.out_dir and [c.metrics for c in again.cells] == [c.metrics for c in result.cells]


def test_a_function_without_source_is_versioned_by_its_code():
    made, same, other = {}, {}, {}
    exec("def f(image, record):\n    return 1.0\n", made)
    exec("def f(image, record):\n    return 1.0\n", same)  # another object, the same code
    exec("def f(image, record):\n    return 2.0\n", other)
    a, b = metrics.resolve([made["f"]])[0], metrics.resolve([other["f"]])[0]
    assert a.name == b.name == "f" and a.version != b.version
    assert metrics.resolve([same["f"]])[0].version == a.version  # stable: no addresses in it


def test_latent_similarity_takes_the_sweeps_own_vae(sd1_pipe, counting, tmp_path, capsys):
    axes = {"num_inference_steps": [1, 3], "seed": [1]}
    explicit = run(
        sd1_pipe, tmp_path, [metrics.similarity(reference={"num_inference_steps": 3}, vae=sd1_pipe.vae)], axes=axes
    )
    assert explicit.cells[0].metrics["similarity.latent_mse"] > 0
    capsys.readouterr()
    bound = sdlab.sweep(
        sd1_pipe,
        "a red circle",
        axes=axes,
        out_dir=tmp_path,
        metrics=[metrics.similarity(reference={"num_inference_steps": 3}, latent=True)],
    )
    assert "scores computed" not in capsys.readouterr().out  # the same VAE: the same scorer version
    assert [c.metrics for c in bound.cells] == [c.metrics for c in explicit.cells]
    assert bound.spec["metrics"][0]["config"]["similarity"]["latent"] is True
    with pytest.raises(ValueError, match="needs the sweep's local pipeline"):
        run(counting, tmp_path / "other", [metrics.similarity(reference={"seed": 1}, latent=True)], axes={"seed": [1]})
    assert counting.calls == []


def test_score_names_come_in_the_same_order_computed_or_cached(counting, tmp_path):
    def several(image, record):
        return {"zeta": 1.0, "alpha": 2.0, "mid": 3.0}

    first = run(counting, tmp_path, [several, "sharpness"], axes={"seed": [1]})
    again = run(counting, tmp_path, [several, "sharpness"], axes={"seed": [1]})
    assert (
        list(first.cells[0].metrics)
        == list(again.cells[0].metrics)
        == ["several.alpha", "several.mid", "several.zeta", "sharpness"]
    )
    assert first.metric_names == again.metric_names
