"""Labelled image grids: axis labels that wrap and shrink to fit, titles, sub-grids, mixed sizes.

Never an assertion on size: a grid over `max_pixels` is downscaled to fit (or paged by the caller).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

DEFAULT_MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
INACTIVE = (153, 153, 153)
FAILED_FILL = (225, 225, 225)


@dataclass(frozen=True)
class Label:
    """A grid label; `active=False` draws it grey (a failed cell, a matrix part switched off)."""

    text: str
    active: bool = True


def _font(size: int):
    size = max(6, int(size))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> float:
    return draw.textlength(text, font=font)


def wrap_text(text: str, width: int, font, draw: ImageDraw.ImageDraw) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are broken by character."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip() if line else word
            if _text_width(draw, candidate, font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            while _text_width(draw, word, font) > width and len(word) > 1:
                cut = len(word)
                while cut > 1 and _text_width(draw, word[:cut], font) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def fit_label(text: str, width: int, height: int, base_size: int, draw) -> tuple[object, list[str], int]:
    """The largest font (down to 6 px) at which `text` wraps into `width` x `height`."""
    size = base_size
    while True:
        font = _font(size)
        lines = wrap_text(text, width, font, draw)
        line_h = int(size * 1.2)
        if line_h * len(lines) <= height or size <= 6:
            return font, lines, line_h
        size = max(6, int(size * 0.85))


def _draw_label(draw, label: Label, box: tuple[int, int, int, int], base_size: int) -> None:
    x0, y0, x1, y1 = box
    width, height = max(1, x1 - x0 - 4), max(1, y1 - y0 - 4)
    font, lines, line_h = fit_label(label.text, width, height, base_size, draw)
    colour = TEXT if label.active else INACTIVE
    total = line_h * len(lines)
    y = y0 + (y1 - y0 - total) / 2
    for line in lines:
        w = _text_width(draw, line, font)
        x = x0 + (x1 - x0 - w) / 2
        draw.text((x, y), line, fill=colour, font=font)
        if not label.active:
            mid = y + line_h / 2
            draw.line([(x, mid), (x + w, mid)], fill=colour, width=1)
        y += line_h


def _as_label(value) -> Label:
    return value if isinstance(value, Label) else Label(str(value))


def labelled_grid(
    cells: Sequence[Sequence[Image.Image | None]],
    *,
    x_labels: Sequence[str | Label] | None = None,
    y_labels: Sequence[str | Label] | None = None,
    title: str | None = None,
    margin: int = 0,
    font_size: int | None = None,
    background=BACKGROUND,
) -> Image.Image:
    """One labelled grid: `cells[row][col]` images (None for a missing/failed cell).

    Cells take the largest width and height present; smaller images are centred.
    """
    rows = len(cells)
    cols = max((len(r) for r in cells), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("`cells` is empty: nothing to draw")
    present = [im for row in cells for im in row if im is not None]
    cell_w = max((im.width for im in present), default=64)
    cell_h = max((im.height for im in present), default=64)
    base = font_size or max(10, (cell_w + cell_h) // 25)
    pad_top = int(base * 2.6) if x_labels is not None else 0
    pad_left = int(cell_w * 0.75) if y_labels is not None else 0
    title_h = int(base * 2.2) if title else 0
    width = pad_left + cols * cell_w + (cols - 1) * margin
    height = title_h + pad_top + rows * cell_h + (rows - 1) * margin
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    if title:
        _draw_label(draw, Label(title), (0, 0, width, title_h), int(base * 1.2))
    for r, row in enumerate(cells):
        for c in range(cols):
            image = row[c] if c < len(row) else None
            x = pad_left + c * (cell_w + margin)
            y = title_h + pad_top + r * (cell_h + margin)
            if image is None:
                draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=FAILED_FILL)
                continue
            if image.mode != "RGB":
                image = image.convert("RGB")
            canvas.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
    if x_labels is not None:
        for c, label in enumerate(list(x_labels)[:cols]):
            x = pad_left + c * (cell_w + margin)
            _draw_label(draw, _as_label(label), (x, title_h, x + cell_w, title_h + pad_top), base)
    if y_labels is not None:
        for r, label in enumerate(list(y_labels)[:rows]):
            y = title_h + pad_top + r * (cell_h + margin)
            _draw_label(draw, _as_label(label), (0, y, pad_left, y + cell_h), base)
    return canvas


def join_horizontally(images: Sequence[Image.Image], *, gap: int = 0, background=BACKGROUND) -> Image.Image:
    """Sub-grids side by side (tops aligned)."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    canvas = Image.new("RGB", (width, height), background)
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas


def fit_pixels(image: Image.Image, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Downscale `image` to at most `max_pixels` (aspect kept); unchanged if it already fits."""
    if not max_pixels or image.width * image.height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.LANCZOS)


def image_grid(
    images: Sequence[Image.Image],
    *,
    cols: int | None = None,
    labels: Sequence[str | Label] | None = None,
    title: str | None = None,
    margin: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """A simple grid of images (about square), each optionally captioned below."""
    images = list(images)
    if not images:
        raise ValueError("`images` is empty: nothing to draw")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    if labels is None:
        cells = [images[r * cols : (r + 1) * cols] for r in range(rows)]
        return fit_pixels(labelled_grid(cells, title=title, margin=margin), max_pixels)
    labels = list(labels)
    if len(labels) != len(images):
        raise ValueError(f"`labels` has {len(labels)} entries for {len(images)} images")
    # One labelled row per grid row: captions as column labels of one-row grids, stacked.
    blocks = []
    for r in range(rows):
        row_images = images[r * cols : (r + 1) * cols]
        row_labels = labels[r * cols : (r + 1) * cols]
        blocks.append(
            labelled_grid(
                [row_images + [None] * 0], x_labels=row_labels, margin=margin, title=title if r == 0 else None
            )
        )
    width = max(b.width for b in blocks)
    canvas = Image.new("RGB", (width, sum(b.height for b in blocks)), BACKGROUND)
    y = 0
    for b in blocks:
        canvas.paste(b, (0, y))
        y += b.height
    return fit_pixels(canvas, max_pixels)
