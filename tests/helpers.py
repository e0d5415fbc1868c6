"""Small assertions shared by tests."""

import numpy as np


def max_pixel_diff(a, b) -> int:
    """Largest absolute difference between two images, in 0-255 levels."""
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
