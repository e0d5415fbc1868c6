"""img2img and inpainting on the bundled ``shapes`` model, measured by the project's judge.

    OMP_NUM_THREADS=1 python benchmarks/eval_img2img.py [--seeds 20] [--steps 20]

Prints:
1. img2img: a render of a large red circle (held-out seeds: scene jitter and generation seed),
   prompt "a large blue circle on a <background> background", at strength 0.6 and 0.2: the
   fraction of images whose judged shape mask has IoU >= 0.8 with the init's circle AND is judged
   blue, and the fraction still judged red; the mean IoU;
2. inpainting: a render of a small red circle at the top left, a mask over the bottom right
   quarter, prompt "a small green square at the bottom right ...": the fraction with a shape
   found inside the mask (judged green), and how much the outside changed after decode (mean and
   99th percentile of |output - init| over outside pixels, 0-255), beside the VAE's own round trip
   of the init (what any decode costs).
All images go through `sdlab.generate` (the one path), batched per strength.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

import sdlab
from sdlab.bundled import world
from sdlab.bundled.judge import iou, judge

BACKGROUNDS = ("white", "black", "yellow", "green", "purple", "orange")


def red_circle(seed: int):
    background = BACKGROUNDS[seed % len(BACKGROUNDS)]
    scene = world.sample_scene(seed, shape="circle", colour="red", size="large", background=background)
    return scene, world.render(scene, 64)


def eval_img2img(pipe, seeds: list[int], strength: float, steps: int, guidance_scale: float | None = None) -> dict:
    scenes = [red_circle(s) for s in seeds]
    prompts = [f"a large blue circle on a {scene.background} background" for scene, _ in scenes]
    result = sdlab.generate(
        pipe,
        prompts,
        image=[image for _, image in scenes],
        strength=strength,
        seed=seeds,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
    )
    kept, blue, red, ious = 0, 0, 0, []
    for (scene, _), image in zip(scenes, result.images):
        j = judge(image)
        overlap = iou(j.mask, world.shape_mask(scene, 64)) if j.shape else 0.0
        ious.append(overlap)
        kept += overlap >= 0.8 and j.colour == "blue"
        blue += j.colour == "blue"
        red += j.colour == "red"
    n = len(seeds)
    return {
        "strength": strength,
        "kept_and_blue": kept / n,
        "blue": blue / n,
        "red": red / n,
        "mean_iou": float(np.mean(ious)),
    }


def vae_round_trip(pipe, image: Image.Image) -> np.ndarray:
    import torch

    processor = pipe.image_processor
    with torch.inference_mode():
        x = processor.preprocess(image)
        latents = pipe.vae.encode(x).latent_dist.mode()
        out = pipe.vae.decode(latents).sample
    return np.asarray(processor.postprocess(out, output_type="pil")[0], dtype=np.int16)


def eval_inpaint(pipe, seeds: list[int], steps: int, strength: float = 1.0) -> dict:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 64, 64))
    inside = np.asarray(mask) > 0
    inits, prompts = [], []
    for s in seeds:
        background = ("white", "black", "yellow", "purple")[s % 4]
        scene = world.sample_scene(
            s, shape="circle", colour="red", size="small", position="top left", background=background
        )
        inits.append(world.render(scene, 64))
        prompts.append(f"a small green square at the bottom right on a {background} background")
    result = sdlab.generate(
        pipe, prompts, image=inits, mask_image=mask, strength=strength, seed=seeds, num_inference_steps=steps
    )
    found, outside_mean, outside_p99, vae_mean, vae_p99, red_kept = 0, [], [], [], [], 0
    for init, image in zip(inits, result.images):
        crop = np.asarray(image)[32:, 32:]
        j = judge(Image.fromarray(np.ascontiguousarray(crop)))
        found += j.shape is not None and j.colour == "green"
        diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(init, dtype=np.int16))[~inside]
        outside_mean.append(diff.mean())
        outside_p99.append(np.percentile(diff, 99))
        trip = np.abs(vae_round_trip(pipe, init) - np.asarray(init, dtype=np.int16))[~inside]
        vae_mean.append(trip.mean())
        vae_p99.append(np.percentile(trip, 99))
        red_kept += judge(Image.fromarray(np.ascontiguousarray(np.asarray(image)[:32, :32]))).colour == "red"
    n = len(seeds)
    return {
        "strength": strength,
        "new_shape_in_mask": found / n,
        "first_shape_kept_red": red_kept / n,
        "outside_mean_abs": float(np.mean(outside_mean)),
        "outside_p99_abs": float(np.mean(outside_p99)),
        "vae_round_trip_mean_abs": float(np.mean(vae_mean)),
        "vae_round_trip_p99_abs": float(np.mean(vae_p99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the preset's, 5.0)")
    parser.add_argument("--img2img-only", action="store_true")
    args = parser.parse_args()
    pipe = sdlab.load_pipeline("shapes", progress_bar=False)
    pipe.set_progress_bar_config(disable=True)
    seeds = world.held_out_seeds(args.seeds)
    guidance = "preset" if args.guidance is None else args.guidance
    print(
        f"img2img on shapes, {args.seeds} held-out seeds, {args.steps} steps, guidance {guidance} "
        f"(red circle -> 'a large blue circle')"
    )
    for strength in (0.6, 0.2):
        r = eval_img2img(pipe, seeds, strength, args.steps, args.guidance)
        print(
            f"  strength {strength}: kept position (IoU>=0.8) and blue {r['kept_and_blue']:.0%}, blue {r['blue']:.0%}, "
            f"still red {r['red']:.0%}, mean IoU {r['mean_iou']:.3f}"
        )
    if args.img2img_only:
        return
    r = eval_inpaint(pipe, seeds, args.steps)
    print(
        f"inpainting (mask: bottom right quarter; 'a small green square at the bottom right'), strength {r['strength']}:"
    )
    print(
        f"  green shape inside the mask {r['new_shape_in_mask']:.0%}, first (red) shape kept {r['first_shape_kept_red']:.0%}; "
        f"outside |diff| mean {r['outside_mean_abs']:.2f}, p99 {r['outside_p99_abs']:.1f} "
        f"(VAE round trip alone: mean {r['vae_round_trip_mean_abs']:.2f}, p99 {r['vae_round_trip_p99_abs']:.1f})"
    )


if __name__ == "__main__":
    main()
