"""Small pieces shared by the widgets: PNG bytes, parameter tables, status text, progress."""

from __future__ import annotations

import html
import io
from typing import Any

import ipywidgets as widgets

# Record keys shown next to an image, in this order, with short labels.
PARAM_LABELS = (
    ("prompt", "prompt"),
    ("negative_prompt", "negative"),
    ("seed", "seed"),
    ("guidance_scale", "CFG"),
    ("num_inference_steps", "steps"),
    ("scheduler", "scheduler"),
    ("size", "size"),
    ("model", "model"),
    ("seconds", "seconds"),
)


# The value of a dropdown's "use the model's default" entry (a Dropdown shows None as no selection).
DEFAULT = "default"


def or_none(value):
    """None for the DEFAULT entry of a dropdown, else the value."""
    return None if value == DEFAULT else value


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def fit_size(size: tuple[int, int], box: int) -> tuple[int, int]:
    """`size` (width, height) scaled so its longer side is `box` pixels, the aspect kept."""
    width, height = size
    scale = box / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_widget(
    image, *, width: str | None = None, box: int | None = None, css_class: str | None = None
) -> widgets.Image:
    """An `ipywidgets.Image` of a PIL image; small images are scaled up crisply by the browser.

    With `box`, both its width and height are set (longer side `box` px, the image's aspect kept):
    a flex row can then never stretch it.
    """
    if box is not None:
        w, h = fit_size(image.size, box)
        layout = widgets.Layout(width=f"{w}px", height=f"{h}px", min_width=f"{w}px", object_fit="contain")
    else:
        layout = widgets.Layout(width=width, height="auto") if width else widgets.Layout()
    widget = widgets.Image(value=png_bytes(image), format="png", layout=layout)
    widget.add_class("sdlab-pixelated")
    if css_class:
        widget.add_class(css_class)
    return widget


# Nearest-neighbour scaling for 64x64 images shown large (a style element, sent once per widget).
PIXELATED_STYLE = "<style>.sdlab-pixelated img, img.sdlab-pixelated {image-rendering: pixelated;}</style>"


def params_html(params: dict[str, Any], *, keys=PARAM_LABELS, max_chars: int = 120) -> str:
    """A compact HTML table of an image's parameters."""
    values = dict(params)
    if "width" in values and "height" in values:
        values["size"] = f"{values['width']}x{values['height']}"
    rows = []
    for key, label in keys:
        value = values.get(key)
        if value is None or value == "":
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
        rows.append(
            f"<tr><td style='padding-right:6px;color:#666'>{html.escape(label)}</td>"
            f"<td style='text-align:left'>{html.escape(text)}</td></tr>"
        )
    return "<table style='font-size:11px;line-height:1.2'>" + "".join(rows) + "</table>"


def status_html(text: str, kind: str = "info") -> str:
    color = {"info": "#333", "ok": "#176c2d", "error": "#b00020", "busy": "#8a5a00"}.get(kind, "#333")
    return f"<span style='color:{color}'>{html.escape(text)}</span>"


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class ProgressFeed:
    """A progress callback (`generate(..., progress=...)`) that moves an `IntProgress`."""

    def __init__(self, bar: widgets.IntProgress):
        self.bar = bar
        self.calls = 0

    def reset(self, total: int = 1) -> None:
        self.bar.max = max(1, int(total))
        self.bar.value = 0
        self.calls = 0

    def __call__(self, info: dict[str, Any]) -> None:
        self.calls += 1
        total = info.get("total")
        if total and int(total) != self.bar.max:
            self.bar.max = max(1, int(total))
        value = info.get("step", info.get("done"))
        if value is not None:
            self.bar.value = min(int(value), self.bar.max)


def _parts(widget) -> list:
    """A widget, its layout and style models, and the same of every child, recursively."""
    parts = [widget]
    for name in ("layout", "style"):
        part = getattr(widget, name, None)
        if isinstance(part, widgets.Widget):
            parts.append(part)
    for child in getattr(widget, "children", ()) or ():
        parts.extend(_parts(child))
    return parts


def replace_children(box, children) -> None:
    """Show `children` in `box` and close what it showed before (unless shown again): views rebuilt on
    every refresh would otherwise stay alive in the kernel and in a notebook's saved widget state."""
    old = [p for w in box.children for p in _parts(w)]
    box.children = tuple(children)
    kept = {id(p) for w in box.children for p in _parts(w)}
    for part in old:
        if id(part) not in kept:
            part.close()
