"""A sweep in this process against the same sweep on Ray with two workers, on this machine.

Workload: a 4-seed x 4-guidance grid (16 cells) in batches of 4, at `--steps` steps, into fresh run
directories (nothing cached). Prints the median wall time of each side over `--repeats` runs, the
ratio, and the one-off costs of Ray (starting the local cluster, the workers loading the model).
Both sides are warmed up first (one small sweep each), so the Ray side runs on loaded workers, as
a researcher's second sweep would. The local sweep uses `--threads` PyTorch threads (default:
PyTorch's own choice, one per core); each Ray worker uses one (Ray sets OMP_NUM_THREADS to its
CPUs).

    python benchmarks/ray_vs_local.py [--model tiny] [--steps 10] [--workers 2] [--repeats 3] [--threads 1]

On a 2-core machine expect no speed-up: the two workers share the same two cores the local sweep
uses, so the figure is Ray's overhead (scheduling, PNG bytes back to the driver). The speed-up
comes from more machines or GPUs: `--address ray://head:10001 --gpus-per-worker 1`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import sdlab
from sdlab.executors import RayExecutor, import_ray

PROMPT = "a large red circle on a blue background"
AXES = {"seed": [1, 2, 3, 4], "guidance_scale": [1.5, 3.0, 5.0, 7.0]}


def hide_slow_import(root: Path) -> None:
    """Ray's raylet waits a fixed 15 s for its dashboard agent; importing Ray there builds the
    `rfc3987_syntax` grammar (about 3 s of CPU, installed with Jupyter), too slow on a busy
    machine. Ray's own processes never need it (see tests/test_ray.py)."""
    if importlib.util.find_spec("rfc3987_syntax") is None:
        return
    (root / "rfc3987_syntax").mkdir()
    (root / "rfc3987_syntax" / "__init__.py").write_text('raise ImportError("hidden from Ray processes")\n')
    os.environ["PYTHONPATH"] = str(root) + (
        os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: start one here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads of the local sweep")
    args = parser.parse_args()
    ray = import_ray("benchmarks/ray_vs_local.py")
    tmp = Path(tempfile.mkdtemp(prefix="sdlab-ray-bench-"))

    def run(model, out, axes=AXES, **kwargs):
        start = time.perf_counter()
        result = sdlab.sweep(
            model,
            PROMPT,
            axes=axes,
            batch_size=args.batch_size,
            out_dir=out,
            num_inference_steps=args.steps,
            verbose=False,
            **kwargs,
        )
        assert all(c.ok for c in result.cells), result.table
        return time.perf_counter() - start

    def timed(model, name, **kwargs):
        run(model, tmp / f"{name}-warmup", axes={"seed": list(range(100, 100 + 2 * args.batch_size))}, **kwargs)
        return statistics.median(run(model, tmp / f"{name}-{i}", **kwargs) for i in range(args.repeats))

    # 1. local: model loaded once in this process, then the sweep
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe = sdlab.load_pipeline(args.model, progress_bar=False)
    local = timed(pipe, "local")

    # 2. Ray: start the cluster and the workers (one-off), then the same sweep on warm workers
    start = time.perf_counter()
    if args.address is None:
        hide_slow_import(tmp)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    else:
        ray.init(address=args.address)
    cluster_s = time.perf_counter() - start
    with RayExecutor(num_workers=args.workers, num_gpus_per_worker=args.gpus_per_worker) as executor:
        start = time.perf_counter()
        executor.open(args.model)
        ready = time.perf_counter()
        # wait until every worker has loaded the model, so the sweep runs on all of them
        ray.get([w.ready.remote() for w in executor.workers(args.model)], timeout=900)
        workers_s = time.perf_counter() - start
        first_worker_s = ready - start
        remote = timed(args.model, "ray", executor=executor)
    ray.shutdown()

    cells = len(AXES["seed"]) * len(AXES["guidance_scale"])
    print(
        f"workload: {cells} cells, batches of {args.batch_size}, {args.steps} steps, model {args.model!r}, {os.cpu_count()} cores"
    )
    print(
        f"local sweep:               {local:7.2f} s  (median of {args.repeats}, {torch.get_num_threads()} torch threads)"
    )
    print(f"ray sweep ({args.workers} workers):     {remote:7.2f} s  (median of {args.repeats})")
    print(f"ratio local/ray:           {local / remote:7.2f}x  (above 1: Ray is faster)")
    print(
        f"one-off: ray.init {cluster_s:.1f} s, first worker ready {first_worker_s:.1f} s, all workers ready {workers_s:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
