"""Evaluate the hexagon LoRA of the bundled ``shapes`` model by image analysis.

    python benchmarks/eval_lora.py [--pairs 32] [--weights 0,0.25,0.5,0.75,1] [--file hexagon.safetensors]
                                   [--epochs] [--base-pairs 16]

Prompts and seeds the LoRA never saw: hexagon scenes whose (shape, colour, background, size,
position) combination is held out (``world.is_held_out``), seeds from ``world.EVAL_SEED_START``,
captions in the world's varied wording ("a small red hexagon at the top left on a blue
background"). At each LoRA weight (the same weight on the UNet and the text encoder, diffusers'
``set_adapters``) prints the fraction of images the judge reads as a hexagon, and with the right
colour and background. ``--base-pairs``: held-out base-world prompts (circles, squares, ...) at
weight 0 and 1, colour+shape right, to show the LoRA leaves the other shapes alone. ``--epochs``:
every ``hexagon-epoch-*.safetensors`` at weight 1.0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sdlab.bundled import world
from sdlab.bundled.judge import judge

ROOT = Path(__file__).resolve().parents[1]
LORA_DIR = ROOT / "sdlab" / "models" / "shapes-hexagon-lora"
SIZE = 64


def hexagon_eval_seeds(n: int, start: int = world.EVAL_SEED_START) -> list[int]:
    """``n`` seeds from ``start`` whose hexagon scenes are held-out combinations."""
    out, seed = [], start
    while len(out) < n:
        if world.is_held_out(world.sample_scene(seed, shape="hexagon")):
            out.append(seed)
        seed += 1
    return out


def generate(pipe, prompts, seeds, *, guidance_scale: float, num_inference_steps: int, batch: int = 32):
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        images += pipe(
            prompt=prompts[i : i + batch],
            generator=gens,
            height=SIZE,
            width=SIZE,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
        ).images
    return images


def score(pipe, scenes, seeds, **kwargs) -> dict:
    prompts = [world.caption(sc, s) for sc, s in zip(scenes, seeds)]
    judged = [judge(img) for img in generate(pipe, prompts, seeds, **kwargs)]
    n = len(scenes)
    return {
        "shape": sum(j.shape == sc.shape for j, sc in zip(judged, scenes)) / n,
        "colour": sum(j.colour == sc.colour for j, sc in zip(judged, scenes)) / n,
        "background": sum(j.background == sc.background for j, sc in zip(judged, scenes)) / n,
        "colour+shape": sum(j.colour == sc.colour and j.shape == sc.shape for j, sc in zip(judged, scenes)) / n,
        "judged": {s: sum(j.shape == s for j in judged) / n for s in (*world.ALL_SHAPES, None)},
    }


def main():
    from diffusers import StableDiffusionPipeline

    from sdlab.presets import SHAPES_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=32, help="held-out hexagon prompt/seed pairs")
    p.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="comma-separated LoRA weights")
    p.add_argument("--file", default="hexagon.safetensors", help="the LoRA file in sdlab/models/shapes-hexagon-lora")
    p.add_argument("--epochs", action="store_true", help="also every epoch file at weight 1.0")
    p.add_argument("--base-pairs", type=int, default=16, help="held-out base-world pairs at weight 0 and 1 (0: skip)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    torch.set_num_threads(args.threads)
    kwargs = dict(guidance_scale=args.guidance, num_inference_steps=args.steps)

    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_DIR)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(LORA_DIR, weight_name=args.file, adapter_name="hexagon")
    seeds = hexagon_eval_seeds(args.pairs)
    scenes = [world.sample_scene(s, shape="hexagon") for s in seeds]
    print(
        f"hexagon LoRA {args.file}: {len(seeds)} held-out hexagon prompts/seeds, DPM++ 2M {args.steps} steps, "
        f"guidance {args.guidance}"
    )
    print("| weight | judged hexagon | hexagon + colour right | colour right | background right | judged circle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for w in weights if args.pairs else ():
        pipe.set_adapters(["hexagon"], adapter_weights=[w])
        r = score(pipe, scenes, seeds, **kwargs)
        print(
            f"| {w:g} | {r['shape']:.1%} | {r['colour+shape']:.1%} | {r['colour']:.1%} | {r['background']:.1%} "
            f"| {r['judged']['circle']:.1%} |",
            flush=True,
        )

    if args.base_pairs:
        base_seeds = world.held_out_seeds(args.base_pairs)
        base_scenes = [world.sample_scene(s) for s in base_seeds]
        for w in (0.0, 1.0):
            pipe.set_adapters(["hexagon"], adapter_weights=[w])
            r = score(pipe, base_scenes, base_seeds, **kwargs)
            print(
                f"base-world held-out pairs ({len(base_seeds)}) at weight {w:g}: colour+shape {r['colour+shape']:.1%}, "
                f"judged hexagon {r['judged']['hexagon']:.1%}",
                flush=True,
            )

    if args.epochs:
        for path in sorted(LORA_DIR.glob("hexagon-epoch-*.safetensors")):
            pipe.delete_adapters("hexagon")
            pipe.load_lora_weights(LORA_DIR, weight_name=path.name, adapter_name="hexagon")
            pipe.set_adapters(["hexagon"], adapter_weights=[1.0])
            r = score(pipe, scenes, seeds, **kwargs)
            print(f"{path.name} at weight 1: judged hexagon {r['shape']:.1%}, colour {r['colour']:.1%}", flush=True)


if __name__ == "__main__":
    main()
