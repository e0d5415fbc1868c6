"""The worker: one thread that owns the model and runs queued jobs, batch by batch.

The event loop never touches the model: routes only read and write the job store, and this thread
claims batches of jobs and runs them with an executor, the same one a sweep uses (`LocalExecutor`
here, or `RayExecutor` for Ray workers, one batch per worker at once), so every image is made by
`sdlab.generation.run_request` (the one path) and a failing batch is split and retried down to one
image (`run_split`). It writes each image with `sdlab.metadata.save_png` and marks the job done in
the same transaction that records its images.

Cancellation and shutdown reach a running job through the progress callback, which raises at the
next denoising step: a cancelled job stays cancelled, the other jobs of its batch go back to the
queue in their place, and on shutdown the whole batch is re-queued (it runs after a restart).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends import Backend, as_backend
from ..executors import Interrupted, LocalExecutor
from ..metadata import save_png
from ..presets import default_model
from ..request import GenerationRequest
from .store import Job, JobStore, StorageFull, file_digest, is_disk_full

logger = logging.getLogger("sdlab.server")


def batch_key(backend: Backend, request: GenerationRequest) -> str:
    """Jobs with equal keys may share one pipeline call."""
    key = request.shared_key()
    if not backend.supports_per_image_guidance():
        key += f"|guidance={sorted(set(request.guidance_scale))}"
    return key


class Worker:
    """Runs the jobs of `store` on `model` (a pipeline, a backend, or a name loaded on this thread)."""

    def __init__(
        self,
        store: JobStore,
        model: Any,
        *,
        load_kwargs: dict[str, Any] | None = None,
        batch_size: int = 8,
        batch_wait: float = 0.05,
        retention_seconds: float | None = None,
        cleanup_interval: float = 60.0,
        max_attempts: int = 3,
        metrics=None,
        on_change: Callable[[list[str]], None] | None = None,
        executor=None,
    ):
        self.store = store
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.retention_seconds = retention_seconds
        self.cleanup_interval = cleanup_interval
        self.max_attempts = max_attempts
        self.metrics = metrics
        self.on_change = on_change  # told the ids of jobs whose state may have changed
        self.backend: Backend | None = None
        self.model_name: str | None = None
        self._model = model
        self._load_kwargs = dict(load_kwargs or {})
        self.status = "loading"  # "loading" -> "ok" | "error"
        self.error: str | None = None
        self.progress: dict[str, tuple[int, int]] = {}
        self.mean_job_seconds = 1.0  # running mean of one job's generation time (for Retry-After)
        self._cancelled: set[str] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # where batches run: this thread (LocalExecutor) or Ray workers (RayExecutor, one batch per worker at once)
        self.executor = executor if executor is not None else LocalExecutor(load_kwargs=self._load_kwargs)
        if model is not None and not isinstance(model, (str, Path)):
            self.backend = as_backend(model)  # a loaded pipeline or backend: ready at once
            self.model_name = self.backend.model_id
            self.status = "ok"

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> None:
        """Own the database, re-queue what a dead process left running, start the thread."""
        self.store.acquire_lock()
        recovered = self.store.recover(max_attempts=self.max_attempts)
        if any(recovered.values()):
            logger.warning("recovered jobs after a restart: %s", recovered)
        self.store.remove_orphans()
        self._thread = threading.Thread(target=self._main, name="sdlab-server-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current denoising step; a running batch goes back to the queue."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a step longer than `timeout`
                logger.error("the worker did not stop within %.0f s", timeout)
                return
        self.executor.close()
        self.store.release_lock()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop `job_id` at its next step if it is running (the store says cancelled already)."""
        self._cancelled.add(job_id)

    def cleanup(self) -> int:
        """Delete jobs finished more than `retention_seconds` ago, with their files."""
        if self.retention_seconds is None:
            return 0
        return self.store.expire(self.retention_seconds)

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: about one job's generation time."""
        return max(1, min(600, math.ceil(self.mean_job_seconds)))

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        if self.backend is None:
            try:
                self.backend = self._load()
            except Exception as e:  # the server keeps answering: /health says why
                self.status, self.error = "error", f"{type(e).__name__}: {e}"
                logger.exception("could not load the model")
                return
            self.status = "ok"
        self._loop()

    def _loop(self) -> None:
        next_cleanup = 0.0
        while not self._stop.is_set():
            if self.retention_seconds is not None and time.monotonic() >= next_cleanup:
                self._safely(self.cleanup)
                next_cleanup = time.monotonic() + self.cleanup_interval
            self._wake.clear()
            self._cancelled.clear()  # before claiming: a cancel of a claimed job lands after this
            try:
                gather = self._gathering_seconds()
                if gather > 0:  # a batch still filling: wait for more compatible jobs (a submission wakes us)
                    self._wake.wait(timeout=gather)
                    continue
                batches = []  # one batch per slot of the executor (several Ray workers run at once)
                while len(batches) < self.executor.parallelism:
                    jobs = self.store.claim(batch_size=self.batch_size, max_images=self.backend.max_batch_size)
                    if not jobs:
                        break
                    batches.append(jobs)
            except Exception:  # e.g. the disk is full: the jobs stay queued; try again shortly
                logger.exception("the worker could not claim jobs")
                self._wake.wait(timeout=1.0)
                continue
            if not batches:
                self._wake.wait(timeout=min(1.0, self.cleanup_interval))
                continue
            jobs = [job for batch in batches for job in batch]
            ids = [job.id for job in jobs]  # waiters are told when the jobs end (long polls wait for that only)
            try:
                self._run_batches(batches)
            except StorageFull:  # not the jobs' fault: they run again once there is space (or after a restart)
                logger.exception("the disk is full; jobs %s go back to the queue", ids)
                for job in jobs:
                    with contextlib.suppress(Exception):
                        self.store.requeue(job, "the disk was full")
                self._stop.wait(5.0)
            except Exception as e:  # not the model's failure (those fail the job inside): the store or the disk
                logger.exception("the worker could not finish jobs %s", ids)
                for job in jobs:
                    with contextlib.suppress(Exception):
                        self.store.fail(job, f"internal error: {type(e).__name__}: {e}")
                time.sleep(0.5)
            self._notify(ids)

    def _gathering_seconds(self) -> float:
        """How long the next batch should wait for compatible jobs: while fewer than `batch_size`
        are queued and the oldest was queued less than `batch_wait` ago."""
        if self.batch_size == 1 or self.batch_wait <= 0 or self._stop.is_set():
            return 0.0
        oldest = self.store.filling_batch(self.batch_size)
        return 0.0 if oldest is None else max(0.0, oldest + self.batch_wait - time.time())

    def _notify(self, ids: list[str]) -> None:
        if self.on_change is not None:
            try:
                self.on_change(ids)
            except Exception:  # pragma: no cover - e.g. the event loop closed during shutdown
                logger.debug("could not notify waiters", exc_info=True)

    def _safely(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # never let a failed clean-up kill the worker
            logger.exception("sdlab server worker: %s failed", getattr(fn, "__name__", fn))
            time.sleep(0.5)

    def _load(self) -> Backend:
        model = self._model if self._model is not None else default_model()
        self.model_name = str(model)
        return self.executor.open(model)  # loaded here, or by each Ray worker (this is their description)

    def _run_batches(self, batches: list[list[Job]]) -> None:
        # 1. one request a batch; progress reaches every job of its batch
        requests = [GenerationRequest.concat([job.request for job in jobs]) for jobs in batches]
        ids = [job.id for jobs in batches for job in jobs]
        for job_id in ids:
            self.progress[job_id] = (0, requests[0].num_inference_steps)
        denoising: set[int] = set()

        def on_step(info: dict[str, Any]) -> None:
            b = int(info.get("batch", 0))
            if b not in denoising:  # a death from now on counts against these jobs (see JobStore.recover)
                denoising.add(b)
                self.store.mark_denoising(batches[b])
            for job in batches[b]:
                self.progress[job.id] = (int(info["step"]), int(info["total"]))
            if self._stop.is_set():
                raise Interrupted("the server is shutting down")
            if self._cancelled.intersection(ids):
                raise Interrupted("another job of its batch was cancelled")

        # 2. generate through the one path, with the executor a sweep uses: a failing batch is
        #    split and retried down to single images, so a bad job fails alone
        images: list[list[Any]] = [[None] * len(r) for r in requests]
        records: list[list[Any]] = [[None] * len(r) for r in requests]
        errors: list[dict[int, str]] = [{} for _ in requests]
        try:
            for outcome in self.executor.run(self.backend, requests, progress=on_step):
                if outcome.error is not None:
                    logger.warning("images %s of a batch failed: %s", list(outcome.indices), outcome.error)
                for k, i in enumerate(outcome.indices):
                    if outcome.error is not None:
                        errors[outcome.batch][i] = outcome.error
                    else:
                        images[outcome.batch][i] = outcome.result.images[k]
                        records[outcome.batch][i] = outcome.result.records[k]
        except Interrupted as e:
            for jobs in batches:
                for job in jobs:
                    if job.id not in self._cancelled:
                        self.store.requeue(job, str(e))
            return
        except Exception as e:  # the executor itself failed (e.g. every Ray worker is gone)
            logger.exception("jobs %s failed", ids)
            for jobs in batches:
                for job in jobs:
                    if self.store.fail(job, f"{type(e).__name__}: {e}") and self.metrics:
                        self.metrics.finished.labels("failed").inc()
            return
        finally:
            for job_id in ids:
                self.progress.pop(job_id, None)
        for b, jobs in enumerate(batches):
            self._finish(jobs, images[b], records[b], errors[b])

    def _finish(self, jobs: list[Job], images: list[Any], records: list[Any], errors: dict[int, str]) -> None:
        seconds = sum(float(r["seconds"]) for r in records if r is not None)
        total = len(images)
        # 3. write each job's PNGs, then mark it done in the transaction that records them
        offset = 0
        for job in jobs:
            n = job.num_images
            failed = [errors[i] for i in range(offset, offset + n) if i in errors]
            if failed:
                if self.store.fail(job, failed[0]) and self.metrics:
                    self.metrics.finished.labels("failed").inc()
                offset += n
                continue
            folder = self.store.job_dir(job.id)
            try:
                paths, digests = [], []
                for k in range(n):
                    record = dict(records[offset + k], job_id=job.id, job_image=k)
                    paths.append(save_png(images[offset + k], folder / f"{k}.png", record))
                    digests.append(file_digest(paths[-1]))  # checked whenever the image is served
            except OSError as e:
                if is_disk_full(e):
                    shutil.rmtree(folder, ignore_errors=True)
                    raise StorageFull(f"could not write the images of job {job.id}: {e}") from e
                if self.store.fail(job, f"could not write the images: {e}") and self.metrics:
                    self.metrics.finished.labels("failed").inc()
                offset += n
                continue
            job_seconds = seconds * n / total
            if self.store.finish(job, paths, job_seconds, digests):
                self.mean_job_seconds = 0.8 * self.mean_job_seconds + 0.2 * job_seconds
                if self.metrics:
                    self.metrics.finished.labels("done").inc()
                    self.metrics.images.inc(n)
                    self.metrics.latency.observe(max(0.0, time.time() - job.created_at))
                    self.metrics.run_seconds.observe(job_seconds)
            else:  # cancelled while its images were written
                shutil.rmtree(folder, ignore_errors=True)
            offset += n
