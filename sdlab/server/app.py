"""The FastAPI app: routes that only touch the job store; the worker thread does the generating.

Routes are plain `def`s, so FastAPI runs them in its thread pool and the event loop never waits
on SQLite, let alone on the model.
"""

# No `from __future__ import annotations`: FastAPI reads the (app-specific) body model from the
# route's annotations at runtime.

import asyncio
import contextlib
import datetime as dt
import re
import secrets
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ..executors import LocalExecutor, RayExecutor
from ..generation import build_request
from .limits import Limits
from .metrics import CONTENT_TYPE, ServerMetrics
from .schemas import Health, JobList, JobState, JobStatus, Submitted, generate_model
from .store import Job, JobStore, QueueFull, StorageFull, bytes_digest
from .worker import Worker, batch_key

_FIELD = re.compile(r"`(\w+)`")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MAX_OFFSET = 1_000_000_000  # GET /jobs?offset=: far beyond any store, well inside SQLite's integers


class LoopbackHostOnly:
    """Without a token, answer only requests whose `Host` is a loopback name (or one the operator
    allowed): a DNS-rebinding page's requests carry its own host name and get 421. /health is exempt."""

    def __init__(self, app, allowed: "set[str]"):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host")
        name = _host_name(host.decode("latin-1")) if host is not None else None
        if name is None or name in self.allowed:
            return await self.app(scope, receive, send)
        response = JSONResponse(
            {
                "detail": f"this server has no token and answers only the host names {sorted(self.allowed)}, not "
                f"{name!r}; add it with --allowed-hosts (or `allowed_hosts`), or set a token"
            },
            status_code=421,
        )
        return await response(scope, receive, send)


def _host_name(host: str) -> str:
    """`Host` without its port, lower-cased: 'LocalHost:8000' -> 'localhost', '[::1]:80' -> '[::1]'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") == 1 else host.rstrip(".")


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                response = JSONResponse({"detail": f"the request body is over {self.max_bytes} bytes"}, status_code=413)
                return await response(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Waiters:
    """Long-polling requests waiting for a job's state to change, woken from the worker thread."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, set[asyncio.Event]] = {}

    def event(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        return event

    def discard(self, job_id: str, event: asyncio.Event) -> None:
        events = self._events.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                self._events.pop(job_id, None)

    def notify(self, job_ids: list) -> None:
        """Thread-safe: set the events of these jobs on the event loop."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._set, list(job_ids))

    def _set(self, job_ids: list) -> None:
        for job_id in job_ids:
            for event in list(self._events.get(job_id, ())):
                event.set()


async def _wait_until_ended(event: asyncio.Event, load) -> None:
    """Until the job is done, failed, cancelled or gone; re-read on every notification (and once
    at first, for a change that came before the event was registered)."""
    while True:
        job = await run_in_threadpool(load)
        if job is None or job.state not in ("queued", "running"):
            return
        await event.wait()
        event.clear()


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one message per field; the input is not echoed (it may be huge, or NaN)."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _storage_full(request: Request, exc: StorageFull) -> JSONResponse:
    """Any write that found the disk full (POST /generate says more): 507, nothing was changed."""
    return JSONResponse(
        {"detail": f"{exc}; retry once the operator has freed space"}, status_code=507, headers={"Retry-After": "60"}
    )


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="milliseconds")


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")


def create_app(
    model: Any = None,
    *,
    db_path: "str | Path",
    results_dir: "str | Path",
    max_queue: int = 100,
    limits: Limits | None = None,
    token: str | None = None,
    retention_seconds: float | None = 7 * 24 * 3600.0,
    batch_size: int = 8,
    batch_wait: float = 0.05,
    cleanup_interval: float = 60.0,
    max_attempts: int = 3,
    load_kwargs: dict | None = None,
    executor: Any = None,
    allowed_hosts: "tuple[str, ...] | list[str]" = (),
) -> FastAPI:
    """The generation server as an ASGI app (see `sdlab.server` for the endpoints).

    Args:
        model: a loaded pipeline or backend, or a model name/path that the worker thread loads
            (None: the embedded default model); `load_kwargs` go to `load_pipeline`.
        db_path, results_dir: the SQLite job database and the folder of result PNGs.
        max_queue: jobs that may wait; more get 429 with Retry-After.
        limits: per-job limits (`Limits`): sizes, steps, images, prompt length, extra keys.
        token: require `Authorization: Bearer <token>` on every route but /health (the OpenAPI
            schema and the docs pages too).
        allowed_hosts: without a token, requests must name a loopback host (`localhost`,
            `127.0.0.1`, `[::1]`) or one of these in `Host` (421 otherwise: DNS rebinding); "*"
            allows any.
        retention_seconds: finished jobs (rows and PNGs) are deleted this long after they end;
            None keeps them forever. `cleanup_interval` is how often the worker checks.
        batch_size: up to this many queued jobs that share size, steps and scheduler run in one
            pipeline call (1: one job per call).
        batch_wait: seconds a just-queued job waits for compatible jobs to share its call when
            fewer than `batch_size` are queued (0: never wait). Jobs that waited longer in the
            queue run at once.
        max_attempts: a job the server died while running this many times fails instead of
            running again.
        executor: None/"local": the worker thread generates; "ray": a pool of 2 Ray workers that
            each load `model` (a name/path); or an executor from `sdlab.executors` (e.g. a
            `RayExecutor` with more workers or GPUs): the same executors sweeps use. Up to one batch
            per Ray worker runs at once.
    """
    limits = limits if limits is not None else Limits()
    if not isinstance(limits, Limits):
        raise ValueError(f"`limits` must be an sdlab.server.Limits, got {type(limits).__name__}")
    _check_positive(max_queue, "max_queue")
    _check_positive(batch_size, "batch_size")
    if not (isinstance(batch_wait, (int, float)) and 0 <= batch_wait <= 10):
        raise ValueError(f"`batch_wait` must be between 0 and 10 seconds, got {batch_wait!r}")
    _check_positive(max_attempts, "max_attempts")
    if retention_seconds is not None and not retention_seconds > 0:
        raise ValueError(f"`retention_seconds` must be > 0 or None (keep forever), got {retention_seconds!r}")
    if not cleanup_interval > 0:
        raise ValueError(f"`cleanup_interval` must be > 0, got {cleanup_interval!r}")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise ValueError("`token` must be a string of at least 8 characters (or None for no authentication)")

    if executor in (None, "local"):
        executor = LocalExecutor(load_kwargs=load_kwargs)
    elif executor == "ray":
        executor = RayExecutor(load_kwargs=load_kwargs)
    elif not isinstance(executor, (LocalExecutor, RayExecutor)):
        raise ValueError(f"`executor` must be 'local', 'ray' or an executor from sdlab.executors, got {executor!r}")
    if isinstance(executor, RayExecutor) and model is not None and not isinstance(model, (str, Path)):
        raise ValueError(
            "`executor`='ray' needs `model` as a name or path (each Ray worker loads it), not a loaded pipeline"
        )
    allowed = {_host_name(h) for h in allowed_hosts}
    if any(not h for h in allowed):
        raise ValueError(f"`allowed_hosts` must be host names, got {list(allowed_hosts)!r}")
    store = JobStore(db_path, results_dir)
    metrics = ServerMetrics(store.counts, lambda: worker.backend is not None)
    waiters = _Waiters()
    worker = Worker(
        store,
        model,
        load_kwargs=load_kwargs,
        batch_size=batch_size,
        batch_wait=batch_wait,
        retention_seconds=retention_seconds,
        cleanup_interval=cleanup_interval,
        max_attempts=max_attempts,
        metrics=metrics,
        on_change=waiters.notify,
        executor=executor,
    )
    GenerateRequest = generate_model(limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        waiters.loop = asyncio.get_running_loop()
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            waiters.loop = None
            store.close()

    app = FastAPI(
        title="sdlab generation server",
        version=_version(),
        description="Queue text-to-image jobs; poll their status; fetch PNGs that carry their parameters.",
        lifespan=lifespan,
        # with a token, the schema and the docs are routes below that need it too
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if token is not None else {}),
    )
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes)
    if token is None and "*" not in allowed:
        app.add_middleware(LoopbackHostOnly, allowed=set(LOOPBACK_HOSTS) | allowed)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StorageFull, _storage_full)
    app.state.store, app.state.worker, app.state.metrics, app.state.limits = store, worker, metrics, limits

    bearer = HTTPBearer(auto_error=False, description="--token / SDLAB_SERVER_TOKEN")

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorize)] if token is not None else []

    def job_status(job: Job) -> JobStatus:
        progress = worker.progress.get(job.id) if job.state == "running" else None
        return JobStatus(
            id=job.id,
            status=job.state,
            position=store.position(job),
            progress={"step": progress[0], "total": progress[1]} if progress else None,
            error=job.error,
            num_images=job.num_images,
            seeds=job.seeds,
            images=[f"/jobs/{job.id}/images/{k}" for k in range(job.num_images)] if job.state == "done" else [],
            params=job.params,
            attempts=job.attempts,
            created=_iso(job.created_at),
            started=_iso(job.started_at),
            finished=_iso(job.finished_at),
            seconds=job.seconds,
        )

    def find(job_id: uuid.UUID) -> Job:
        job = store.get(str(job_id))
        if job is None:
            raise HTTPException(404, f"no job {job_id} (unknown, or deleted by retention)")
        return job

    if token is not None:
        schema: dict = {}

        @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
        def openapi_schema():
            if not schema:
                schema.update(app.openapi())
            return JSONResponse(schema)

        @app.get("/docs", dependencies=auth, include_in_schema=False)
        def swagger_docs():
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url="/docs/oauth2-redirect",
            )

        @app.get("/docs/oauth2-redirect", dependencies=auth, include_in_schema=False)
        def swagger_oauth2_redirect():
            return get_swagger_ui_oauth2_redirect_html()

        @app.get("/redoc", dependencies=auth, include_in_schema=False)
        def redoc_docs():
            return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    def unavailable() -> JSONResponse | None:
        if worker.backend is not None:
            return None
        metrics.rejected.labels("not_ready").inc()
        if worker.status == "error":
            return JSONResponse({"detail": f"the model failed to load: {worker.error}"}, status_code=503)
        return JSONResponse(
            {"detail": "the model is loading; try again shortly"}, status_code=503, headers={"Retry-After": "5"}
        )

    job_id_path = PathParam(description="the job's id (a UUID)")
    errors = {401: {"description": "missing or wrong bearer token"}}

    @app.post(
        "/generate",
        status_code=202,
        response_model=Submitted,
        dependencies=auth,
        responses={
            **errors,
            422: {"description": "invalid parameters, one message per field"},
            429: {"description": "the queue is full; see Retry-After"},
            507: {"description": "the server's disk is full: the job was not queued (reads still work)"},
            503: {"description": "the model is not loaded (yet)"},
        },
    )
    def submit(body: GenerateRequest):
        """Queue a job: `sdlab.generate`'s parameters. Seeds are resolved now and stored."""
        if (refusal := unavailable()) is not None:
            return refusal
        try:
            gen_request = build_request(worker.backend, **body.generate_kwargs())
            limits.check_guidance(gen_request)
        except (ValueError, TypeError) as e:  # the backend's own checks: sizes it accepts, scheduler names
            metrics.rejected.labels("invalid").inc()
            field = _FIELD.search(str(e))
            loc = ["body", field.group(1)] if field else ["body"]
            return JSONResponse({"detail": [{"loc": loc, "msg": str(e), "type": "value_error"}]}, status_code=422)
        try:
            job, position = store.submit(
                gen_request,
                body.model_dump(exclude_none=True),
                batch_key=batch_key(worker.backend, gen_request),
                max_queue=max_queue,
            )
        except QueueFull as e:
            metrics.rejected.labels("queue_full").inc()
            return JSONResponse(
                {"detail": f"{e}; retry later"}, status_code=429, headers={"Retry-After": str(worker.retry_after())}
            )
        except StorageFull:
            metrics.rejected.labels("disk_full").inc()
            return JSONResponse(
                {
                    "detail": "the server's disk is full: the job was not queued (queued jobs and results are "
                    "still readable); retry once the operator has freed space"
                },
                status_code=507,
                headers={"Retry-After": "60"},
            )
        metrics.submitted.inc()
        worker.wake()
        url = f"/jobs/{job.id}"
        return JSONResponse(
            Submitted(id=job.id, status=job.state, position=position, seeds=job.seeds, url=url).model_dump(),
            status_code=202,
            headers={"Location": url},
        )

    @app.get(
        "/jobs/{job_id}",
        response_model=JobStatus,
        dependencies=auth,
        responses={**errors, 404: {"description": "no such job"}},
    )
    async def get_job(
        job_id: uuid.UUID = job_id_path,
        wait: float = Query(
            0.0, ge=0.0, le=60.0, description="long poll: answer once the job has ended, or after this many seconds"
        ),
    ):
        """A job's status: queued (with its position), running (step i of n), done, failed, cancelled."""
        job = await run_in_threadpool(find, job_id)
        if wait > 0 and job.state in ("queued", "running"):
            ended = waiters.event(job.id)
            try:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(_wait_until_ended(ended, lambda: store.get(job.id)), wait)
            finally:
                waiters.discard(job.id, ended)
            return await run_in_threadpool(lambda: job_status(find(job_id)))  # one hop: re-read and describe
        return await run_in_threadpool(job_status, job)

    @app.get(
        "/jobs/{job_id}/images/{k}",
        dependencies=auth,
        response_class=FileResponse,
        responses={
            **errors,
            200: {"content": {"image/png": {}}, "description": "the PNG, with `parameters` and `sdlab` text chunks"},
            404: {"description": "no such job or image"},
            409: {"description": "the job is not done"},
            410: {"description": "the stored PNG is damaged (it does not match the digest taken when it was written)"},
        },
    )
    def get_image(
        job_id: uuid.UUID = job_id_path, k: int = PathParam(ge=0, le=10_000, description="image index, from 0")
    ):
        """Image `k` of a done job, as often as needed."""
        job = find(job_id)
        if job.state != "done":
            raise HTTPException(409, f"job {job.id} is {job.state}; its images exist once it is done")
        if k >= job.num_images:
            raise HTTPException(404, f"job {job.id} has {job.num_images} image(s); `k` must be below {job.num_images}")
        found = store.image_path(job.id, k)
        if found is None:
            raise HTTPException(404, f"image {k} of job {job.id} is gone")
        path, digest = found
        content = path.read_bytes()
        if digest is not None and bytes_digest(content) != digest:
            raise HTTPException(
                410,
                f"image {k} of job {job.id} is damaged on the server's disk (it no longer matches the digest "
                f"taken when it was written); submit the job again with its seeds {job.seeds} to remake it",
            )
        return Response(
            content, media_type="image/png", headers={"Content-Disposition": f'inline; filename="{job.id}-{k}.png"'}
        )

    @app.delete(
        "/jobs/{job_id}",
        response_model=JobStatus,
        dependencies=auth,
        responses={**errors, 404: {"description": "no such job"}, 409: {"description": "the job has ended already"}},
    )
    def cancel_job(job_id: uuid.UUID = job_id_path):
        """Cancel a job: a queued job never runs; a running job stops at its next step."""
        previous = store.cancel(str(job_id))
        if previous is None:
            raise HTTPException(404, f"no job {job_id}")
        if previous not in ("queued", "running"):
            raise HTTPException(409, f"job {job_id} is {previous} already")
        if previous == "running":
            worker.cancel(str(job_id))
        waiters.notify([str(job_id)])
        metrics.finished.labels("cancelled").inc()
        return job_status(find(job_id))

    @app.get("/jobs", response_model=JobList, dependencies=auth, responses=errors)
    def list_jobs(
        status: JobState | None = Query(None, description="only jobs in this state"),
        limit: int = Query(20, ge=1, le=200),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ):
        """Jobs, newest first, a page at a time."""
        jobs, total = store.list(state=status, limit=limit, offset=offset)
        return JobList(jobs=[job_status(j) for j in jobs], total=total, limit=limit, offset=offset)

    @app.get("/health", response_model=Health)
    def health():
        """Liveness and readiness (no authentication): 200 once the model is loaded, else 503."""
        counts = store.counts()
        body = Health(
            status=worker.status,
            model=worker.model_name,
            queued=counts["queued"],
            running=counts["running"],
            error=worker.error,
        )
        return JSONResponse(body.model_dump(), status_code=200 if worker.status == "ok" else 503)

    @app.get(
        "/metrics",
        dependencies=auth,
        response_class=Response,
        responses={**errors, 200: {"content": {"text/plain": {}}}},
    )
    def prometheus_metrics():
        """Queue depth, jobs by state, latency histograms: Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def _version() -> str:
    from .. import __version__

    return __version__
