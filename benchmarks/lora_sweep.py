"""A LoRA weight grid the other tools' way (one call per cell, weights set before each) against
sdlab's sweep (every weight and seed in one batched denoising loop, LoRA layers scaled per image),
in one process.

Workload: 8 LoRA weights x 4 seeds (32 cells), one prompt, on the bundled `shapes` model. The LoRA
is the bundled `outlined` LoRA (`sdlab/models/shapes-outlined-lora/outlined.safetensors`), or a
random LoRA made here when it is missing (the ratio measures speed, not the concept).

    OMP_NUM_THREADS=1 python benchmarks/lora_sweep.py [--steps 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sdlab
from sdlab.presets import SHAPES_LORA_DIR

PROMPT = "a large red outlined circle on a blue background"
WEIGHTS = [0.0, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.0]
SEEDS = [1, 2, 3, 4]


def the_lora(pipe) -> Path:
    if (SHAPES_LORA_DIR / "outlined.safetensors").exists():
        return SHAPES_LORA_DIR / "outlined.safetensors"
    from sdlab.testing import save_tiny_lora

    return save_tiny_lora(pipe, Path(tempfile.mkdtemp()) / "random-lora.safetensors", seed=0, rank=4, scale=0.2)


def per_cell(pipe, lora: Path, steps: int, guidance: float) -> float:
    """As A1111, ComfyUI's XY nodes and diffusers' docs do: set the weight, make one image."""
    start = time.perf_counter()
    pipe.load_lora_weights(str(lora), adapter_name="bench")
    for w in WEIGHTS:
        pipe.set_adapters(["bench"], adapter_weights=[w])
        for s in SEEDS:
            pipe(
                PROMPT,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=64,
                height=64,
                generator=torch.Generator("cpu").manual_seed(s),
            )
    pipe.unload_lora_weights()
    return time.perf_counter() - start


def swept(pipe, lora: Path, steps: int, guidance: float) -> float:
    start = time.perf_counter()
    sdlab.sweep(
        pipe,
        PROMPT,
        axes={"lora_weight": WEIGHTS, "seed": SEEDS},
        loras={lora: 1.0},
        batch_size=32,
        out_dir=Path(tempfile.mkdtemp(prefix="sdlab-lora-bench-")),
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=64,
        height=64,
        verbose=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=7.5)
    args = parser.parse_args()
    pipe = sdlab.load_pipeline("shapes", progress_bar=False)
    pipe.set_progress_bar_config(disable=True)
    lora = the_lora(pipe)
    print(
        f"model: shapes; LoRA {lora.name}; 32 cells ({len(WEIGHTS)} weights x {len(SEEDS)} seeds), "
        f"{args.steps} steps, torch threads {torch.get_num_threads()}"
    )
    swept(pipe, lora, 2, args.guidance)  # warm-up: hashes, LoRA read and checked, allocations
    per_cell(pipe, lora, 2, args.guidance)
    loop_times, sweep_times = [], []
    for r in range(args.repeats):
        loop_times.append(per_cell(pipe, lora, args.steps, args.guidance))
        sweep_times.append(swept(pipe, lora, args.steps, args.guidance))
        print(f"  repeat {r + 1}: one call per cell {loop_times[-1]:.1f} s, sdlab sweep {sweep_times[-1]:.1f} s")
    loop_s, sweep_s = statistics.median(loop_times), statistics.median(sweep_times)
    print(f"one call per cell: {32 / loop_s:6.2f} images/s ({loop_s:.1f} s)")
    print(f"sdlab sweep      : {32 / sweep_s:6.2f} images/s ({sweep_s:.1f} s)")
    print(f"ratio            : {loop_s / sweep_s:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
