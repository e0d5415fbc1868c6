"""The HTTP side of the Replicate backend, through the official `replicate` client.

One prediction per image, created by model (official models) or by version, polled until it
ends and canceled on timeout, on Ctrl-C or when another image of the same run failed; retries
with exponential backoff on 429 (honouring Retry-After) and 5xx; outputs (a URL, a list of URLs,
`FileOutput`s, data URLs) downloaded with a size limit and checked to be an image of the asked
format; a thread pool for the predictions of one run.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..errors import BackendError, MissingDependencyError
from .replicate_models import PIL_FORMATS

TERMINAL = ("succeeded", "failed", "canceled")
MAX_DOWNLOAD_BYTES = 64 * 2**20


class ReplicateClient:
    """Predictions of one Replicate model (`model`, optionally pinned to `version`).

    Args: as `ReplicateBackend`'s of the same names; `client` is a `replicate.Client` (default:
    one built on first use from `api_token` and `base_url`).
    """

    name = "replicate"

    def __init__(
        self,
        model: str,
        version: str | None = None,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        client: Any = None,
    ):
        self.model, self.version = model, version
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_retry_wait = float(max_retry_wait)
        self._api_token = api_token
        self._base_url = base_url
        self._client = client
        self._local = threading.local()
        self._download = None
        self._progress_lock = threading.Lock()

    @property
    def model_ref(self) -> str:
        return f"{self.model}:{self.version}" if self.version else self.model

    # ------------------------------------------------------------ files

    def upload(self, data: bytes, filename: str, sha256: str) -> dict[str, Any]:
        """`data` uploaded through Replicate's files API: {"id", "url", "sha256"}. The server's
        checksum must be `sha256` (what the record says was sent)."""
        file = self._call(
            f"upload {filename}",
            lambda: self.client.files.create(io.BytesIO(data), filename=filename),
            idempotent=False,
        )
        got = (getattr(file, "checksums", None) or {}).get("sha256")
        if got is not None and got != sha256:
            raise BackendError(
                f"Replicate stored {filename} with sha256 {got[:12]}..., not the {sha256[:12]}... sent",
                backend=self.name,
            )
        return {"id": file.id, "url": file.urls["get"], "sha256": sha256}

    # ------------------------------------------------------------ predictions

    def run_all(
        self, inputs: list[dict[str, Any]], *, max_workers: int, progress=None
    ) -> list[tuple[Image.Image, dict[str, Any]]]:
        """One prediction per input, up to `max_workers` in flight; (image, record) in input order.

        The first failure cancels the predictions still running and is raised (Ctrl-C too)."""
        n = len(inputs)
        # the clients are built here, once, not raced for by the worker threads
        _ = self.client
        self._downloader()
        stop = threading.Event()
        done = [0]

        def one(i: int):
            try:
                return self._predict(i, inputs[i], stop, progress, n, done)
            except BaseException:
                stop.set()  # the others cancel their predictions
                raise

        workers = min(n, max_workers)
        if workers == 1:
            return [one(i) for i in range(n)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdlab-replicate") as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            errors = []
            results = []
            for f in futures:
                try:
                    results.append(f.result())
                except KeyboardInterrupt:
                    stop.set()  # Ctrl-C: the workers cancel their predictions before the pool closes
                    raise
                except BaseException as e:  # noqa: PERF203
                    errors.append(e)
            if errors:
                real = [e for e in errors if not isinstance(e, _Stopped)]
                raise (real or errors)[0]
        return results

    def _predict(self, i: int, data: dict[str, Any], stop: threading.Event, progress, n: int, done: list[int]):
        client = self.client
        # 1. create the prediction (by model for official models, by version otherwise)
        if self.version:
            create = lambda: client.predictions.create(version=self.version, input=data)  # noqa: E731
        else:
            create = lambda: client.models.predictions.create(model=self.model, input=data)  # noqa: E731
        prediction = self._call(f"create a prediction of {self.model_ref}", create, idempotent=False)
        pid = prediction.id
        # 2. poll until it ends (canceled on timeout, on Ctrl-C, or when another image of the run failed)
        try:
            prediction = self._wait(prediction, i, stop, progress, n)
        except KeyboardInterrupt:
            self._cancel(pid)
            raise
        if prediction.status == "failed":
            logs = (prediction.logs or "").strip().splitlines()[-3:]
            raise BackendError(
                f"Replicate prediction {pid} ({self.model_ref}) failed: {prediction.error or 'no error message'}"
                + (f"\n  last log lines: {' | '.join(logs)}" if logs else ""),
                backend=self.name,
                job_id=pid,
            )
        if prediction.status == "canceled":
            raise BackendError(
                f"Replicate prediction {pid} ({self.model_ref}) was canceled", backend=self.name, job_id=pid
            )
        # 3. download and check the output
        image, url = self._output_image(prediction, data.get("output_format"))
        with self._progress_lock:
            done[0] += 1
            count = done[0]
        self._progress(
            progress, {"step": count, "total": n, "image": i, "images": n, "prediction_id": pid, "status": "succeeded"}
        )
        metrics = prediction.metrics or {}
        record = {
            "backend": self.name,
            "model": self.model,
            "version": prediction.version,
            "prediction_id": pid,
            "width": image.width,
            "height": image.height,
            "output_format": (image.format or "").lower() or None,
            "output_url": url if not str(url).startswith("data:") else "data:",
            "predict_time": metrics.get("predict_time"),
        }
        if "aspect_ratio" in data:
            record["aspect_ratio"] = data["aspect_ratio"]
        return image, record

    def _wait(self, prediction, i: int, stop: threading.Event, progress, n: int):
        """Poll `prediction` until it is succeeded, failed or canceled; cancel it on timeout or `stop`."""
        pid, deadline, last_step = prediction.id, time.monotonic() + self.timeout, None
        while prediction.status not in TERMINAL:
            if stop.is_set():
                self._cancel(pid)
                raise _Stopped(pid)
            if time.monotonic() > deadline:
                self._cancel(pid)
                raise BackendError(
                    f"Replicate prediction {pid} ({self.model_ref}) did not finish within {self.timeout:g} s; it was canceled. "
                    f"Raise `timeout` for slow models or busy queues.",
                    backend=self.name,
                    job_id=pid,
                )
            time.sleep(self.poll_interval)
            prediction = self._call(
                f"get prediction {pid}", lambda: self.client.predictions.get(pid), idempotent=True, job_id=pid
            )
            step = _log_progress(prediction)
            if step is not None and step != last_step:
                last_step = step
                self._progress(
                    progress, {"step": step[0], "total": step[1], "image": i, "images": n, "prediction_id": pid}
                )
        return prediction

    def _progress(self, progress, event: dict[str, Any]) -> None:
        if progress is not None:
            with self._progress_lock:
                progress(event)

    # ------------------------------------------------------------ outputs

    def _output_image(self, prediction, output_format: str | None) -> tuple[Image.Image, str]:
        items = _output_items(prediction.output)
        if not items:
            raise BackendError(
                f"Replicate prediction {prediction.id} succeeded without an output file (output: {prediction.output!r:.200})",
                backend=self.name,
                job_id=prediction.id,
            )
        url = getattr(items[0], "url", items[0])
        data = self.fetch(str(url), prediction.id)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as e:
            raise BackendError(
                f"the output of Replicate prediction {prediction.id} is not an image ({e}): {str(url)[:200]}",
                backend=self.name,
                job_id=prediction.id,
            ) from e
        expected = PIL_FORMATS.get(output_format or "")
        if expected and image.format != expected:
            raise BackendError(
                f"Replicate prediction {prediction.id} returned a {image.format} image, expected {output_format}",
                backend=self.name,
                job_id=prediction.id,
            )
        fmt = image.format
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.format = fmt
        return image, str(url)

    def fetch(self, url: str, pid: str) -> bytes:
        """The bytes of an output: a data URL decoded, an http(s) URL downloaded (with retries)."""
        if url.startswith("data:"):
            try:
                header, encoded = url.split(",", 1)
                return base64.b64decode(encoded) if ";base64" in header else encoded.encode()
            except Exception as e:
                raise BackendError(
                    f"Replicate prediction {pid}: unreadable data URL ({e})", backend=self.name, job_id=pid
                ) from e
        if not url.startswith(("http://", "https://")):
            raise BackendError(
                f"Replicate prediction {pid}: output {url[:200]!r} is not a URL", backend=self.name, job_id=pid
            )
        return self._call(
            f"download the output of prediction {pid}",
            lambda: self._download_once(url, pid),
            idempotent=True,
            job_id=pid,
        )

    def _download_once(self, url: str, pid: str) -> bytes:
        client = self._downloader()
        with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise _HTTPStatus(response.status_code, response.headers, f"GET {url[:200]}")
            ctype = response.headers.get("content-type", "")
            if ctype and not ctype.startswith(("image/", "application/octet-stream", "binary/")):
                raise BackendError(
                    f"the output of Replicate prediction {pid} is {ctype}, not an image: {url[:200]}",
                    backend=self.name,
                    job_id=pid,
                )
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise BackendError(
                        f"the output of Replicate prediction {pid} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB",
                        backend=self.name,
                        job_id=pid,
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    def _downloader(self):
        if self._download is None:
            import httpx

            self._download = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True)
        return self._download

    # ------------------------------------------------------------ the client and retries

    @property
    def client(self):
        """The `replicate.Client` (built on first use)."""
        if self._client is None:
            try:
                import httpx
                import replicate
            except ImportError:
                raise MissingDependencyError("replicate", "the Replicate backend", "replicate") from None
            token = self._api_token or os.environ.get("REPLICATE_API_TOKEN")
            if not token:
                raise BackendError(
                    "no Replicate API token: set REPLICATE_API_TOKEN or pass api_token= "
                    "(https://replicate.com/account/api-tokens)",
                    backend=self.name,
                )
            self._client = replicate.Client(
                api_token=token,
                base_url=self._base_url,
                timeout=httpx.Timeout(30.0, connect=10.0),
                event_hooks={"response": [self._remember_response]},
            )
            self._client.poll_interval = self.poll_interval
        return self._client

    def _remember_response(self, response) -> None:
        self._local.headers = response.headers

    def _call(self, what: str, fn, *, idempotent: bool, job_id: str | None = None):
        """`fn()` with retries: 429 (after Retry-After) and 5xx with exponential backoff; a POST
        answered 500 or lost mid-request is not retried (the prediction may exist)."""
        import httpx

        try:
            from replicate.exceptions import ReplicateError
        except ImportError:  # pragma: no cover - a client passed in without the package
            ReplicateError = _HTTPStatus  # noqa: N806
        attempt = 0
        while True:
            self._local.headers = None
            try:
                return fn()
            except (ReplicateError, _HTTPStatus) as e:
                status = getattr(e, "status", None)
                retry = status == 429 or (status in (502, 503, 504)) or (status == 500 and idempotent)
                if not retry or attempt >= self.max_retries:
                    raise self._api_error(what, e, job_id) from e
                wait = self._retry_after(e) if status == 429 else None
            except httpx.TimeoutException as e:
                if not idempotent or attempt >= self.max_retries:
                    raise BackendError(
                        f"Replicate timed out trying to {what} ({type(e).__name__})"
                        + ("" if idempotent else "; the prediction may have been created, check your dashboard"),
                        backend=self.name,
                        job_id=job_id,
                    ) from e
                wait = None
            except httpx.TransportError as e:
                if (not idempotent and not isinstance(e, httpx.ConnectError)) or attempt >= self.max_retries:
                    raise BackendError(
                        f"cannot reach Replicate to {what}: {e}", backend=self.name, job_id=job_id
                    ) from e
                wait = None
            if wait is None:
                wait = self.backoff * (2**attempt) * (1 + 0.1 * random.random())
            time.sleep(min(wait, self.max_retry_wait))
            attempt += 1

    def _retry_after(self, error) -> float | None:
        headers = getattr(error, "headers", None) or getattr(self._local, "headers", None)
        value = headers.get("retry-after") if headers is not None else None
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                pass
        m = re.search(r"available in ~?(\d+(?:\.\d+)?)\s*s", str(getattr(error, "detail", "") or ""))
        return float(m.group(1)) if m else None

    def _api_error(self, what: str, error, job_id: str | None) -> BackendError:
        status = getattr(error, "status", None)
        detail = getattr(error, "detail", None) or getattr(error, "title", None) or str(error)
        if status == 401:
            hint = ": the API token was rejected; check REPLICATE_API_TOKEN"
        elif status == 404:
            hint = f": no model or version {self.model_ref!r} (or no access to it)"
        elif status == 422:
            hint = ": the model rejected the input"
        elif status == 429:
            hint = f": still rate limited after {self.max_retries} retries"
        else:
            hint = ""
        return BackendError(
            f"Replicate could not {what} (HTTP {status}){hint}: {str(detail).strip()}", backend=self.name, job_id=job_id
        )

    def _cancel(self, pid: str) -> None:
        try:
            self._call(
                f"cancel prediction {pid}", lambda: self.client.predictions.cancel(pid), idempotent=True, job_id=pid
            )
        except BackendError:
            pass  # best effort: the prediction may have ended meanwhile


class _Stopped(Exception):
    """Another image of the same run failed; this prediction was canceled."""


class _HTTPStatus(Exception):
    def __init__(self, status: int, headers, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.headers, self.detail = status, headers, detail


def _output_items(output: Any) -> list[Any]:
    """The files of a prediction output: a URL string, a FileOutput, or lists/dicts of them."""
    if output is None:
        return []
    if isinstance(output, str):
        return [output] if output.startswith(("http://", "https://", "data:")) else []
    if hasattr(output, "url") and not isinstance(output, (list, tuple, dict)):
        return [output]
    if isinstance(output, Mapping):
        return [x for v in output.values() for x in _output_items(v)]
    if isinstance(output, (list, tuple)):
        return [x for v in output for x in _output_items(v)]
    return []


def _log_progress(prediction) -> tuple[int, int] | None:
    try:
        p = prediction.progress
    except Exception:  # pragma: no cover - unusual logs
        return None
    return (int(p.current), int(p.total)) if p is not None else None
