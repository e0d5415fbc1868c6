"""The world, data and judge of sdlab's bundled ``shapes`` model (its weights: ``sdlab/models/shapes/``).

``world`` draws scenes from seeds, renders and captions them; ``judge`` reads an image back into
(shape, colour, background, position, size) by image analysis alone.
"""

from .world import COLOURS, POSITIONS, SHAPES, SIZES, Scene, caption, is_held_out, render, sample_scene

__all__ = ["COLOURS", "POSITIONS", "SHAPES", "SIZES", "Scene", "caption", "is_held_out", "render", "sample_scene"]
