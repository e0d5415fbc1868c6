"""sdlab: a Jupyter-first research toolkit for text-to-image diffusion on diffusers.

Importing sdlab touches no network, GPU or disk; heavy libraries load when first used.
"""

from . import (
    adapters,  # sdlab.adapters: LoRA files found, identified, applied for one call
    bench,
    controlnet,
    metrics,  # sdlab.metrics: scores of images (judge, CLIP, statistics, similarity)
    prompts,  # sdlab.prompts: presets, token budget, weighting, wildcards
)
from .adapters import set_lora_dir
from .backends import Backend, BackendOutput, Defaults, as_backend
from .errors import BackendError, MissingDependencyError, ModelLoadError, SdlabError
from .generation import GenerationResult, generate, regenerate
from .loading import load_pipeline
from .metadata import read_params
from .presets import CONTROLNET_PRESETS, PRESETS
from .request import GenerationRequest
from .schedulers import scheduler_names, set_scheduler
from .sweep_reading import load_sweep_result
from .sweeps import SweepResult, load_sweep, prompt_matrix, prompt_order, prompt_sr, sweep

__version__ = "0.2.0.dev0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendOutput",
    "CONTROLNET_PRESETS",
    "Defaults",
    "GenerationRequest",
    "GenerationResult",
    "MissingDependencyError",
    "ModelLoadError",
    "PRESETS",
    "SdlabError",
    "SweepResult",
    "adapters",
    "as_backend",
    "bench",
    "controlnet",
    "generate",
    "load_pipeline",
    "load_sweep",
    "load_sweep_result",
    "metrics",
    "prompt_matrix",
    "prompt_order",
    "prompt_sr",
    "prompts",
    "read_params",
    "regenerate",
    "scheduler_names",
    "set_lora_dir",
    "set_scheduler",
    "sweep",
]
