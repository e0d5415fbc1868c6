"""The generation server under load against the same pipeline called directly, in one process.

Workload: `--jobs` one-image jobs with distinct seeds. The direct side calls `sdlab.generate` for
each job in turn. The server side starts `sdlab.server` on 127.0.0.1 (a background thread, the
same pipeline) and `--clients` client threads each submit a job, long-poll it until it is done and
download its PNG, then submit the next (a closed loop). Latency is submit -> PNG received.

Prints jobs/second and latency percentiles (p50/p90/p99) of each side, and server/direct ratios,
once per `--batch-size` (how many queued jobs the worker may run in one pipeline call; `default` is
the server's default settings: batching of up to 4 compatible jobs with a short gathering wait).

    python benchmarks/server_load.py [--model tiny] [--clients 16] [--jobs 64] [--num-inference-steps 20]
                                     [--batch-size default,1] [--threads 1]

The direct side runs before and after the server runs, and the ratios use both (on a shared
machine the load drifts). It has no queue: its "latency" is the time of one call. The server's includes the
wait behind the other clients' jobs, so with N clients its p50 is about N calls (fewer with batching).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

import sdlab
from sdlab.loading import pipeline_info
from sdlab.server import cpu_threads, serve_in_thread

PROMPTS = ["a large red circle on a blue background", "a small yellow star on a black background"]


def job_bodies(n: int, steps: int) -> list[dict]:
    return [{"prompt": PROMPTS[i % 2], "seed": 1000 + i, "num_inference_steps": steps} for i in range(n)]


def run_direct(pipe, bodies: list[dict]) -> tuple[float, list[float]]:
    """(seconds in all, per-job seconds) for the jobs called one after another."""
    latencies = []
    start = time.perf_counter()
    for body in bodies:
        t = time.perf_counter()
        sdlab.generate(pipe, **body)
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies


def run_server(pipe, bodies: list[dict], clients: int, batch_size: int | None) -> tuple[float, list[float]]:
    """(seconds in all, per-job latency) for `clients` closed-loop clients over HTTP."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = list(bodies)

    def client_loop():
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while True:
                with lock:
                    if not todo:
                        return
                    body = todo.pop()
                t = time.perf_counter()
                r = client.post("/generate", json=body)
                while r.status_code == 429:
                    time.sleep(float(r.headers.get("retry-after", 1)))
                    r = client.post("/generate", json=body)
                r.raise_for_status()
                url = r.json()["url"]
                status = client.get(url, params={"wait": 60}).json()
                while status["status"] in ("queued", "running"):
                    status = client.get(url, params={"wait": 60}).json()
                if status["status"] != "done":
                    raise RuntimeError(f"job {status['id']} ended {status['status']}: {status['error']}")
                client.get(status["images"][0]).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    def guarded():
        try:
            client_loop()
        except BaseException as e:  # reported after the join
            errors.append(e)

    with tempfile.TemporaryDirectory(prefix="sdlab-load-") as data_dir:
        settings = {} if batch_size is None else {"batch_size": batch_size}  # None: the server's defaults
        server = serve_in_thread(pipe, data_dir=data_dir, max_queue=max(100, clients), **settings)
        try:
            threads = [threading.Thread(target=guarded) for _ in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - start
        finally:
            server.stop()
    if errors:
        raise errors[0]
    return seconds, latencies


def row(name: str, seconds: float, latencies: list[float]) -> tuple[str, float, float, float, float]:
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return name, len(latencies) / seconds, p50, p90, p99


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded default model")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument(
        "--batch-size",
        default="default,1",
        help="comma-separated worker batch sizes to measure ('default': the server's defaults)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both sides (default: what `sdlab serve` uses)"
    )
    args = parser.parse_args(argv)

    import torch

    threads = cpu_threads("auto", args.threads)  # as `sdlab serve` sets them
    if threads is not None:
        torch.set_num_threads(threads)
    pipe = sdlab.load_pipeline(args.model, progress_bar=False)
    info = pipeline_info(pipe)
    bodies = job_bodies(args.jobs, args.num_inference_steps)
    sdlab.generate(pipe, **bodies[0])  # warm-up: first-call costs are not what is measured

    d = info.defaults
    print(
        f"model {info.model} ({d.width}x{d.height}), {args.jobs} one-image jobs x {args.num_inference_steps} steps, "
        f"{args.clients} clients, torch threads {torch.get_num_threads()}"
    )
    # direct runs before and after the server runs; ratios use both (a shared machine's load drifts)
    before = run_direct(pipe, bodies)
    served_rows = []
    for batch_size in (None if b == "default" else int(b) for b in args.batch_size.split(",")):
        seconds, latencies = run_server(pipe, bodies, args.clients, batch_size)
        label = "defaults" if batch_size is None else f"batch_size={batch_size}"
        served_rows.append((label, row(f"server: HTTP, {label}", seconds, latencies)))
    after = run_direct(pipe, bodies)
    direct = row("direct: sdlab.generate in a loop", before[0] + after[0], before[1] + after[1])
    rows = [row("direct, before the server runs", *before), row("direct, after them", *after), direct]
    ratios = []
    for label, served in served_rows:
        rows.append(served)
        ratios.append((label, served[1] / direct[1], served[2] / direct[2]))

    print(f"{'':38} {'jobs/s':>8} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8}")
    for name, rate, p50, p90, p99 in rows:
        print(f"{name:38} {rate:8.2f} {p50:8.3f} {p90:8.3f} {p99:8.3f}")
    for label, throughput, latency in ratios:
        print(f"server/direct, {label}: throughput x{throughput:.2f}, p50 latency x{latency:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
