"""ControlNet utilities: control images from any picture, sketches to images, side-by-side views.

    from sdlab import controlnet
    pipe = sdlab.load_pipeline("sd15", controlnet="canny-sd15")
    edges = controlnet.annotate("photo.png", "canny", low_threshold=50, high_threshold=150)
    result = controlnet.generate_from_sketch(pipe, "sketch.png", "a castle", mode="scribble")
    sdlab.generate(pipe, "a castle", image=edges, controlnet_conditioning_scale=0.8)

Control images are plain `PIL.Image`s at the output size, carrying `info["sdlab_label"]` (a grid
label such as "canny 50/150") and `info["sdlab_params"]`; `control_variants` makes a list of them
to sweep as `image=`. Generation always goes through `sdlab.generate` (the one path), where the
control image is checked against `width`/`height` before any model work.
"""

from .annotators import ANNOTATORS, Annotator, annotate, control_variants, list_annotators
from .images import fit_image, flatten_alpha, load_image
from .sketch import SKETCH_MODES, default_controlnet_model, generate_from_sketch, prepare_sketch, side_by_side

__all__ = [
    "ANNOTATORS",
    "Annotator",
    "SKETCH_MODES",
    "annotate",
    "control_variants",
    "default_controlnet_model",
    "fit_image",
    "flatten_alpha",
    "generate_from_sketch",
    "list_annotators",
    "load_image",
    "prepare_sketch",
    "side_by_side",
]
