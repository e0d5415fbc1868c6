"""The sweep engine against the guide's way (one pipeline call per image), in one process.

Workload: a 4-seed x 4-guidance grid (16 cells), one prompt, at the model's default steps.
Prints images/second of each side and the ratio (medians over repeats), plus the time of an
identical re-run (all cells cached) as a fraction of the first run.

    python benchmarks/sweep_vs_loop.py [--model shapes] [--repeats 3] [--steps 20]

The model is the bundled `shapes` model when it is installed, otherwise a random-weight model of
the same shape (the numbers then measure speed only: the pixels are noise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sdlab
from sdlab.presets import SHAPES_DIR

PROMPT = "a large red circle on a blue background"
SEEDS = [1, 2, 3, 4]
GUIDANCES = [1.5, 3.0, 5.0, 7.0]


def realistic_model():
    """A random-weight SD pipeline shaped like the bundled model (about 1.7 M UNet parameters)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.testing.clip_tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_loop(pipe, steps: int) -> float:
    """The guide's way: one pipeline call per image."""
    start = time.perf_counter()
    for g in GUIDANCES:
        for s in SEEDS:
            pipe(
                PROMPT,
                num_inference_steps=steps,
                guidance_scale=g,
                width=64,
                height=64,
                generator=torch.Generator("cpu").manual_seed(s),
            )
    return time.perf_counter() - start


def engine(pipe, steps: int, out_dir: Path) -> float:
    start = time.perf_counter()
    sdlab.sweep(
        pipe,
        PROMPT,
        axes={"seed": SEEDS, "guidance_scale": GUIDANCES},
        batch_size=16,
        out_dir=out_dir,
        num_inference_steps=steps,
        width=64,
        height=64,
        verbose=False,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a model for load_pipeline (default: shapes if installed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.model:
        pipe = sdlab.load_pipeline(args.model, progress_bar=False)
        name = args.model
    elif (SHAPES_DIR / "model_index.json").exists():
        pipe = sdlab.load_pipeline("shapes", progress_bar=False)
        name = "shapes (bundled)"
    else:
        pipe = realistic_model()
        name = "random weights, shapes-sized"
    print(
        f"model: {name}; 16 cells (4 seeds x 4 guidance), {args.steps} steps, {args.repeats} repeats, "
        f"torch threads {torch.get_num_threads()}"
    )
    engine(pipe, 2, Path(tempfile.mkdtemp()))  # warm-up (allocations, embedding cache)
    plain_loop(pipe, 2)
    loop_times, sweep_times, cached_fracs = [], [], []
    for r in range(args.repeats):
        loop_times.append(plain_loop(pipe, args.steps))
        out = Path(tempfile.mkdtemp(prefix="sdlab-bench-"))
        first = engine(pipe, args.steps, out)
        again = engine(pipe, args.steps, out)
        sweep_times.append(first)
        cached_fracs.append(again / first)
        print(
            f"  repeat {r + 1}: plain loop {loop_times[-1]:.2f} s, sweep {first:.2f} s, cached re-run {again * 1000:.0f} ms"
        )
    loop_s, sweep_s = statistics.median(loop_times), statistics.median(sweep_times)
    print(f"plain loop : {16 / loop_s:6.2f} images/s (median {loop_s:.2f} s)")
    print(f"sweep      : {16 / sweep_s:6.2f} images/s (median {sweep_s:.2f} s)")
    print(f"ratio      : {loop_s / sweep_s:.2f}x (target >= 3x)")
    print(f"cached re-run: {100 * statistics.median(cached_fracs):.2f}% of the first run (target < 5%)")


if __name__ == "__main__":
    main()
