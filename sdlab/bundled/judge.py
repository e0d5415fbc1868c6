"""Read a ``shapes`` image back into words, by image analysis alone.

``judge(image)`` finds the background colour (the median of the image's border), separates the
shape from it (distance in CIELAB from the background colour, Otsu threshold, largest connected
component, holes filled), names both colours (nearest named colour in CIELAB), classifies the
outline (solidity for stars; for the rest, how well the shape fills its minimum enclosing circle,
rectangle, triangle and regular hexagon), and reports position (centroid, in thirds of the image), size (the
enclosing circle's diameter against the image side) and whether the shape is outlined (its colour
covers less than ``OUTLINED_MAX_SOLID`` of its core, the part farthest from its edge). It never looks at how an image was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .world import ALL_SHAPES, COLOURS, HORIZONTAL, SHAPES, VERTICAL

WORK_SIZE = 128  # images are resized to this before analysis
LARGE_DIAMETER = 0.45  # enclosing-circle diameter / image side above which a shape is "large"
STAR_SOLIDITY = 0.82  # area / convex-hull area below which a shape is a star
HEXAGON_MIN_FILL = 0.9  # a hexagon fills its hexagon at least this well (renders: 0.95-0.99); blobs do not
OUTLINED_CORE = 0.6  # the core of a shape: pixels deeper inside than this x its deepest point
OUTLINED_MAX_SOLID = 0.5  # an outlined shape's colour covers less than this of its core


@dataclass
class Judgement:
    shape: str | None  # one of world.ALL_SHAPES (SHAPES or a hexagon), or None when no shape stands out
    colour: str | None
    background: str
    position: str | None  # "center", "top left", "center right", ... as in world.POSITIONS
    size: str | None  # "large" or "small"
    mask: np.ndarray = field(repr=False)  # the shape's filled mask at the input image's size
    features: dict = field(default_factory=dict)
    outlined: bool | None = None  # drawn as an outline (its colour a band around the background)

    def as_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "background": self.background,
            "position": self.position,
            "size": self.size,
            "outlined": self.outlined,
            **self.features,
        }


def _lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    arr = np.asarray(rgb, dtype=np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(np.shape(rgb))


_NAMES = list(COLOURS)
_NAMED_LAB = _lab(np.array([COLOURS[n] for n in _NAMES], dtype=np.float32))


def nearest_colour(rgb) -> str:
    """The named colour of ``COLOURS`` nearest to an RGB triple, in CIELAB."""
    d = np.linalg.norm(_NAMED_LAB - _lab(np.asarray(rgb, dtype=np.float32)[None])[0], axis=1)
    return _NAMES[int(np.argmin(d))]


def _position(cx: float, cy: float) -> str:
    h = HORIZONTAL[min(2, int(cx * 3))]
    v = VERTICAL[min(2, int(cy * 3))]
    return "center" if (v, h) == ("center", "center") else f"{v} {h}"


def hexagon_fill(hull) -> float:
    """How well a convex outline fills the smallest regular hexagon around it, over rotations: the
    hexagon's width (between opposite sides) is the outline's largest width along the three side
    normals, its area sqrt(3)/2 width^2. A regular hexagon scores about 1, a circle pi/(2 sqrt 3)
    = 0.91, a square 0.62, an equilateral triangle 0.67."""
    pts = np.asarray(hull, dtype=np.float64).reshape(-1, 2)
    area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
    theta = np.radians(np.arange(0.0, 60.0, 1.0))[:, None] + np.radians([0.0, 60.0, 120.0])[None, :]
    proj = pts[:, 0, None, None] * np.cos(theta) + pts[:, 1, None, None] * np.sin(theta)  # points x angles x 3
    width = (proj.max(axis=0) - proj.min(axis=0)).max(axis=1).min()
    return float(area / (np.sqrt(3) / 2 * width**2 + 1e-6))


def classify_outline(contour) -> tuple[str, dict]:
    """The shape class of one outline (an OpenCV contour) and the features behind it."""
    import cv2

    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)
    solidity = area / max(cv2.contourArea(hull), 1e-6)
    (_, _), radius = cv2.minEnclosingCircle(contour)
    circle_fill = area / (np.pi * radius**2 + 1e-6)
    (_, _), (w, h), _ = cv2.minAreaRect(contour)
    rect_fill = area / (w * h + 1e-6)
    tri_area, _ = cv2.minEnclosingTriangle(hull)
    tri_fill = area / (tri_area + 1e-6)
    hex_fill = hexagon_fill(hull)
    feats = {
        "solidity": round(solidity, 3),
        "circle_fill": round(circle_fill, 3),
        "rect_fill": round(rect_fill, 3),
        "triangle_fill": round(tri_fill, 3),
        "hexagon_fill": round(hex_fill, 3),
    }
    if solidity < STAR_SOLIDITY:
        return "star", feats
    # A circle fills its enclosing circle (1.0) and its rectangle at pi/4; a square its rectangle
    # (1.0) and its circle at 2/pi; a triangle its triangle (1.0) and its rectangle at 1/2; a hexagon
    # its hexagon (1.0) and its circle at 0.83, while a circle fills its hexagon at 0.91.
    scores = {"circle": circle_fill / 1.0, "square": rect_fill / 1.0, "triangle": tri_fill / 1.0}
    scores["circle"] += 0.04  # blurred squares and triangles round off; circles never get corners
    if hex_fill >= HEXAGON_MIN_FILL:  # else a lumpy blob (a star with rounded points) would be called a hexagon
        scores["hexagon"] = hex_fill
    return max(scores, key=scores.get), feats


def judge(image) -> Judgement:
    """Analyse a PIL image (or an RGB uint8 array) of one shape on a background."""
    import cv2

    # 1. a working copy, and the background colour from the border
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    in_h, in_w = rgb.shape[:2]
    work = cv2.resize(
        rgb, (WORK_SIZE, WORK_SIZE), interpolation=cv2.INTER_AREA if in_w > WORK_SIZE else cv2.INTER_LINEAR
    )
    b = max(2, WORK_SIZE // 32)
    border = np.concatenate(
        [work[:b].reshape(-1, 3), work[-b:].reshape(-1, 3), work[:, :b].reshape(-1, 3), work[:, -b:].reshape(-1, 3)]
    )
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)

    # 2. the shape: pixels far from the background colour, largest component, holes filled
    lab = _lab(work.astype(np.float32))
    dist = np.linalg.norm(lab - _lab(bg_rgb.astype(np.float32)[None])[0], axis=2)
    d8 = np.clip(dist * (255.0 / max(dist.max(), 1e-6)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(otsu * dist.max() / 255.0, 15.0)  # at least 15 Lab units from the background
    fg = (dist > thr).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    empty = np.zeros((in_h, in_w), dtype=bool)
    if n <= 1 or stats[1:, cv2.CC_STAT_AREA].max() < (WORK_SIZE / 64) ** 2 * 6:
        return Judgement(None, None, background, None, None, empty, {"found": False})
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    solid = (labels == biggest).astype(np.uint8)
    contours, _ = cv2.findContours(solid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    mask = np.zeros_like(solid)
    cv2.drawContours(mask, [contour], -1, 1, thickness=cv2.FILLED)

    # 3. filled or outlined (does the shape's colour cover its core, the pixels farthest from its
    # edge?), and the shape's colour: the median of its interior, or of its band when outlined
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    core = depth >= OUTLINED_CORE * depth.max()
    core_solid = float(solid[core].mean())
    outlined = core_solid < OUTLINED_MAX_SOLID
    body = solid if outlined else mask
    inner = cv2.erode(body, np.ones((3, 3), np.uint8), iterations=1 if outlined else max(1, WORK_SIZE // 64))
    pixels = work[inner.astype(bool)] if inner.sum() >= 4 else work[body.astype(bool)]
    colour = nearest_colour(np.median(pixels, axis=0))

    # 4. outline, size and position
    shape, feats = classify_outline(contour)
    (_, _), radius = cv2.minEnclosingCircle(contour)
    diameter = 2 * radius / WORK_SIZE
    m = cv2.moments(mask, binaryImage=True)
    cx, cy = m["m10"] / m["m00"] / WORK_SIZE, m["m01"] / m["m00"] / WORK_SIZE
    feats.update(
        found=True,
        diameter=round(diameter, 3),
        cx=round(cx, 3),
        cy=round(cy, 3),
        area=round(float(mask.mean()), 4),
        core_solid=round(core_solid, 3),
    )
    full = cv2.resize(mask, (in_w, in_h), interpolation=cv2.INTER_NEAREST).astype(bool)
    size = "large" if diameter > LARGE_DIAMETER else "small"
    return Judgement(shape, colour, background, _position(cx, cy), size, full, feats, outlined)


def filled_mask(edges) -> np.ndarray:
    """The filled region enclosed by a line drawing or edge map (white lines on black, or a
    PIL image of black lines on white: pass ``invert`` first) as a boolean array: lines closed by
    a small dilation, everything the outside flood fill cannot reach."""
    import cv2

    e = (np.asarray(edges) > 127).astype(np.uint8)
    if e.ndim == 3:
        e = e.max(axis=2)
    e = cv2.dilate(e, np.ones((3, 3), np.uint8))
    h, w = e.shape
    flood = np.pad(e, 1).copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    return flood[1:-1, 1:-1] != 2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


__all__ = ["ALL_SHAPES", "Judgement", "SHAPES", "filled_mask", "iou", "judge", "nearest_colour"]
