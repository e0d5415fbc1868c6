"""Labelled grids: wrapping labels, mixed sizes, missing cells, size limits."""

import pytest
from PIL import Image

from sdlab.grid import Label, fit_pixels, image_grid, labelled_grid


def solid(colour, size=(64, 64)):
    return Image.new("RGB", size, colour)


def test_grid_size_and_cell_placement():
    cells = [[solid("red"), solid("green")], [solid("blue"), solid("white")]]
    grid = labelled_grid(cells, x_labels=["a", "b"], y_labels=["c", "d"], title="t")
    assert grid.width > 128 and grid.height > 128
    # bottom-right cell is white, top-left red
    assert grid.getpixel((grid.width - 5, grid.height - 5)) == (255, 255, 255)
    assert grid.getpixel((grid.width - 64 - 60, grid.height - 64 - 60))[0] > 200


def test_mixed_sizes_are_centred_and_missing_cells_grey():
    cells = [[solid("red", (64, 64)), solid("blue", (32, 48))], [None, solid("green", (64, 32))]]
    grid = labelled_grid(cells)
    assert grid.size == (128, 128)
    assert grid.getpixel((96, 32)) == (0, 0, 255)  # centre of the small blue image
    assert grid.getpixel((96, 2)) == (255, 255, 255)  # above it: background
    assert grid.getpixel((10, 100)) == (225, 225, 225)  # the missing cell


def test_long_labels_wrap_and_shrink_instead_of_overflowing():
    long = "a very long prompt with many words that cannot possibly fit on one line of a small cell " * 3
    grid = labelled_grid([[solid("red"), solid("blue")]], x_labels=[long, Label("off", active=False)])
    assert grid.width == 128  # labels never widen the grid


def test_empty_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="cells"):
        labelled_grid([])


def test_too_large_grids_are_downscaled_not_refused():
    big = solid("red", (4000, 4000))
    small = fit_pixels(big, max_pixels=1_000_000)
    assert small.width * small.height <= 1_000_000 and small.width == small.height


def test_image_grid_with_captions():
    grid = image_grid([solid("red"), solid("blue"), solid("green")], labels=["1", "2", "3"])
    assert grid.width == 128
    with pytest.raises(ValueError, match="labels"):
        image_grid([solid("red")], labels=["a", "b"])
