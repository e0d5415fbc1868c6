"""Replicate: hosted models (FLUX 1.1 Pro, FLUX schnell/dev, any `owner/name[:version]`) behind
sdlab's backend protocol, through the official `replicate` client.

What the production guide's `replicate.run(...)[0]` misses, and this backend does:
- one prediction per image, so every image has its own seed (a batch of `num_outputs` shares one);
- sdlab's parameters mapped to each model's input names (a small table of known models; a
  generic mapping for others), values the model cannot take rejected before any call;
- timeouts, retries with exponential backoff on 429 (honouring Retry-After) and 5xx, failed and
  canceled predictions as `BackendError`s carrying the prediction id;
- outputs as a URL, a list of URLs or `FileOutput`s, downloaded, checked (an image, of the
  expected format) and recorded with model, version and prediction id.
"""

from __future__ import annotations

import base64
import io
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from PIL import Image

from ..errors import BackendError, MissingDependencyError
from ..request import GenerationRequest, check_size, is_prompt_object, prompt_text
from .base import BackendOutput, Defaults, ProgressCallback

TERMINAL = ("succeeded", "failed", "canceled")
# PIL's name of each output_format a model may be asked for.
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
MAX_DOWNLOAD_BYTES = 64 * 2**20

FLUX_RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
FLUX_PRO_RATIOS = ("1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")


@dataclass(frozen=True)
class ReplicateModel:
    """How one Replicate model takes sdlab's parameters: its input names (None: not taken).

    `size` is "width_height" (inputs width/height), "aspect_ratio" (only a ratio from
    `aspect_ratios`), or "aspect_ratio_or_custom" (aspect_ratio="custom" with width/height inside
    `size_range`, else a listed ratio)."""

    size: str = "width_height"
    aspect_ratios: tuple[str, ...] = ()
    size_range: tuple[int, int] = (64, 2048)
    size_multiple: int = 8
    negative_prompt: str | None = "negative_prompt"
    num_inference_steps: str | None = "num_inference_steps"
    steps_range: tuple[int, int] | None = None
    guidance_scale: str | None = "guidance_scale"
    guidance_range: tuple[float, float] | None = None
    scheduler: str | None = "scheduler"
    num_outputs: str | None = None  # the batch input, always sent as 1 (per-image seeds)
    output_formats: tuple[str, ...] = ()  # () when the model has no output_format input
    inputs: tuple[str, ...] | None = None  # other inputs it takes; None: pass anything through
    defaults: Defaults = field(default_factory=lambda: Defaults(1024, 1024, 30, 7.5))


KNOWN_MODELS: dict[str, ReplicateModel] = {
    "black-forest-labs/flux-1.1-pro": ReplicateModel(
        size="aspect_ratio_or_custom", aspect_ratios=FLUX_PRO_RATIOS, size_range=(256, 1440), size_multiple=32,
        negative_prompt=None, num_inference_steps=None, guidance_scale=None, scheduler=None,
        output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "safety_tolerance", "prompt_upsampling", "image_prompt", "output_quality"),
        defaults=Defaults(1024, 1024, 25, 3.0),
    ),
    "black-forest-labs/flux-pro": ReplicateModel(
        size="aspect_ratio_or_custom", aspect_ratios=FLUX_PRO_RATIOS, size_range=(256, 1440), size_multiple=32,
        negative_prompt=None, num_inference_steps="steps", steps_range=(1, 50), guidance_scale="guidance",
        guidance_range=(2.0, 5.0), scheduler=None, output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "safety_tolerance", "prompt_upsampling", "image_prompt", "interval", "output_quality"),
        defaults=Defaults(1024, 1024, 25, 3.0),
    ),
    "black-forest-labs/flux-dev": ReplicateModel(
        size="aspect_ratio", aspect_ratios=FLUX_RATIOS, size_multiple=16, negative_prompt=None,
        num_inference_steps="num_inference_steps", steps_range=(1, 50), guidance_scale="guidance",
        guidance_range=(0.0, 10.0), scheduler=None, num_outputs="num_outputs", output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "image", "prompt_strength", "go_fast", "megapixels", "disable_safety_checker", "output_quality"),
        defaults=Defaults(1024, 1024, 28, 3.0),
    ),
    "black-forest-labs/flux-schnell": ReplicateModel(
        size="aspect_ratio", aspect_ratios=FLUX_RATIOS, size_multiple=16, negative_prompt=None,
        num_inference_steps="num_inference_steps", steps_range=(1, 4), guidance_scale=None, scheduler=None,
        num_outputs="num_outputs", output_formats=("webp", "jpg", "png"),
        inputs=("aspect_ratio", "go_fast", "megapixels", "disable_safety_checker", "output_quality"),
        defaults=Defaults(1024, 1024, 4, 0.0),
    ),
    "stability-ai/sdxl": ReplicateModel(
        size="width_height", size_multiple=8, steps_range=(1, 500), guidance_range=(1.0, 50.0),
        num_outputs="num_outputs", defaults=Defaults(1024, 1024, 30, 7.5),
    ),
}


def parse_model(ref: str) -> tuple[str, str | None]:
    """'owner/name' or 'owner/name:version' -> ('owner/name', version or None)."""
    if not isinstance(ref, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", ref.strip()):
        raise ValueError(f"`model` must read 'owner/name' or 'owner/name:version' (e.g. 'black-forest-labs/flux-schnell'), got {ref!r}")
    name, _, version = ref.strip().partition(":")
    return name, version or None


def _aspect_ratio(width: int, height: int) -> str:
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


class ReplicateBackend:
    """A Replicate model behind sdlab's backend protocol.

    Args:
        model: "black-forest-labs/flux-1.1-pro", "black-forest-labs/flux-schnell", any "owner/name"
            or "owner/name:version".
        api_token: default `REPLICATE_API_TOKEN`.
        inputs: model inputs sent with every prediction (e.g. {"go_fast": False}).
        input_names: override the input name of sdlab parameters, e.g. {"num_inference_steps": "steps"}
            (None: the model does not take it).
        output_format: asked of models that take it ("png", "jpg" or "webp"); images are checked.
        timeout: seconds one prediction may take before it is canceled.
        max_concurrency: predictions in flight at once (one `run` carries up to this many images).
        max_retries: retries of a call answered 429 or 5xx (or lost), with exponential backoff.
        client: a `replicate.Client` (default: one built from `api_token` and `base_url`).
    """

    name = "replicate"

    def __init__(
        self,
        model: str,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        input_names: Mapping[str, str | None] | None = None,
        output_format: str | None = "png",
        output_quality: int | None = None,
        defaults: Defaults | None = None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
        max_concurrency: int = 4,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        client: Any = None,
    ):
        self.model, self.version = parse_model(model)
        spec = KNOWN_MODELS.get(self.model, ReplicateModel())
        if input_names:
            known = {"negative_prompt", "num_inference_steps", "guidance_scale", "scheduler", "num_outputs"}
            bad = sorted(set(input_names) - known)
            if bad:
                raise ValueError(f"`input_names` keys {bad} are not sdlab parameters; known: {', '.join(sorted(known))}")
            spec = replace(spec, **dict(input_names))
        if defaults is not None:
            spec = replace(spec, defaults=defaults)
        self.spec = spec
        fmt = output_format.lower() if isinstance(output_format, str) else output_format
        if fmt is not None and fmt not in PIL_FORMATS:
            raise ValueError(f"`output_format` must be one of png, jpg, webp (or None), got {output_format!r}")
        if spec.output_formats and fmt is not None and fmt not in spec.output_formats:
            raise ValueError(f"`output_format`={fmt!r}: {self.model} makes {', '.join(spec.output_formats)}")
        self.output_format = fmt
        if output_quality is not None and not (isinstance(output_quality, int) and 0 <= output_quality <= 100):
            raise ValueError(f"`output_quality` must be an int from 0 to 100, got {output_quality!r}")
        self.output_quality = output_quality
        self.inputs = dict(inputs or {})
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be a positive int, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_retry_wait = float(max_retry_wait)
        self._api_token = api_token
        self._base_url = base_url
        self._client = client
        self._local = threading.local()
        self._download = None
        self._progress_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReplicateBackend({self.model_ref!r})"

    @property
    def model_ref(self) -> str:
        return f"{self.model}:{self.version}" if self.version else self.model

    # ------------------------------------------------------------ protocol properties

    @property
    def model_id(self) -> str:
        return self.model_ref

    @property
    def defaults(self) -> Defaults:
        return self.spec.defaults

    @property
    def size_multiple(self) -> int:
        return self.spec.size_multiple

    @property
    def max_batch_size(self) -> int:
        return self.max_concurrency

    def supports_per_image_guidance(self) -> bool:
        return False

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model,
            "version": self.version,  # None: the model's current version (official models)
            "inputs": {k: self.inputs[k] for k in sorted(self.inputs)},
            "output_format": self.output_format,
            "output_quality": self.output_quality,
        }

    def validate(self, request: GenerationRequest) -> None:
        for i in range(len(request)):
            self.model_input(request, i)
        if len(set(request.guidance_scale)) > 1:
            raise ValueError("the Replicate backend takes one `guidance_scale` per request; split the request by guidance")

    # ------------------------------------------------------------ inputs

    def model_input(self, request: GenerationRequest, i: int) -> tuple[dict[str, Any], list[str]]:
        """The prediction input of image `i` and the sdlab parameters the model does not take.

        Raises ValueError (naming the argument) for values the model cannot take."""
        spec = self.spec
        check_size(request.width, request.height, spec.size_multiple)
        kwargs = {**self.inputs, **request.pipeline_kwargs}
        if spec.inputs is not None:
            allowed = set(spec.inputs) | {"output_format"}
            unknown = sorted(set(kwargs) - allowed)
            if unknown:
                raise ValueError(f"unknown argument(s) {unknown} for {self.model}; it takes: {', '.join(sorted(allowed))}")
        data: dict[str, Any] = {"prompt": plain_prompt(request.prompt[i], "prompt", self.model),
                                "seed": int(request.seed[i])}
        if data["seed"] >= 2**63:
            raise ValueError(f"`seed`={data['seed']} is too large for Replicate's integer inputs (use < 2**63)")
        unused: list[str] = []
        data.update(self._size_input(request.width, request.height, kwargs))
        for name, input_name, rng in (
            ("num_inference_steps", spec.num_inference_steps, spec.steps_range),
            ("guidance_scale", spec.guidance_scale, spec.guidance_range),
        ):
            value = request.num_inference_steps if name == "num_inference_steps" else request.guidance_scale[i]
            if input_name is None:
                unused.append(name)
                continue
            if rng is not None and not rng[0] <= value <= rng[1]:
                raise ValueError(f"`{name}`={value:g} is outside {rng[0]:g}..{rng[1]:g}, what {self.model} takes")
            data[input_name] = value
        negative = plain_prompt(request.negative_prompt[i], "negative_prompt", self.model)
        if negative:
            if spec.negative_prompt is None:
                unused.append("negative_prompt")
            else:
                data[spec.negative_prompt] = negative
        if request.scheduler is not None:
            if spec.scheduler is None:
                unused.append("scheduler")
            else:
                data[spec.scheduler] = request.scheduler
        if spec.num_outputs:
            data[spec.num_outputs] = 1
        fmt = kwargs.pop("output_format", None)
        explicit = fmt is not None
        fmt = str(fmt if explicit else self.output_format or "").lower() or None
        if fmt is not None:
            if spec.output_formats and fmt not in spec.output_formats:
                raise ValueError(f"`output_format`={fmt!r}: {self.model} makes {', '.join(spec.output_formats)}")
            if spec.output_formats or explicit:  # a model without the input gets it only when asked
                data["output_format"] = fmt
        if self.output_quality is not None and "output_quality" not in kwargs and data.get("output_format") in ("jpg", "webp"):
            data["output_quality"] = self.output_quality
        for key, value in kwargs.items():
            data[key] = _jsonable_input(value, key)
        return data, unused

    def _size_input(self, width: int, height: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        if spec.size == "width_height":
            lo, hi = spec.size_range
            for name, v in (("width", width), ("height", height)):
                if not lo <= v <= hi:
                    raise ValueError(f"`{name}`={v} is outside {lo}..{hi}, what {self.model} takes")
            return {"width": width, "height": height}
        explicit = kwargs.pop("aspect_ratio", None)
        custom_ok = spec.size == "aspect_ratio_or_custom"
        if explicit is not None:
            if explicit == "custom" and custom_ok:
                return {"aspect_ratio": "custom", "width": width, "height": height}
            if explicit not in spec.aspect_ratios:
                raise ValueError(f"`aspect_ratio`={explicit!r}: {self.model} takes {', '.join(spec.aspect_ratios + (('custom',) if custom_ok else ()))}")
            return {"aspect_ratio": explicit}
        lo, hi = spec.size_range
        if custom_ok and lo <= width <= hi and lo <= height <= hi:
            return {"aspect_ratio": "custom", "width": width, "height": height}
        ratio = _aspect_ratio(width, height)
        if ratio in spec.aspect_ratios:
            return {"aspect_ratio": ratio}
        sizes = f"; or width and height within {lo}..{hi} (multiples of {spec.size_multiple})" if custom_ok else ""
        raise ValueError(
            f"`width`x`height` = {width}x{height} ({ratio}) is not a size {self.model} makes: it takes the aspect "
            f"ratios {', '.join(spec.aspect_ratios)}{sizes}; or pass aspect_ratio= explicitly"
        )

    # ------------------------------------------------------------ running

    def run(self, request: GenerationRequest, *, progress: ProgressCallback | None = None) -> BackendOutput:
        self.validate(request)
        n = len(request)
        inputs = [self.model_input(request, i) for i in range(n)]
        start = time.perf_counter()
        # the clients are built here, once, not raced for by the worker threads
        _ = self.client
        self._downloader()
        stop = threading.Event()
        done = [0]

        def one(i: int):
            try:
                return self._predict(i, inputs[i][0], stop, progress, n, done)
            except BaseException:
                stop.set()  # the others cancel their predictions
                raise

        workers = min(n, self.max_concurrency)
        if workers == 1:
            results = [one(i) for i in range(n)]
        else:
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
        images, records = [], []
        for (image, record), (data, unused) in zip(results, inputs):
            if unused:
                record["unused_parameters"] = unused
                for name in unused:
                    record[name] = None
            record["replicate_input"] = {k: _describe_input(v) for k, v in data.items()}
            images.append(image)
            records.append(record)
        return BackendOutput(images=images, records=records, seconds=time.perf_counter() - start,
                             info={"prediction_ids": [r["prediction_id"] for r in records]})

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
                + (f"\n  last log lines: {' | '.join(logs)}" if logs else ""), backend=self.name, job_id=pid)
        if prediction.status == "canceled":
            raise BackendError(f"Replicate prediction {pid} ({self.model_ref}) was canceled", backend=self.name, job_id=pid)
        # 3. download and check the output
        image, url = self._output_image(prediction, data.get("output_format"))
        with self._progress_lock:
            done[0] += 1
            count = done[0]
        self._progress(progress, {"step": count, "total": n, "image": i, "images": n, "prediction_id": pid, "status": "succeeded"})
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
                    f"Raise `timeout` for slow models or busy queues.", backend=self.name, job_id=pid)
            time.sleep(self.poll_interval)
            prediction = self._call(f"get prediction {pid}", lambda: self.client.predictions.get(pid), idempotent=True, job_id=pid)
            step = _log_progress(prediction)
            if step is not None and step != last_step:
                last_step = step
                self._progress(progress, {"step": step[0], "total": step[1], "image": i, "images": n, "prediction_id": pid})
        return prediction

    def _progress(self, progress, event: dict[str, Any]) -> None:
        if progress is not None:
            with self._progress_lock:
                progress(event)

    # ------------------------------------------------------------ outputs

    def _output_image(self, prediction, output_format: str | None) -> tuple[Image.Image, str]:
        items = _output_items(prediction.output)
        if not items:
            raise BackendError(f"Replicate prediction {prediction.id} succeeded without an output file (output: {prediction.output!r:.200})",
                               backend=self.name, job_id=prediction.id)
        url = getattr(items[0], "url", items[0])
        data = self._fetch(str(url), prediction.id)
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as e:
            raise BackendError(f"the output of Replicate prediction {prediction.id} is not an image ({e}): {str(url)[:200]}",
                               backend=self.name, job_id=prediction.id) from e
        expected = PIL_FORMATS.get(output_format or "")
        if expected and image.format != expected:
            raise BackendError(f"Replicate prediction {prediction.id} returned a {image.format} image, expected {output_format}",
                               backend=self.name, job_id=prediction.id)
        fmt = image.format
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.format = fmt
        return image, str(url)

    def _fetch(self, url: str, pid: str) -> bytes:
        if url.startswith("data:"):
            try:
                header, encoded = url.split(",", 1)
                return base64.b64decode(encoded) if ";base64" in header else encoded.encode()
            except Exception as e:
                raise BackendError(f"Replicate prediction {pid}: unreadable data URL ({e})", backend=self.name, job_id=pid) from e
        if not url.startswith(("http://", "https://")):
            raise BackendError(f"Replicate prediction {pid}: output {url[:200]!r} is not a URL", backend=self.name, job_id=pid)
        return self._call(f"download the output of prediction {pid}", lambda: self._download_once(url, pid), idempotent=True, job_id=pid)

    def _download_once(self, url: str, pid: str) -> bytes:
        client = self._downloader()
        with client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise _HTTPStatus(response.status_code, response.headers, f"GET {url[:200]}")
            ctype = response.headers.get("content-type", "")
            if ctype and not ctype.startswith(("image/", "application/octet-stream", "binary/")):
                raise BackendError(f"the output of Replicate prediction {pid} is {ctype}, not an image: {url[:200]}",
                                   backend=self.name, job_id=pid)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise BackendError(f"the output of Replicate prediction {pid} is larger than {MAX_DOWNLOAD_BYTES >> 20} MiB",
                                       backend=self.name, job_id=pid)
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
                raise BackendError("no Replicate API token: set REPLICATE_API_TOKEN or pass api_token= "
                                   "(https://replicate.com/account/api-tokens)", backend=self.name)
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
                    raise BackendError(f"Replicate timed out trying to {what} ({type(e).__name__})"
                                       + ("" if idempotent else "; the prediction may have been created, check your dashboard"),
                                       backend=self.name, job_id=job_id) from e
                wait = None
            except httpx.TransportError as e:
                if (not idempotent and not isinstance(e, httpx.ConnectError)) or attempt >= self.max_retries:
                    raise BackendError(f"cannot reach Replicate to {what}: {e}", backend=self.name, job_id=job_id) from e
                wait = None
            if wait is None:
                wait = self.backoff * (2 ** attempt) * (1 + 0.1 * random.random())
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
        return BackendError(f"Replicate could not {what} (HTTP {status}){hint}: {str(detail).strip()}",
                            backend=self.name, job_id=job_id)

    def _cancel(self, pid: str) -> None:
        try:
            self._call(f"cancel prediction {pid}", lambda: self.client.predictions.cancel(pid), idempotent=True, job_id=pid)
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


def _jsonable_input(value: Any, name: str) -> Any:
    """Images become data URLs; everything else must already be JSON-able."""
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable_input(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable_input(v, name) for k, v in value.items()}
    raise ValueError(f"`{name}`: a {type(value).__name__} cannot be sent to Replicate (use numbers, strings, lists or PIL images)")


def _describe_input(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > 100:
        return value[:40] + f"... ({len(value)} chars)"
    return value


def plain_prompt(value: Any, name: str, model: str) -> str | None:
    """The text of a prompt for a model that reads plain text: a string as it is, a prompt object
    (sdlab.prompts.weighted) as the text its encoder would see, refused if it carries weights."""
    if not is_prompt_object(value):
        return value
    if getattr(value, "is_weighted", False):
        raise ValueError(
            f"`{name}` {value.text!r} has weights, but {model} on Replicate reads plain text and "
            f"cannot weight it; pass the plain text {value.prompt_sent!r}, or use a local or ComfyUI backend"
        )
    return getattr(value, "prompt_sent", prompt_text(value))
