"""What a ComfyUI output file is (still image, animated image, video, audio) and a still of it.

ComfyUI lists every saved file of an output node under "images" (videos too) and marks animated
ones with "animated": [true]; the file name's extension says what it really is.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import tempfile
from typing import Any

from PIL import Image

from ..errors import BackendError

_VIDEO = {
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".gif": "image/gif",
}
_AUDIO = {".flac": "audio/flac", ".mp3": "audio/mpeg", ".wav": "audio/wav", ".opus": "audio/opus", ".ogg": "audio/ogg"}


def media_type(filename: str | None) -> str:
    """The MIME type of an output file from its name ("image/png" for an unnamed websocket image)."""
    if not filename:
        return "image/png"
    ext = os.path.splitext(filename)[1].lower()
    return _VIDEO.get(ext) or _AUDIO.get(ext) or mimetypes.guess_type(filename)[0] or "application/octet-stream"


def file_kind(filename: str | None, *, animated: bool = False) -> str:
    """ "image" (a still), "animated" (an animated image), "video", "audio" or "file"."""
    mime = media_type(filename)
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("audio/"):
        return "audio"
    if mime.startswith("image/"):
        return "animated" if animated or mime == "image/gif" else "image"
    return "file"


def file_record(item: dict[str, Any]) -> dict[str, Any]:
    """An output file as a record says it: where it is on the server, what it is, its digest."""
    out = {k: v for k, v in item.items() if k != "data"}
    data = item.get("data")
    if data is not None:
        out["bytes"] = len(data)
        out["sha256"] = hashlib.sha256(data).hexdigest()
    return out


def first_frame(data: bytes, filename: str) -> Image.Image:
    """The first frame of an animated image or a video, as an RGB image (BackendError if unreadable)."""
    if file_kind(filename) != "video":
        try:
            image = Image.open(io.BytesIO(data))
            image.seek(0)
            return image.convert("RGB")
        except Exception as e:
            raise BackendError(
                f"ComfyUI returned an unreadable animated image {filename}: {e}", backend="comfyui"
            ) from e
    import cv2  # opencv is a dependency of sdlab; its wheels decode webm and mp4

    fd, path = tempfile.mkstemp(suffix=os.path.splitext(filename)[1])
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        capture = cv2.VideoCapture(path)
        ok, frame = capture.read()
        capture.release()
    finally:
        os.unlink(path)
    if not ok or frame is None:
        raise BackendError(
            f"ComfyUI returned the video {filename}, and its first frame could not be decoded", backend="comfyui"
        )
    return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
