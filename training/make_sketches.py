"""Draw the sample sketches in data/sketches/: hand-drawn-looking outlines, black on white, 256x256.

    python training/make_sketches.py

Each outline is traced point by point with a slow random wobble (a sum of a few low-frequency
sines of random phase), a stroke width that varies a little, and a small overshoot where the
pen closes the shape. Seeded, so the files are reproducible.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "sketches"
SIZE = 256

# name: (shape, centre x, centre y, radius), as fractions of the side
SKETCHES = {
    "circle": ("circle", 0.5, 0.5, 0.30),
    "square": ("square", 0.5, 0.5, 0.31),
    "triangle": ("triangle", 0.5, 0.52, 0.33),
    "star": ("star", 0.5, 0.52, 0.34),
    "small-circle-top-left": ("circle", 0.26, 0.26, 0.15),
}


def outline(shape: str, cx: float, cy: float, r: float, n: int = 240) -> list[tuple[float, float]]:
    """Points around a clean outline, in pixels, starting at the top."""
    cx, cy, r = cx * SIZE, cy * SIZE, r * SIZE
    if shape == "circle":
        return [
            (
                cx + r * math.cos(-math.pi / 2 + 2 * math.pi * k / n),
                cy + r * math.sin(-math.pi / 2 + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]
    corners = {
        "square": [(r * math.cos(a), r * math.sin(a)) for a in (math.radians(d) for d in (-135, -45, 45, 135))],
        "triangle": [
            (r * math.cos(a), r * math.sin(a) + 0.1 * r) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ],
        "star": [
            (
                (r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5) + 0.05 * r,
            )
            for k in range(10)
        ],
    }[shape]
    pts = []
    per_side = n // len(corners)
    for i, (x0, y0) in enumerate(corners):
        x1, y1 = corners[(i + 1) % len(corners)]
        pts += [(cx + x0 + (x1 - x0) * t / per_side, cy + y0 + (y1 - y0) * t / per_side) for t in range(per_side)]
    return pts


def wobble(points, rng: random.Random, amount: float = 3.0):
    """Displace points by a smooth random offset along x and y."""
    waves = [(rng.uniform(1, 4), rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0)) for _ in range(3)]
    waves_y = [(rng.uniform(1, 4), rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.0)) for _ in range(3)]
    n = len(points)
    out = []
    for k, (x, y) in enumerate(points):
        t = 2 * math.pi * k / n
        dx = amount * sum(a * math.sin(f * t + p) for f, p, a in waves) / 2
        dy = amount * sum(a * math.sin(f * t + p) for f, p, a in waves_y) / 2
        out.append((x + dx, y + dy))
    return out


def draw(shape: str, cx: float, cy: float, r: float, seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (SIZE, SIZE), "white")
    d = ImageDraw.Draw(img)
    pts = wobble(outline(shape, cx, cy, r), rng)
    overshoot = pts[: max(3, len(pts) // 25)]  # the pen runs on a little past the start
    pts = pts + [(x + rng.uniform(-1, 1), y + 2) for x, y in overshoot]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        w = 4 + round(1.5 * math.sin(x0 / 23 + y0 / 31))
        d.line([(x0, y0), (x1, y1)], fill="black", width=w)
        d.ellipse([x1 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2], fill="black")
    return img


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, (shape, cx, cy, r)) in enumerate(SKETCHES.items()):
        draw(shape, cx, cy, r, seed=1000 + i).save(OUT / f"{name}.png", optimize=True)
        print(f"wrote {OUT / (name + '.png')}")


if __name__ == "__main__":
    main()
