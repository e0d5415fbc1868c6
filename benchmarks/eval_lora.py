"""Evaluate a LoRA of the bundled ``shapes`` model by image analysis: the ``outlined`` style
(the bundled one) or the ``hexagon`` shape (training/train_lora.py).

    python benchmarks/eval_lora.py [--concept outlined] [--pairs 32] [--weights 0,0.25,0.5,0.75,1]
                                   [--file outlined.safetensors] [--epochs] [--base-pairs 16]

Prompts and seeds the LoRA never saw: scenes of the concept whose (shape, colour, background,
size, position) combination is held out (``world.is_held_out``), seeds from
``world.EVAL_SEED_START``, captions in the world's varied wording ("a small red outlined circle
at the top left on a blue background"). At each LoRA weight (the same weight on the UNet and the
text encoder, diffusers' ``set_adapters``) prints the fraction of images the judge reads as the
concept (outlined, or a hexagon), and with the right shape and colour too. ``--base-pairs``:
held-out base-world prompts at weight 0 and 1, colour+shape right and how many the judge reads
as the concept, to show the LoRA leaves them alone. ``--epochs``: every epoch file at weight 1.0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sdlab.bundled import world
from sdlab.bundled.judge import judge

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
sys.path.insert(0, str(ROOT / "training"))
from train_lora import CONCEPTS, concept_scene, concept_seeds, lora_dir  # noqa: E402


def shows(concept: str, judged) -> bool:
    """Whether the judge reads the concept in an image."""
    return bool(judged.outlined) if concept == "outlined" else judged.shape == "hexagon"


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


def score(pipe, concept, scenes, seeds, **kwargs) -> dict:
    prompts = [world.caption(sc, s) for sc, s in zip(scenes, seeds)]
    judged = [judge(img) for img in generate(pipe, prompts, seeds, **kwargs)]
    n = len(scenes)
    return {
        "concept": sum(shows(concept, j) for j in judged) / n,
        "concept+colour+shape": sum(
            shows(concept, j) and j.colour == sc.colour and j.shape == sc.shape for j, sc in zip(judged, scenes)
        )
        / n,
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
    p.add_argument("--concept", choices=CONCEPTS, default="outlined", help="which LoRA (default outlined)")
    p.add_argument("--pairs", type=int, default=32, help="held-out prompt/seed pairs of the concept")
    p.add_argument("--weights", default="0,0.25,0.5,0.75,1", help="comma-separated LoRA weights")
    p.add_argument("--file", help="the LoRA file in sdlab/models/shapes-<concept>-lora (default <concept>.safetensors)")
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
    concept, folder = args.concept, lora_dir(args.concept)
    file = args.file or f"{concept}.safetensors"
    pipe.load_lora_weights(folder, weight_name=file, adapter_name=concept)
    seeds = concept_seeds(concept, args.pairs, held_out=True, start=world.EVAL_SEED_START)
    scenes = [concept_scene(concept, s) for s in seeds]
    print(
        f"{concept} LoRA {file}: {len(seeds)} held-out {concept} prompts/seeds, DPM++ 2M {args.steps} steps, "
        f"guidance {args.guidance}"
    )
    print(
        f"| weight | judged {concept} | {concept} + shape + colour right | shape right | colour right | background right |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for w in weights if args.pairs else ():
        pipe.set_adapters([concept], adapter_weights=[w])
        r = score(pipe, concept, scenes, seeds, **kwargs)
        print(
            f"| {w:g} | {r['concept']:.1%} | {r['concept+colour+shape']:.1%} | {r['shape']:.1%} | {r['colour']:.1%} "
            f"| {r['background']:.1%} |",
            flush=True,
        )

    if args.base_pairs:
        base_seeds = world.held_out_seeds(args.base_pairs)
        base_scenes = [world.sample_scene(s) for s in base_seeds]
        for w in (0.0, 1.0):
            pipe.set_adapters([concept], adapter_weights=[w])
            r = score(pipe, concept, base_scenes, base_seeds, **kwargs)
            print(
                f"base-world held-out pairs ({len(base_seeds)}) at weight {w:g}: colour+shape {r['colour+shape']:.1%}, "
                f"judged {concept} {r['concept']:.1%}",
                flush=True,
            )

    if args.epochs:
        for path in sorted(folder.glob(f"{concept}-epoch-*.safetensors")):
            pipe.delete_adapters(concept)
            pipe.load_lora_weights(folder, weight_name=path.name, adapter_name=concept)
            pipe.set_adapters([concept], adapter_weights=[1.0])
            r = score(pipe, concept, scenes, seeds, **kwargs)
            print(
                f"{path.name} at weight 1: judged {concept} {r['concept']:.1%}, with shape and colour "
                f"{r['concept+colour+shape']:.1%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
