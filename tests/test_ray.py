"""Sweeps and server jobs on Ray: a local two-worker cluster against the local executor.

The cluster is started here (module scope) on this machine only, on 127.0.0.1, and shut down after.
"""

import importlib.util
import json
import os
import signal
import sys

import pytest
from helpers import max_pixel_diff

import sdlab
from sdlab.errors import MissingDependencyError
from sdlab.executors import RayExecutor, import_ray

STEPS = 3
PROMPT = "a red circle"
AXES = {"seed": [1, 2, 3, 4], "guidance_scale": [1.5, 5.0]}  # 8 cells: 4 batches of 2


def sweep(model, out_dir, **kwargs):
    kwargs.setdefault("axes", AXES)
    return sdlab.sweep(model, PROMPT, batch_size=2, out_dir=out_dir, num_inference_steps=STEPS, verbose=False, **kwargs)


def manifest_keys(out_dir):
    with open(out_dir / "manifest.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["key"] for line in f if line.strip()]


def _stub_slow_import(root):
    """Ray's raylet gives its dashboard agent a fixed 15 s to start, and importing Ray pulls in
    jsonschema, which builds the `rfc3987_syntax` grammar (about 3 s of CPU) when that package is
    installed (it comes with Jupyter). On a busy 2-core machine the agent then misses its window
    and the cluster does not start. Ray's own processes never need that grammar: hide it from them."""
    if importlib.util.find_spec("rfc3987_syntax") is None:
        return None
    stub = root / "rfc3987_syntax"
    stub.mkdir()
    (stub / "__init__.py").write_text('raise ImportError("hidden from Ray processes by tests/test_ray.py")\n')
    return str(root)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'sdlab[ray]'")
    old_path = os.environ.get("PYTHONPATH")
    stub = _stub_slow_import(tmp_path_factory.mktemp("ray-stub"))
    if stub:
        os.environ["PYTHONPATH"] = stub + (os.pathsep + old_path if old_path else "")
    try:
        _start_local_cluster(ray)
        yield ray
    finally:
        ray.shutdown()
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path


def _start_local_cluster(ray, attempts=2):
    """This machine only, on 127.0.0.1. Workers keep the tests' niceness (Ray would add 15 to it,
    which starves them next to other work on a shared machine)."""
    for attempt in range(attempts):
        try:
            ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                ignore_reinit_error=True,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
                _system_config={"worker_niceness": 0},
            )
            return
        except Exception as e:  # Ray's raylet gives its helpers fixed start-up windows
            ray.shutdown()
            if attempt == attempts - 1:
                pytest.skip(f"could not start a local Ray cluster (is the machine overloaded?): {e}")


@pytest.fixture(scope="module")
def executor(ray_cluster):
    # half a CPU each: two sweep workers and a job-pool worker fit on a 2-core machine
    with RayExecutor(num_workers=2, num_gpus_per_worker=0, num_cpus_per_worker=0.5, start_timeout=600) as ex:
        yield ex


@pytest.fixture(scope="module")
def local_run(sd1_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return sweep(sd1_pipe, out), out


@pytest.fixture(scope="module")
def ray_run(executor, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    steps = []
    return sweep("tiny", out, executor=executor, progress=steps.append), out, steps


# ------------------------------------------------------------------ without a cluster


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MissingDependencyError, match=r"sdlab\[ray\]"):
        import_ray()


def test_ray_needs_a_model_name_not_a_loaded_pipeline(sd1_pipe, tmp_path):
    with pytest.raises(ValueError, match="preset name"):
        sweep(sd1_pipe, tmp_path, executor="ray")
    with pytest.raises(ValueError, match="num_workers"):
        RayExecutor(num_workers=0)
    with pytest.raises(ValueError, match="executor"):
        sweep(sd1_pipe, tmp_path, executor="dask")


# ------------------------------------------------------------------ on a local cluster


def test_ray_sweep_equals_the_local_sweep(ray_run, local_run):
    result, out, steps = ray_run
    local, _ = local_run
    assert len(result) == 8 and all(c.ok for c in result.cells)
    for a, b in zip(result.images, local.images):
        assert max_pixel_diff(a, b) <= 2
    # the driver wrote every cell once, with the same keys (cache) as the local sweep
    keys = manifest_keys(out)
    assert sorted(keys) == sorted(c.key for c in local.cells)
    record = sdlab.read_params(result.cells[0].path)
    assert record["seed"] == 1 and record["num_inference_steps"] == STEPS
    # progress came from the workers, step by step
    assert {s["total"] for s in steps} == {STEPS} and all("worker" in s and "pid" in s for s in steps)


def test_a_worker_killed_mid_sweep_loses_no_cell(executor, local_run, tmp_path):
    killed = []

    def kill_first_worker(info):  # a worker dies in the middle of its first batch
        if not killed and info["step"] == 1:
            killed.append(info["pid"])
            os.kill(info["pid"], signal.SIGKILL)

    result = sweep("tiny", tmp_path, executor=executor, progress=kill_first_worker)
    assert killed, "no worker was killed"
    assert all(c.ok for c in result.cells), result.table
    keys = manifest_keys(tmp_path)
    assert len(keys) == len(set(keys)) == 8  # each cell once: nothing lost, nothing twice
    for a, b in zip(result.images, local_run[0].images):
        assert max_pixel_diff(a, b) <= 2


def test_resume_local_to_ray_and_ray_to_local(executor, local_run, ray_run, sd1_pipe):
    _, local_out = local_run
    _, ray_out, _ = ray_run
    again = sweep("tiny", local_out, executor=executor)  # local run, resumed on Ray
    assert all(c.cached for c in again.cells)
    again = sweep(sd1_pipe, ray_out)  # Ray run, resumed locally
    assert all(c.cached for c in again.cells)
    # a bigger grid on Ray over the local run: only the new cells are generated
    bigger = sweep("tiny", local_out, executor=executor, axes={"seed": [1, 2, 3, 4, 5], "guidance_scale": [1.5, 5.0]})
    assert sum(c.cached for c in bigger.cells) == 8 and all(c.ok for c in bigger.cells)
    keys = manifest_keys(local_out)
    assert len(keys) == len(set(keys)) == 10


def test_failed_cells_are_recorded_with_their_error_as_locally(executor, sd1_pipe, tmp_path):
    axes = {"seed": [1, 2], "guidance_rescale": [0.0, "bad"]}  # "bad" fails inside the pipeline
    remote = sweep("tiny", tmp_path / "ray", executor=executor, axes=axes)
    local = sweep(sd1_pipe, tmp_path / "local", axes=axes)
    assert [c.error for c in remote.cells] == [c.error for c in local.cells]
    assert [c.ok for c in remote.cells] == [True, True, False, False]
    assert "could not convert" in remote.cells[2].error
    assert len(manifest_keys(tmp_path / "ray")) == 4


def test_a_ray_model_is_a_backend_and_the_server_runs_on_the_sweep_executor(ray_cluster, sd1_pipe, tmp_path):
    """One executor of two workers: its model as a backend first (generate through it, a progress
    callback that raises stops it), then a server that runs its jobs on the same executor."""
    import time
    from io import BytesIO

    import httpx
    from PIL import Image

    from sdlab.executors import Interrupted
    from sdlab.generation import build_request, generate
    from sdlab.server import serve_in_thread

    ray_executor = RayExecutor(num_workers=2, num_gpus_per_worker=0, num_cpus_per_worker=0.5, start_timeout=600)
    try:
        # 1. the workers' model is a backend: generate runs on a worker, through the executor
        backend = ray_executor.open("tiny")
        steps = []
        result = generate(backend, PROMPT, seed=[7, 8], num_inference_steps=STEPS, progress=steps.append)
        expected = generate(sd1_pipe, PROMPT, seed=[7, 8], num_inference_steps=STEPS)
        assert [r["seed"] for r in result.records] == [7, 8]
        assert steps and steps[-1]["images"] == 2 and all("pid" in s for s in steps)
        for a, b in zip(result.images, expected.images):
            assert max_pixel_diff(a, b) <= 2

        def cancel(info):  # as the server's worker does when a job is cancelled
            raise Interrupted("cancelled")

        with pytest.raises(Interrupted):
            generate(backend, PROMPT, seed=[7, 8], num_inference_steps=STEPS, progress=cancel)
        with pytest.raises(ValueError, match="unknown argument"):  # validated by a worker
            build_request(backend, PROMPT, pipeline_kwargs={"no_such_argument": 1})

        # 2. the server hands its jobs to the same executor (and closes it when it stops)
        handle = serve_in_thread("tiny", executor=ray_executor, data_dir=tmp_path)
        try:
            with httpx.Client(base_url=handle.url, timeout=120) as client:
                deadline = time.monotonic() + 600
                while client.get("/health").json()["status"] == "loading":
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                seeds = [1, 2, 3]
                ids = [
                    client.post("/generate", json={"prompt": PROMPT, "seed": s, "num_inference_steps": STEPS}).json()[
                        "id"
                    ]
                    for s in seeds
                ]
                for job_id, seed in zip(ids, seeds):
                    body = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
                    while body["status"] in ("queued", "running"):
                        assert time.monotonic() < deadline, body
                        body = client.get(f"/jobs/{job_id}", params={"wait": 30}).json()
                    assert body["status"] == "done", body
                    image = Image.open(BytesIO(client.get(f"/jobs/{job_id}/images/0").content))
                    expected = generate(sd1_pipe, PROMPT, seed=seed, num_inference_steps=STEPS).image
                    assert max_pixel_diff(image, expected) <= 2
        finally:
            handle.stop()
    finally:
        ray_executor.close()


def test_cli_sweep_on_ray(ray_cluster, tmp_path):
    from sdlab.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "sweep",
                PROMPT,
                "--model",
                "tiny",
                "--axis",
                "seed=1-2",
                "--steps",
                "1",
                "--out",
                str(out),
                "--executor",
                "ray",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert (out / "grid.png").exists() and len(manifest_keys(out)) == 2
    assert main(["sweep", PROMPT, "--axis", "seed=1-2", "--executor", "ray", "--workers", "0"]) == 2
