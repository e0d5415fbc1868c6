"""A client for a ComfyUI server's HTTP and WebSocket API (the `ComfyUIBackend` is built on it).

What a ComfyUI run needs, and the production guide's client gets wrong (see comfyui-api.md):
- the WebSocket `/ws?clientId=X` is connected BEFORE the prompt is posted with the same
  `client_id` (execution messages go only to that socket; a fast job may otherwise finish
  before the socket connects);
- the run is over at `executing{node: null}` for OUR prompt_id; `status` and `progress_state`
  frames interleave anywhere, binary frames are previews unless a `SaveImageWebsocket` node runs;
- `execution_error` / `execution_interrupted` end a prompt without `execution_success`;
- HTTP 400 bodies carry `node_errors` (node, class, input) that become readable messages;
- a 200 answer can carry `node_errors` too: ComfyUI queued the valid outputs and refused the
  others. sdlab either cancels that prompt (`partial="cancel"`, the default: delete + interrupt,
  and an error saying so) or collects the valid outputs (`partial="collect"`, the refused ones
  named in the result);
- output files come from `/history/{id}` and `/view`: still images are decoded, videos and
  animated images (listed under "images" too) are returned as files; a lost socket falls back to
  polling `/history`.
No Origin header is sent (a non-matching Origin gets 403).
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from ..errors import BackendError, MissingDependencyError
from .base import ProgressCallback
from .comfyui_media import file_kind, media_type
from .workflow import OUTPUT_CLASSES, Workflow

DEFAULT_SERVER = "http://127.0.0.1:8188"
PARTIAL_MODES = ("cancel", "collect")


def _httpx():
    try:
        import httpx
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("httpx", "the ComfyUI backend", "comfyui") from None
    return httpx


def _websocket():
    try:
        import websocket
    except ImportError:  # pragma: no cover
        raise MissingDependencyError("websocket-client", "the ComfyUI backend", "comfyui") from None
    return websocket


def normalise_server(server: str) -> str:
    """'127.0.0.1:8188' or 'http://host:port/' -> 'http://host:port' (ValueError if unusable)."""
    if not isinstance(server, str) or not server.strip():
        raise ValueError(f"`server` must be a URL such as {DEFAULT_SERVER!r}, got {server!r}")
    text = server.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"`server` must be an http(s) URL such as {DEFAULT_SERVER!r}, got {server!r}")
    return text


@dataclass
class ComfyUIResult:
    """One executed prompt: its still images (decoded), every output file, and what ComfyUI said."""

    prompt_id: str
    images: list[Image.Image] = field(default_factory=list)  # the files of kind "image", in order
    # every output file: {node_id, filename, subfolder, type, key, kind, media_type, data}; kind is
    # "image", "animated", "video", "audio" or "file"
    files: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # /history outputs by node id
    cached_nodes: list[str] = field(default_factory=list)
    ran_nodes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    via: str = "websocket"  # or "history" when the socket was lost or never connected
    cached: bool = False  # True when ComfyUI ran nothing: every node came from its cache
    node_errors: dict[str, Any] = field(default_factory=dict)  # a partly valid prompt: what ComfyUI refused
    refused_outputs: list[str] = field(default_factory=list)  # output nodes that did not run for that


@dataclass
class _PromptState:
    prompt_id: str
    number: int | None = None
    done: bool = False
    started: bool = False
    ran_nodes: list[str] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)
    current_node: str | None = None
    error: dict[str, Any] | None = None
    interrupted: dict[str, Any] | None = None
    ws_images: list[dict[str, Any]] = field(default_factory=list)
    via: str = "websocket"
    node_errors: dict[str, Any] = field(default_factory=dict)


class _SocketLost(Exception):
    pass


class ComfyUIClient:
    """A ComfyUI server's HTTP and WebSocket API (one `client_id` per client)."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        client_id: str | None = None,
        http_timeout: float = 30.0,
        poll_interval: float = 0.5,
        http: Any = None,
    ):
        self.server = normalise_server(server)
        self.client_id = client_id or uuid.uuid4().hex
        self.http_timeout = float(http_timeout)
        self.poll_interval = float(poll_interval)
        self._http = http

    def __repr__(self) -> str:
        return f"ComfyUIClient({self.server!r})"

    # ------------------------------------------------------------ HTTP

    @property
    def http(self):
        if self._http is None:
            httpx = _httpx()
            # No Origin header: ComfyUI answers 403 to an Origin that does not match its Host.
            self._http = httpx.Client(base_url=self.server, timeout=self.http_timeout, follow_redirects=False)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _request(self, method: str, path: str, *, job_id: str | None = None, **kwargs):
        httpx = _httpx()
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise BackendError(
                f"ComfyUI at {self.server} did not answer {method} {path} in time ({e})",
                backend="comfyui",
                job_id=job_id,
            ) from e
        except httpx.TransportError as e:
            raise BackendError(
                f"cannot reach ComfyUI at {self.server} ({e}); is the server running?", backend="comfyui", job_id=job_id
            ) from e
        if response.status_code == 403:
            raise BackendError(
                f"ComfyUI at {self.server} refused {method} {path} (403): an Origin header that does not match the server?",
                backend="comfyui",
                job_id=job_id,
            )
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise BackendError(
                f"ComfyUI {method} {path} failed ({response.status_code}): {response.text[:500]}", backend="comfyui"
            )
        return response.json() if response.content else None

    def submit(
        self,
        workflow: Mapping | Workflow,
        *,
        prompt_id: str | None = None,
        front: bool = False,
        client_id: str | None = None,
    ) -> tuple[str, int | None]:
        """POST /prompt with `client_id` (default: this client's); returns (prompt_id, queue number).

        A 400 (validation) becomes a BackendError naming each failing node, class and input. A 200
        with `node_errors` (ComfyUI queued only the valid outputs) is cancelled and raised the same way."""
        pid, number, node_errors = self._post_prompt(workflow, prompt_id=prompt_id, front=front, client_id=client_id)
        if node_errors:
            raise self._cancel_partial(pid, node_errors, workflow)
        return pid, number

    def _post_prompt(
        self,
        workflow: Mapping | Workflow,
        *,
        prompt_id: str | None = None,
        front: bool = False,
        client_id: str | None = None,
    ) -> tuple[str, int | None, dict[str, Any]]:
        """POST /prompt: (prompt_id, number, node_errors of outputs ComfyUI refused while queueing the rest)."""
        graph = workflow.to_dict() if isinstance(workflow, Workflow) else dict(workflow)
        body: dict[str, Any] = {
            "prompt": graph,
            "client_id": client_id or self.client_id,
            "prompt_id": prompt_id or str(uuid.uuid4()),
        }
        if front:
            body["front"] = True
        response = self._request("POST", "/prompt", json=body)
        if response.status_code == 400:
            raise prompt_error(response)
        if response.status_code >= 400:
            raise BackendError(
                f"ComfyUI POST /prompt failed ({response.status_code}): {response.text[:500]}", backend="comfyui"
            )
        data = response.json()
        if data.get("node_errors") and not data.get("prompt_id"):
            raise prompt_error(response)
        return str(data["prompt_id"]), data.get("number"), dict(data.get("node_errors") or {})

    def _cancel_partial(self, prompt_id: str, node_errors: Mapping[str, Any], workflow) -> BackendError:
        """Cancel a prompt ComfyUI queued with some outputs refused; the error that says so."""
        self.delete([prompt_id])
        self.interrupt(prompt_id)
        return partial_prompt_error(
            prompt_id,
            node_errors,
            workflow,
            action=(
                "sdlab cancelled it: deleted it from ComfyUI's queue and sent an interrupt for it "
                "(a running prompt stops at its next node)"
            ),
        )

    def history(self, prompt_id: str | None = None, *, max_items: int | None = None) -> dict[str, Any]:
        if prompt_id is None:
            params = {"max_items": max_items} if max_items else None
            return self._json("GET", "/history", params=params) or {}
        return self._json("GET", f"/history/{prompt_id}") or {}

    def view(self, filename: str, *, subfolder: str = "", type: str = "output") -> bytes:
        """The bytes of an output/input/temp file (GET /view)."""
        response = self._request("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        if response.status_code == 404:
            raise BackendError(
                f"ComfyUI has no {type} file {subfolder + '/' if subfolder else ''}{filename}", backend="comfyui"
            )
        if response.status_code >= 400:
            raise BackendError(f"ComfyUI GET /view failed ({response.status_code}) for {filename}", backend="comfyui")
        return response.content

    def upload_image(
        self,
        image: Image.Image | str | Path | bytes,
        *,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = False,
        type: str = "input",
    ) -> dict[str, Any]:
        """POST /upload/image; returns {"name", "subfolder", "type"} (ComfyUI may rename a clash)."""
        if isinstance(image, Image.Image):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            data, name = buf.getvalue(), name or f"sdlab-{uuid.uuid4().hex[:12]}.png"
        elif isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise ValueError(f"`image`: no such file {str(path)!r}")
            data, name = path.read_bytes(), name or path.name
        elif isinstance(image, bytes):
            data, name = image, name or f"sdlab-{uuid.uuid4().hex[:12]}.png"
        else:
            raise ValueError(f"`image` must be a PIL image, a path or bytes, got {image.__class__.__name__}")
        form = {"type": type, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        response = self._request(
            "POST", "/upload/image", files={"image": (name, data, "application/octet-stream")}, data=form
        )
        if response.status_code >= 400:
            raise BackendError(
                f"ComfyUI refused the upload of {name} ({response.status_code}): {response.text[:300]}",
                backend="comfyui",
            )
        return response.json()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (cooperative: the running node finishes first). With `prompt_id`, only
        that prompt is interrupted if it is the one running."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def queue(self) -> dict[str, Any]:
        """GET /queue: {"queue_running": [...], "queue_pending": [...]}."""
        return self._json("GET", "/queue")

    def delete(self, prompt_ids: Sequence[str]) -> None:
        """Remove pending prompts from the queue."""
        if prompt_ids:
            self._json("POST", "/queue", json={"delete": list(prompt_ids)})

    def system_stats(self) -> dict[str, Any]:
        return self._json("GET", "/system_stats")

    def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        return self._json("GET", f"/object_info/{class_type}" if class_type else "/object_info")

    # ------------------------------------------------------------ WebSocket

    def ws_url(self, client_id: str | None = None) -> str:
        parts = urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/ws?clientId={client_id or self.client_id}"

    def connect(self, timeout: float = 10.0, *, client_id: str | None = None):
        """The WebSocket for `client_id` (default: this client's), with no Origin header."""
        websocket = _websocket()
        return websocket.create_connection(
            self.ws_url(client_id), timeout=timeout, suppress_origin=True, enable_multithread=True
        )

    # ------------------------------------------------------------ running prompts

    def run(
        self,
        workflow: Mapping | Workflow,
        *,
        timeout: float = 600.0,
        progress: ProgressCallback | None = None,
        partial: str = "cancel",
    ) -> ComfyUIResult:
        """Run one workflow and return its output files (and decoded still images)."""
        return self.execute([workflow], timeout=timeout, progress=progress, partial=partial)[0]

    def execute(
        self,
        workflows: Sequence[Mapping | Workflow],
        *,
        timeout: float = 600.0,
        progress: ProgressCallback | None = None,
        partial: str = "cancel",
    ) -> list[ComfyUIResult]:
        """Queue `workflows` (in order) and wait for all of them; results in the same order.

        The socket is connected before anything is posted. If it cannot be connected or is lost,
        the run goes on by polling /history. On an error, an interrupt or the timeout, prompts of
        this call still queued are deleted (and a running one interrupted) before raising.

        `partial`: what to do when ComfyUI refuses some outputs of a prompt and queues the rest
        (200 with `node_errors`): "cancel" it and raise, saying so, or "collect" the outputs that
        ran (the result's `node_errors` / `refused_outputs` name what was refused)."""
        if partial not in PARTIAL_MODES:
            raise ValueError(f"`partial` must be one of {', '.join(PARTIAL_MODES)}, got {partial!r}")
        if not workflows:
            return []
        start = time.monotonic()
        deadline = start + float(timeout)
        # One client id per call: ComfyUI keeps one socket per id, so concurrent calls must not share one.
        client_id = f"{self.client_id}-{uuid.uuid4().hex[:8]}"
        ws = None
        try:
            ws = self.connect(timeout=min(10.0, float(timeout)), client_id=client_id)
        except MissingDependencyError:
            raise
        except Exception:  # the server may still accept HTTP: fall back to polling
            ws = None
        states: dict[str, _PromptState] = {}
        try:
            for workflow in workflows:
                pid, number, node_errors = self._post_prompt(workflow, client_id=client_id)
                if node_errors and partial == "cancel":
                    raise self._cancel_partial(pid, node_errors, workflow)
                states[pid] = _PromptState(
                    pid, number, via="websocket" if ws is not None else "history", node_errors=node_errors
                )
            if ws is not None:
                try:
                    self._follow(ws, states, deadline, progress, workflows)
                except _SocketLost:
                    for st in states.values():
                        if not st.done:
                            st.via = "history"
            self._poll(states, deadline)
            for st in states.values():
                _raise_for_state(st, self.server)
        except BaseException:
            self._cancel([st for st in states.values() if not st.done])
            raise
        finally:
            if ws is not None:
                try:
                    ws.close()
                except Exception:  # pragma: no cover
                    pass
        results = []
        for st, workflow in zip(states.values(), workflows):
            result = self._collect(st, workflow)
            result.seconds = time.monotonic() - start
            results.append(result)
        return results

    def _follow(self, ws, states: dict[str, _PromptState], deadline: float, progress, workflows) -> None:
        """Read the socket until every prompt of `states` has ended (or raise _SocketLost)."""
        websocket = _websocket()
        classes = {}
        for st, workflow in zip(states.values(), workflows):
            graph = workflow.graph if isinstance(workflow, Workflow) else workflow
            classes[st.prompt_id] = {nid: node.get("class_type") for nid, node in graph.items()}
        last_frame = time.monotonic()
        current: str | None = None  # the prompt whose node runs now (binary frames carry no id)
        while not _finished(states):
            now = time.monotonic()
            if now > deadline:
                raise _timeout_error(states, self.server)
            if now - last_frame > max(5.0, 10 * self.poll_interval):
                # A long silence: make sure we did not miss the end (e.g. a server restart).
                self._check_history(states)
                last_frame = now
                continue
            ws.settimeout(max(0.05, min(1.0, deadline - now)))
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, OSError, ConnectionError) as e:
                raise _SocketLost(str(e)) from e
            last_frame = time.monotonic()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise _SocketLost("closed by the server")
            if opcode == websocket.ABNF.OPCODE_BINARY:
                st = states.get(current) if current else None
                if (
                    st is not None
                    and st.current_node
                    and classes[st.prompt_id].get(st.current_node) == "SaveImageWebsocket"
                ):
                    image = _decode_binary_image(data)
                    if image is not None:
                        st.ws_images.append({"node_id": st.current_node, "data": image})
                continue
            try:
                message = json.loads(data)
            except (TypeError, ValueError):
                continue
            kind, payload = message.get("type"), message.get("data") or {}
            st = states.get(payload.get("prompt_id")) if isinstance(payload, dict) else None
            if st is None or st.done:
                continue  # status frames, other clients' prompts, frames after the end
            if kind == "execution_start":
                st.started, current = True, st.prompt_id
            elif kind == "execution_cached":
                st.cached_nodes = [str(n) for n in payload.get("nodes", [])]
            elif kind == "executing":
                node = payload.get("node")
                if node is None:
                    st.done, st.current_node = True, None
                else:
                    current, st.current_node = st.prompt_id, str(node)
                    st.ran_nodes.append(str(node))
            elif kind == "progress" and progress is not None:
                progress(
                    {
                        "step": int(payload.get("value", 0)),
                        "total": int(payload.get("max", 0)),
                        "node": payload.get("node"),
                        "prompt_id": st.prompt_id,
                        "index": list(states).index(st.prompt_id),
                    }
                )
            elif kind == "execution_error":
                st.error, st.done = payload, True
            elif kind == "execution_interrupted":
                st.interrupted, st.done = payload, True

    def _check_history(self, states: dict[str, _PromptState]) -> None:
        for st in states.values():
            if not st.done:
                entry = self.history(st.prompt_id).get(st.prompt_id)
                if entry is not None:
                    _state_from_history(st, entry)

    def _poll(self, states: dict[str, _PromptState], deadline: float) -> None:
        """Poll /history for prompts not finished over the socket."""
        while not _finished(states):
            if time.monotonic() > deadline:
                raise _timeout_error(states, self.server)
            self._check_history(states)
            if not _finished(states):
                time.sleep(self.poll_interval)

    def _cancel(self, states: Sequence[_PromptState]) -> None:
        """Best effort: delete queued prompts of ours and interrupt the running one."""
        if not states:
            return
        try:
            ids = [st.prompt_id for st in states]
            self.delete(ids)
            for pid in ids:
                self.interrupt(pid)
        except Exception:  # pragma: no cover - the server may be gone
            pass

    def _collect(self, st: _PromptState, workflow) -> ComfyUIResult:
        """The prompt's output images, from /history (retried briefly) and /view."""
        entry = None
        for _ in range(20):
            entry = self.history(st.prompt_id).get(st.prompt_id)
            if entry is not None:
                break
            time.sleep(min(0.1, self.poll_interval))
        outputs = (entry or {}).get("outputs") or {}
        graph = workflow.graph if isinstance(workflow, Workflow) else workflow
        order = [nid for nid in graph if nid in outputs] + [nid for nid in outputs if nid not in graph]
        result = ComfyUIResult(
            prompt_id=st.prompt_id, outputs=outputs, cached_nodes=st.cached_nodes, ran_nodes=st.ran_nodes, via=st.via
        )
        result.cached = bool(st.cached_nodes) and not st.ran_nodes and set(graph) <= set(st.cached_nodes)
        if st.node_errors:
            result.node_errors = st.node_errors
            result.refused_outputs = _refused_outputs(st.node_errors)
        for nid in order:
            node_output = outputs[nid] or {}
            animated = node_output.get("animated") or []
            for key, items in node_output.items():
                if key == "animated" or not isinstance(items, list):
                    continue
                for i, info in enumerate(items):
                    if not isinstance(info, dict) or not info.get("filename"):
                        continue  # text and other non-file outputs
                    flag = bool(animated[i] if i < len(animated) else any(animated))
                    kind = file_kind(info["filename"], animated=flag)
                    data = self.view(
                        info["filename"], subfolder=info.get("subfolder", ""), type=info.get("type", "output")
                    )
                    if kind == "image":
                        result.images.append(
                            _open_image(data, f"{info['filename']} (node {nid}, prompt {st.prompt_id})")
                        )
                    result.files.append(
                        {
                            "node_id": nid,
                            **info,
                            "key": key,
                            "kind": kind,
                            "media_type": media_type(info["filename"]),
                            "data": data,
                        }
                    )
        for item in st.ws_images:
            image = _open_image(item["data"], f"SaveImageWebsocket node {item['node_id']}")
            result.files.append(
                {
                    "node_id": item["node_id"],
                    "filename": None,
                    "subfolder": "",
                    "type": "websocket",
                    "key": "websocket",
                    "kind": "image",
                    "media_type": "image/png",
                    "data": item["data"],
                }
            )
            result.images.append(image)
        return result


# ------------------------------------------------------------------ errors


def _finished(states: dict[str, _PromptState]) -> bool:
    """All prompts ended, or one failed (the rest are then cancelled)."""
    return all(st.done for st in states.values()) or any(st.error or st.interrupted for st in states.values())


def prompt_error(response) -> BackendError:
    """A readable BackendError for a rejected POST /prompt (node, class and input of each error)."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:500]}}
    error = body.get("error") or {}
    if isinstance(error, str):
        error = {"message": error}
    node_errors = body.get("node_errors") or {}
    head = error.get("message") or error.get("type") or "invalid prompt"
    if error.get("details"):
        head += f" ({error['details']})"
    lines = node_error_lines(node_errors)
    message = f"ComfyUI rejected the workflow: {head}"
    if lines:
        message += "\n  " + "\n  ".join(lines)
    err = BackendError(message, backend="comfyui")
    err.node_errors = node_errors
    err.error = error
    return err


def node_error_lines(node_errors: Mapping[str, Any]) -> list[str]:
    """One readable line per error: node, class, input, message."""
    lines = []
    for nid, info in node_errors.items():
        cls = info.get("class_type", "?")
        for e in info.get("errors", []) or []:
            extra = e.get("extra_info") or {}
            input_name = extra.get("input_name") or e.get("details") or "?"
            line = f"node {nid} ({cls}), input {input_name!r}: {e.get('message', e.get('type', 'error'))}"
            if "received_value" in extra:
                line += f" (got {extra['received_value']!r})"
            details = e.get("details")
            if details and details != input_name:
                line += f": {details}"
            lines.append(line)
    return lines


def _refused_outputs(node_errors: Mapping[str, Any]) -> list[str]:
    return sorted(
        {str(o) for info in node_errors.values() for o in (info.get("dependent_outputs") or [])}, key=_node_order
    )


def _node_order(nid: str):
    return (0, int(nid), "") if nid.isdigit() else (1, 0, nid)


def partial_prompt_error(prompt_id: str, node_errors: Mapping[str, Any], workflow, *, action: str) -> BackendError:
    """The error for a prompt ComfyUI queued with some of its outputs refused, saying what sdlab did."""
    graph = workflow.graph if isinstance(workflow, Workflow) else workflow
    refused = _refused_outputs(node_errors)
    valid = [nid for nid, node in graph.items() if nid not in refused and nid not in node_errors and _is_output(node)]

    def named(ids):
        return ", ".join(f"{nid} ({graph[nid]['class_type']})" if nid in graph else nid for nid in ids) or "-"

    message = (
        f"ComfyUI refused output node(s) {named(refused)} of the workflow and queued the rest "
        f"({named(valid)}) as prompt {prompt_id}; {action}.\n  " + "\n  ".join(node_error_lines(node_errors))
    )
    err = BackendError(message, backend="comfyui", job_id=prompt_id)
    err.node_errors = dict(node_errors)
    err.refused_outputs = refused
    return err


def _is_output(node: Mapping[str, Any]) -> bool:
    return node.get("class_type") in OUTPUT_CLASSES or node.get("class_type") in ("SaveAudio", "PreviewAudio")


def _raise_for_state(st: _PromptState, server: str) -> None:
    if st.error is not None:
        e = st.error
        node = f"node {e.get('node_id')} ({e.get('node_type')})"
        err = BackendError(
            f"ComfyUI prompt {st.prompt_id} failed at {node}: {e.get('exception_type', 'error')}: "
            f"{str(e.get('exception_message', '')).strip()}",
            backend="comfyui",
            job_id=st.prompt_id,
        )
        err.details = e
        raise err
    if st.interrupted is not None:
        e = st.interrupted
        err = BackendError(
            f"ComfyUI prompt {st.prompt_id} was interrupted at node {e.get('node_id')} ({e.get('node_type')})",
            backend="comfyui",
            job_id=st.prompt_id,
        )
        err.details = e
        raise err


def _timeout_error(states: dict[str, _PromptState], server: str) -> BackendError:
    waiting = [st.prompt_id for st in states.values() if not st.done]
    return BackendError(
        f"ComfyUI at {server} did not finish prompt(s) {', '.join(waiting)} in time; they were deleted from the "
        f"queue / interrupted. Raise `timeout` for long workflows.",
        backend="comfyui",
        job_id=waiting[0] if waiting else None,
    )


def _state_from_history(st: _PromptState, entry: Mapping[str, Any]) -> None:
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    for kind, payload in messages:
        if kind == "execution_error":
            st.error = payload
        elif kind == "execution_interrupted":
            st.interrupted = payload
        elif kind == "execution_cached":
            st.cached_nodes = [str(n) for n in payload.get("nodes", [])]
    if status.get("completed") or status.get("status_str") in ("success", "error") or st.error or st.interrupted:
        st.done = True
    elif not status:  # older servers: an entry exists only once the prompt has ended
        st.done = True


def _decode_binary_image(data: bytes) -> bytes | None:
    """The image bytes of a SaveImageWebsocket frame ([u32 event=1][u32 type][image]), else None."""
    if len(data) < 8:
        return None
    event, _kind = struct.unpack(">II", data[:8])
    if event == 1:
        return data[8:]
    if event == 4 and len(data) >= 8:  # [u32 4][u32 len][json][image] (clients that sent feature flags)
        (length,) = struct.unpack(">I", data[4:8])
        return data[8 + length :]
    return None


def _open_image(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:
        raise BackendError(f"ComfyUI returned an unreadable image for {what}: {e}", backend="comfyui") from e
    return image
