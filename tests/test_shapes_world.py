"""The world of the bundled shapes model: determinism, captions, the held-out split."""

import numpy as np
import pytest

from sdlab.bundled import world


def test_same_seed_same_scene_and_pixels():
    a, b = world.sample_scene(123), world.sample_scene(123)
    assert a == b
    assert np.array_equal(np.asarray(world.render(a)), np.asarray(world.render(b)))


def test_different_seeds_differ():
    scenes = {world.sample_scene(s) for s in range(50)}
    assert len(scenes) == 50
    assert {s.shape for s in scenes} == set(world.SHAPES)


def test_render_any_size_is_antialiased():
    scene = world.sample_scene(7, shape="circle", size="large")
    for size in (32, 64, 128):
        img = world.render(scene, size)
        assert img.size == (size, size) and img.mode == "RGB"
    # antialiasing: some pixels lie between the two colours
    arr = np.asarray(world.render(scene, 64)).reshape(-1, 3)
    assert len({tuple(p) for p in arr}) > 2


def test_attributes_can_be_fixed_and_are_validated():
    s = world.sample_scene(1, shape="star", colour="red", background="blue", size="small", position="top left")
    assert (s.shape, s.colour, s.background, s.size, s.position) == ("star", "red", "blue", "small", "top left")
    assert s.cx < 0.4 and s.cy < 0.4
    with pytest.raises(ValueError, match="background"):
        world.sample_scene(1, colour="red", background="red")
    with pytest.raises(ValueError, match="position"):
        world.sample_scene(1, size="small", position="somewhere")
    with pytest.raises(ValueError, match="large"):
        world.sample_scene(1, size="large", position="top left")


def test_background_differs_from_shape_colour():
    assert all(s.colour != s.background for s in map(world.sample_scene, range(300)))


def test_canonical_caption():
    s = world.sample_scene(1, shape="star", colour="yellow", background="black", size="small", position="top left")
    assert world.caption(s, variant=False) == "a small yellow star at the top left on a black background"
    big = world.sample_scene(2, shape="circle", colour="red", background="blue", size="large")
    assert world.caption(big, variant=False) == "a large red circle on a blue background"


def test_caption_wording_varies_but_names_the_scene():
    s = world.sample_scene(3, shape="square", colour="green", background="white", size="small", position="bottom right")
    captions = {world.caption(s, seed) for seed in range(40)}
    assert len(captions) > 3
    for c in captions:
        assert "green square" in c and "white" in c
    assert world.caption(s, 5) == world.caption(s, 5)


def test_caption_words_are_whole_tokens():
    from sdlab.testing.clip_tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    words = {w.strip(",") for seed in range(200) for w in world.caption(world.sample_scene(seed), seed).split()}
    for w in words:
        assert len(tok.tokenize(w)) == 1, w


def test_held_out_split_is_stable_and_disjoint():
    held = [s for s in range(2000) if world.is_held_out(world.sample_scene(s))]
    assert 0.03 < len(held) / 2000 < 0.12
    train = world.training_seeds(300)
    assert not any(world.is_held_out(world.sample_scene(s)) for s in train)
    evals = world.held_out_seeds(20)
    assert all(s >= world.EVAL_SEED_START for s in evals)
    assert all(world.is_held_out(world.sample_scene(s)) for s in evals)
    train_combos = {world.sample_scene(s).combination() for s in train}
    assert not train_combos & {world.sample_scene(s).combination() for s in evals}


def test_training_caption_sometimes_leaves_attributes_out():
    s = world.sample_scene(4, shape="triangle", colour="orange", background="purple", size="large")
    texts = [world.training_caption(s, seed) for seed in range(300)]
    assert "a triangle" in texts
    assert any("orange" not in t for t in texts) and any("purple" not in t for t in texts)
    assert sum("orange" in t and "purple" in t for t in texts) > 200


def test_edge_maps():
    s = world.sample_scene(5, colour="red", background="blue", size="large", shape="square")
    edges = np.asarray(world.canny_edges(world.render(s)))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
    assert (edges > 0).sum() > 40  # red on blue: nearly equal in grey, found per channel


def test_hexagon_is_rendered_but_never_drawn_for_the_base_world():
    assert "hexagon" not in world.SHAPES and "hexagon" in world.ALL_SHAPES
    assert all(world.sample_scene(s).shape in world.SHAPES for s in range(500))
    scene = world.sample_scene(3, shape="hexagon", colour="red", background="blue", size="large")
    assert len(world.shape_polygon(scene, 64)) == 6
    mask = world.shape_mask(scene, 64)
    # a regular hexagon fills 3 sqrt(3) / (2 pi) = 0.83 of its circumscribed circle
    assert abs(mask.sum() / (np.pi * (scene.radius * 64) ** 2) - 0.827) < 0.03
    assert "hexagon" in world.caption(scene, 0)
    with pytest.raises(ValueError, match="shape"):
        world.sample_scene(0, shape="pentagon")


def test_outlined_scenes_are_the_same_scene_drawn_as_a_band():
    """The LoRA's style: the same seed gives the same scene, drawn as a band of its colour of
    OUTLINE_WIDTH x its diameter, with the background inside; captions and parsing name it."""
    filled, outlined = world.sample_scene(7), world.sample_scene(7, outlined=True)
    assert (outlined.shape, outlined.colour, outlined.cx, outlined.radius) == (
        filled.shape,
        filled.colour,
        filled.cx,
        filled.radius,
    )
    assert not filled.outlined and outlined.outlined and not any(world.sample_scene(s).outlined for s in range(200))
    scene = world.sample_scene(3, shape="circle", colour="red", background="blue", size="large", outlined=True)
    img = np.asarray(world.render(scene, 64)).astype(int)
    cx, cy, r = scene.cx * 64, scene.cy * 64, scene.radius * 64 * 0.92
    assert np.abs(img[round(cy), round(cx)] - scene.bg_rgb).max() < 10  # the inside is the background
    band = img[round(cy), round(cx + r - 0.05 * 2 * scene.radius * 64)]  # halfway into the band
    assert np.abs(band - scene.fg_rgb).max() < 30
    assert world.caption(scene, variant=False) == "a large red outlined circle on a blue background"
    assert world.parse_caption(world.caption(scene, 11)) | {"size": "large"} == {
        "shape": "circle",
        "colour": "red",
        "background": "blue",
        "size": "large",
        "style": "outlined",
    }
    assert "style" not in world.parse_caption(world.caption(world.sample_scene(3), 11))
    texts = {world.training_caption(scene, s) for s in range(300)}
    assert all("outlined circle" in t for t in texts) and "an outlined circle" in texts
    assert any(" red outlined circle" in t for t in texts) and any(" large outlined circle" in t for t in texts)
    assert world.can_outline(scene) and not world.can_outline(world.sample_scene(0, shape="star", size="small"))
