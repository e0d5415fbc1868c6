"""A background-thread aiohttp server on 127.0.0.1, and the fakes' deterministic pictures."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw

from ...errors import MissingDependencyError


def aiohttp_web():
    try:
        from aiohttp import web
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("aiohttp", "sdlab's local fake servers", "fakes") from None
    return web


def fake_image(prompt: str, seed: int, width: int, height: int, *, detail: str = "") -> Image.Image:
    """A picture whose colours come from `prompt` (and `detail`) and whose layout comes from `seed`:
    same arguments, same pixels; another seed or prompt, another picture."""
    digest = hashlib.sha256(f"{prompt}\x00{detail}".encode()).digest()
    rng = random.Random(int(seed))
    background = tuple(64 + b // 2 for b in digest[:3])
    image = Image.new("RGB", (int(width), int(height)), background)
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    for k in range(3):
        color = tuple(digest[3 + 3 * k + c] for c in range(3))
        r = max(2, int(side * rng.uniform(0.12, 0.3)))
        x, y = rng.randrange(0, max(1, width)), rng.randrange(0, max(1, height))
        if (digest[12 + k] + k) % 2:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            draw.rectangle([x - r, y - r, x + r, y + r], fill=color)
    # a bar whose length encodes `detail` (steps, guidance, ...) at the bottom edge
    bar = max(1, int(width * (digest[20] / 255)))
    draw.rectangle(
        [0, height - max(1, height // 32), bar, height],
        fill=(255 - background[0], 255 - background[1], 255 - background[2]),
    )
    return image


class ServerThread:
    """Serve `make_app()` on host:port (0: a free port) from a daemon thread with its own loop."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"`host`: the fake servers listen on loopback only, got {host!r}")
        self.host, self.port = host, port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def make_app(self):  # pragma: no cover - abstract
        raise NotImplementedError

    async def on_start(self) -> None:
        """Called in the server loop once it listens (start background tasks here)."""

    async def on_stop(self) -> None:
        """Called in the server loop before it closes."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ServerThread:
        if self._thread is not None:
            return self
        aiohttp_web()
        self._thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"{type(self).__name__} did not start within 15 s")
        if self._error is not None:
            raise RuntimeError(f"{type(self).__name__} failed to start: {self._error}") from self._error
        return self

    def _serve(self) -> None:
        web = aiohttp_web()
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)

        async def boot():
            self._runner = web.AppRunner(self.make_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            await self.on_start()

        try:
            loop.run_until_complete(boot())
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.on_stop())
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def stop(self) -> None:
        if self._thread is None or self.loop is None:
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(15)
        self._thread = None

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn()` (a coroutine function or a plain function) in the server loop; its result."""

        async def wrapper():
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
