"""Evaluate the bundled ``shapes`` model on held-out prompts, by image analysis.

    python benchmarks/eval_shapes.py [--fast] [--pairs 64] [--guidance 5.0] [--steps 20]

Prints:
1. the judge's own accuracy on ground-truth renders;
2. on held-out prompt/seed pairs (combinations of shape, colour, background, size and position
   never used in training; seeds from world.EVAL_SEED_START), the fraction of images whose colour
   AND shape are both right, at the preset defaults and at guidance 1.0;
3. ControlNet: the IoU of the generated shape's mask with the filled shape of the condition, on
   held-out scenes (Canny edges of the render, ``world.canny_edges``) and on the sample sketches
   (``world.sketch_edges``: resized to 64x64, inverted, thresholded; no Canny), once with prompts
   that name the shape and once with shape-neutral prompts (``NEUTRAL_SKETCH_PROMPT`` for the
   sketches, "a <colour> shape on a <background> background" for the scenes), where the edges
   alone must give the shape;
4. seconds per image at the defaults (one image, batch of one, median of 3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from sdlab.bundled import world
from sdlab.bundled.judge import filled_mask, iou, judge
from sdlab.presets import SHAPES_CONTROLNET_DIR, SHAPES_DIR

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = SHAPES_DIR  # the weights the installed package loads as the `shapes` preset
CONTROLNET_DIR = SHAPES_CONTROLNET_DIR
SKETCH_DIR = ROOT / "data" / "sketches"
SIZE = 64
SKETCH_PROMPTS = {  # sketch file stem -> (prompt, shape the judge should find)
    "circle": ("a large red circle on a white background", "circle"),
    "square": ("a large blue square on a yellow background", "square"),
    "triangle": ("a large green triangle on a black background", "triangle"),
    "star": ("a large yellow star on a purple background", "star"),
    "small-circle-top-left": ("a small orange circle at the top left on a blue background", "circle"),
}


NEUTRAL_SKETCH_PROMPT = "a red shape on a white background"


def neutral_prompt(scene) -> str:
    """A prompt with the scene's colours that does not name its shape."""
    return f"a {scene.colour} shape on a {scene.background} background"


def load_pipelines(model_dir=MODEL_DIR, controlnet_dir=CONTROLNET_DIR):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    cn_pipe = None
    if Path(controlnet_dir, "config.json").exists():
        controlnet = ControlNetModel.from_pretrained(controlnet_dir)
        cn_pipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
        cn_pipe.set_progress_bar_config(disable=True)
    return pipe, cn_pipe


def judge_accuracy(n: int) -> dict:
    """The judge on ``n`` ground-truth renders: per attribute and all five at once."""
    keys = ("shape", "colour", "background", "size", "position")
    right = dict.fromkeys(keys + ("all",), 0)
    ious = []
    for seed in range(20_000_000, 20_000_000 + n):
        scene = world.sample_scene(seed)
        j = judge(world.render(scene, SIZE))
        hits = {k: getattr(j, k) == getattr(scene, k) for k in keys}
        for k, v in hits.items():
            right[k] += v
        right["all"] += all(hits.values())
        ious.append(iou(j.mask, world.shape_mask(scene, SIZE)))
    out = {k: v / n for k, v in right.items()}
    out["mask_iou"] = float(np.mean(ious))
    return out


def generate(pipe, prompts, seeds, *, batch: int = 32, **kwargs):
    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        images += pipe(prompt=prompts[i : i + batch], generator=gens, height=SIZE, width=SIZE, **kwargs).images
    return images


def text_eval(pipe, seeds, *, guidance_scale: float, num_inference_steps: int) -> tuple[dict, list]:
    scenes = [world.sample_scene(s) for s in seeds]
    prompts = [world.caption(sc, s) for sc, s in zip(scenes, seeds)]
    images = generate(pipe, prompts, seeds, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
    keys = ("shape", "colour", "background", "size", "position")
    right = dict.fromkeys(keys + ("colour+shape",), 0)
    for sc, img in zip(scenes, images):
        j = judge(img)
        for k in keys:
            right[k] += getattr(j, k) == getattr(sc, k)
        right["colour+shape"] += j.colour == sc.colour and j.shape == sc.shape
    return {k: v / len(seeds) for k, v in right.items()}, images


def controlnet_eval(cn_pipe, seeds, *, guidance_scale: float, num_inference_steps: int, neutral: bool = False) -> dict:
    """IoU of the generated shape with the condition's shape; with ``neutral`` the prompts do not
    name the shape (``neutral_prompt``, ``NEUTRAL_SKETCH_PROMPT``)."""
    from PIL import Image

    # held-out scenes: Canny edges of the render, IoU with the scene's filled shape
    scenes = [world.sample_scene(s) for s in seeds]
    prompts = [neutral_prompt(sc) if neutral else world.caption(sc, s) for sc, s in zip(scenes, seeds)]
    conds = [world.canny_edges(world.render(sc, SIZE)) for sc in scenes]
    images = []
    for i in range(0, len(seeds), 32):
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds[i : i + 32]]
        images += cn_pipe(
            prompt=prompts[i : i + 32],
            image=conds[i : i + 32],
            generator=gens,
            height=SIZE,
            width=SIZE,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
        ).images
    scene_ious = [iou(judge(img).mask, world.shape_mask(sc, SIZE)) for sc, img in zip(scenes, images)]

    # the sample sketches: sketch lines as edges, IoU with the sketch's filled outline
    sketch_ious, sketch_shapes = {}, {}
    for stem, (prompt, shape) in SKETCH_PROMPTS.items():
        path = SKETCH_DIR / f"{stem}.png"
        if not path.exists():
            continue
        edges = world.sketch_edges(Image.open(path), SIZE)
        target = filled_mask(edges)
        img = cn_pipe(
            prompt=NEUTRAL_SKETCH_PROMPT if neutral else prompt,
            image=edges,
            generator=torch.Generator().manual_seed(0),
            height=SIZE,
            width=SIZE,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
        ).images[0]
        j = judge(img)
        sketch_ious[stem] = iou(j.mask, target)
        sketch_shapes[stem] = j.shape == shape
    return {
        "scene_iou": float(np.mean(scene_ious)),
        "sketch_iou": sketch_ious,
        "sketch_mean_iou": float(np.mean(list(sketch_ious.values()))) if sketch_ious else float("nan"),
        "sketch_shape_right": sketch_shapes,
    }


def seconds_per_image(pipe, *, guidance_scale: float, num_inference_steps: int) -> float:
    times = []
    for i in range(4):
        t = time.perf_counter()
        pipe(
            prompt="a small red star at the top left on a blue background",
            height=SIZE,
            width=SIZE,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            generator=torch.Generator().manual_seed(i),
        )
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="a small subset (16 pairs, 8 ControlNet scenes)")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--controlnet-pairs", type=int, default=32)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--controlnet", default=str(CONTROLNET_DIR), help="the ControlNet folder to evaluate")
    p.add_argument(
        "--controlnet-prompts",
        default="full,neutral",
        help="ControlNet prompts: full (name the shape), neutral, or both",
    )
    p.add_argument(
        "--parts",
        default="judge,text,controlnet,speed",
        help="comma-separated subset of: judge, text, controlnet, speed",
    )
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"judge", "text", "controlnet", "speed"}:
        raise ValueError(f"--parts must name some of judge, text, controlnet, speed; got {args.parts!r}")
    if args.fast:
        args.pairs, args.controlnet_pairs = 16, 8
    torch.set_num_threads(args.threads)

    # 1. the judge on ground truth
    if "judge" in parts:
        acc = judge_accuracy(64 if args.fast else 400)
        print(
            f"judge on ground truth ({64 if args.fast else 400} renders): "
            + ", ".join(f"{k} {v:.1%}" if k != "mask_iou" else f"mask IoU {v:.3f}" for k, v in acc.items()),
            flush=True,
        )
    if not Path(MODEL_DIR, "model_index.json").exists():
        print(f"no model at {MODEL_DIR}: train it first (training/README.md)")
        return

    # 2. text-to-image on held-out pairs, at the defaults and without guidance
    pipe, cn_pipe = load_pipelines(controlnet_dir=args.controlnet)
    seeds = world.held_out_seeds(args.pairs)
    defaults = dict(num_inference_steps=args.steps)
    for g in (args.guidance, 1.0) if "text" in parts else ():
        res, _ = text_eval(pipe, seeds, guidance_scale=g, **defaults)
        print(
            f"held-out pairs: {len(seeds)}, DPM++ 2M {args.steps} steps, guidance {g}: "
            f"colour+shape {res['colour+shape']:.1%} | "
            + ", ".join(f"{k} {v:.1%}" for k, v in res.items() if k != "colour+shape"),
            flush=True,
        )

    # 3. ControlNet
    if "controlnet" not in parts:
        pass
    elif cn_pipe is None:
        print(f"no ControlNet at {CONTROLNET_DIR}")
    else:
        cn_seeds = world.held_out_seeds(args.controlnet_pairs, start=world.EVAL_SEED_START + 5_000_000)
        for neutral in [m == "neutral" for m in args.controlnet_prompts.split(",")]:
            cn = controlnet_eval(cn_pipe, cn_seeds, guidance_scale=args.guidance, neutral=neutral, **defaults)
            how = "shape-neutral prompts" if neutral else "full prompts"
            print(
                f"ControlNet, {how}, held-out scenes ({args.controlnet_pairs}), Canny edges: "
                f"mean IoU {cn['scene_iou']:.3f}",
                flush=True,
            )
            print(
                f"ControlNet, {how}, sample sketches: mean IoU {cn['sketch_mean_iou']:.3f} | "
                + ", ".join(
                    f"{k} {v:.2f}{'' if cn['sketch_shape_right'][k] else ' (shape wrong)'}"
                    for k, v in cn["sketch_iou"].items()
                ),
                flush=True,
            )

    # 4. speed
    if "speed" not in parts:
        return
    s = seconds_per_image(pipe, guidance_scale=args.guidance, **defaults)
    print(
        f"seconds per image (64x64, {args.steps} steps, guidance {args.guidance}, batch 1, "
        f"{args.threads} threads): {s:.2f}"
    )


if __name__ == "__main__":
    main()
