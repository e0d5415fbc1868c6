"""A local ComfyUI that answers exactly as a real server does (comfyui-api.md), without weights.

It validates prompts like ComfyUI (400 with `node_errors`), queues them, "executes" the standard
txt2img graph (CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode,
SaveImage / PreviewImage / SaveImageWebsocket) plus EmptyImage, ImageInvert, ImageBlur and
LoadImage, and sends the WebSocket frames in ComfyUI's order: status, execution_start,
execution_cached, progress_state, executing, progress, executed, execution_success /
execution_error / execution_interrupted, status, executing{node: null}. Node outputs are cached
per node id and input signature, shared across clients, so an identical re-run is all cached.

Knobs for tests: `step_delay` (seconds per sampler step), `noisy_status` (a status frame before
every frame), `previews` (binary JPEG previews during sampling), `drop_socket_after` (drop the
submitting client's socket after that many frames), `refuse_websocket`. Checkpoint
"broken.safetensors" fails at execution; an uploaded non-image fails in LoadImage.

Also as the real server answers (comfyui-api.md, "observed later"): a prompt with one invalid output
branch and one valid one gets 200 with `prompt_id` and the `node_errors`, and its valid outputs
run; ControlNetApplyAdvanced and InpaintModelConditioning output [positive, negative(, latent)]
as slots 0, 1 (, 2); KSamplerAdvanced + CLIPTextEncodeSDXL(Refiner) run an SDXL base + refiner
graph; SaveWEBM / SaveVideo (via CreateVideo) / SaveAnimatedWEBP write real .webm / .mp4 / .webp
files listed under "images" with "animated": [true].
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageFilter, ImageOps, PngImagePlugin

from ._common import ServerThread, aiohttp_web, fake_image

CHECKPOINTS = [
    "v1-5-pruned-emaonly.safetensors",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_refiner_1.0.safetensors",
    "broken.safetensors",
]
CONTROLNETS = ["control_v11p_sd15_canny.safetensors"]
LORAS = ["style.safetensors", "other.safetensors"]
STRENGTH = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0})
SAMPLERS = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "ddim",
    "uni_pc",
    "deis",
]
SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]
COMFYUI_VERSION = "0.3.64"

INT = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF})
SIZE = ("INT", {"default": 512, "min": 16, "max": 16384, "step": 8})
COND_SIZE = ("INT", {"default": 1024, "min": 0, "max": 16384})
PERCENT = ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0})
STEPS = ("INT", {"default": 20, "min": 1, "max": 10000})
STEP_AT = ("INT", {"default": 0, "min": 0, "max": 10000})
FPS = ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0})

NODES: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": {"required": {"ckpt_name": (CHECKPOINTS, {})}, "output": ["MODEL", "CLIP", "VAE"]},
    "CLIPTextEncode": {
        "required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP", {})},
        "output": ["CONDITIONING"],
    },
    "EmptyLatentImage": {
        "required": {"width": SIZE, "height": SIZE, "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})},
        "output": ["LATENT"],
    },
    "KSampler": {
        "required": {
            "model": ("MODEL", {}),
            "seed": INT,
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLERS, {}),
            "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
        },
        "output": ["LATENT"],
    },
    "VAEDecode": {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}, "output": ["IMAGE"]},
    "SaveImage": {
        "required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
        "output": [],
        "output_node": True,
    },
    "PreviewImage": {"required": {"images": ("IMAGE", {})}, "output": [], "output_node": True},
    "SaveImageWebsocket": {"required": {"images": ("IMAGE", {})}, "output": [], "output_node": True},
    "EmptyImage": {
        "required": {
            "width": SIZE,
            "height": SIZE,
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF}),
        },
        "output": ["IMAGE"],
    },
    "ImageInvert": {"required": {"image": ("IMAGE", {})}, "output": ["IMAGE"]},
    "ImageBlur": {
        "required": {
            "image": ("IMAGE", {}),
            "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0}),
        },
        "output": ["IMAGE"],
    },
    "LoadImage": {"required": {"image": ("INPUT_FILES", {})}, "output": ["IMAGE", "MASK"]},
    "ImageScale": {
        "required": {
            "image": ("IMAGE", {}),
            "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"], {}),
            "width": ("INT", {"default": 512, "min": 0, "max": 16384}),
            "height": ("INT", {"default": 512, "min": 0, "max": 16384}),
            "crop": (["disabled", "center"], {}),
        },
        "output": ["IMAGE"],
    },
    # two-conditioning nodes: outputs [positive, negative(, latent)] as slots 0, 1 (, 2)
    "ControlNetLoader": {"required": {"control_net_name": (CONTROLNETS, {})}, "output": ["CONTROL_NET"]},
    "LoraLoader": {
        "required": {
            "model": ("MODEL", {}),
            "clip": ("CLIP", {}),
            "lora_name": (LORAS, {}),
            "strength_model": STRENGTH,
            "strength_clip": STRENGTH,
        },
        "output": ["MODEL", "CLIP"],
    },
    "ControlNetApplyAdvanced": {
        "required": {
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "control_net": ("CONTROL_NET", {}),
            "image": ("IMAGE", {}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}),
            "start_percent": PERCENT,
            "end_percent": PERCENT,
        },
        "output": ["CONDITIONING", "CONDITIONING"],
    },
    "VAEEncode": {"required": {"pixels": ("IMAGE", {}), "vae": ("VAE", {})}, "output": ["LATENT"]},
    "InpaintModelConditioning": {
        "required": {
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "vae": ("VAE", {}),
            "pixels": ("IMAGE", {}),
            "mask": ("MASK", {}),
            "noise_mask": ("BOOLEAN", {"default": True}),
        },
        "output": ["CONDITIONING", "CONDITIONING", "LATENT"],
    },
    # SDXL base + refiner
    "KSamplerAdvanced": {
        "required": {
            "model": ("MODEL", {}),
            "add_noise": (["enable", "disable"], {}),
            "noise_seed": INT,
            "steps": STEPS,
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (SAMPLERS, {}),
            "scheduler": (SCHEDULERS, {}),
            "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}),
            "latent_image": ("LATENT", {}),
            "start_at_step": STEP_AT,
            "end_at_step": STEP_AT,
            "return_with_leftover_noise": (["disable", "enable"], {}),
        },
        "output": ["LATENT"],
    },
    "CLIPTextEncodeSDXL": {
        "required": {
            "clip": ("CLIP", {}),
            "width": COND_SIZE,
            "height": COND_SIZE,
            "crop_w": COND_SIZE,
            "crop_h": COND_SIZE,
            "target_width": COND_SIZE,
            "target_height": COND_SIZE,
            "text_g": ("STRING", {"multiline": True}),
            "text_l": ("STRING", {"multiline": True}),
        },
        "output": ["CONDITIONING"],
    },
    "CLIPTextEncodeSDXLRefiner": {
        "required": {
            "ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0}),
            "width": COND_SIZE,
            "height": COND_SIZE,
            "text": ("STRING", {"multiline": True}),
            "clip": ("CLIP", {}),
        },
        "output": ["CONDITIONING"],
    },
    # video and animated outputs: their files are listed under "images", with "animated": [true]
    "SaveWEBM": {
        "required": {
            "images": ("IMAGE", {}),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "codec": (["vp9", "av1"], {}),
            "fps": FPS,
            "crf": ("FLOAT", {"default": 32.0, "min": 0.0, "max": 63.0}),
        },
        "output": [],
        "output_node": True,
    },
    "CreateVideo": {"required": {"images": ("IMAGE", {}), "fps": FPS}, "output": ["VIDEO"]},
    "SaveVideo": {
        "required": {
            "video": ("VIDEO", {}),
            "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
            "format": (["auto", "mp4"], {}),
            "codec": (["auto", "h264"], {}),
        },
        "output": [],
        "output_node": True,
    },
    "SaveAnimatedWEBP": {
        "required": {
            "images": ("IMAGE", {}),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": FPS,
            "lossless": ("BOOLEAN", {"default": True}),
            "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
            "method": (["default", "fastest", "slowest"], {}),
        },
        "output": [],
        "output_node": True,
    },
}


class SafetensorError(Exception):
    pass


SafetensorError.__module__ = "safetensors_rust"


class _Interrupted(Exception):
    pass


@dataclass
class _Item:
    number: int
    prompt_id: str
    graph: dict[str, Any]
    client_id: str | None
    extra_data: dict[str, Any]
    outputs: list[str]


@dataclass
class _Socket:
    ws: Any
    sid: str
    frames: int = 0
    dropped: bool = False
    drop_after: int | None = None


@dataclass
class _Run:
    """Messages recorded in history for one prompt."""

    messages: list = field(default_factory=list)


def _is_link(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _now_ms() -> int:
    return int(time.time() * 1000)


class FakeComfyUI(ServerThread):
    """A ComfyUI server on 127.0.0.1 (see the module docstring). `start()`, use `.url`, `stop()`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        root: str | Path | None = None,
        step_delay: float = 0.0,
        noisy_status: bool = False,
        previews: bool = False,
    ):
        super().__init__(host=host, port=port)
        self._tmp = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sdlab-fake-comfyui-")
            root = self._tmp.name
        self.root = Path(root)
        for sub in ("output", "input", "temp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.step_delay = float(step_delay)
        self.noisy_status = noisy_status
        self.previews = previews
        self.drop_socket_after: int | None = None  # next prompt: drop its client's socket after N frames
        self.refuse_websocket = False
        self.history: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every HTTP request
        self.prompts: list[dict[str, Any]] = []  # accepted POST /prompt bodies
        self.socket_ids: list[str] = []  # the clientId of every WebSocket opened
        self._sockets: dict[str, _Socket] = {}
        self._pending: list[_Item] = []
        self._running: _Item | None = None
        self._number = 0
        self._cache: dict[str, tuple[str, Any, Any]] = {}  # node id -> (signature, outputs, ui)
        self._interrupt = False
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    def stop(self) -> None:
        super().stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------ app

    def make_app(self):
        web = aiohttp_web()

        @web.middleware
        async def middleware(request, handler):
            self.requests.append((request.method, request.path))
            origin = request.headers.get("Origin")
            if origin and urlsplit(origin).netloc != request.headers.get("Host"):
                return web.Response(status=403)
            return await handler(request)

        app = web.Application(middlewares=[middleware], client_max_size=100 * 2**20)
        routes = [
            ("GET", "/ws", self._ws),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_one),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("POST", "/free", self._free),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/api" + path, handler)
        app.on_shutdown.append(self._close_sockets)
        return app

    async def on_start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    async def on_stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass

    async def _close_sockets(self, app) -> None:
        for s in list(self._sockets.values()):
            try:
                await s.ws.close()
            except Exception:  # pragma: no cover
                pass

    # ------------------------------------------------------------ WebSocket

    async def _ws(self, request):
        web = aiohttp_web()
        if self.refuse_websocket:
            return web.Response(status=500, text="websocket refused by the test")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        sock = _Socket(ws, sid)
        self._sockets[sid] = sock
        self.socket_ids.append(sid)
        try:
            await ws.send_json({"type": "status", "data": {"status": self._status_data(), "sid": sid}})
            first = True
            async for msg in ws:
                if msg.type == web.WSMsgType.TEXT and first:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        data = {}
                    if data.get("type") == "feature_flags":
                        await ws.send_json({"type": "feature_flags", "data": self._features_data()})
                first = False
        finally:
            if self._sockets.get(sid) is sock:
                del self._sockets[sid]
        return ws

    def _status_data(self) -> dict[str, Any]:
        remaining = len(self._pending) + (1 if self._running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _send_to(self, sock: _Socket | None, kind: str | None, data: Any, *, binary: bytes | None = None) -> None:
        if sock is None or sock.dropped or sock.ws.closed:
            return
        try:
            if binary is not None:
                await sock.ws.send_bytes(binary)
            else:
                await sock.ws.send_str(json.dumps({"type": kind, "data": data}))
        except (ConnectionError, RuntimeError):
            sock.dropped = True
            return
        sock.frames += 1
        if sock.drop_after is not None and sock.frames >= sock.drop_after:
            sock.dropped = True
            req = getattr(sock.ws, "_req", None)
            transport = getattr(req, "transport", None)
            if transport is not None:
                transport.abort()  # a lost connection, not a clean close
            else:  # pragma: no cover
                await sock.ws.close()

    async def _broadcast(self, kind: str, data: Any) -> None:
        for sock in list(self._sockets.values()):
            await self._send_to(sock, kind, data)

    async def _status(self) -> None:
        await self._broadcast("status", {"status": self._status_data()})

    async def _emit(
        self, item: _Item, kind: str, data: dict[str, Any], *, broadcast_without_client: bool = False
    ) -> None:
        """A frame for the prompt's client (with noisy status frames around it when asked)."""
        if self.noisy_status:
            await self._status()
        sock = self._sockets.get(item.client_id) if item.client_id else None
        if item.client_id is None:
            if broadcast_without_client:
                await self._broadcast(kind, data)
            return
        await self._send_to(sock, kind, data)

    # ------------------------------------------------------------ HTTP routes

    async def _post_prompt(self, request):
        web = aiohttp_web()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.Response(
                status=500, text="500 Internal Server Error\n\nServer got itself in trouble", content_type="text/plain"
            )
        if not isinstance(body, dict) or "prompt" not in body:
            return web.json_response(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "No prompt provided",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status=400,
            )
        graph = body["prompt"]
        error, node_errors, outputs = self._validate(graph)
        if error is not None:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        self._number += 1
        number = -self._number if body.get("front") else self._number
        item = _Item(number, prompt_id, graph, body.get("client_id"), body.get("extra_data") or {}, outputs)
        if body.get("front"):
            self._pending.insert(0, item)
        else:
            self._pending.append(item)
        self.prompts.append(body)
        await self._status()
        self._wake.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _get_prompt(self, request):
        web = aiohttp_web()
        return web.json_response({"exec_info": self._status_data()["exec_info"]})

    async def _get_history(self, request):
        web = aiohttp_web()
        items = list(self.history.items())
        max_items = request.query.get("max_items")
        if max_items:
            items = items[-int(max_items) :]
        return web.json_response(dict(items))

    async def _get_history_one(self, request):
        web = aiohttp_web()
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def _post_history(self, request):
        web = aiohttp_web()
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for pid in body.get("delete", []):
            self.history.pop(pid, None)
        return web.Response(status=200)

    async def _view(self, request):
        web = aiohttp_web()
        q = request.query
        filename, subfolder, kind = q.get("filename", ""), q.get("subfolder", ""), q.get("type", "output")
        if not filename or ".." in filename or "/" in filename or kind not in ("output", "input", "temp"):
            return web.Response(status=400)
        base = (self.root / kind).resolve()
        path = (base / subfolder / filename).resolve()
        if base not in path.parents:
            return web.Response(status=403)
        if not path.is_file():
            return web.Response(status=404)
        ctype = {
            ".png": "image/png",
            ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg",
            ".webp": "image/webp",
            ".webm": "video/webm",
            ".mp4": "video/mp4",
        }.get(path.suffix.lower(), "application/octet-stream")
        return web.Response(
            body=path.read_bytes(), content_type=ctype, headers={"Content-Disposition": f'filename="{filename}"'}
        )

    async def _upload(self, request):
        web = aiohttp_web()
        form = await request.post()
        field_ = form.get("image")
        if field_ is None or not hasattr(field_, "file"):
            return web.Response(status=400)
        kind = form.get("type", "input") or "input"
        if kind not in ("input", "temp", "output"):
            kind = "input"
        subfolder = form.get("subfolder", "") or ""
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        data = field_.file.read()
        name = Path(field_.filename or "upload.png").name
        folder = self.root / kind / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if path.exists() and not overwrite and path.read_bytes() != data:
            stem, suffix, i = path.stem, path.suffix, 1
            while True:
                candidate = folder / f"{stem} ({i}){suffix}"
                if not candidate.exists() or candidate.read_bytes() == data:
                    path = candidate
                    break
                i += 1
        path.write_bytes(data)
        return web.json_response({"name": path.name, "subfolder": subfolder, "type": kind})

    async def _get_queue(self, request):
        web = aiohttp_web()

        def row(item: _Item):
            return [item.number, item.prompt_id, item.graph, item.extra_data, item.outputs]

        return web.json_response(
            {
                "queue_running": [row(self._running)] if self._running else [],
                "queue_pending": [row(i) for i in self._pending],
            }
        )

    async def _post_queue(self, request):
        web = aiohttp_web()
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
        if body.get("delete"):
            ids = set(body["delete"])
            self._pending[:] = [i for i in self._pending if i.prompt_id not in ids]
        await self._status()
        return web.Response(status=200)

    async def _post_interrupt(self, request):
        web = aiohttp_web()
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            body = {}
        pid = (body or {}).get("prompt_id")
        if self._running is not None and (pid is None or pid == self._running.prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _object_info(self, request):
        web = aiohttp_web()
        return web.json_response({name: self._node_info(name) for name in NODES})

    async def _object_info_one(self, request):
        web = aiohttp_web()
        name = request.match_info["node_class"]
        return web.json_response({name: self._node_info(name)} if name in NODES else {})

    def _node_info(self, name: str) -> dict[str, Any]:
        spec = NODES[name]
        required = {}
        for key, (kind, options) in spec["required"].items():
            if kind == "INPUT_FILES":
                kind = sorted(p.name for p in (self.root / "input").iterdir() if p.is_file())
            required[key] = [kind, options] if options else [kind]
        return {
            "input": {"required": required},
            "input_order": {"required": list(required)},
            "output": spec["output"],
            "output_name": spec["output"],
            "name": name,
            "display_name": name,
            "category": "sdlab-fake",
            "output_node": bool(spec.get("output_node")),
        }

    async def _system_stats(self, request):
        web = aiohttp_web()
        return web.json_response(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 0,
                    "ram_free": 0,
                    "comfyui_version": COMFYUI_VERSION,
                    "python_version": "3.11",
                    "pytorch_version": "2.13.0+cpu",
                    "argv": ["main.py", "--cpu"],
                },
                "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0}],
            }
        )

    def _features_data(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": 104857600}

    async def _features(self, request):
        return aiohttp_web().json_response(self._features_data())

    async def _free(self, request):
        return aiohttp_web().Response(status=200)

    # ------------------------------------------------------------ validation (as ComfyUI's validate_prompt)

    def _validate(self, graph: Any):
        if not isinstance(graph, dict):
            return (
                {"type": "invalid_prompt", "message": "Prompt is not a dict", "details": "", "extra_info": {}},
                {},
                [],
            )
        for nid, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (
                    {
                        "type": "invalid_prompt",
                        "message": "Cannot execute because a node is missing the class_type property.",
                        "details": f"Node ID '#{nid}'",
                        "extra_info": {},
                    },
                    {},
                    [],
                )
            if node["class_type"] not in NODES:
                return (
                    {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {node['class_type']} does not exist.",
                        "details": f"Node ID '#{nid}'",
                        "extra_info": {},
                    },
                    {},
                    [],
                )
        outputs = [nid for nid, node in graph.items() if NODES[node["class_type"]].get("output_node")]
        if not outputs:
            return (
                {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
                {},
                [],
            )
        node_errors: dict[str, Any] = {}
        for out in outputs:
            for nid in self._upstream(graph, out):
                errors = self._node_errors(graph, nid)
                if errors:
                    entry = node_errors.setdefault(
                        nid, {"errors": errors, "dependent_outputs": [], "class_type": graph[nid]["class_type"]}
                    )
                    if out not in entry["dependent_outputs"]:
                        entry["dependent_outputs"].append(out)
        failed = {out for entry in node_errors.values() for out in entry["dependent_outputs"]}
        good = [out for out in outputs if out not in failed]
        if not good:
            return (
                {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "",
                    "extra_info": {},
                },
                node_errors,
                outputs,
            )
        # As ComfyUI: some outputs valid -> 200 with the node_errors, and only the valid outputs are queued.
        return None, node_errors, good

    def _upstream(self, graph: dict[str, Any], nid: str, seen: set | None = None) -> list[str]:
        seen = set() if seen is None else seen
        if nid in seen or nid not in graph:
            return []
        seen.add(nid)
        order = []
        for v in graph[nid].get("inputs", {}).values():
            if _is_link(v):
                order += self._upstream(graph, v[0], seen)
        return order + [nid]

    def _node_errors(self, graph: dict[str, Any], nid: str) -> list[dict[str, Any]]:
        node = graph[nid]
        inputs = node.get("inputs", {})
        errors = []
        for name, (kind, options) in NODES[node["class_type"]]["required"].items():
            info = [kind, options] if options else [kind]
            if name not in inputs:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
                continue
            value = inputs[name]
            if _is_link(value):
                src = graph.get(value[0])
                if src is None or src.get("class_type") not in NODES:
                    errors.append(
                        {
                            "type": "exception_during_validation",
                            "message": "Exception when validating inner node",
                            "details": f"'{value[0]}'",
                            "extra_info": {"input_name": name},
                        }
                    )
                    continue
                out_types = NODES[src["class_type"]]["output"]
                received = out_types[value[1]] if value[1] < len(out_types) else None
                if received != kind:
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received}) mismatch input_type({kind})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received,
                                "linked_node": value,
                            },
                        }
                    )
                continue
            if kind in ("INT", "FLOAT"):
                try:
                    number = int(value) if kind == "INT" else float(value)
                    if isinstance(value, bool) or (
                        kind == "INT" and isinstance(value, float) and not value.is_integer()
                    ):
                        raise ValueError(f"invalid literal for int() with base 10: '{value}'")
                    if isinstance(value, str):
                        raise ValueError(f"invalid literal for {kind.lower()}() with base 10: '{value}'")
                except (TypeError, ValueError) as e:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {kind} value",
                            "details": f"{name}, {value}, {e}",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": value,
                                "exception_message": str(e),
                            },
                        }
                    )
                    continue
                if "min" in options and number < options["min"]:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": f"Value {number} smaller than min of {options['min']}",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": info, "received_value": value},
                        }
                    )
                elif "max" in options and number > options["max"]:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": f"Value {number} bigger than max of {options['max']}",
                            "details": name,
                            "extra_info": {"input_name": name, "input_config": info, "received_value": value},
                        }
                    )
            elif kind == "STRING":
                if not isinstance(value, str):
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": "Failed to convert an input value to a STRING value",
                            "details": f"{name}, {value}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": value},
                        }
                    )
            elif isinstance(kind, list):
                if value not in kind:
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: '{value}' not in {kind}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": value},
                        }
                    )
            elif kind == "BOOLEAN":
                if not isinstance(value, bool):
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": "Failed to convert an input value to a BOOLEAN value",
                            "details": f"{name}, {value}",
                            "extra_info": {"input_name": name, "input_config": info, "received_value": value},
                        }
                    )
            elif kind == "INPUT_FILES":
                if not isinstance(value, str) or ".." in value or not (self.root / "input" / value).is_file():
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": f"{name} - Invalid image file: {value}",
                            "extra_info": {"input_name": name},
                        }
                    )
            else:
                errors.append(
                    {
                        "type": "exception_during_validation",
                        "message": "Exception when validating node",
                        "details": f"{name} must be a link to a {kind} output",
                        "extra_info": {"input_name": name},
                    }
                )
        return errors

    # ------------------------------------------------------------ execution

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            item = self._pending.pop(0)
            self._running = item
            try:
                await self._execute(item)
            except Exception:  # pragma: no cover - a bug in the fake must not kill the worker
                traceback.print_exc()
            finally:
                self._running = None

    def _signature(self, graph: dict[str, Any], nid: str, memo: dict[str, str]) -> str:
        if nid in memo:
            return memo[nid]
        node = graph[nid]
        parts = {}
        for k, v in sorted(node.get("inputs", {}).items()):
            parts[k] = ["link", self._signature(graph, v[0], memo), v[1]] if _is_link(v) else v
        memo[nid] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return memo[nid]

    async def _execute(self, item: _Item) -> None:
        graph, pid = item.graph, item.prompt_id
        self._interrupt = False
        run = _Run()
        sock = self._sockets.get(item.client_id) if item.client_id else None
        if sock is not None and self.drop_socket_after is not None:
            sock.drop_after, self.drop_socket_after = sock.frames + self.drop_socket_after, None
        await self._status()
        start = {"prompt_id": pid, "timestamp": _now_ms()}
        run.messages.append(["execution_start", start])
        await self._emit(item, "execution_start", start)
        order: list[str] = []
        seen: set = set()
        for out in item.outputs:
            for nid in self._upstream(graph, out, seen):
                order.append(nid)
        memo: dict[str, str] = {}
        signatures = {nid: self._signature(graph, nid, memo) for nid in order}
        cached = [nid for nid in order if nid in self._cache and self._cache[nid][0] == signatures[nid]]
        cached_msg = {"nodes": cached, "prompt_id": pid, "timestamp": _now_ms()}
        run.messages.append(["execution_cached", cached_msg])
        await self._emit(item, "execution_cached", cached_msg)
        values: dict[str, Any] = {}
        ui_outputs: dict[str, Any] = {}
        executed: list[str] = []
        states: dict[str, dict[str, Any]] = {}
        for nid in order:
            node = graph[nid]
            if nid in cached:
                _, values[nid], ui = self._cache[nid]
                if ui is not None:
                    ui_outputs[nid] = ui
                    await self._emit(
                        item, "executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid}
                    )
                continue
            if self._interrupt:
                await self._interrupted(item, run, nid, executed)
                return
            states[nid] = {
                "value": 0,
                "max": 1,
                "state": "running",
                "node_id": nid,
                "prompt_id": pid,
                "display_node_id": nid,
                "parent_node_id": None,
                "real_node_id": nid,
            }
            await self._emit(
                item,
                "progress_state",
                {"prompt_id": pid, "nodes": json.loads(json.dumps(states))},
                broadcast_without_client=True,
            )
            await self._emit(item, "executing", {"node": nid, "display_node": nid, "prompt_id": pid})
            inputs = {k: (values[v[0]][v[1]] if _is_link(v) else v) for k, v in node.get("inputs", {}).items()}
            try:
                out, ui = await self._run_node(item, nid, node["class_type"], inputs)
            except _Interrupted:
                await self._interrupted(item, run, nid, executed)
                return
            except Exception as e:  # noqa: BLE001
                await self._failed(item, run, nid, node, e, executed, inputs)
                return
            values[nid] = out
            self._cache[nid] = (signatures[nid], out, ui)
            executed.append(nid)
            states[nid].update(value=1, state="finished")
            if ui is not None:
                ui_outputs[nid] = ui
                await self._emit(item, "executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid})
            await self._emit(
                item,
                "progress_state",
                {"prompt_id": pid, "nodes": json.loads(json.dumps(states))},
                broadcast_without_client=True,
            )
        success = {"prompt_id": pid, "timestamp": _now_ms()}
        run.messages.append(["execution_success", success])
        self._store(item, run, "success", True, ui_outputs)
        await self._emit(item, "execution_success", success)
        await self._finish(item)

    async def _finish(self, item: _Item) -> None:
        self._running = None
        await self._status()
        await self._emit(item, "executing", {"node": None, "display_node": None, "prompt_id": item.prompt_id})

    def _store(self, item: _Item, run: _Run, status: str, completed: bool, outputs: dict[str, Any]) -> None:
        self.history[item.prompt_id] = {
            "prompt": [item.number, item.prompt_id, item.graph, item.extra_data, item.outputs],
            "outputs": outputs,
            "status": {"status_str": status, "completed": completed, "messages": run.messages},
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid} for nid in outputs
            },
        }

    async def _interrupted(self, item: _Item, run: _Run, nid: str, executed: list[str]) -> None:
        data = {
            "prompt_id": item.prompt_id,
            "node_id": nid,
            "node_type": item.graph[nid]["class_type"],
            "executed": list(executed),
            "timestamp": _now_ms(),
        }
        run.messages.append(["execution_interrupted", data])
        self._store(item, run, "error", False, {})
        self._interrupt = False
        await self._emit(item, "execution_interrupted", data, broadcast_without_client=True)
        await self._finish(item)

    async def _failed(self, item, run, nid, node, e: Exception, executed, inputs) -> None:
        data = {
            "prompt_id": item.prompt_id,
            "node_id": nid,
            "node_type": node["class_type"],
            "executed": list(executed),
            "exception_message": f"{e}\n",
            "exception_type": f"{type(e).__module__}.{type(e).__name__}",
            "traceback": traceback.format_exception(type(e), e, e.__traceback__)[-3:],
            "current_inputs": {k: [repr(v)[:100]] for k, v in inputs.items()},
            "current_outputs": {},
            "timestamp": _now_ms(),
        }
        run.messages.append(["execution_error", data])
        self._store(item, run, "error", False, {})
        await self._emit(item, "execution_error", data)
        await self._finish(item)

    # ------------------------------------------------------------ nodes

    async def _run_node(self, item: _Item, nid: str, cls: str, inputs: dict[str, Any]):
        await asyncio.sleep(0)
        if cls == "CheckpointLoaderSimple":
            name = inputs["ckpt_name"]
            if name == "broken.safetensors":
                raise SafetensorError("Error while deserializing header: HeaderTooLarge")
            return ({"ckpt": name}, {"ckpt": name}, {"ckpt": name}), None
        if cls == "CLIPTextEncode":
            return ({"text": inputs["text"], "ckpt": inputs["clip"]["ckpt"]},), None
        if cls == "EmptyLatentImage":
            return (
                {"width": int(inputs["width"]), "height": int(inputs["height"]), "batch": int(inputs["batch_size"])},
            ), None
        if cls in ("KSampler", "KSamplerAdvanced"):
            return await self._sample(item, nid, cls, inputs), None
        if cls == "CLIPTextEncodeSDXL":
            g, local = inputs["text_g"], inputs["text_l"]
            return ({"text": g if g == local else f"{g} | {local}", "ckpt": inputs["clip"]["ckpt"]},), None
        if cls == "CLIPTextEncodeSDXLRefiner":
            return ({"text": inputs["text"], "ckpt": inputs["clip"]["ckpt"]},), None
        if cls == "LoraLoader":  # the LoRA and its strengths become part of what the model and CLIP are
            tag = f"+{inputs['lora_name']}@{float(inputs['strength_model'])}/{float(inputs['strength_clip'])}"
            return ({"ckpt": inputs["model"]["ckpt"] + tag}, {"ckpt": inputs["clip"]["ckpt"] + tag}), None
        if cls == "ControlNetLoader":
            return ({"controlnet": inputs["control_net_name"]},), None
        if cls == "ControlNetApplyAdvanced":
            tag = f"{inputs['control_net']['controlnet']}@{float(inputs['strength'])}"
            return ({**inputs["positive"], "control": tag}, {**inputs["negative"], "control": tag}), None
        if cls == "VAEEncode":
            w, h = inputs["pixels"][0].size
            return ({"width": w, "height": h, "batch": len(inputs["pixels"])},), None
        if cls == "InpaintModelConditioning":
            w, h = inputs["pixels"][0].size
            return (inputs["positive"], inputs["negative"], {"width": w, "height": h, "batch": 1}), None
        if cls == "VAEDecode":
            lat = inputs["samples"]
            images = [
                fake_image(lat["text"], lat["seed"] + b, lat["width"], lat["height"], detail=lat["detail"])
                for b in range(lat["batch"])
            ]
            return (images,), None
        if cls == "EmptyImage":
            c = int(inputs["color"])
            color = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
            return (
                [
                    Image.new("RGB", (int(inputs["width"]), int(inputs["height"])), color)
                    for _ in range(int(inputs["batch_size"]))
                ],
            ), None
        if cls == "ImageInvert":
            return ([ImageOps.invert(im.convert("RGB")) for im in inputs["image"]],), None
        if cls == "ImageBlur":
            return ([im.filter(ImageFilter.GaussianBlur(float(inputs["sigma"]))) for im in inputs["image"]],), None
        if cls == "LoadImage":
            path = self.root / "input" / inputs["image"]
            image = Image.open(path)  # PIL.UnidentifiedImageError for a non-image, as in ComfyUI
            image.load()
            return ([image.convert("RGB")], {"mask": inputs["image"]}), None
        if cls == "ImageScale":
            size = (int(inputs["width"]), int(inputs["height"]))
            return ([im.resize(size) for im in inputs["image"]],), None
        if cls == "CreateVideo":
            return ({"frames": list(inputs["images"]), "fps": float(inputs["fps"])},), None
        if cls in ("SaveWEBM", "SaveVideo", "SaveAnimatedWEBP"):
            return (), self._save_animation(item, cls, inputs)
        if cls in ("SaveImage", "PreviewImage"):
            kind = "output" if cls == "SaveImage" else "temp"
            prefix = (
                inputs.get("filename_prefix", "ComfyUI")
                if cls == "SaveImage"
                else "ComfyUI_temp_" + uuid.uuid4().hex[:5]
            )
            results = []
            for image in inputs["images"]:
                filename = self._next_filename(kind, prefix)
                info = PngImagePlugin.PngInfo()
                info.add_text("prompt", json.dumps(item.graph))
                image.save(self.root / kind / filename, format="PNG", pnginfo=info, compress_level=1)
                results.append({"filename": filename, "subfolder": "", "type": kind})
            return (), {"images": results}
        if cls == "SaveImageWebsocket":
            images = inputs["images"]
            for i, image in enumerate(images):
                await self._emit(
                    item, "progress", {"value": i, "max": len(images), "prompt_id": item.prompt_id, "node": nid}
                )
                buf = io.BytesIO()
                image.save(buf, format="PNG", compress_level=1)
                await self._binary(item, struct.pack(">II", 1, 2) + buf.getvalue())
            return (), None
        raise RuntimeError(f"fake ComfyUI cannot run {cls}")  # pragma: no cover - validated before

    async def _binary(self, item: _Item, data: bytes) -> None:
        sock = self._sockets.get(item.client_id) if item.client_id else None
        await self._send_to(sock, None, None, binary=data)

    def _next_filename(self, kind: str, prefix: str, ext: str = "png") -> str:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(prefix) + r"_(\d{5})_\." + ext + "$")
        highest = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0)
        return f"{prefix}_{highest + 1:05d}_.{ext}"

    async def _sample(self, item: _Item, nid: str, cls: str, inputs: dict[str, Any]) -> tuple:
        """KSampler / KSamplerAdvanced: the latent remembers the prompts, seed and settings (a
        refiner pass over a sampled latent adds its own)."""
        steps = int(inputs["steps"])
        for step in range(steps):
            if self._interrupt:
                raise _Interrupted()
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            await self._emit(
                item, "progress", {"value": step + 1, "max": steps, "prompt_id": item.prompt_id, "node": nid}
            )
            if self.previews:
                preview = io.BytesIO()
                Image.new("RGB", (8, 8), (step * 10 % 255, 0, 0)).save(preview, format="JPEG")
                await self._binary(item, struct.pack(">II", 1, 1) + preview.getvalue())
        latent = inputs["latent_image"]
        seed = int(inputs["seed"] if cls == "KSampler" else inputs["noise_seed"])
        detail = json.dumps(
            [
                inputs["negative"]["text"],
                steps,
                float(inputs["cfg"]),
                inputs["sampler_name"],
                inputs["scheduler"],
                float(inputs.get("denoise", 1.0)),
                inputs["model"]["ckpt"],
                inputs["positive"].get("control"),
                inputs["negative"].get("control"),
            ]
        )
        if "text" in latent:  # a second pass (refiner) over a sampled latent
            return (
                {**latent, "detail": latent["detail"] + " > " + json.dumps([inputs["positive"]["text"], seed, detail])},
            )
        return ({**latent, "seed": seed, "text": inputs["positive"]["text"], "detail": detail},)

    def _save_animation(self, item: _Item, cls: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """SaveWEBM (.webm), SaveVideo (.mp4) and SaveAnimatedWEBP (.webp): one file of all frames,
        listed under "images" with "animated": [true], as ComfyUI does."""
        frames = inputs["video"]["frames"] if cls == "SaveVideo" else list(inputs["images"])
        fps = inputs["video"]["fps"] if cls == "SaveVideo" else float(inputs["fps"])
        subfolder, _, prefix = inputs["filename_prefix"].rpartition("/")
        ext = {"SaveWEBM": "webm", "SaveVideo": "mp4", "SaveAnimatedWEBP": "webp"}[cls]
        filename = self._next_filename(f"output/{subfolder}" if subfolder else "output", prefix, ext)
        path = self.root / "output" / subfolder / filename
        if cls == "SaveAnimatedWEBP":
            frames[0].save(
                path, format="WEBP", save_all=True, append_images=frames[1:], duration=int(1000 / fps), lossless=True
            )
        else:
            import cv2
            import numpy as np

            size = frames[0].size
            writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*("VP80" if ext == "webm" else "mp4v")), fps, size
            )
            for frame in frames:
                writer.write(cv2.cvtColor(np.asarray(frame.convert("RGB").resize(size)), cv2.COLOR_RGB2BGR))
            writer.release()
        return {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}], "animated": [True]}


__all__ = ["FakeComfyUI", "CHECKPOINTS", "COMFYUI_VERSION"]
