"""Stage 4: a LoRA that teaches the frozen ``shapes`` model something it never saw: the
``outlined`` style (the default concept: "a large red outlined circle", the shape drawn as a band
of its colour around the background) or the ``hexagon`` shape (tried first; it learns, slowly).

    python training/train_lora.py [--concept outlined] [--steps 6000] [--batch 32] [--rank 16] [--save-every 1200]

Needs stage 2 (the complete sdlab/models/shapes folder). LoRA adapters (PEFT, diffusers' own
integration) on the UNet's attention and feed-forward layers and on the text encoder's attention
and MLP layers; the base weights, including the token embedding, stay frozen. The base text
encoder never saw the concept's word (its embedding rows are still the random initialisation),
so the text encoder's LoRA learns to map those rows to a meaning: the LoRA file works on its
own, with no textual-inversion embedding. Data: renders of the concept (``world.sample_scene(seed,
outlined=True)``, every shape but small stars (``world.can_outline``), or
``sample_scene(seed, shape="hexagon")``; every colour, size, position and background, held-out
combinations skipped) with the world's varied captions ("a large red outlined circle on a blue
background"), mixed with ordinary base-world scenes as regularisation (``--concept-fraction``
of each batch), so that at weight 0 nothing changes and at weight 1 the base prompts still work.

Every ``--save-every`` steps an epoch file ``<concept>-epoch-NNNN.safetensors`` and at the end
``<concept>.safetensors`` are written to sdlab/models/shapes-<concept>-lora/, each loadable with
``StableDiffusionPipeline.load_lora_weights(folder, weight_name=...)``.
"""

from __future__ import annotations

import common
import numpy as np
import torch

from sdlab.bundled import world

CONCEPTS = ("outlined", "hexagon")
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def lora_dir(concept: str):
    return common.ROOT / "sdlab" / "models" / f"shapes-{concept}-lora"


def concept_scene(concept: str, seed: int):
    """The scene of ``seed`` drawn with the concept: outlined, or as a hexagon."""
    return (
        world.sample_scene(seed, outlined=True) if concept == "outlined" else world.sample_scene(seed, shape="hexagon")
    )


def concept_seeds(concept: str, n: int, *, held_out: bool = False, start: int = 0) -> list[int]:
    """The first ``n`` seeds from ``start`` whose concept scenes are (not) held-out combinations
    and, for the outlined style, show as outlines (``world.can_outline``)."""
    out, seed = [], start
    while len(out) < n:
        scene = concept_scene(concept, seed)
        if world.is_held_out(scene) == held_out and (concept != "outlined" or world.can_outline(scene)):
            out.append(seed)
        seed += 1
    return out


def encoded_data(vae, concept: str, n_concept: int, n_base: int) -> tuple[torch.Tensor, list, list[int]]:
    """Latents (VAE posterior mean x scaling factor), scenes and seeds: ``n_concept`` scenes of the
    concept, then ``n_base`` base-world training scenes; cached in .cache/shapes-train/."""
    path = common.CACHE / f"lora-{concept}-latents-{n_concept}-{n_base}.pt"
    concept_ids, base_seeds = concept_seeds(concept, n_concept), world.training_seeds(n_base)
    scenes = [concept_scene(concept, s) for s in concept_ids] + [world.sample_scene(s) for s in base_seeds]
    seeds = concept_ids + base_seeds
    if (cached := common.load_checkpoint(path)) is not None:
        return cached, scenes, seeds
    images = np.stack([np.asarray(world.render(sc, common.IMAGE_SIZE)) for sc in scenes])
    out = []
    with torch.no_grad():
        for i in range(0, len(images), 128):
            out.append(vae.encode(common.to_tensor(images[i : i + 128])).latent_dist.mean)
    latents = torch.cat(out) * vae.config.scaling_factor
    common.save_checkpoint(path, latents)
    return latents, scenes, seeds


def lora_layers(model) -> dict[str, torch.Tensor]:
    """The LoRA weights of a PEFT-adapted model in PEFT's key format (``...to_q.lora_A.weight``),
    fp16 (a small file). Not diffusers' older ``convert_state_dict_to_diffusers`` format: diffusers
    0.42 loads only the feed-forward and projection layers of such a file and silently drops every
    attention layer (the first hexagon runs were judged that way)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(model).items()}


def export(unet, text_encoder, folder, name: str, text_config) -> None:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=lora_layers(unet),
        text_encoder_lora_layers=lora_layers(text_encoder),
        weight_name=name,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict(),
    )


def main():
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.models import AutoencoderKL
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextModel

    p = common.stage_arguments(
        __doc__,
        steps=6000,
        minutes=600.0,
        batch=32,
        lr=2e-3,
        caption_dropout=0.05,
        seed=0,
        checkpoint_minutes=3.0,
    )
    p.add_argument("--concept", choices=CONCEPTS, default="outlined", help="what the LoRA teaches (default outlined)")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank) (default 16)")
    p.add_argument("--concept-scenes", type=int, default=4000, help="training scenes of the concept (default 4000)")
    p.add_argument("--base-scenes", type=int, default=4000, help="base-world regularisation scenes (default 4000)")
    p.add_argument("--concept-fraction", type=float, default=0.65, help="concept scenes in each batch (default 0.65)")
    p.add_argument("--save-every", type=int, default=1200, help="steps between epoch files (default 1200)")
    args = p.parse_args()
    folder = lora_dir(args.concept)

    # 1. data: the concept's and base scenes, encoded once by the base model's VAE
    common.setup(args.seed)
    vae = AutoencoderKL.from_pretrained(common.MODEL_DIR / "vae", torch_dtype=torch.float32)
    latents, scenes, seeds = encoded_data(vae, args.concept, args.concept_scenes, args.base_scenes)
    del vae
    tokenizer = common.tokenizer()

    # 2. the frozen base model with LoRA adapters, resume
    unet = UNet2DConditionModel.from_pretrained(common.MODEL_DIR / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(common.MODEL_DIR / "text_encoder", torch_dtype=torch.float32)
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet_config = LoraConfig(
        r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS
    )
    text_config = LoraConfig(
        r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS
    )
    unet.add_adapter(unet_config)
    # peft's own injection: transformers 5's `add_adapter` asks for peft >= 0.22, and loading
    # (diffusers' `load_lora_weights`) does not need it
    inject_adapter_in_model(text_config, text_encoder)
    params = [q for m in (unet, text_encoder) for q in m.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    noise_sched = DDPMScheduler(**common.SCHEDULER_TRAIN_CONFIG)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    stage = f"lora-{args.concept}"
    loop = common.StageLoop(stage, args, opt, {"unet": unet, "text": text_encoder, "opt": opt}, warmup=50)
    common.log(
        stage,
        f"{sum(q.numel() for q in params) / 1e3:.1f} k LoRA parameters (rank {args.rank}); "
        f"budget {args.steps} steps or {args.minutes} min, batch {args.batch}",
    )

    # 3. train
    n_hex, n_base = args.concept_scenes, args.base_scenes
    k_hex = round(args.batch * args.concept_fraction)
    unet.train()
    text_encoder.train()
    for step in loop:
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 29)
        idx = torch.cat(
            [
                torch.randint(0, n_hex, (k_hex,), generator=g),
                n_hex + torch.randint(0, n_base, (args.batch - k_hex,), generator=g),
            ]
        ).tolist()
        # stage name "lora" in the caption stream: the captions the shipped LoRA was trained on
        ids = common.caption_ids(tokenizer, "lora", args.seed, step, args.caption_dropout, scenes, seeds, idx)
        xt, noise, t = common.noised(noise_sched, latents[idx], args.seed * 1_000_003 + step + 31)
        pred = unet(xt, t, text_encoder(ids)[0]).sample
        loss = common.min_snr_loss(pred, noise, t, snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        due = loop.end_step(loss.item())
        if loop.step % args.save_every == 0 and not loop.budget.done(loop.step):  # the last one: <concept>.safetensors
            name = f"{args.concept}-epoch-{loop.step:04d}.safetensors"
            export(unet, text_encoder, folder, name, text_config)
            common.log(stage, f"wrote {name}")
        if due:
            loop.save()
            common.log(stage, f"checkpoint at step {loop.step}")
    export(unet, text_encoder, folder, f"{args.concept}.safetensors", text_config)
    loop.finished()


if __name__ == "__main__":
    main()
