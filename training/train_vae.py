"""Stage 1: the autoencoder (AutoencoderKL, 64x64x3 <-> 16x16x4).

    python training/train_vae.py [--minutes 24] [--batch 16]

Loss: L1 + MSE, weighted 4x more near the shape's edges (so small shapes stay crisp), plus a tiny
KL term. Resumes from .cache/shapes-train/vae/checkpoint.pt. At the end it measures the latent
standard deviation, sets ``scaling_factor`` to its inverse and writes the VAE (fp16 safetensors)
into sdlab/models/shapes/vae/.
"""

from __future__ import annotations

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
        lat = torch.cat(
            [vae.encode(common.to_tensor(images[i : i + 256])).latent_dist.mean for i in range(0, 2048, 256)]
        )
    std = lat.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    vae.to(torch.float32)
    return std


def main():
    from diffusers import AutoencoderKL

    args = common.stage_arguments(
        __doc__, steps=3000, minutes=24.0, batch=16, lr=2e-3, ema=0.99, seed=0, checkpoint_minutes=3.0
    ).parse_args()
    stage = "vae"

    # 1. data and model
    common.setup(args.seed)
    _, images = common.scenes()
    vae = AutoencoderKL(**common.VAE_CONFIG)
    trainable = list(vae.parameters())
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    ema = common.EMA(vae, args.ema)
    loop = common.StageLoop(stage, args, opt, {"model": vae, "opt": opt, "ema": ema}, warmup=50, log_every=10)
    n_params = sum(p.numel() for p in vae.parameters())
    common.log(
        stage,
        f"{n_params / 1e6:.2f} M parameters, {len(images)} scenes, budget {args.steps} steps or {args.minutes} min",
    )

    # 2. train
    vae.train()
    for step in loop:
        idx = common.batch_indices(args.seed, step, len(images), args.batch)
        x = common.to_tensor(images[idx.numpy()])
        if step % 2:  # flips are fine for an autoencoder
            x = x.flip(-1)
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
        if loop.end_step(loss_rec.item()):
            loop.save()

    # 3. export the EMA weights
    std = export(ema.shadow, images, common.MODEL_DIR / "vae")
    common.log(stage, f"done: latent std {std:.3f}, exported to {common.MODEL_DIR / 'vae'}")


if __name__ == "__main__":
    main()
