"""The generation server: FastAPI in front of one pipeline, with a job queue that loses nothing.

    sdlab serve --model sd15 --port 8000 --data-dir /srv/sdlab      # or create_app(...) / serve_in_thread(...)

Endpoints:
    POST   /generate               queue a job (202 + id; 422 per field; 429 + Retry-After when full)
    GET    /jobs/{id}              queued (position) / running (step i of n) / done / failed / cancelled
    GET    /jobs/{id}/images/{k}   the PNG, with its `parameters` and `sdlab` chunks, as often as needed
    DELETE /jobs/{id}              cancel: a queued job never runs, a running one stops at its next step
    GET    /jobs                   newest first, paged (`limit`, `offset`, `status`)
    GET    /health, GET /metrics   readiness; Prometheus text

Jobs and results live in SQLite and a results folder, so a restart (or a crash) loses nothing;
one worker thread owns the pipeline and generates through `sdlab.generation.run_request`.
Importing this module loads neither FastAPI nor a model.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import EXTRA_KEYS, Limits

__all__ = ["Limits", "ServerHandle", "create_app", "register_cli", "serve_in_thread"]

TOKEN_ENV = "SDLAB_SERVER_TOKEN"
GRACEFUL_SHUTDOWN_SECONDS = 3  # long polls (GET /jobs/{id}?wait=) are cut after this on shutdown


def __getattr__(name: str) -> Any:
    # `create_app` lives with FastAPI in `app.py`; it is imported on first use, with its signature.
    if name == "create_app":
        _require_server_packages()
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _require_server_packages() -> None:
    from ..errors import MissingDependencyError

    for package in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(package)
        except ImportError:
            raise MissingDependencyError(package.replace("_", "-"), "the sdlab server", extra="server") from None


@dataclass
class ServerHandle:
    """A server running on a background thread: `.url`, `.app`, `.stop()` (also a context manager)."""

    url: str
    app: Any
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def store(self):
        return self.app.state.store

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting requests, stop the worker (a running job goes back to the queue), join."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_thread(
    model: Any = None,
    *,
    data_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 60.0,
    log_level: str = "warning",
    **app_kwargs: Any,
) -> ServerHandle:
    """Start the server with uvicorn on a background thread (for notebooks and tests).

    `data_dir` holds `jobs.db` and `results/` (default: a new temporary folder); `port=0` picks a
    free port, which `.url` then names. Other keywords go to `create_app`.
    """
    _require_server_packages()
    import uvicorn

    from .app import create_app

    data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="sdlab-server-"))
    app = create_app(model, db_path=data_dir / "jobs.db", results_dir=data_dir / "results", **app_kwargs)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    )
    thread = threading.Thread(target=server.run, name="sdlab-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the sdlab server did not start on {host}:{port} (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the sdlab server did not start within {startup_timeout:.0f} s")
        time.sleep(0.02)
    return ServerHandle(url=_bound_url(server, host), app=app, _server=server, _thread=thread)


def _bound_url(server, host: str) -> str:
    sock = server.servers[0].sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return f"http://{shown}:{bound_port}"


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cpu_threads(device: str, threads: int | None = None) -> int | None:
    """Torch threads for a server whose model runs on the CPU: `threads` if given, else the cores less
    one (on 2 cores, torch's spinning threads and the HTTP side otherwise take turns: the model then
    runs several times slower). None for accelerators (torch's own setting stays)."""
    from ..loading import resolve_device

    if threads is not None:
        if threads < 1:
            raise ValueError(f"`--threads` must be at least 1, got {threads}")
        return threads
    if resolve_device(device) != "cpu":
        return None
    return max(1, (os.cpu_count() or 2) - 1)


def _cmd_serve(args) -> int:
    _require_server_packages()
    import uvicorn

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not _is_loopback(args.host) and token is None:
        print(
            f"sdlab serve: warning: listening on {args.host} without --token (or {TOKEN_ENV}): "
            f"anyone who can reach it can queue jobs (only with a loopback name or one of --allowed-hosts "
            f"in the Host header)",
            file=sys.stderr,
        )
    limits = Limits(
        max_width=args.max_width,
        max_height=args.max_height,
        max_num_inference_steps=args.max_num_inference_steps,
        max_images=args.max_images,
        extra_keys=tuple(k for k in args.extra_keys.split(",") if k),
    )
    from ..cli import executor_from_args, load_kwargs
    from .app import create_app

    threads = cpu_threads(args.device, args.threads)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    executor = executor_from_args(args)
    data_dir = Path(args.data_dir)
    app = create_app(
        args.model,
        db_path=data_dir / "jobs.db",
        results_dir=data_dir / "results",
        max_queue=args.max_queue,
        limits=limits,
        token=token,
        retention_seconds=args.retention_hours * 3600 if args.retention_hours > 0 else None,
        batch_size=args.batch_size,
        batch_wait=args.batch_wait,
        load_kwargs=load_kwargs(args),
        executor=executor,
        allowed_hosts=tuple(h for h in args.allowed_hosts.split(",") if h),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    )

    def announce():  # print the real URL once bound (the port may have been 0)
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(f"sdlab server on {_bound_url(server, args.host)} (data in {data_dir})", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    server.run()  # SIGINT/SIGTERM: stop taking requests, re-queue the running job, exit
    return 0 if server.started else 1


def register_cli(subparsers) -> None:
    from ..cli import add_executor_arguments, add_model_arguments

    defaults = Limits()
    p = subparsers.add_parser(
        "serve",
        help="run the generation server (HTTP job queue in front of one model)",
        description="Serve a model over HTTP: POST /generate queues a job, GET /jobs/{id} polls it, "
        "GET /jobs/{id}/images/{k} returns its PNGs. Jobs persist in --data-dir.",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--data-dir", default="sdlab-server", help="holds jobs.db and results/ (default: ./sdlab-server)")
    p.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    p.add_argument(
        "--allowed-hosts",
        default="",
        help="without a token, Host names accepted besides localhost, 127.0.0.1 and [::1] "
        "(comma-separated; '*' for any). Others get 421: this blocks DNS rebinding",
    )
    p.add_argument("--max-queue", type=int, default=100, help="queued jobs before 429 (default: 100)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for a model on the CPU (default: the cores less one, so the HTTP side keeps one)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="up to this many compatible queued jobs run in one pipeline call (default: 8; 1: one job a call)",
    )
    p.add_argument(
        "--batch-wait",
        type=float,
        default=0.05,
        help="seconds a just-queued job waits for compatible jobs to join its call (default: 0.05; 0: never)",
    )
    p.add_argument(
        "--retention-hours",
        type=float,
        default=168.0,
        help="delete finished jobs after this long; 0 keeps them (default: 168)",
    )
    p.add_argument("--max-width", type=int, default=defaults.max_width)
    p.add_argument("--max-height", type=int, default=defaults.max_height)
    p.add_argument(
        "--max-num-inference-steps",
        "--max-steps",
        dest="max_num_inference_steps",
        type=int,
        default=defaults.max_num_inference_steps,
    )
    p.add_argument("--max-images", type=int, default=defaults.max_images, help="images per job")
    p.add_argument(
        "--extra-keys",
        default=",".join(defaults.extra_keys),
        help=f"pipeline keywords jobs may set, comma-separated, among {','.join(EXTRA_KEYS)} ('' for none)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_executor_arguments(p, "run jobs on Ray workers, each loading --model")
    p.set_defaults(func=_cmd_serve)
