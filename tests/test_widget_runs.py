"""Widget runs on threads: Kernel > Interrupt (a real SIGINT), Cancel, and their turn on the pipeline.

Issue 18, finding 1: widget runs collided with notebook cells, and Kernel > Interrupt did not stop
a widget run. These tests send real signals to this process (and to a real kernel), and run real
concurrent calls on one tiny pipeline.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

from helpers import max_pixel_diff  # noqa: E402

import sdlab  # noqa: E402
from sdlab.backends import as_backend, pipeline_lock  # noqa: E402
from sdlab.widgets import PromptLab, SchedulerBench  # noqa: E402

PROMPT = "a large red circle on a blue background"
ROOT = Path(__file__).resolve().parent.parent
WAIT = 120  # seconds: every wait below is bounded, generous for a loaded machine


@pytest.fixture
def sigint_kept():
    """The process's SIGINT handler as it was before the test (a widget run chains its own in front)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def _hold_at(widget, value: int):
    """Hold the widget's run (on its thread) when its progress bar reaches `value`, until `go` is set."""
    reached, go = threading.Event(), threading.Event()

    def on_progress(change):
        if change["new"] == value and threading.current_thread() is not threading.main_thread():
            reached.set()
            go.wait(WAIT)

    widget.progress.observe(on_progress, names="value")
    return reached, go


def _interrupt_this_process() -> bool:
    """Send SIGINT as Kernel > Interrupt does; True if the main thread got its KeyboardInterrupt."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except KeyboardInterrupt:
        return True
    return False


def _until(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sigint_stops_a_promptlab_generate_at_the_next_step(sd1_pipe, tmp_path, sigint_kept):
    lab = PromptLab(sd1_pipe, out_dir=str(tmp_path / "images"))  # Generate runs on a thread
    lab.prompt.value, lab.num_inference_steps.value = PROMPT, 50
    reached, go = _hold_at(lab, 2)
    lab.generate_button.click()  # from the main thread, as in a kernel: the SIGINT chain is installed
    assert reached.wait(WAIT), lab.status.value
    assert lab.state == "running"
    try:
        assert _interrupt_this_process()  # the previous handler still ran: a running cell is interrupted too
    finally:
        go.set()
    lab.wait(WAIT)
    assert not lab.thread.is_alive()
    assert lab.state == "cancelled" and lab.cancelled and lab.error is None
    assert "cancelled at step 2 of 50" in lab.status.value
    assert lab.last_result is None and lab.history == []
    assert not list((tmp_path / "images").glob("*.png")) if (tmp_path / "images").exists() else True

    lab.num_inference_steps.value = 2  # the handler stays harmless: the next run is not cancelled
    lab.generate_button.click()
    lab.wait(WAIT)
    assert lab.state == "done" and len(lab.history) == 1 and len(list((tmp_path / "images").glob("*.png"))) == 1


def test_sigint_stops_the_promptlab_sweep_form(sd1_pipe, tmp_path, sigint_kept):
    lab = PromptLab(sd1_pipe, out_dir=None, sweep_dir=str(tmp_path / "sweeps"))
    lab.history.append({"image": None, "params": {"prompt": PROMPT, "seed": 1, "guidance_scale": 5.0}, "path": None})
    lab.send_to_sweep(0)
    lab.sweep_seeds.value, lab.sweep_guidance.value = "1-4", "2, 5"
    lab.sweep_spec["num_inference_steps"] = 20
    reached, go = _hold_at(lab, 3)
    lab.sweep_button.click()  # on a thread now: before, it ran in the button handler and blocked the kernel
    assert reached.wait(WAIT), lab.status.value
    try:
        assert _interrupt_this_process()
    finally:
        go.set()
    lab.wait(WAIT)
    assert lab.state == "cancelled" and "sweep cancelled" in lab.status.value
    assert lab.last_sweep is None and lab.sweep_view.children == ()


def test_sigint_stops_a_scheduler_bench_run(sd1_pipe, sigint_kept):
    bench = SchedulerBench(sd1_pipe, load_average=lambda: 0.0)  # Run works on a thread
    bench.schedulers.value = ("Euler", "DDIM")
    bench.num_inference_steps.value = "2, 4"
    bench.seeds.value, bench.repeats.value, bench.warmup.value, bench.reference_steps.value = 1, 2, 0, 3
    reached, go = _hold_at(bench, 2)  # the second timed call
    bench.run_button.click()
    assert reached.wait(WAIT), bench.status.value
    try:
        assert _interrupt_this_process()
    finally:
        go.set()
    bench.wait(WAIT)
    assert bench.state == "cancelled" and "cancelled" in bench.status.value and bench.error is None
    assert bench.last_result is None and bench.table.value == "" and bench.images == {}

    bench.num_inference_steps.value, bench.repeats.value = "1", 1
    bench.run_button.click()
    bench.wait(WAIT)
    assert bench.state == "done" and len(bench.last_result.rows) == 2


def test_cancel_button_stops_a_scheduler_bench_on_its_thread(sd1_pipe):
    """In a browser Cancel is a message to the kernel: it can only be handled while Run is on a thread."""
    bench = SchedulerBench(sd1_pipe, load_average=lambda: 0.0)
    bench.schedulers.value = ("Euler",)
    bench.num_inference_steps.value = "3"
    bench.seeds.value, bench.repeats.value, bench.warmup.value, bench.reference_steps.value = 1, 3, 0, 3
    reached, go = _hold_at(bench, 2)
    bench.run_button.click()
    assert reached.wait(WAIT) and bench.thread.is_alive()
    bench.cancel_button.click()  # from the main thread, while the run's thread works
    go.set()
    bench.wait(WAIT)
    assert bench.state == "cancelled" and bench.last_result is None


def test_a_run_started_while_a_cell_holds_the_pipeline_says_it_is_waiting(sd1_pipe, tmp_path):
    """Finding 1: the widget must not look frozen (nor interleave) while a cell uses the pipeline."""
    lab = PromptLab(sd1_pipe, out_dir=str(tmp_path / "images"))
    lab.prompt.value, lab.num_inference_steps.value, lab.seed.value = PROMPT, 3, 4
    cell_running, widget_waiting = threading.Event(), threading.Event()
    cell = {}

    def on_step(info):  # the cell's generate, mid-way: the widget's Generate is pressed
        if info.get("step") == 1:
            cell_running.set()
            widget_waiting.wait(WAIT)

    def run_cell():
        cell["result"] = sdlab.generate(sd1_pipe, "a blue square", seed=9, num_inference_steps=4, progress=on_step)

    thread = threading.Thread(target=run_cell)
    thread.start()
    assert cell_running.wait(WAIT)
    lab.generate_button.click()
    try:
        assert _until(lambda: lab.state == "waiting"), lab.status.value
        assert "waiting for the pipeline" in lab.status.value and lab.progress.value == 0
    finally:
        widget_waiting.set()
    thread.join(WAIT)
    lab.wait(WAIT)
    assert lab.state == "done", lab.status.value
    alone = sdlab.generate(sd1_pipe, PROMPT, seed=4, num_inference_steps=3)
    assert max_pixel_diff(lab.last_result.image, alone.image) == 0
    assert cell["result"].records[0]["num_inference_steps"] == 4


def test_cancel_stops_a_run_waiting_for_the_pipeline(sd1_pipe, tmp_path):
    lab = PromptLab(sd1_pipe, out_dir=str(tmp_path / "images"))
    lab.prompt.value, lab.num_inference_steps.value = PROMPT, 2
    lock = pipeline_lock(as_backend(sd1_pipe))
    assert lock is not None and pipeline_lock(object()) is None
    with lock:  # a cell holds the pipeline
        lab.generate_button.click()
        assert _until(lambda: lab.state == "waiting"), lab.status.value
        lab.cancel_button.click()
        lab.wait(WAIT)
        assert lab.state == "cancelled" and not lab.thread.is_alive()  # stopped waiting, lock still held
    assert lab.history == [] and not (tmp_path / "images").exists()


def test_a_cell_during_a_widget_run_waits_for_the_whole_run(sd1_pipe, tmp_path):
    """A SchedulerBench holds the pipeline from its first call to its last: a cell never slips between
    the timed calls (nor through the timed VAE decode), it runs after the benchmark."""
    bench = SchedulerBench(sd1_pipe, load_average=lambda: 0.0)
    bench.schedulers.value = ("Euler",)
    bench.num_inference_steps.value = "2"
    bench.seeds.value, bench.repeats.value, bench.warmup.value, bench.reference_steps.value = 1, 3, 0, 2
    events, cell_done = [], threading.Event()
    bench.progress.observe(lambda change: events.append("bench"), names="value")

    def run_cell():
        sdlab.generate(sd1_pipe, "a blue square", seed=1, num_inference_steps=2)
        events.append("cell")
        cell_done.set()

    started = []

    def between_calls(change):  # the bench, between two timed calls: a cell starts and gets a chance
        if change["new"] == 2 and not started:
            started.append(threading.Thread(target=run_cell))
            started[0].start()
            cell_done.wait(3)  # without the bench holding the pipeline the cell finishes here

    bench.progress.observe(between_calls, names="value")
    bench.run_button.click()
    bench.wait(WAIT)
    started[0].join(WAIT)
    assert bench.state == "done", bench.status.value
    assert events[-1] == "cell" and events.count("cell") == 1


def test_a_cell_during_a_library_benchmark_waits_for_it(sd1_pipe):
    """`benchmark_schedulers` in one cell (thread) and `generate` in another: the generate runs after."""
    from sdlab.bench import benchmark_schedulers

    events, cell_done, started = [], threading.Event(), []

    def run_cell():
        sdlab.generate(sd1_pipe, "a blue square", seed=1, num_inference_steps=2)
        events.append("cell")
        cell_done.set()

    def progress(info):
        events.append(info["phase"])
        if info["phase"] == "measure" and not started:  # between the reference call and the timed ones
            started.append(threading.Thread(target=run_cell))
            started[0].start()
            cell_done.wait(3)

    benchmark_schedulers(
        sd1_pipe,
        PROMPT,
        schedulers=["Euler"],
        num_inference_steps=[2],
        repeats=2,
        warmup=0,
        reference_steps=2,
        progress=progress,
        load_average=lambda: 0.0,
    )
    started[0].join(WAIT)
    assert events.index("cell") > events.index("done")


def test_kernel_interrupt_of_an_idle_kernel_stops_a_widget_run(tmp_path):
    """A real ipykernel: it ignores SIGINT while idle (a widget run goes on on its thread);
    `interrupt_kernel` (what Kernel > Interrupt calls) must still stop the run."""
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    km = jupyter_client.KernelManager(kernel_name="python3")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    km.kernel_spec.argv[0] = sys.executable  # this venv's python, so the kernel imports this sdlab
    km.start_kernel(env=env, cwd=str(tmp_path))
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=WAIT)

        def run(code: str) -> str:
            reply = client.execute_interactive(code, timeout=WAIT, output_hook=lambda msg: texts.append(msg))
            assert reply["content"]["status"] == "ok", reply["content"]
            return "".join(m["content"].get("text", "") for m in texts if m["msg_type"] == "stream")

        texts: list = []
        run(
            "import torch; torch.set_num_threads(1)\n"
            "import sdlab\nfrom sdlab.widgets import PromptLab\n"
            "pipe = sdlab.load_pipeline('tiny', progress_bar=False)\n"
            f"lab = PromptLab(pipe, prompt={PROMPT!r}, out_dir='images')\n"
            "lab.num_inference_steps.value = 1000\n"
            "lab.generate_button.click()\n"
        )
        deadline = time.monotonic() + WAIT
        while True:  # the kernel is idle again, the run goes on on its thread
            texts.clear()
            if "running 1" in run("print(lab.state, int(lab.progress.value > 0))"):
                break
            assert time.monotonic() < deadline, "the widget run did not start"
            time.sleep(0.2)
        km.interrupt_kernel()
        deadline = time.monotonic() + WAIT
        while True:
            texts.clear()
            out = run("lab.wait(1); print(lab.state, lab.progress.value, len(lab.history))")
            if not out.startswith("running"):
                break
            assert time.monotonic() < deadline, f"Kernel > Interrupt did not stop the run: {out}"
        state, step, history = out.split()
        assert state == "cancelled" and int(step) < 1000 and history == "0", out
        assert not (tmp_path / "images").exists() or not list((tmp_path / "images").glob("*.png"))
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
