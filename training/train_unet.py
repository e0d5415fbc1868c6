"""Stage 2: the UNet and the CLIP text encoder, trained jointly from scratch on pre-encoded latents.

    python training/train_unet.py [--minutes 72] [--batch 64] [--scenes 24000]

Needs stage 1 (sdlab/models/shapes/vae). Encodes the training scenes once (posterior means,
times the VAE's scaling factor) into .cache/shapes-train/latents-*.pt, then trains with
epsilon prediction, min-SNR-5 loss weighting, 10% caption dropout, gradient clipping and an EMA
of the weights. Every checkpoint also exports the EMA weights as a complete diffusers folder at
sdlab/models/shapes/, so a usable model exists as soon as the first checkpoint is written.
"""

from __future__ import annotations

import common
import torch


def encode_latents(vae, seeds, images) -> torch.Tensor:
    path = common.CACHE / f"latents-{len(seeds)}.pt"
    if path.exists():
        return torch.load(path)
    vae.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(seeds), 128):
            out.append(vae.encode(common.to_tensor(images[i : i + 128])).latent_dist.mean)
            if i % 2048 == 0:
                common.log("unet", f"encoded {i}/{len(seeds)}")
    latents = torch.cat(out) * vae.config.scaling_factor
    common.save_checkpoint(path, latents)
    return latents


def build_models(tokenizer):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **common.TEXT_CONFIG,
    )
    return UNet2DConditionModel(**common.UNET_CONFIG), CLIPTextModel(text_config)


def export(unet, text_encoder, vae, tokenizer, out_dir) -> None:
    """Write a complete StableDiffusionPipeline folder (fp16 UNet and VAE, DPM++ 2M scheduler)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    train_sched = DDPMScheduler(**common.SCHEDULER_TRAIN_CONFIG)
    scheduler = DPMSolverMultistepScheduler.from_config(
        train_sched.config, algorithm_type="dpmsolver++", solver_order=2
    )
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
    # diffusers loads fp16 weights into float32 models; transformers 5 would keep the text encoder
    # in fp16 (dtype "auto"), so it stays float32 (it is small).
    unet.to(torch.float16)
    vae.to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    unet.to(torch.float32)
    vae.to(torch.float32)


def main():
    from diffusers import AutoencoderKL, DDPMScheduler

    args = common.stage_arguments(
        __doc__,
        steps=20_000,
        minutes=72.0,
        batch=64,
        scenes=24_000,
        lr=1e-3,
        ema=0.999,
        caption_dropout=0.1,
        seed=0,
        checkpoint_minutes=4.0,
    ).parse_args()

    # 1. data: scenes, their latents, their scenes' attributes for captions
    common.setup(args.seed)
    seeds, images, scenes = common.training_data(args.scenes)
    vae = AutoencoderKL.from_pretrained(common.MODEL_DIR / "vae", torch_dtype=torch.float32)
    latents = encode_latents(vae, seeds, images)
    tokenizer = common.tokenizer()
    common.log("unet", f"latents {tuple(latents.shape)} std {latents.std():.3f}")

    # 2. models, optimiser, EMA, resume
    unet, text_encoder = build_models(tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema_unet, ema_text = common.EMA(unet, args.ema), common.EMA(text_encoder, args.ema)
    noise_sched = DDPMScheduler(**common.SCHEDULER_TRAIN_CONFIG)
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    loop = common.StageLoop(
        "unet",
        args,
        opt,
        {"unet": unet, "text": text_encoder, "opt": opt, "ema_unet": ema_unet, "ema_text": ema_text},
        warmup=100,
    )
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    common.log(
        "unet",
        f"UNet {n_unet / 1e6:.2f} M, text encoder {n_text / 1e6:.2f} M parameters; "
        f"budget {args.steps} steps or {args.minutes} min, batch {args.batch}",
    )

    # 3. train
    unet.train()
    text_encoder.train()
    for step in loop:
        idx = common.batch_indices(args.seed, step, len(seeds), args.batch).tolist()
        ids = common.caption_ids(tokenizer, "unet", args.seed, step, args.caption_dropout, scenes, seeds, idx)
        xt, noise, t = common.noised(noise_sched, latents[idx], args.seed * 1_000_003 + step)
        pred = unet(xt, t, text_encoder(ids)[0]).sample
        loss = common.min_snr_loss(pred, noise, t, snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        if loop.end_step(loss.item()):
            loop.save()
            export(ema_unet.shadow, ema_text.shadow, vae, tokenizer, common.MODEL_DIR)
            common.log("unet", f"checkpoint + export at step {loop.step}")
    loop.finished()


if __name__ == "__main__":
    main()
