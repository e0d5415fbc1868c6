"""A local Replicate predictions API for the official `replicate` client (127.0.0.1 only).

Routes as Replicate documents them: POST /v1/models/{owner}/{name}/predictions (official models),
POST /v1/predictions with `version`, GET /v1/predictions/{id}, POST /v1/predictions/{id}/cancel,
GET /v1/models/{owner}/{name}, POST /v1/files (multipart `content`, the files API) and
GET /v1/files/{id}; outputs are served from /files/. The FLUX LoRA models take `lora_weights`
(a URL: one of the files uploaded here is read back, `received` records its sha256) and
`lora_scale`; an uploaded file that does not exist fails the prediction as a download would. Bearer-token auth, 201 on create,
422 "Input validation failed" for inputs outside a known model's schema, RFC 7807 error bodies.

A prediction moves one state per GET: starting -> processing -> succeeded (with output). Plans
for the next predictions (`plan("fail")`, "cancel", "hang", "not_image", "wrong_format") and for
the next requests (`throttle(retry_after)` -> 429 with Retry-After; `http_error(kind, status)`
-> a 5xx once) let tests drive the failures; `requests` logs what the client sent.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import secrets
import string
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ._common import ServerThread, aiohttp_web, fake_image

RATIOS = ("1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21")
PRO_RATIOS = ("custom", "1:1", "16:9", "3:2", "2:3", "4:5", "5:4", "9:16", "3:4", "4:3")
FORMATS = ("webp", "jpg", "png")
SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
TRAINED_VERSION = "26dce37af90b9d997eeb970d92e47de3064d46c300504ae376c75bef6a9022d2"
GENERIC_VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"


@dataclass(frozen=True)
class FakeModel:
    """A model's input schema (name -> (type, min, max | choices)) and output shape."""

    schema: dict[str, tuple]
    single_output: bool  # output is one URL (FLUX 1.1 Pro) rather than a list
    sizing: str  # "aspect_ratio", "aspect_ratio_or_custom" or "width_height"
    official: bool = True
    versions: tuple[str, ...] = ()


MODELS: dict[str, FakeModel] = {
    "black-forest-labs/flux-1.1-pro": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", PRO_RATIOS),
            "width": ("int", 256, 1440),
            "height": ("int", 256, 1440),
            "seed": ("int", None, None),
            "safety_tolerance": ("int", 1, 6),
            "prompt_upsampling": ("bool",),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "image_prompt": ("str",),
        },
        single_output=True,
        sizing="aspect_ratio_or_custom",
    ),
    "black-forest-labs/flux-pro": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", PRO_RATIOS),
            "width": ("int", 256, 1440),
            "height": ("int", 256, 1440),
            "steps": ("int", 1, 50),
            "guidance": ("float", 2, 5),
            "interval": ("float", 1, 4),
            "seed": ("int", None, None),
            "safety_tolerance": ("int", 1, 6),
            "prompt_upsampling": ("bool",),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "image_prompt": ("str",),
        },
        single_output=True,
        sizing="aspect_ratio_or_custom",
    ),
    "black-forest-labs/flux-schnell": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", RATIOS),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 4),
            "seed": ("int", None, None),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "disable_safety_checker": ("bool",),
            "go_fast": ("bool",),
            "megapixels": ("enum", ("1", "0.25")),
        },
        single_output=False,
        sizing="aspect_ratio",
    ),
    "black-forest-labs/flux-dev": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", RATIOS),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 50),
            "guidance": ("float", 0, 10),
            "seed": ("int", None, None),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "disable_safety_checker": ("bool",),
            "go_fast": ("bool",),
            "megapixels": ("enum", ("1", "0.25")),
            "image": ("str",),
            "prompt_strength": ("float", 0, 1),
        },
        single_output=False,
        sizing="aspect_ratio",
    ),
    "black-forest-labs/flux-dev-lora": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", RATIOS),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 50),
            "guidance": ("float", 0, 10),
            "seed": ("int", None, None),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "disable_safety_checker": ("bool",),
            "go_fast": ("bool",),
            "megapixels": ("enum", ("1", "0.25")),
            "image": ("str",),
            "prompt_strength": ("float", 0, 1),
            "lora_weights": ("uri",),
            "lora_scale": ("float", -1, 3),
        },
        single_output=False,
        sizing="aspect_ratio",
    ),
    "black-forest-labs/flux-schnell-lora": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", RATIOS),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 4),
            "seed": ("int", None, None),
            "output_format": ("enum", FORMATS),
            "output_quality": ("int", 0, 100),
            "disable_safety_checker": ("bool",),
            "go_fast": ("bool",),
            "megapixels": ("enum", ("1", "0.25")),
            "lora_weights": ("uri",),
            "lora_scale": ("float", -1, 3),
        },
        single_output=False,
        sizing="aspect_ratio",
    ),
    "stability-ai/sdxl": FakeModel(
        {
            "prompt": ("str",),
            "negative_prompt": ("str",),
            "width": ("int", 64, 2048),
            "height": ("int", 64, 2048),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 500),
            "guidance_scale": ("float", 1, 50),
            "scheduler": ("str",),
            "seed": ("int", None, None),
        },
        single_output=False,
        sizing="width_height",
        official=False,
        versions=(SDXL_VERSION,),
    ),
    # a community FLUX model taking a LoRA and an extra LoRA (as some do: extra_lora/extra_lora_scale)
    "sdlab/fake-flux-lora": FakeModel(
        {
            "prompt": ("str",),
            "aspect_ratio": ("enum", RATIOS),
            "num_outputs": ("int", 1, 4),
            "num_inference_steps": ("int", 1, 50),
            "guidance_scale": ("float", 0, 10),
            "seed": ("int", None, None),
            "output_format": ("enum", FORMATS),
            "lora_weights": ("uri",),
            "lora_scale": ("float", -1, 3),
            "extra_lora": ("uri",),
            "extra_lora_scale": ("float", -1, 3),
        },
        single_output=False,
        sizing="aspect_ratio",
        official=False,
        versions=(TRAINED_VERSION,),
    ),
    "sdlab/fake-diffusion": FakeModel(
        {
            "prompt": ("str",),
            "negative_prompt": ("str",),
            "width": ("int", 64, 2048),
            "height": ("int", 64, 2048),
            "num_inference_steps": ("int", 1, 500),
            "guidance_scale": ("float", 0, 50),
            "seed": ("int", None, None),
        },
        single_output=True,
        sizing="width_height",
        official=False,
        versions=(GENERIC_VERSION,),
    ),
}

PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
CONTENT_TYPE = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


def _new_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(26))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    plan: str = "succeed"
    status: str = "starting"
    polls: int = 0
    output: Any = None
    error: str | None = None
    logs: str = ""
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    completed_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    received: dict[str, str] = field(default_factory=dict)  # uri input -> sha256 of the file it named


class FakeReplicate(ServerThread):
    """Replicate's predictions API on 127.0.0.1. `start()`, then point `replicate.Client(api_token=
    fake.token, base_url=fake.url)` (or `ReplicateBackend(..., base_url=fake.url)`) at it.

    Args:
        token: the API token it accepts.
        polls_to_finish: GETs a prediction needs to reach "succeeded" (the first makes it "processing").
        size_scale: images are made at this fraction of the real size (tests use small ones).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "r8_sdlab_fake_token",
        polls_to_finish: int = 2,
        size_scale: float = 1.0,
    ):
        super().__init__(host=host, port=port)
        self.token = token
        self.polls_to_finish = max(1, int(polls_to_finish))
        self.size_scale = float(size_scale)
        self.predictions: dict[str, _Prediction] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self.uploads: dict[str, dict[str, Any]] = {}  # files API id -> {"content", "name", "content_type"}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._plans: deque[str] = deque()
        self._throttles: deque[tuple[str, int]] = deque()  # (request kind, retry-after seconds)
        self._errors: deque[tuple[str, int]] = deque()  # (request kind, status)

    # ------------------------------------------------------------ test controls

    def plan(self, *outcomes: str) -> None:
        """Outcomes of the next predictions created: "succeed", "fail", "cancel" (canceled by
        someone else), "hang" (never ends), "not_image" (output is HTML), "wrong_format"."""
        for o in outcomes:
            if o not in ("succeed", "fail", "cancel", "hang", "not_image", "wrong_format"):
                raise ValueError(f"unknown plan {o!r}")
            self._plans.append(o)

    def throttle(self, kind: str = "create", retry_after: int = 1) -> None:
        """The next request of `kind` ("create", "get", "file", "upload") is answered 429 with Retry-After."""
        self._throttles.append((kind, int(retry_after)))

    def http_error(self, kind: str = "create", status: int = 503) -> None:
        """The next request of `kind` ("create", "get", "cancel", "file", "upload") is answered `status` once."""
        self._errors.append((kind, int(status)))

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))

    # ------------------------------------------------------------ app

    def make_app(self):
        web = aiohttp_web()

        @web.middleware
        async def middleware(request, handler):
            response = await self._guard(request, handler)
            self.requests.append((request.method, request.path, response.status))
            return response

        app = web.Application(middlewares=[middleware])
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_by_model)
        app.router.add_post("/v1/predictions", self._create_by_version)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/v1/models/{owner}/{name}", self._get_model)
        app.router.add_get("/files/{id}/{filename}", self._file)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._get_upload)
        return app

    def _kind(self, request) -> str:
        path = request.path
        if path.startswith("/files/"):
            return "file"
        if path.endswith("/cancel"):
            return "cancel"
        if request.method == "POST" and path.endswith("/predictions"):
            return "create"
        if request.method == "POST" and path == "/v1/files":
            return "upload"
        return "get"

    async def _guard(self, request, handler):
        web = aiohttp_web()
        kind = self._kind(request)
        if kind != "file" and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        if self._throttles and self._throttles[0][0] == kind:
            _, seconds = self._throttles.popleft()
            response = self._problem(
                429, "Request was throttled", f"Request was throttled. Expected available in {seconds} second."
            )
            response.headers["Retry-After"] = str(seconds)
            return response
        if self._errors and self._errors[0][0] == kind:
            _, status = self._errors.popleft()
            if status >= 502:
                return web.Response(
                    status=status, text="<html><body>upstream error</body></html>", content_type="text/html"
                )
            return self._problem(status, "Internal Server Error", "Something went wrong on our side")
        return await handler(request)

    def _problem(self, status: int, title: str, detail: str, **extra):
        return aiohttp_web().json_response(
            {"title": title, "detail": detail, "status": status, **extra},
            status=status,
            content_type="application/problem+json",
        )

    # ------------------------------------------------------------ predictions

    async def _create_by_model(self, request):
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        spec = MODELS.get(model)
        if spec is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        if not spec.official:
            return self._problem(
                404, "Not found", f"{model} is not an official model; create predictions with a version"
            )
        body = await request.json()
        return await self._create(request, model, "dp-" + secrets.token_hex(16), spec, body)

    async def _create_by_version(self, request):
        body = await request.json()
        ref = str(body.get("version", ""))
        model = version = None
        if ":" in ref:
            model, version = ref.split(":", 1)
        elif "/" in ref and ref in MODELS and MODELS[ref].official:
            model, version = ref, "dp-" + secrets.token_hex(16)
        else:
            model = next((m for m, s in MODELS.items() if ref in s.versions), None)
            version = ref
        spec = MODELS.get(model or "")
        if spec is None or (not spec.official and version not in spec.versions):
            return self._problem(
                422,
                "Invalid version",
                "The specified version does not exist (or perhaps you don't have permission to use it?)",
            )
        return await self._create(request, model, version, spec, body)

    async def _create(self, request, model: str, version: str, spec: FakeModel, body: dict[str, Any]):
        web = aiohttp_web()
        data = body.get("input")
        if not isinstance(data, dict):
            return self._problem(
                422, "Input validation failed", "- input: Invalid type. Expected: object, given: null\n"
            )
        problems = _validate(spec, data)
        if problems:
            return self._problem(
                422,
                "Input validation failed",
                "".join(f"- input.{k}: {v}\n" for k, v in problems),
                invalid_fields=[{"type": "invalid", "field": f"input.{k}", "description": v} for k, v in problems],
            )
        plan = self._plans.popleft() if self._plans else "succeed"
        prediction = _Prediction(_new_id(), model, version, dict(data), plan=plan)
        for key, value in data.items():  # the model downloads each file input when it starts
            if spec.schema.get(key, ("",))[0] != "uri":
                continue
            upload = self.uploads.get(str(value).rsplit("/", 1)[-1]) if self._is_upload_url(value) else None
            if upload is None:
                prediction.plan = "fail"
                prediction.error = f"could not download {key}: {str(value)[:100]}"
            else:
                prediction.received[key] = hashlib.sha256(upload["content"]).hexdigest()
        self.predictions[prediction.id] = prediction
        return web.json_response(self._json(prediction), status=201)

    async def _get(self, request):
        web = aiohttp_web()
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        self._advance(prediction)
        return web.json_response(self._json(prediction))

    async def _cancel(self, request):
        web = aiohttp_web()
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status not in ("succeeded", "failed", "canceled"):
            prediction.status, prediction.completed_at = "canceled", _now()
        return web.json_response(self._json(prediction))

    async def _get_model(self, request):
        web = aiohttp_web()
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        spec = MODELS.get(model)
        if spec is None:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        owner, name = model.split("/")
        latest = (
            {"id": spec.versions[0], "created_at": _now(), "cog_version": "0.13.6", "openapi_schema": {}}
            if spec.versions
            else None
        )
        return web.json_response(
            {
                "url": f"https://replicate.com/{model}",
                "owner": owner,
                "name": name,
                "description": "fake",
                "visibility": "public",
                "run_count": 0,
                "latest_version": latest,
                "is_official": spec.official,
            }
        )

    # ------------------------------------------------------------ the files API

    def _is_upload_url(self, value: Any) -> bool:
        return isinstance(value, str) and value.startswith(f"http://{self.host}:{self.port}/v1/files/")

    def _upload_json(self, file_id: str) -> dict[str, Any]:
        u = self.uploads[file_id]
        return {
            "id": file_id,
            "name": u["name"],
            "content_type": u["content_type"],
            "size": len(u["content"]),
            "etag": hashlib.md5(u["content"]).hexdigest(),  # noqa: S324 - as Replicate's etag
            "checksums": {
                "sha256": hashlib.sha256(u["content"]).hexdigest(),
                "md5": hashlib.md5(u["content"]).hexdigest(),  # noqa: S324
            },
            "metadata": u["metadata"],
            "created_at": u["created_at"],
            "expires_at": None,
            "urls": {"get": f"http://{self.host}:{self.port}/v1/files/{file_id}"},
        }

    async def _upload(self, request):
        web = aiohttp_web()
        form = await request.post()
        content = form.get("content")
        if content is None or not hasattr(content, "file"):
            return self._problem(400, "Bad request", "content: a file is required")
        metadata = form.get("metadata")
        file_id = _new_id()
        self.uploads[file_id] = {
            "content": content.file.read(),
            "name": content.filename,
            "content_type": content.content_type,
            "metadata": json.loads(metadata) if metadata else {},
            "created_at": _now(),
        }
        return web.json_response(self._upload_json(file_id), status=201)

    async def _get_upload(self, request):
        if request.match_info["id"] not in self.uploads:
            return self._problem(404, "Not found", "The requested resource could not be found.")
        return aiohttp_web().json_response(self._upload_json(request.match_info["id"]))

    async def _file(self, request):
        web = aiohttp_web()
        entry = self.files.get(f"{request.match_info['id']}/{request.match_info['filename']}")
        if entry is None:
            return web.Response(status=404)
        data, ctype = entry
        return web.Response(body=data, content_type=ctype)

    def _json(self, p: _Prediction) -> dict[str, Any]:
        base = f"http://{self.host}:{self.port}/v1/predictions/{p.id}"
        return {
            "id": p.id,
            "model": p.model,
            "version": p.version,
            "input": p.input,
            "logs": p.logs,
            "output": p.output,
            "data_removed": False,
            "error": p.error,
            "status": p.status,
            "created_at": p.created_at,
            "started_at": p.started_at,
            "completed_at": p.completed_at,
            "metrics": p.metrics,
            "urls": {"get": base, "cancel": f"{base}/cancel", "web": f"https://replicate.com/p/{p.id}"},
        }

    def _advance(self, p: _Prediction) -> None:
        """One step of the prediction's life per GET."""
        if p.status in ("succeeded", "failed", "canceled"):
            return
        p.polls += 1
        steps = int(p.input.get("num_inference_steps") or p.input.get("steps") or 4)
        seed = p.input.get("seed")
        if seed is None:
            seed = p.input["seed"] = secrets.randbelow(2**31)
        if p.status == "starting":
            p.status, p.started_at = "processing", _now()
            p.logs = f"Using seed: {seed}\n  0%|          | 0/{steps} [00:00<?, ?it/s]\n"
        if p.plan == "hang" or p.polls < self.polls_to_finish:
            return
        p.completed_at = _now()
        if p.plan == "fail":
            p.status = "failed"
            p.error = p.error or "NSFW content detected. Try running it again, or try a different prompt."
            return
        if p.plan == "cancel":
            p.status = "canceled"
            return
        p.logs += f"100%|##########| {steps}/{steps} [00:00<00:00, 14.07it/s]\n"
        p.output = self._make_output(p)
        p.status = "succeeded"
        p.metrics = {"predict_time": 0.05 * steps, "total_time": 0.1 * steps}

    def _make_output(self, p: _Prediction) -> Any:
        spec = MODELS[p.model]
        width, height = _size(spec, p.input, self.size_scale)
        fmt = p.input.get("output_format", "webp" if spec.sizing != "width_height" else "png")
        detail = repr(  # a file input counts by its content (the file it named), not its URL
            sorted(
                (k, p.received.get(k, v))
                for k, v in p.input.items()
                if k not in ("prompt", "seed", "output_format", "output_quality")
            )
        )
        urls = []
        for i in range(int(p.input.get("num_outputs", 1) or 1)):
            image = fake_image(p.input["prompt"], int(p.input["seed"]) + i, width, height, detail=detail)
            buf = io.BytesIO()
            if p.plan == "wrong_format":
                image.save(buf, format="JPEG" if fmt != "jpg" else "PNG")
                ctype = "image/jpeg" if fmt != "jpg" else "image/png"
            elif p.plan == "not_image":
                buf.write(b"<html><body>This file has expired</body></html>")
                ctype = "text/html"
            else:
                image.save(buf, format=PIL_FORMAT[fmt], quality=int(p.input.get("output_quality", 80)))
                ctype = CONTENT_TYPE[fmt]
            filename = f"out-{i}.{fmt}"
            self.files[f"{p.id}/{filename}"] = (buf.getvalue(), ctype)
            urls.append(f"http://{self.host}:{self.port}/files/{p.id}/{filename}")
        return urls[0] if spec.single_output else urls


def _validate(spec: FakeModel, data: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    if not isinstance(data.get("prompt"), str) or not data["prompt"]:
        problems.append(("prompt", "prompt is required"))
    for key, value in data.items():
        rule = spec.schema.get(key)
        if rule is None or key == "prompt":
            continue  # unknown inputs are ignored, as cog does
        kind = rule[0]
        if kind == "enum":
            if value not in rule[1]:
                problems.append((key, f"{key} must be one of the following: {', '.join(repr(c) for c in rule[1])}"))
        elif kind in ("int", "float"):
            ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
            if not ok or isinstance(value, bool):
                problems.append(
                    (
                        key,
                        f"Invalid type. Expected: {'integer' if kind == 'int' else 'number'}, given: {type(value).__name__}",
                    )
                )
                continue
            lo, hi = rule[1], rule[2]
            if lo is not None and value < lo:
                problems.append((key, f"Must be greater than or equal to {lo}"))
            if hi is not None and value > hi:
                problems.append((key, f"Must be less than or equal to {hi}"))
        elif kind == "bool" and not isinstance(value, bool):
            problems.append((key, f"Invalid type. Expected: boolean, given: {type(value).__name__}"))
        elif kind in ("str", "uri") and not isinstance(value, str):
            problems.append((key, f"Invalid type. Expected: string, given: {type(value).__name__}"))
    return problems


def _size(spec: FakeModel, data: dict[str, Any], scale: float) -> tuple[int, int]:
    """The output size the real model makes for these inputs (times `scale`)."""
    if spec.sizing == "width_height" or data.get("aspect_ratio") == "custom":
        multiple = 32 if spec.sizing == "aspect_ratio_or_custom" else 8
        w = int(round(int(data.get("width", 1024)) / multiple) * multiple)
        h = int(round(int(data.get("height", 1024)) / multiple) * multiple)
    else:
        rw, rh = (int(x) for x in str(data.get("aspect_ratio", "1:1")).split(":"))
        pixels = (0.25 if str(data.get("megapixels", "1")) == "0.25" else 1.0) * 1024 * 1024
        w = int(round(math.sqrt(pixels * rw / rh) / 16) * 16)
        h = int(round(w * rh / rw / 16) * 16)
    return max(8, int(w * scale)), max(8, int(h * scale))


__all__ = ["FakeReplicate", "MODELS", "SDXL_VERSION", "GENERIC_VERSION", "TRAINED_VERSION"]
