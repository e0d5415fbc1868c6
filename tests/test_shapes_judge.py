"""The judge reads ground-truth scenes back correctly."""

import numpy as np
from PIL import Image, ImageFilter

from sdlab.bundled import world
from sdlab.bundled.judge import filled_mask, iou, judge, nearest_colour


def test_named_colours_round_trip():
    for name, rgb in world.COLOURS.items():
        assert nearest_colour(rgb) == name


def test_judge_accuracy_on_ground_truth():
    keys = ("shape", "colour", "background", "size", "position")
    n, right, ious = 60, 0, []
    for seed in range(30_000_000, 30_000_000 + n):
        scene = world.sample_scene(seed)
        img = world.render(scene, 64)
        if seed % 2:  # generated images are softer than renders
            img = img.filter(ImageFilter.GaussianBlur(0.8))
        j = judge(img)
        right += all(getattr(j, k) == getattr(scene, k) for k in keys)
        ious.append(iou(j.mask, world.shape_mask(scene, 64)))
    assert right / n >= 0.95
    assert np.mean(ious) >= 0.85


def test_judge_any_size_and_as_dict():
    scene = world.sample_scene(9, shape="star", colour="yellow", background="black", size="small", position="top left")
    j = judge(world.render(scene, 256))
    assert (j.shape, j.colour, j.background, j.size, j.position) == ("star", "yellow", "black", "small", "top left")
    assert j.mask.shape == (256, 256)
    d = j.as_dict()
    assert d["shape"] == "star" and "solidity" in d


def test_judge_empty_image():
    j = judge(Image.new("RGB", (64, 64), world.COLOURS["blue"]))
    assert j.shape is None and j.background == "blue" and not j.mask.any()


def test_filled_mask_of_a_sketch():
    scene = world.sample_scene(11, shape="circle", size="large")
    edges = world.canny_edges(world.render(scene, 64))
    assert iou(filled_mask(edges), world.shape_mask(scene, 64)) > 0.8


def test_hexagon_and_circle_are_told_apart():
    """The LoRA's shape: every hexagon render is read as a hexagon and no circle as one, sharp or
    softened (as generated images are), and the base shapes keep their classes."""
    for seed in range(40_000_000, 40_000_000 + 80):
        for shape in ("hexagon", "circle"):
            scene = world.sample_scene(seed, shape=shape)
            img = world.render(scene, 64)
            if seed % 2:
                img = img.filter(ImageFilter.GaussianBlur(0.8))
            j = judge(img)
            assert (j.shape, j.colour, j.size) == (shape, scene.colour, scene.size), (seed, shape, j.features)
    for shape in world.SHAPES:  # no base shape is ever read as a hexagon
        judged = {judge(world.render(world.sample_scene(s, shape=shape), 64)).shape for s in range(40)}
        assert judged == {shape}


def test_outlined_and_filled_are_told_apart():
    """The LoRA's style: every outlined render the world can outline is read as outlined with its
    shape and colour, sharp or softened, and no filled render is."""
    for seed in range(40_000_000, 40_000_000 + 80):
        for outlined in (True, False):
            scene = world.sample_scene(seed, outlined=outlined)
            if outlined and not world.can_outline(scene):
                continue
            img = world.render(scene, 64)
            if seed % 2:
                img = img.filter(ImageFilter.GaussianBlur(0.6))
            j = judge(img)
            assert (j.outlined, j.shape, j.colour) == (outlined, scene.shape, scene.colour), (seed, j.as_dict())
