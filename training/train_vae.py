"""Stage 1: the autoencoder (AutoencoderKL, 64x64x3 <-> 16x16x4).

    python training/train_vae.py [--steps 3000] [--minutes 12] [--batch 12]

Loss: L1 + MSE, weighted 4x more near the shape's edges (so small shapes stay crisp), plus a tiny
KL term. Resumes from .cache/shapes-train/vae/checkpoint.pt. At the end it measures the latent
standard deviation, sets ``scaling_factor`` to its inverse and writes the VAE (fp16 safetensors)
into sdlab/models/shapes/vae/.
"""

from __future__ import annotations

import argparse
import time

import common
import torch
import torch.nn.functional as F


def edge_weight(x: torch.Tensor) -> torch.Tensor:
    """1 + 4 near colour edges of a batch in [-1, 1] (3x3 max-pooled gradient magnitude)."""
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    g = F.pad(gx, (0, 1, 0, 0)) + F.pad(gy, (0, 0, 0, 1))
    edge = (F.max_pool2d(g, 3, 1, 1) > 0.1).float()
    return 1 + 4 * edge


def export(vae, images, out_dir) -> float:
    """Measure the latent std on 2,048 scenes, set the scaling factor and save."""
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(common.to_tensor(images[i:i + 256])).latent_dist.mean
                         for i in range(0, 2048, 256)])
    std = lat.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    vae.to(torch.float32)
    return std


def main():
    from diffusers import AutoencoderKL

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--decoder-only", action="store_true",
                   help="stage 1b: fine-tune the decoder of the exported VAE, encoder frozen (the "
                        "latents of stage 2 stay valid, so it may run alongside stage 2)")
    args = p.parse_args()
    stage = "vae-decoder" if args.decoder_only else "vae"

    # 1. data and model
    common.setup(args.seed)
    _, images = common.scenes()
    if args.decoder_only:
        vae = AutoencoderKL.from_pretrained(common.MODEL_DIR / "vae", torch_dtype=torch.float32)
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    else:
        vae = AutoencoderKL(**common.VAE_CONFIG)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    ema = common.EMA(vae, 0.99)
    ckpt_path = common.CACHE / stage / "checkpoint.pt"
    step, elapsed = 0, 0.0
    if (ckpt := common.load_checkpoint(ckpt_path)) is not None:
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        ema.load_state_dict(ckpt["ema"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        common.log(stage, f"resumed at step {step} ({elapsed / 60:.1f} min)")
    n_params = sum(p.numel() for p in vae.parameters())
    common.log(stage, f"{n_params / 1e6:.2f} M parameters, {len(images)} scenes, "
               f"budget {args.steps} steps or {args.minutes} min")

    # 2. train
    vae.train()
    budget = common.Budget(args.steps, args.minutes, elapsed)
    t0 = last_save = time.time()
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = common.lr_at(step, budget.progress(step), args.lr, warmup=50)
        idx = common.batch_indices(args.seed, step, len(images), args.batch)
        x = common.to_tensor(images[idx.numpy()])
        if step % 2:  # flips are fine for an autoencoder
            x = x.flip(-1)
        with torch.set_grad_enabled(not args.decoder_only):
            post = vae.encode(x).latent_dist
        # decode the mean plus a little noise: a sampled posterior (std 1 at the start) blurs
        # everything for hundreds of steps, and the small noise keeps the decoder robust
        z = post.mean + 0.05 * torch.randn_like(post.mean)
        rec = vae.decode(z).sample
        w = edge_weight(x)
        loss_rec = ((rec - x).abs() * w).mean() + 0.5 * ((rec - x) ** 2 * w).mean()
        loss = loss_rec + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        ema.update(vae, step)
        step += 1
        budget.tick()
        if step % 10 == 0:
            rate = (time.time() - t0) / 10
            t0 = time.time()
            common.log(stage, f"step {step} loss {loss_rec.item():.4f} {rate:.2f} s/step "
                              f"{budget.elapsed / 60:.1f} min")
        if time.time() - last_save > args.checkpoint_minutes * 60 or budget.done(step):
            common.save_checkpoint(ckpt_path, {"model": vae.state_dict(), "opt": opt.state_dict(),
                                               "ema": ema.state_dict(), "step": step,
                                               "elapsed": budget.elapsed})
            last_save = time.time()

    # 3. export the EMA weights (the decoder fine-tune keeps the scaling factor: same encoder)
    if args.decoder_only:
        ema.shadow.to(torch.float16).save_pretrained(common.CACHE / "vae-decoder" / "export", safe_serialization=True)
        ema.shadow.to(torch.float16).save_pretrained(common.MODEL_DIR / "vae", safe_serialization=True)
        common.log(stage, f"done: exported to {common.MODEL_DIR / 'vae'}")
        return
    std = export(ema.shadow, images, common.MODEL_DIR / "vae")
    common.log(stage, f"done: latent std {std:.3f}, exported to {common.MODEL_DIR / 'vae'}")


if __name__ == "__main__":
    main()
