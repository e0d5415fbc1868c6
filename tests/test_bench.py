"""sdlab.bench: what a scheduler x steps benchmark measures, on the tiny pipeline."""

import math

import pytest

import sdlab
from sdlab import bench
from sdlab.loading import PipelineInfo


@pytest.fixture(scope="module")
def result(sd1_pipe):
    return bench.benchmark_schedulers(
        sd1_pipe,
        "a large red circle on a blue background",
        schedulers=["DPM++ 2M", "Heun"],
        num_inference_steps=[2, 6],
        seeds=(0, 1),
        repeats=2,
        warmup=1,
        reference_steps=6,
        reference_scheduler="DPM++ 2M",
    )


def test_rows_measure_every_setting(result):
    rows = result.table
    assert [(r["scheduler"], r["num_inference_steps"]) for r in rows] == [
        ("DPM++ 2M", 2),
        ("DPM++ 2M", 6),
        ("Heun", 2),
        ("Heun", 6),
    ]
    for row in rows:
        assert row["error"] is None
        assert 0 < row["seconds_min"] <= row["seconds"]
        assert row["seconds_per_image"] == pytest.approx(row["seconds"] / 2)
        assert 0 < row["vae_decode_seconds"] < row["seconds"]
        assert row["seconds_per_step"] > 0 and row["peak_memory_mb"] > 0
        assert 0 < row["ssim"] <= 1 and row["mae"] >= 0
    by = {(r["scheduler"], r["num_inference_steps"]): r for r in rows}
    assert by[("DPM++ 2M", 2)]["evaluations"] == 2
    assert by[("Heun", 2)]["evaluations"] == 3 and by[("Heun", 6)]["evaluations"] == 11  # 2 per step but the last
    assert result.reference["scheduler"] == "DPM++ 2M" and result.seeds == (0, 1)


def test_convergence_to_the_reference(result):
    by = {(r["scheduler"], r["num_inference_steps"]): r for r in result.rows}
    same = by[("DPM++ 2M", 6)]  # the reference's own setting: identical images
    assert same["mae"] == 0 and same["psnr"] == math.inf and same["ssim"] == pytest.approx(1.0)
    assert by[("DPM++ 2M", 2)]["mae"] > 0 and by[("DPM++ 2M", 2)]["ssim"] < 1
    fastest = result.fastest_to(0.999)
    assert [r["scheduler"] for r in fastest] == ["DPM++ 2M"] and fastest[0]["num_inference_steps"] == 6
    assert result.fastest_to(0.0, metric="mae")[0]["mae"] == 0
    with pytest.raises(ValueError, match="metric"):
        result.fastest_to(0.5, metric="lpips")


def test_no_flop_utilisation_on_cpu(result, sd1_pipe):
    assert all(r["mfu"] is None for r in result.rows)
    assert any("GPU only" in note for note in result.notes)
    flops, vae, reason = bench.model_flops(sd1_pipe, width=64, height=64, guidance_scale=5)
    assert flops is None and "M parameters" in reason  # the tiny UNet is not SD1.5's


def test_published_flops_scale_with_area_and_guidance():
    import torch

    class FakeUNet:  # an SD1.5-sized denoiser, parameters on the meta device (no memory)
        def parameters(self):
            return [torch.empty(859_500_000, device="meta")]

    class FakePipe:
        _sdlab_info = PipelineInfo(
            model="fake", source="object", location="fake", family="sd1", defaults=sdlab.Defaults()
        )
        unet = FakeUNet()

    flops, vae, reason = bench.model_flops(FakePipe(), width=512, height=512, guidance_scale=7.5)
    assert reason is None and flops == pytest.approx(2 * 0.803e12) and vae == pytest.approx(2.51e12)
    flops_1024, _, _ = bench.model_flops(FakePipe(), width=1024, height=1024, guidance_scale=1.0)
    assert flops_1024 == pytest.approx(4 * 0.803e12)  # no guidance: one evaluation, 4x the area


def test_mfu_arithmetic():
    from PIL import Image

    call = bench._Call(
        seconds=2.0, vae_seconds=0.5, evaluations=10, peak_memory_mb=1.0, images=[Image.new("RGB", (8, 8))]
    )
    row = bench._row(
        "Euler",
        10,
        [call],
        None,
        [Image.new("RGB", (8, 8))],
        1,
        flops=1e12,
        vae_flops=2e12,
        peak_tflops=100.0,
        cuda=True,
    )
    assert row["tflop_per_image"] == pytest.approx(12.0)
    assert row["mfu"] == pytest.approx(12e12 / 2.0 / 100e12)
    assert row["seconds_per_step"] == pytest.approx(0.15)


def test_table_text_html_and_plots(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = repr(result)
    assert "DPM++ 2M" in text and "Heun" in text and "ssim" in text
    assert result.to_html().count("<tr>") == 1 + len(result.rows)
    fig = result.plot_quality_vs_time()
    assert len(fig.axes[0].lines) == 2
    plt.close(fig)
    fig = result.plot_latency_vs_steps()
    assert [line.get_label() for line in fig.axes[0].lines] == ["DPM++ 2M", "Heun"]
    plt.close(fig)
    fig = result.plot_quality_vs_time("psnr")  # inf (identical to the reference) is drawn capped
    plt.close(fig)
    try:
        import pandas  # noqa: F401
    except ImportError:
        return
    assert list(result.to_pandas()["scheduler"]) == ["DPM++ 2M", "DPM++ 2M", "Heun", "Heun"]


def test_bad_arguments_fail_before_any_model_work(sd1_pipe, monkeypatch):
    def no_run(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(bench, "run_request", no_run)
    with pytest.raises(ValueError, match="unknown `scheduler`"):
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=["Euler", "Nope"], num_inference_steps=[2])
    with pytest.raises(ValueError, match="`num_inference_steps`"):
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=["Euler"], num_inference_steps=[0])
    with pytest.raises(TypeError, match="steps"):  # diffusers' name only
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=["Euler"], steps=[2])
    with pytest.raises(ValueError, match="`schedulers` is empty"):
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=[], num_inference_steps=[2])
    with pytest.raises(ValueError, match="`width`"):
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=["Euler"], num_inference_steps=[2], width=70)
    with pytest.raises(ValueError, match="`peak_tflops`"):
        bench.benchmark_schedulers(sd1_pipe, "a circle", schedulers=["Euler"], num_inference_steps=[2], peak_tflops=-1)


def test_images_of_every_setting_are_kept(result):
    for row in result.rows:
        images = result.images[(row["scheduler"], row["num_inference_steps"])]
        assert len(images) == 2 and images[0].size == result.reference["images"][0].size  # one per seed
    # the reference's own setting: its images are the reference images
    assert result.images[("DPM++ 2M", 6)][1].tobytes() == result.reference["images"][1].tobytes()


def _small_bench(pipe, **kwargs):
    return bench.benchmark_schedulers(
        pipe,
        "a circle",
        schedulers=["Euler"],
        num_inference_steps=[2],
        repeats=1,
        warmup=0,
        reference_steps=2,
        **kwargs,
    )


def test_a_busy_machine_is_flagged_not_printed_as_figures(sd1_pipe):
    import os

    cores = os.cpu_count()
    readings = iter([cores + 1.5, 0.2])  # busy before the timed calls, idle after
    busy = _small_bench(sd1_pipe, load_average=lambda: next(readings))
    assert busy.busy and busy.load == {"before": cores + 1.5, "after": 0.2, "cores": cores}
    assert "busy" in busy.warning and busy.notes[0] == busy.warning
    assert "sdlab-bench-busy" in busy.to_html() and "busy" in repr(busy)

    readings = iter([0.1, cores + 0.5])  # busy only by the end: flagged too
    assert _small_bench(sd1_pipe, load_average=lambda: next(readings)).busy

    idle = _small_bench(sd1_pipe, load_average=lambda: cores - 0.5)
    assert not idle.busy and idle.warning is None and "sdlab-bench-busy" not in idle.to_html()
    unknown = _small_bench(sd1_pipe, load_average=lambda: None)  # no load average on this system
    assert not unknown.busy and unknown.load["before"] is None
    with pytest.raises(ValueError, match="`load_average`"):
        _small_bench(sd1_pipe, load_average=3.0)


def test_interrupted_from_progress_stops_at_the_next_step(sd1_pipe):
    from sdlab.executors import Interrupted

    seen = []

    def progress(info):
        seen.append(info)
        if info["phase"] == "step" and info["num_inference_steps"] == 2 and info["denoising_step"] == 1:
            raise Interrupted("cancelled")

    with pytest.raises(Interrupted):  # raised on: never a row whose error is the cancel
        bench.benchmark_schedulers(
            sd1_pipe,
            "a circle",
            schedulers=["Euler"],
            num_inference_steps=[2, 3],
            repeats=1,
            warmup=0,
            reference_steps=4,
            progress=progress,
        )
    steps = [i["denoising_step"] for i in seen if i["phase"] == "step"]
    assert steps[-1] == 1 and steps.count(4) == 1  # the reference ran whole; the timed call stopped at step 1
    assert not any(i["phase"] == "done" for i in seen)
