"""Executors: where the batches of a sweep, and the jobs of a server, are generated.

    sdlab.sweep("tiny", "a red circle", axes={"seed": "1-64"}, executor="ray")
    with sdlab.executors.RayExecutor(num_workers=4, num_gpus_per_worker=1) as ray_executor:
        sdlab.sweep("sdxl", prompt, axes=axes, executor=ray_executor)   # workers stay loaded
        sdlab.sweep("sdxl", prompt, axes=other_axes, executor=ray_executor)

An executor opens a model (`open(model) -> backend`), runs a list of `GenerationRequest`s on it
(`run(backend, requests) -> BatchOutcome`s, in the order they finish) and releases it. Every image
is made by `sdlab.generation.run_request` (the one path), in this process (`LocalExecutor`, the
default) or in Ray actors that each load the model once (`RayExecutor`). A request that fails is
split in halves and retried, so one bad image fails alone (and an out-of-memory batch is retried
smaller). The caller writes the images: a Ray worker returns PNG bytes and records, never files.

The server's worker uses the same executors: it claims up to `parallelism` batches of jobs and
runs them with `run`, as a sweep runs its batches.
"""

from __future__ import annotations

import collections
import gc
import io
import logging
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import as_backend, open_model
from .backends.base import BackendOutput
from .errors import BackendError, MissingDependencyError, ModelLoadError
from .generation import GenerationResult, run_request
from .request import Defaults, GenerationRequest

__all__ = [
    "BatchOutcome",
    "Interrupted",
    "LocalExecutor",
    "RayExecutor",
    "WorkerOutcome",
    "WorkerProgress",
    "get_executor",
    "run_split",
]

ProgressCallback = Callable[[dict], None]
logger = logging.getLogger("sdlab.executors")


@dataclass
class BatchOutcome:
    """What became of some images of one submitted request: a result or an error.

    `batch` is the position of the request in the list given to `run`; `indices` the positions of
    these images within that request (all of them, unless the request was split after a failure).
    """

    batch: int
    indices: tuple[int, ...]
    result: Any = None  # a GenerationResult with one image and record per index
    error: str | None = None  # "TypeName: message", as a failed sweep cell records it
    peak_memory_mb: float | None = None
    worker: int | None = None  # the Ray worker that made it (None: this process)


# ------------------------------------------------------------------ the one loop both executors run


def is_oom(error: BaseException) -> bool:
    name = type(error).__name__
    return "OutOfMemory" in name or "out of memory" in str(error).lower()


def peak_memory_mb() -> float:
    """The peak memory of this process: CUDA allocations on a GPU, else the resident set."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:  # pragma: no cover
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_split(
    backend,
    request: GenerationRequest,
    *,
    progress: ProgressCallback | None = None,
    split: bool = True,
) -> Iterator[tuple[tuple[int, ...], Any, BaseException | None]]:
    """Run `request` through `run_request`; yields `(indices, result, None)` or `(indices, None, error)`.

    With `split`, a failing request is split in halves and each half retried, down to single
    images, so one bad image fails alone; after an out-of-memory error the CUDA cache is emptied
    first, so the smaller halves can fit.
    """
    yield from _run_part(backend, request, tuple(range(len(request))), progress, split)


class Interrupted(Exception):
    """Raised by a progress callback to stop a run between two denoising steps (a cancel or a
    shutdown): executors let it through instead of splitting and retrying the request."""


def _run_part(backend, request, indices, progress, split):
    try:
        result = run_request(backend, request, progress=progress, progress_bar=False)
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as error:  # noqa: BLE001 - reported per image, the caller goes on
        if is_oom(error):
            _empty_cuda_cache()
        if split and len(indices) > 1:
            half = len(indices) // 2
            yield from _run_part(backend, request.select(range(half)), indices[:half], progress, split)
            yield from _run_part(backend, request.select(range(half, len(indices))), indices[half:], progress, split)
            return
        yield indices, None, error
        return
    yield indices, result, None


def _empty_cuda_cache() -> None:
    try:
        import torch

        torch.cuda.empty_cache()
    except Exception:  # pragma: no cover
        pass


# ------------------------------------------------------------------ local


class LocalExecutor:
    """Runs every batch in this process, one after another (the default).

    `open_model` opens a model reference (default `sdlab.backends.open_model`); pass another to
    count or wrap loads."""

    name = "local"
    label = None  # nothing to add to a sweep's summary line
    parallelism = 1  # batches that run at once

    def __init__(self, open_model: Callable[..., Any] = open_model, *, load_kwargs: dict[str, Any] | None = None):
        self._open_model = open_model
        self.load_kwargs = dict(load_kwargs or {})

    def open(self, model: Any):
        """A backend for `model`: a pipeline or backend as it is, a name/path/id loaded here (with
        `load_kwargs`)."""
        if self.load_kwargs and (model is None or isinstance(model, (str, Path))):
            return as_backend(self._open_model(model, **self.load_kwargs))
        return as_backend(self._open_model(model))

    def run(
        self, backend, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> Iterator[BatchOutcome]:
        for b, request in enumerate(requests):

            def batch_progress(info: dict, b: int = b) -> None:
                progress(dict(info, batch=b))

            for indices, result, error in run_split(backend, request, progress=batch_progress if progress else None):
                if error is not None:
                    yield BatchOutcome(b, indices, error=describe_error(error))
                else:
                    yield BatchOutcome(b, indices, result=result, peak_memory_mb=peak_memory_mb())

    def release(self, backend) -> None:
        """Free a model before the next one loads (sweeps over many checkpoints must not pile up)."""
        del backend
        gc.collect()
        _empty_cuda_cache()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def get_executor(executor: Any) -> tuple[Any, bool]:
    """`(executor, owned)`: None/"local" -> LocalExecutor, "ray" -> RayExecutor(); an object as
    it is. `owned` says the caller made it and must close it."""
    if executor is None or executor == "local":
        return LocalExecutor(), True
    if executor == "ray":
        return RayExecutor(), True
    if isinstance(executor, str):
        raise ValueError(f"`executor` must be 'local', 'ray' or an executor object, got {executor!r}")
    for method in ("open", "run", "release"):
        if not callable(getattr(executor, method, None)):
            raise ValueError(f"`executor` {type(executor).__name__} has no `{method}` method (see sdlab.executors)")
    return executor, False


# ------------------------------------------------------------------ Ray: the worker (an actor)


def import_ray(feature: str = "executor='ray'"):
    try:
        import ray
    except ImportError as e:
        raise MissingDependencyError("ray", feature, extra="ray") from e
    return ray


def _portable(error: BaseException) -> BaseException:
    """The exception itself if it survives pickling (so the driver raises the same type), else a BackendError."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return BackendError(describe_error(error), backend="ray")


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _decode_png(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy()


@dataclass
class WorkerProgress:
    """A Ray worker's progress message: the backend's progress dict plus the worker's `pid`."""

    info: dict


@dataclass
class WorkerOutcome:
    """What a Ray worker returns for one part of a request: the images as PNG bytes with their
    records, or the error (its text, and the exception itself when it survives pickling)."""

    indices: tuple[int, ...]
    pngs: list[bytes] | None = None
    records: list[dict] | None = None
    error: str | None = None
    exception: BaseException | None = None
    peak_memory_mb: float | None = None

    def result(self, request: GenerationRequest | None = None) -> GenerationResult:
        return GenerationResult(images=[_decode_png(p) for p in self.pngs], records=list(self.records), request=request)


class _RayWorker:
    """A Ray actor holding one model, loaded once; runs requests through `run_split` (the one path)."""

    def __init__(self, model: Any, load_kwargs: dict[str, Any]):
        self.backend = open_model(model, **load_kwargs)
        self.pid = os.getpid()

    def ready(self) -> int:
        return self.pid

    def describe(self) -> dict[str, Any]:
        b = self.backend
        d = b.defaults
        return {
            "name": b.name,
            "model_id": b.model_id,
            "identity": b.identity(),
            "defaults": {k: getattr(d, k) for k in Defaults.__dataclass_fields__},
            "size_multiple": b.size_multiple,
            "max_batch_size": b.max_batch_size,
            "supports_per_image_guidance": bool(b.supports_per_image_guidance()),
            "num_controlnets": b.num_controlnets,
            "pid": self.pid,
        }

    def validate(self, requests: list[GenerationRequest]):
        """None, or (position, exception) of the first invalid request."""
        for i, request in enumerate(requests):
            try:
                self.backend.validate(request)
            except Exception as e:  # noqa: BLE001 - raised again by the driver
                return i, _portable(e)
        return None

    def run(self, request: GenerationRequest, split: bool = True):
        """A generator (a Ray streaming task): `WorkerProgress` messages while the pipeline runs, then
        one `WorkerOutcome` per part of the request."""
        messages: queue.SimpleQueue = queue.SimpleQueue()

        def on_step(info: dict) -> None:
            messages.put(WorkerProgress(dict(info, pid=self.pid)))

        def work() -> None:
            try:
                for indices, result, error in run_split(self.backend, request, progress=on_step, split=split):
                    if error is not None:
                        messages.put(WorkerOutcome(indices, error=describe_error(error), exception=_portable(error)))
                    else:
                        pngs = [_png_bytes(image) for image in result.images]
                        messages.put(
                            WorkerOutcome(indices, pngs=pngs, records=result.records, peak_memory_mb=peak_memory_mb())
                        )
            except BaseException as e:  # noqa: BLE001 - anything else fails the whole request
                messages.put(WorkerOutcome(tuple(range(len(request))), error=describe_error(e), exception=_portable(e)))
            finally:
                messages.put(None)

        threading.Thread(target=work, name="sdlab-ray-run", daemon=True).start()
        while (message := messages.get()) is not None:
            yield message


# ------------------------------------------------------------------ Ray: a pool of workers for one model


@dataclass
class _Slot:
    index: int
    handle: Any
    state: str = "starting"  # starting -> idle <-> busy; starting again after a death; dead
    ready_ref: Any = None
    task: Any = None  # the ObjectRefGenerator of the running request
    token: Any = None
    last_seen: float = 0.0
    error: str | None = None


@dataclass
class _Event:
    kind: str  # "progress" | "outcome" | "lost" | "done"
    token: Any
    slot: int
    info: dict = field(default_factory=dict)
    outcome: WorkerOutcome | None = None


class _WorkerPool:
    """`num_workers` Ray actors holding one model. Not thread-safe: one thread drives it."""

    def __init__(self, model: Any, options: RayExecutor):
        ray = import_ray()
        self.ray = ray
        self.model = model
        self.options = options
        options._init_ray()
        remote_class = ray.remote(_RayWorker)
        actor_options = {
            "num_cpus": options.num_cpus_per_worker,
            "num_gpus": options.resolved_gpus_per_worker(),
            "max_restarts": options.max_restarts,
            "max_task_retries": 0,  # a lost request is resubmitted by the pool, to any worker
            "max_concurrency": 2,  # validate/describe answer while a request runs (one request at a time)
            **options.actor_options,
        }
        self.slots = []
        for i in range(options.num_workers):
            handle = remote_class.options(**actor_options).remote(model, dict(options.load_kwargs))
            self.slots.append(_Slot(i, handle, ready_ref=handle.ready.remote(), last_seen=time.monotonic()))
        self.info: dict[str, Any] | None = None
        self.backend: RemoteBackend | None = None

    # -- start

    def wait_ready(self) -> RemoteBackend:
        """Block until one worker has loaded the model (bounded by `start_timeout`); describe it."""
        deadline = time.monotonic() + self.options.start_timeout
        while not any(s.state == "idle" for s in self.slots):
            if all(s.state == "dead" for s in self.slots):
                errors = "; ".join(sorted({s.error or "unknown" for s in self.slots}))
                raise ModelLoadError(f"no Ray worker could load {self.model!r}: {errors}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise ModelLoadError(
                    f"no Ray worker had loaded {self.model!r} after {self.options.start_timeout:.0f} s "
                    "(does the cluster have the CPUs/GPUs the workers ask for? see ray status)"
                )
            self.poll(timeout=min(1.0, left))
        slot = next(s for s in self.slots if s.state == "idle")
        self.info = self.ray.get(slot.handle.describe.remote(), timeout=self.options.start_timeout)
        self.backend = RemoteBackend(self, self.info)
        return self.backend

    # -- scheduling

    def idle(self) -> list[_Slot]:
        return [s for s in self.slots if s.state == "idle"]

    def busy(self) -> bool:
        return any(s.state == "busy" for s in self.slots)

    def usable(self) -> bool:
        return any(s.state != "dead" for s in self.slots)

    def start(self, slot: _Slot, request: GenerationRequest, token: Any, *, split: bool) -> None:
        slot.task = slot.handle.run.remote(request, split)
        slot.token, slot.state, slot.last_seen = token, "busy", time.monotonic()

    def _restart(self, slot: _Slot) -> None:
        slot.task, slot.token, slot.state = None, None, "starting"
        slot.ready_ref = slot.handle.ready.remote()
        slot.last_seen = time.monotonic()

    def poll(self, timeout: float = 1.0) -> list[_Event]:
        """Wait up to `timeout` for something to happen; return what happened."""
        ray = self.ray
        by_ref = {}
        for s in self.slots:
            if s.state == "busy":
                by_ref[s.task] = s
            elif s.state == "starting":
                by_ref[s.ready_ref] = s
        events: list[_Event] = []
        if by_ref:
            ready, rest = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
            if ready and rest:  # everything else that is ready too
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                slot = by_ref[ref]
                if slot.state == "starting":
                    self._on_ready(slot)
                else:
                    events.extend(self._on_message(slot))
        else:
            time.sleep(min(timeout, 0.05))
        events.extend(self._check_stalls())
        return events

    def _on_ready(self, slot: _Slot) -> None:
        ray = self.ray
        try:
            ray.get(slot.ready_ref, timeout=60)
        except ray.exceptions.ActorUnavailableError:  # still restarting: ask again shortly
            time.sleep(0.2)
            slot.ready_ref = slot.handle.ready.remote()
            return
        except Exception as e:  # noqa: BLE001 - died for good (model load failed, restarts used up)
            slot.state, slot.error = "dead", _short(e)
            return
        slot.state, slot.last_seen = "idle", time.monotonic()

    def _on_message(self, slot: _Slot) -> list[_Event]:
        ray = self.ray
        token = slot.token
        try:
            message = ray.get(next(slot.task), timeout=60)
        except StopIteration:
            slot.task, slot.token, slot.state = None, None, "idle"
            return [_Event("done", token, slot.index)]
        except ray.exceptions.RayActorError as e:  # the worker died (killed, crashed, its node lost)
            self._restart(slot)
            return [_Event("lost", token, slot.index, info={"reason": _short(e)})]
        except Exception as e:  # noqa: BLE001 - e.g. the request could not be unpickled there
            slot.task, slot.token, slot.state = None, None, "idle"
            return [_Event("lost", token, slot.index, info={"reason": _short(e), "fatal": True, "error": e})]
        slot.last_seen = time.monotonic()
        if isinstance(message, WorkerProgress):
            return [_Event("progress", token, slot.index, info=message.info)]
        return [_Event("outcome", token, slot.index, outcome=message)]

    def _check_stalls(self) -> list[_Event]:
        limit = self.options.stall_timeout
        events = []
        now = time.monotonic()
        for slot in self.slots:
            if slot.state == "starting" and now - slot.last_seen > self.options.start_timeout:
                self.ray.kill(slot.handle, no_restart=True)
                slot.state, slot.error = "dead", f"not started after {self.options.start_timeout:.0f} s"
            if limit is not None and slot.state == "busy" and now - slot.last_seen > limit:
                token = slot.token
                self.ray.kill(slot.handle, no_restart=False)  # Ray restarts it (max_restarts)
                self._restart(slot)
                events.append(
                    _Event("lost", token, slot.index, info={"reason": f"no word from the worker for {limit:.0f} s"})
                )
        return events

    # -- end

    def close(self) -> None:
        for slot in self.slots:
            try:
                self.ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            slot.state = "dead"


def _short(error: BaseException, limit: int = 500) -> str:
    text = describe_error(error)
    return text if len(text) <= limit else text[:limit] + " ..."


class RemoteBackend:
    """A model that Ray workers hold, as a backend: what planning needs (defaults, identity, batch
    limits, validation) is answered by a worker, and `run` goes through the executor's pool."""

    def __init__(self, pool: _WorkerPool, info: dict[str, Any]):
        self._pool = pool
        self.name = info["name"]
        self.model_id = info["model_id"]
        self.defaults = Defaults(**info["defaults"])
        self.size_multiple = info["size_multiple"]
        self.max_batch_size = info["max_batch_size"]
        self._per_image_guidance = info["supports_per_image_guidance"]
        self.num_controlnets = info["num_controlnets"]
        self._identity = info["identity"]

    def supports_per_image_guidance(self) -> bool:
        return self._per_image_guidance

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)  # the workers': a cell made there has the same key as one made locally

    def validate(self, request: GenerationRequest) -> None:
        self.validate_many([request])

    def validate_many(self, requests: Sequence[GenerationRequest]) -> None:
        """Validate on a worker, in one round trip; raises the worker's error (e.g. ValueError)."""
        if not requests:
            return
        pool = self._pool
        slot = next((s for s in pool.slots if s.state in ("idle", "busy")), None) or next(
            s for s in pool.slots if s.state != "dead"
        )
        failure = pool.ray.get(slot.handle.validate.remote(list(requests)), timeout=pool.options.start_timeout)
        if failure is not None:
            raise failure[1]

    def run(self, request: GenerationRequest, *, progress=None, progress_bar=None) -> BackendOutput:
        """Make the images of `request` on the workers (a failing part fails the call)."""
        images: list[Any] = [None] * len(request)
        records: list[Any] = [None] * len(request)
        seconds = 0.0
        for outcome in self._pool.options.run(self, [request], progress=progress):
            if outcome.error is not None:
                raise BackendError(f"image(s) {list(outcome.indices)}: {outcome.error}", backend="ray")
            for i, image, record in zip(outcome.indices, outcome.result.images, outcome.result.records):
                images[i], records[i] = image, record
                seconds += float(record.get("seconds") or 0.0)
        return BackendOutput(images=images, records=records, seconds=seconds)


# ------------------------------------------------------------------ Ray: the sweep executor


class RayExecutor:
    """Spreads the batches of a sweep over Ray actors, each holding its own pipeline, loaded once.

    Args:
        address: the Ray cluster (`"ray://head:10001"`, `"auto"`); None: `RAY_ADDRESS` if set,
            else the cluster `ray.init()` was already called for, else a local one on this machine.
        num_workers: how many actors (model copies) per model.
        num_gpus_per_worker: GPUs each actor reserves; None: 1 if the cluster has GPUs, else 0.
        num_cpus_per_worker: CPUs each actor reserves.
        load_kwargs: keywords for `load_pipeline` in each worker (device, dtype, offload, ...).
        max_restarts: how often Ray restarts a worker that died (its model is loaded again).
        max_batch_retries: how often a batch whose worker died is given to another worker before
            its cells are recorded as failed.
        start_timeout: seconds to wait for the first worker to load the model.
        stall_timeout: a busy worker that reports nothing (no denoising step) for this many
            seconds is killed and restarted, and its batch is run elsewhere; None: never.
        init_kwargs: more keywords for `ray.init` (when this executor starts Ray).
        actor_options: more Ray actor options (`resources`, `runtime_env`, `scheduling_strategy`).

    Use it as a context manager (or call `close()`) to free the workers; a sweep given
    `executor="ray"` makes one and closes it itself.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int = 2,
        num_gpus_per_worker: float | None = None,
        num_cpus_per_worker: float = 1,
        load_kwargs: dict[str, Any] | None = None,
        max_restarts: int = 3,
        max_batch_retries: int = 3,
        start_timeout: float = 900.0,
        stall_timeout: float | None = 600.0,
        init_kwargs: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | None = None,
    ):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"`num_workers` must be a positive integer, got {num_workers!r}")
        for arg, value in (("num_cpus_per_worker", num_cpus_per_worker), ("num_gpus_per_worker", num_gpus_per_worker)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"`{arg}` must be a number >= 0, got {value!r}")
        for arg, value in (("max_restarts", max_restarts), ("max_batch_retries", max_batch_retries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"`{arg}` must be an integer >= 0 (or -1: no limit), got {value!r}")
        for arg, value in (("start_timeout", start_timeout), ("stall_timeout", stall_timeout)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"`{arg}` must be a number of seconds > 0, got {value!r}")
        if start_timeout is None:
            raise ValueError("`start_timeout` must be a number of seconds > 0, got None")
        self.address = address
        self.num_workers = num_workers
        self.num_gpus_per_worker = num_gpus_per_worker
        self.num_cpus_per_worker = num_cpus_per_worker
        self.load_kwargs = dict(load_kwargs or {})
        self.max_restarts = max_restarts
        self.max_batch_retries = max_batch_retries
        self.start_timeout = float(start_timeout)
        self.stall_timeout = stall_timeout
        self.init_kwargs = dict(init_kwargs or {})
        self.actor_options = dict(actor_options or {})
        self._pools: dict[str, _WorkerPool] = {}

    @property
    def parallelism(self) -> int:
        """Batches that run at once: one per worker."""
        return self.num_workers

    @property
    def label(self) -> str:
        return f"on Ray, {self.num_workers} workers"

    def _init_ray(self) -> None:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, **{"ignore_reinit_error": True, **self.init_kwargs})

    def resolved_gpus_per_worker(self) -> float:
        if self.num_gpus_per_worker is not None:
            return self.num_gpus_per_worker
        return 1 if import_ray().cluster_resources().get("GPU", 0) > 0 else 0

    # -- the executor interface

    def check_model(self, model: Any) -> None:
        """A ValueError unless `model` is something every worker can load by itself."""
        if model is not None and not isinstance(model, (str, Path)):
            raise ValueError(
                "executor='ray' needs the model as a preset name, Hugging Face id or path (each worker loads "
                f"it itself), not a loaded {type(model).__name__}; e.g. sdlab.sweep('tiny', ..., executor='ray')"
            )

    def open(self, model: Any) -> RemoteBackend:
        """Start the workers for `model` (a preset, hub id or path every node can read) or reuse them."""
        self.check_model(model)
        key = str(model) if model is not None else ""
        pool = self._pools.get(key)
        if pool is None or not pool.usable():
            pool = _WorkerPool(str(model) if model is not None else None, self)
            self._pools[key] = pool
            try:
                pool.wait_ready()
            except BaseException:
                self._pools.pop(key, None)
                pool.close()
                raise
        return pool.backend

    def run(
        self, backend, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> Iterator[BatchOutcome]:
        """Run `requests` on the workers of `backend`; yields outcomes as they arrive. A batch whose
        worker dies is given to another worker (only its images not yet returned)."""
        if not isinstance(backend, RemoteBackend):
            raise ValueError("RayExecutor.run needs a backend from RayExecutor.open")
        pool = backend._pool
        run_id = object()  # events of an earlier, abandoned run of this pool are ignored
        todo = collections.deque((b, tuple(range(len(r)))) for b, r in enumerate(requests))
        left = {b: set(range(len(r))) for b, r in enumerate(requests)}
        deaths: collections.Counter = collections.Counter()
        while todo or pool.busy():
            # 1. every idle worker takes the next batch (what is left of it)
            for slot in pool.idle():
                while todo and not (rest := tuple(i for i in todo[0][1] if i in left[todo[0][0]])):
                    todo.popleft()
                if not todo:
                    break
                b, _ = todo.popleft()
                request = requests[b] if len(rest) == len(requests[b]) else requests[b].select(rest)
                pool.start(slot, request, (run_id, b, rest), split=True)
            if not pool.usable():
                errors = "; ".join(sorted({s.error or "unknown" for s in pool.slots}))
                raise BackendError(
                    f"every Ray worker is gone ({errors}); what finished is saved, run again to resume", backend="ray"
                )
            # 2. what the workers said
            for event in pool.poll(timeout=1.0):
                if event.token is None or event.token[0] is not run_id:
                    continue
                _, b, indices = event.token
                if event.kind == "progress":
                    if progress is not None:
                        progress(dict(event.info, worker=event.slot, batch=b))
                elif event.kind == "outcome":
                    outcome = event.outcome
                    done = tuple(indices[i] for i in outcome.indices)
                    for i in done:
                        left[b].discard(i)
                    if outcome.error is not None:
                        yield BatchOutcome(b, done, error=outcome.error, worker=event.slot)
                    else:
                        yield BatchOutcome(
                            b, done, result=outcome.result(), peak_memory_mb=outcome.peak_memory_mb, worker=event.slot
                        )
                elif event.kind == "lost":
                    rest = tuple(i for i in indices if i in left[b])
                    if not rest:
                        continue
                    deaths[b] += 1
                    limit = self.max_batch_retries
                    if event.info.get("fatal") or (limit >= 0 and deaths[b] > limit):
                        for i in rest:
                            left[b].discard(i)
                        reason = event.info["reason"]
                        error = (
                            reason
                            if event.info.get("fatal")
                            else f"WorkerDied: the Ray worker running this batch died {deaths[b]} times (last: {reason})"
                        )
                        yield BatchOutcome(b, rest, error=error, worker=event.slot)
                    else:
                        todo.appendleft((b, rest))

    def release(self, backend) -> None:
        """Stop the workers of `backend`'s model (frees their GPU memory before the next model)."""
        for key, pool in list(self._pools.items()):
            if pool.backend is backend:
                pool.close()
                del self._pools[key]

    def close(self) -> None:
        """Stop every worker this executor started (the Ray cluster itself stays up)."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def workers(self, model: Any = None) -> list[Any]:
        """The actor handles of `model`'s workers (the only model, if None)."""
        pools = list(self._pools.values()) if model is None else [self._pools[str(model)]]
        return [slot.handle for pool in pools for slot in pool.slots]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
