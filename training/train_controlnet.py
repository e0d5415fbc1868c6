"""Stage 3: a ControlNet on Canny edge maps, for the frozen base model of stage 2.

    python training/train_controlnet.py [--minutes 25] [--batch 32]

Needs stage 2 (the complete sdlab/models/shapes folder) and its cached latents. The ControlNet
starts as a copy of the UNet's encoder (``ControlNetModel.from_unet``) with a conditioning
embedding that downsamples 4x (64x64 edges -> 16x16 latents). The condition is
``common.canny(image)``: OpenCV Canny (thresholds 100/200) on each RGB channel, combined, as
white edges on black. 30% of the captions are dropped, so the edges alone steer the layout.
Every checkpoint exports the EMA weights to sdlab/models/shapes-controlnet/.
"""

from __future__ import annotations

import argparse
import random
import time

import common
import numpy as np
import torch
import torch.nn.functional as F
from common import world


def main():
    from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--scenes", type=int, default=12_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--caption-dropout", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    args = p.parse_args()

    # 1. data: the cached latents of stage 2, the renders for the edge maps, captions
    common.setup(args.seed)
    seeds, images = common.scenes()
    seeds, images = seeds[:args.scenes], images[:args.scenes]
    latents = torch.load(common.CACHE / f"latents-{len(seeds)}.pt")
    scenes = [world.sample_scene(s) for s in seeds]
    tokenizer = common.tokenizer()

    # 2. the frozen base model, the ControlNet, resume
    unet = UNet2DConditionModel.from_pretrained(common.MODEL_DIR / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(common.MODEL_DIR / "text_encoder", torch_dtype=torch.float32)
    unet.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 64))
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=1e-2)
    ema = common.EMA(controlnet, args.ema)
    noise_sched = DDPMScheduler(**common.SCHEDULER_TRAIN_CONFIG)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    ckpt_path = common.CACHE / "controlnet" / "checkpoint.pt"
    step, elapsed = 0, 0.0
    if (ckpt := common.load_checkpoint(ckpt_path)) is not None:
        controlnet.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        ema.load_state_dict(ckpt["ema"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        common.log("controlnet", f"resumed at step {step} ({elapsed / 60:.1f} min)")
    n_params = sum(p.numel() for p in controlnet.parameters())
    common.log("controlnet", f"{n_params / 1e6:.2f} M parameters; budget {args.steps} steps or "
                             f"{args.minutes} min, batch {args.batch}")

    # 3. train
    controlnet.train()
    budget = common.Budget(args.steps, args.minutes, elapsed)
    t0 = last_save = time.time()
    losses = []
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = common.lr_at(step, budget.progress(step), args.lr, warmup=50)
        idx = common.batch_indices(args.seed + 1, step, len(seeds), args.batch).tolist()
        rng = random.Random(f"controlnet-step-{args.seed}-{step}")
        texts = ["" if rng.random() < args.caption_dropout
                 else world.training_caption(scenes[i], seeds[i] * 7919 + step) for i in idx]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        cond = torch.from_numpy(np.stack([common.canny(images[i]) for i in idx])).permute(0, 3, 1, 2).float() / 255
        x0 = latents[idx]
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 17)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=g)
        xt = noise_sched.add_noise(x0, noise, t)
        with torch.no_grad():
            text = text_encoder(ids)[0]
        down, mid = controlnet(xt, t, text, controlnet_cond=cond, return_dict=False)
        pred = unet(xt, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        opt.step()
        ema.update(controlnet, step)
        step += 1
        budget.tick()
        losses.append(loss.item())
        if step % 20 == 0:
            rate = (time.time() - t0) / 20
            t0 = time.time()
            common.log("controlnet", f"step {step} loss {sum(losses) / len(losses):.4f} {rate:.2f} s/step "
                                     f"{budget.elapsed / 60:.1f} min")
            losses = []
        if time.time() - last_save > args.checkpoint_minutes * 60 or budget.done(step):
            common.save_checkpoint(ckpt_path, {"model": controlnet.state_dict(), "opt": opt.state_dict(),
                                               "ema": ema.state_dict(), "step": step, "elapsed": budget.elapsed})
            ema.shadow.to(torch.float16).save_pretrained(common.CONTROLNET_DIR, safe_serialization=True)
            ema.shadow.to(torch.float32)
            common.log("controlnet", f"checkpoint + export at step {step}")
            last_save = time.time()
    common.log("controlnet", f"done at step {step}, {budget.elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
