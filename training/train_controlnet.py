"""Stage 3: a ControlNet on Canny edge maps, for the frozen base model of stage 2.

    python training/train_controlnet.py [--minutes 20] [--batch 32]
    python training/train_controlnet.py --init sdlab/models/shapes-controlnet --neutral-captions 0.45 \
        --caption-dropout 0.2 --lr 5e-4 --steps 900 --scenes 12000     # 3b: the shipped fine-tune

Needs stage 2 (the complete sdlab/models/shapes folder) and its cached latents. The ControlNet
starts as a copy of the UNet's encoder (``ControlNetModel.from_unet``) with a conditioning
embedding that downsamples 4x (64x64 edges -> 16x16 latents). The condition is
``common.canny(image)``: OpenCV Canny (thresholds 100/200) on each RGB channel, combined, as
white edges on black. 30% of the captions are dropped, so the edges alone steer the layout.
Every checkpoint exports the EMA weights to sdlab/models/shapes-controlnet/.
"""

from __future__ import annotations

import random

import common
import numpy as np
import torch

from sdlab.bundled import world


def neutral_caption(scene, rng: random.Random) -> str:
    """A caption that names colours (sometimes the size) but never the shape: the word "shape"."""
    roll = rng.random()
    if roll < 0.55:
        return f"a {scene.colour} shape on a {scene.background} background"
    if roll < 0.7:
        return f"a {scene.size} {scene.colour} shape on a {scene.background} background"
    if roll < 0.8:
        return f"a {scene.colour} shape"
    if roll < 0.9:
        return f"a shape on a {scene.background} background"
    return "a shape"


def captions(args, step: int, scenes: list, seeds: list[int], idx: list[int]) -> list[str]:
    """One step's captions: ``caption_dropout`` empty, ``neutral_captions`` shape-neutral, the rest
    the world's training captions. A function of (seed, step) only, so a resumed run is identical."""
    rng = random.Random(f"controlnet-step-{args.seed}-{step}")
    out = []
    for i in idx:
        roll = rng.random()
        if roll < args.caption_dropout:
            out.append("")
        elif roll < args.caption_dropout + args.neutral_captions:
            out.append(neutral_caption(scenes[i], rng))
        else:
            out.append(world.training_caption(scenes[i], seeds[i] * 7919 + step))
    return out


def main():
    from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    p = common.stage_arguments(
        __doc__,
        steps=20_000,
        minutes=20.0,
        batch=32,
        scenes=24_000,
        lr=1e-3,
        ema=0.99,
        caption_dropout=0.3,
        seed=0,
        checkpoint_minutes=4.0,
    )
    p.add_argument("--init", default=None, help="a ControlNet folder to fine-tune (default: from the UNet)")
    p.add_argument(
        "--neutral-captions", type=float, default=0.0, help="fraction of shape-neutral captions (default 0.0)"
    )
    args = p.parse_args()
    if not 0 <= args.caption_dropout + args.neutral_captions <= 1:
        raise ValueError("`--caption-dropout` + `--neutral-captions` must be between 0 and 1")

    # 1. data: the cached latents of stage 2, the renders for the edge maps, captions
    common.setup(args.seed)
    seeds, images, scenes = common.training_data(args.scenes)
    if (common.CACHE / f"latents-{len(seeds)}.pt").exists():
        latents = torch.load(common.CACHE / f"latents-{len(seeds)}.pt")
    else:  # encode them as stage 2 does
        from diffusers import AutoencoderKL
        from train_unet import encode_latents

        latents = encode_latents(AutoencoderKL.from_pretrained(common.MODEL_DIR / "vae"), seeds, images)
    tokenizer = common.tokenizer()

    # 2. the frozen base model, the ControlNet, resume
    unet = UNet2DConditionModel.from_pretrained(common.MODEL_DIR / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(common.MODEL_DIR / "text_encoder", torch_dtype=torch.float32)
    unet.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    if args.init:
        controlnet = ControlNetModel.from_pretrained(args.init, torch_dtype=torch.float32)
    else:
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=1e-2)
    ema = common.EMA(controlnet, args.ema)
    noise_sched = DDPMScheduler(**common.SCHEDULER_TRAIN_CONFIG)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    stage = "controlnet-finetune" if args.init else "controlnet"
    loop = common.StageLoop(stage, args, opt, {"model": controlnet, "opt": opt, "ema": ema}, warmup=50)
    n_params = sum(p.numel() for p in controlnet.parameters())
    common.log(
        stage,
        f"{n_params / 1e6:.2f} M parameters; budget {args.steps} steps or {args.minutes} min, batch {args.batch}",
    )

    # 3. train
    controlnet.train()
    for step in loop:
        idx = common.batch_indices(args.seed + 1, step, len(seeds), args.batch).tolist()
        if args.neutral_captions:
            texts = captions(args, step, scenes, seeds, idx)
            ids = tokenizer(
                texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
        else:  # the original stage 3, as the shipped weights before 3b were made
            ids = common.caption_ids(tokenizer, "controlnet", args.seed, step, args.caption_dropout, scenes, seeds, idx)
        cond = torch.from_numpy(np.stack([common.canny(images[i]) for i in idx])).permute(0, 3, 1, 2).float() / 255
        xt, noise, t = common.noised(noise_sched, latents[idx], args.seed * 1_000_003 + step + 17)
        with torch.no_grad():
            text = text_encoder(ids)[0]
        down, mid = controlnet(xt, t, text, controlnet_cond=cond, return_dict=False)
        pred = unet(xt, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        loss = common.min_snr_loss(pred, noise, t, snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        ema.update(controlnet, step)
        if loop.end_step(loss.item()):
            loop.save()
            ema.shadow.to(torch.float16).save_pretrained(common.CONTROLNET_DIR, safe_serialization=True)
            ema.shadow.to(torch.float32)
            common.log(stage, f"checkpoint + export at step {loop.step}")
    loop.finished()


if __name__ == "__main__":
    main()
