"""The world of the bundled ``shapes`` model: one coloured shape on a coloured background.

A scene is drawn from a seed (``sample_scene(seed)``), rendered at any size with antialiasing
(``render(scene, size)``) and described by a caption whose wording varies a little with the seed
(``caption(scene, seed)``). The held-out split is by attribute combination: a scene whose
(shape, colour, background, size, position) combination hashes into ``HELD_OUT_BUCKETS`` is never
used in training, so held-out prompts are combinations the model has never seen.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass

SHAPES = ("circle", "square", "triangle", "star")  # the base model's shapes (what `sample_scene` draws from)
# Shapes the world can render and the judge can read but the base model never saw: the LoRA of
# training/train_lora.py teaches `hexagon` (a word the tokenizer has). Fixed by keyword only.
LORA_SHAPES = ("hexagon",)
ALL_SHAPES = SHAPES + LORA_SHAPES
# A style the base model never saw, taught by the bundled LoRA (training/train_lora.py): the
# shape drawn as an outline of its own colour around the background, "a red outlined circle".
OUTLINE_WORD = "outlined"
OUTLINE_WIDTH = 0.1  # the outline's width as a fraction of the shape's diameter


# Named colours (sRGB). Well apart from each other so that a judge can name them back.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 160, 60),
    "blue": (35, 70, 220),
    "yellow": (245, 215, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 135, 25),
    "purple": (130, 45, 170),
}

SIZES = ("large", "small")

# Positions of small shapes: a 3x3 grid, named (vertical, horizontal).
VERTICAL = ("top", "center", "bottom")
HORIZONTAL = ("left", "center", "right")
POSITIONS = tuple(f"{v} {h}" if (v, h) != ("center", "center") else "center" for v in VERTICAL for h in HORIZONTAL)
_GRID = (0.25, 0.5, 0.75)  # centres of the grid cells, as a fraction of the image side

# Shape size as a fraction of the image side (the diameter of the circumscribed circle).
SIZE_RANGE = {"large": (0.52, 0.64), "small": (0.32, 0.38)}

HELD_OUT_BUCKETS = 16  # 1 combination in 16 is held out
COLOUR_JITTER = 12  # per-channel jitter of the rendered colours, so a name covers a small range


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    size: str
    position: str  # "center" or e.g. "top left"; large shapes are always at the center
    cx: float  # centre, fractions of the image side
    cy: float
    radius: float  # radius of the circumscribed circle, fraction of the image side
    angle: float  # rotation in degrees
    fg_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]
    outlined: bool = False  # drawn as an outline (the LoRA's style), not filled

    def combination(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.colour, self.background, self.size, self.position)

    def as_dict(self) -> dict:
        return asdict(self)


def can_outline(scene: Scene) -> bool:
    """Whether the scene's shape shows as an outline at 64 px: every shape but a small star, whose
    hole is a few pixels that the bundled VAE fills in (measured by a round trip)."""
    return scene.size == "large" or scene.shape != "star"


def combination_is_held_out(combination: tuple[str, ...]) -> bool:
    """True for the combinations kept out of training (a stable hash, 1 in ``HELD_OUT_BUCKETS``)."""
    digest = hashlib.sha1("|".join(combination).encode()).digest()
    return digest[0] % HELD_OUT_BUCKETS == 0


def is_held_out(scene: Scene) -> bool:
    return combination_is_held_out(scene.combination())


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in rgb)


def sample_scene(
    seed: int,
    *,
    shape: str | None = None,
    colour: str | None = None,
    background: str | None = None,
    size: str | None = None,
    position: str | None = None,
    outlined: bool = False,
) -> Scene:
    """A scene drawn from ``seed``; any attribute may be fixed by keyword. ``outlined`` draws the
    shape as an outline (the same seed gives the same scene otherwise)."""
    if shape is not None and shape not in ALL_SHAPES:
        raise ValueError(f"`shape` must be one of {ALL_SHAPES}, not {shape!r}")
    rng = random.Random(f"shapes-scene-{seed}")
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(list(COLOURS))
    if background is None:
        background = rng.choice([c for c in COLOURS if c != colour])
    if background == colour:
        raise ValueError(f"`background` must differ from `colour`, both are {colour!r}")
    size = size or rng.choice(SIZES)
    if size == "large":
        if position not in (None, "center"):
            raise ValueError(f"large shapes are always at the center, not {position!r}")
        position = "center"
        cx, cy = 0.5 + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.03, 0.03)
    else:
        position = position or rng.choice(POSITIONS)
        if position not in POSITIONS:
            raise ValueError(f"`position` must be one of {POSITIONS}, not {position!r}")
        v, h = ("center", "center") if position == "center" else position.split()
        cx = _GRID[HORIZONTAL.index(h)] + rng.uniform(-0.025, 0.025)
        cy = _GRID[VERTICAL.index(v)] + rng.uniform(-0.025, 0.025)
    lo, hi = SIZE_RANGE[size]
    radius = rng.uniform(lo, hi) / 2
    angle = {
        "circle": 0.0,
        "square": rng.uniform(-12, 12),
        "triangle": rng.uniform(-10, 10),
        "star": rng.uniform(-15, 15),
        "hexagon": rng.uniform(-15, 15),
    }[shape]
    return Scene(
        shape,
        colour,
        background,
        size,
        position,
        cx,
        cy,
        radius,
        angle,
        _jitter(COLOURS[colour], rng),
        _jitter(COLOURS[background], rng),
        outlined,
    )


def shape_polygon(scene: Scene, side: float) -> list[tuple[float, float]] | None:
    """The shape's outline in pixels for an image of ``side`` pixels (``None`` for a circle)."""
    cx, cy, r = scene.cx * side, scene.cy * side, scene.radius * side
    a0 = math.radians(scene.angle)
    if scene.shape == "circle":
        return None
    if scene.shape == "square":
        pts = [
            (r * math.cos(a0 + math.pi / 4 + k * math.pi / 2), r * math.sin(a0 + math.pi / 4 + k * math.pi / 2))
            for k in range(4)
        ]
    elif scene.shape == "triangle":
        # equilateral, pointing up, a little larger than its circle so that it weighs as much;
        # shifted down a little so that its area is centred on (cx, cy)
        r *= 1.12
        pts = [
            (
                r * math.cos(a0 - math.pi / 2 + k * 2 * math.pi / 3),
                r * math.sin(a0 - math.pi / 2 + k * 2 * math.pi / 3) + 0.12 * r,
            )
            for k in range(3)
        ]
    elif scene.shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.4 * r
            a = a0 - math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a) + 0.05 * r))
    elif scene.shape == "hexagon":
        # regular, flat top and bottom (vertices left and right); it fills its circle as the
        # rendered circle does (0.83 vs 0.85), so no scaling
        pts = [(r * math.cos(a0 + k * math.pi / 3), r * math.sin(a0 + k * math.pi / 3)) for k in range(6)]
    else:
        raise ValueError(f"unknown shape {scene.shape!r}; expected one of {ALL_SHAPES}")
    return [(cx + x, cy + y) for x, y in pts]


def _draw_filled(draw, scene: Scene, side: int, fill) -> None:
    poly = shape_polygon(scene, side)
    if poly is None:
        cx, cy, r = scene.cx * side, scene.cy * side, scene.radius * side * 0.92  # a circle of equal visual weight
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render(scene: Scene, size: int = 64, *, supersample: int = 4):
    """The scene as an RGB ``PIL.Image`` of ``size`` x ``size``, antialiased by supersampling. An
    outlined scene keeps the band of the filled shape within ``OUTLINE_WIDTH`` x its diameter of
    the edge (the filled shape eroded), the inside shows the background."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    big = size * supersample
    img = Image.new("RGB", (big, big), scene.bg_rgb)
    if not scene.outlined:
        _draw_filled(ImageDraw.Draw(img), scene, big, scene.fg_rgb)
        return img.resize((size, size), Image.Resampling.BOX)
    shape = Image.new("L", (big, big), 0)
    _draw_filled(ImageDraw.Draw(shape), scene, big, 255)
    width = max(1, round(OUTLINE_WIDTH * 2 * scene.radius * big))
    inside = shape
    for _ in range(width):  # a 3x3 erosion per pixel of width: a round inner edge, corners kept
        inside = inside.filter(ImageFilter.MinFilter(3))
    band = Image.fromarray(((np.asarray(shape) > 0) & (np.asarray(inside) == 0)).astype("uint8") * 255)
    img.paste(scene.fg_rgb, mask=band)
    return img.resize((size, size), Image.Resampling.BOX)


def shape_mask(scene: Scene, size: int = 64):
    """The filled shape as a boolean ``numpy`` array of ``size`` x ``size`` (ground truth)."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("L", (size * 4, size * 4), 0)
    draw = ImageDraw.Draw(img)
    poly = shape_polygon(scene, size * 4)
    if poly is None:
        cx, cy, r = scene.cx * size * 4, scene.cy * size * 4, scene.radius * size * 4 * 0.92
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX)) >= 128


_SIZE_WORDS = {"large": ("large", "large", "big"), "small": ("small", "small", "tiny")}
_VERTICAL_WORDS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}


def _position_phrase(position: str, rng: random.Random) -> str:
    if position == "center":
        return rng.choice(("in the center", "in the middle", "at the center"))
    v, h = position.split()
    if v == "center":
        return f"at the {rng.choice(('center ', 'middle ', ''))}{h}".replace("the  ", "the ")
    if h == "center":
        return f"at the {v}"
    word = rng.choice(_VERTICAL_WORDS[v])
    return rng.choice((f"at the {word} {h}", f"in the {word} {h} corner", f"at the {v} {h}"))


def _subject(scene: Scene, colour: str | None) -> str:
    """ "red circle", or "red outlined circle" for an outlined scene (no colour: "outlined circle")."""
    words = [colour, OUTLINE_WORD if scene.outlined else None, scene.shape]
    return " ".join(w for w in words if w)


def caption(scene: Scene, seed: int | None = None, *, variant: bool = True) -> str:
    """A caption of the scene. With ``variant`` the wording varies with ``seed``; without it
    the canonical form, e.g. "a small yellow star at the top left on a black background"."""
    if not variant:
        pos = (
            ""
            if scene.position == "center" or scene.size == "large"
            else " " + _position_phrase_canonical(scene.position)
        )
        return f"a {scene.size} {_subject(scene, scene.colour)}{pos} on a {scene.background} background"
    rng = random.Random(f"shapes-caption-{seed}")
    size_word = rng.choice(_SIZE_WORDS[scene.size])
    subject = f"{size_word} {_subject(scene, scene.colour)}"
    article = "a"  # every size word starts with a consonant
    pos = ""
    if scene.size == "small" and (scene.position != "center" or rng.random() < 0.5):
        pos = " " + _position_phrase(scene.position, rng)
    form = rng.random()
    if form < 0.6:
        return f"{article} {subject}{pos} on a {scene.background} background"
    if form < 0.8:
        return f"{subject}{pos}, {scene.background} background"
    return f"{article} {subject}{pos} on {scene.background}"


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names, read back the way ``caption`` writes them: ``shape``,
    ``colour`` (the colour word before the shape), ``background`` (the colour word after it),
    ``size``, ``position`` (as in ``POSITIONS``) and ``style`` ("outlined"), each only when the
    text names it.

    ``parse_caption("a tiny red star in the upper left corner on a blue background")`` is
    ``{"shape": "star", "colour": "red", "background": "blue", "size": "small", "position": "top left"}``."""
    words = text.lower().replace(",", " ").split()
    out: dict[str, str] = {}
    at = next((i for i, w in enumerate(words) if w in SHAPES), None)
    if at is None:
        return out
    out["shape"] = words[at]
    if OUTLINE_WORD in words[:at]:
        out["style"] = OUTLINE_WORD
    before, after = words[:at], words[at + 1 :]
    colour = next((w for w in reversed(before) if w in COLOURS), None)
    if colour:
        out["colour"] = colour
    size = next((s for w in before for s, names in _SIZE_WORDS.items() if w in names), None)
    if size:
        out["size"] = size
    bg_at = next((i for i, w in enumerate(after) if w in COLOURS), None)
    if bg_at is not None:
        out["background"] = after[bg_at]
    phrase = after[:bg_at] if bg_at is not None else after
    v = "top" if {"top", "upper"} & set(phrase) else "bottom" if {"bottom", "lower"} & set(phrase) else None
    h = next((w for w in phrase if w in ("left", "right")), None)
    if v or h:
        out["position"] = f"{v or 'center'} {h or 'center'}"
    elif {"center", "middle"} & set(phrase):
        out["position"] = "center"
    return out


def _position_phrase_canonical(position: str) -> str:
    if position == "center":
        return "in the center"
    v, h = position.split()
    if v == "center":
        return f"at the {h}"
    if h == "center":
        return f"at the {v}"
    return f"at the {v} {h}"


def training_caption(scene: Scene, seed: int) -> str:
    """The caption used in training: a varied caption, with attributes sometimes left out so that a
    short prompt ("a red circle") and negative prompts mean something. Caption dropout (the empty
    prompt) is applied by the trainer, not here."""
    rng = random.Random(f"shapes-partial-{seed}")
    text = caption(scene, seed)
    roll = rng.random()
    if roll < 0.08:  # no background
        for tail in (
            f" on a {scene.background} background",
            f", {scene.background} background",
            f" on {scene.background}",
        ):
            text = text.replace(tail, "")
    elif roll < 0.14:  # no colour
        text = text.replace(f" {_subject(scene, scene.colour)}", f" {_subject(scene, None)}")
    elif roll < 0.18:  # the shape alone
        text = f"an {_subject(scene, None)}" if scene.outlined else f"a {scene.shape}"
    return text


def training_seeds(n: int, *, start: int = 0) -> list[int]:
    """The first ``n`` seeds from ``start`` whose scenes are not held out."""
    out, seed = [], start
    while len(out) < n:
        if not is_held_out(sample_scene(seed)):
            out.append(seed)
        seed += 1
    return out


EVAL_SEED_START = 10_000_000  # held-out evaluation seeds start here; training uses seeds below it


def held_out_seeds(n: int, *, start: int = EVAL_SEED_START) -> list[int]:
    """``n`` seeds from ``start`` whose scenes are held-out combinations, for evaluation."""
    out, seed = [], start
    while len(out) < n:
        if is_held_out(sample_scene(seed)):
            out.append(seed)
        seed += 1
    return out


CANNY_LOW, CANNY_HIGH = 100, 200  # OpenCV Canny thresholds of the ControlNet's edge maps


def canny_edges(image):
    """The ControlNet condition of a scene image: OpenCV Canny (``CANNY_LOW``/``CANNY_HIGH``) on each
    of R, G and B, combined (so that e.g. red on blue, nearly equal in grey, still has edges), as
    white edges on black, an RGB ``PIL.Image`` of the image's size."""
    import cv2
    import numpy as np
    from PIL import Image

    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    edges = np.max([cv2.Canny(np.ascontiguousarray(rgb[:, :, c]), CANNY_LOW, CANNY_HIGH) for c in range(3)], axis=0)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))


def sketch_edges(sketch, size: int = 64):
    """A line drawing (dark lines on a light ground, any size) as the ControlNet's edge map:
    resized to ``size`` (area averaging), inverted and thresholded, so the lines themselves are
    the edges (white on black, one or two pixels wide, as Canny's are)."""
    import numpy as np
    from PIL import Image

    grey = sketch.convert("L").resize((size, size), Image.Resampling.BOX)
    lines = (255 - np.asarray(grey)) >= 48
    return Image.fromarray(np.repeat((lines * 255).astype(np.uint8)[:, :, None], 3, axis=2))
