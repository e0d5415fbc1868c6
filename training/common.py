"""Shared pieces of the ``shapes`` training scripts: paths, data, model configs, checkpoints, EMA.

Every stage is seeded, checkpoints to ``.cache/shapes-train/<stage>/`` every few minutes and
resumes from there when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdlab.bundled import world
from sdlab.testing.clip_tokenizer import CLIP_TOKENIZER_DIR, load_clip_tokenizer

ROOT = Path(__file__).resolve().parents[1]  # the checkout: weights are written into its sdlab/models
CACHE = ROOT / ".cache" / "shapes-train"
MODEL_DIR = ROOT / "sdlab" / "models" / "shapes"
CONTROLNET_DIR = ROOT / "sdlab" / "models" / "shapes-controlnet"

IMAGE_SIZE = 64
N_SCENES = 32_000  # training scenes (seeds 0.. skipping held-out combinations)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=2,
    sample_size=IMAGE_SIZE,  # few groups: a group per channel would erase flat colours
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=8,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=64,
)
SCHEDULER_TRAIN_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def setup(seed: int) -> None:
    # 2 threads on an idle machine; when other jobs share the 2 cores one thread is 2x faster
    # (measured: a UNet step 5 s with 1 thread, 12 s with 2), so SHAPES_TRAIN_THREADS can say 1.
    torch.set_num_threads(int(os.environ.get("SHAPES_TRAIN_THREADS", "2")))
    torch.manual_seed(seed)
    np.random.seed(seed)


def log(stage: str, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} [{stage}] {msg}"
    print(line, flush=True)


def scenes(n: int = N_SCENES) -> tuple[list[int], np.ndarray]:
    """The training seeds and their 64x64 renders (uint8, N x 64 x 64 x 3), cached on disk."""
    path = CACHE / f"scenes-{n}.npz"
    if path.exists():
        data = np.load(path)
        return data["seeds"].tolist(), data["images"]
    seeds = world.training_seeds(n)
    images = np.stack([np.asarray(world.render(world.sample_scene(s), IMAGE_SIZE)) for s in seeds])
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, seeds=np.array(seeds), images=images)
    os.replace(tmp, path)
    return seeds, images


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def canny(image: np.ndarray) -> np.ndarray:
    """The ControlNet condition of a uint8 RGB render, as uint8 (see ``world.canny_edges``)."""
    return np.asarray(world.canny_edges(image))


class EMA:
    """Exponential moving average of a module's parameters."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm up
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1 - decay)
        for s, b in zip(self.shadow.buffers(), module.buffers()):
            s.copy_(b)

    def state_dict(self):
        return self.shadow.state_dict()

    def load_state_dict(self, state):
        self.shadow.load_state_dict(state)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=False)
    return None


def lr_at(step: int, progress: float, base: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``base`` as ``progress``
    (the fraction of the stage's budget spent, 0..1) goes to 1."""
    import math

    warm = min(1.0, (step + 1) / warmup)
    t = min(1.0, max(0.0, progress))
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


class Budget:
    """A stage's budget in steps and/or minutes of wall time, whichever runs out first.
    The elapsed time is saved in checkpoints, so a resumed stage keeps its budget."""

    def __init__(self, steps: int, minutes: float, elapsed: float = 0.0):
        self.steps, self.minutes, self.elapsed = steps, minutes, elapsed
        self._t = time.time()

    def tick(self) -> None:
        now = time.time()
        self.elapsed += now - self._t
        self._t = now

    def progress(self, step: int) -> float:
        return max(step / self.steps, self.elapsed / (self.minutes * 60))

    def done(self, step: int) -> bool:
        return self.progress(step) >= 1.0


class StageLoop:
    """The bookkeeping of a stage's training loop, the same in every stage: resuming from
    ``.cache/shapes-train/<stage>/checkpoint.pt``, the budget, the learning-rate schedule, a log
    line every ``log_every`` steps and a checkpoint every ``args.checkpoint_minutes`` and at the end.

    ``parts`` names what the checkpoint holds (modules, optimiser, EMAs: anything with
    ``state_dict``/``load_state_dict``)::

        loop = StageLoop("unet", args, opt, {"unet": unet, "opt": opt}, warmup=100)
        for step in loop:          # sets the learning rate of this step
            ...
            if loop.end_step(loss.item()):   # True when a checkpoint is due
                loop.save()
    """

    def __init__(self, stage: str, args, opt, parts: dict, *, warmup: int, log_every: int = 20):
        self.stage, self.args, self.opt, self.parts = stage, args, opt, parts
        self.warmup, self.log_every = warmup, log_every
        self.path = CACHE / stage / "checkpoint.pt"
        self.step, elapsed = 0, 0.0
        if (ckpt := load_checkpoint(self.path)) is not None:
            for name, part in parts.items():
                part.load_state_dict(ckpt[name])
            self.step, elapsed = ckpt["step"], ckpt["elapsed"]
            log(stage, f"resumed at step {self.step} ({elapsed / 60:.1f} min)")
        self.budget = Budget(args.steps, args.minutes, elapsed)
        self._t0 = self._last_save = time.time()
        self._losses: list[float] = []

    def __iter__(self):
        while not self.budget.done(self.step):
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, self.budget.progress(self.step), self.args.lr, warmup=self.warmup)
            yield self.step

    def end_step(self, loss: float) -> bool:
        """Count the step just taken (its loss for the log); True when a checkpoint is due."""
        self.step += 1
        self.budget.tick()
        self._losses.append(loss)
        if self.step % self.log_every == 0:
            rate = (time.time() - self._t0) / self.log_every
            self._t0 = time.time()
            log(
                self.stage,
                f"step {self.step} loss {sum(self._losses) / len(self._losses):.4f} "
                f"{rate:.2f} s/step {self.budget.elapsed / 60:.1f} min "
                f"lr {self.opt.param_groups[0]['lr']:.2e}",
            )
            self._losses = []
        return time.time() - self._last_save > self.args.checkpoint_minutes * 60 or self.budget.done(self.step)

    def save(self) -> None:
        save_checkpoint(
            self.path,
            {
                **{name: part.state_dict() for name, part in self.parts.items()},
                "step": self.step,
                "elapsed": self.budget.elapsed,
            },
        )
        self._last_save = time.time()

    def finished(self) -> None:
        log(self.stage, f"done at step {self.step}, {self.budget.elapsed / 60:.1f} min")


def batch_indices(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """The dataset indices of one step: a function of (seed, step) only, so a resumed run is identical."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (batch,), generator=g)


def stage_arguments(doc: str, **defaults) -> argparse.ArgumentParser:
    """The options every stage shares (budget, batch, data, optimiser, EMA, seed, checkpoints),
    with the stage's own defaults; a stage adds its own options to the parser it gets back."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    options = {  # name: (type, help)
        "steps": (int, "step budget"),
        "minutes": (float, "wall-time budget in minutes (kept across resumes)"),
        "batch": (int, "batch size"),
        "scenes": (int, "training scenes used (the first N training seeds)"),
        "lr": (float, "peak learning rate (warm-up, then cosine to 10%%)"),
        "ema": (float, "EMA decay of the exported weights"),
        "caption_dropout": (float, "fraction of empty captions (classifier-free guidance)"),
        "seed": (int, "seed of the batches, noise and captions"),
        "checkpoint_minutes": (float, "minutes between checkpoints"),
    }
    unknown = set(defaults) - set(options)
    if unknown:
        raise ValueError(f"unknown stage options {sorted(unknown)}; expected some of {sorted(options)}")
    for name, default in defaults.items():
        kind, help_text = options[name]
        p.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=default, help=f"{help_text} (default {default})"
        )
    return p


def training_data(n_scenes: int) -> tuple[list[int], np.ndarray, list]:
    """The first ``n_scenes`` training seeds, their renders and their scenes."""
    seeds, images = scenes()
    if n_scenes > len(seeds):
        raise ValueError(f"`--scenes` is {n_scenes}, but only {len(seeds)} training scenes are rendered")
    seeds, images = seeds[:n_scenes], images[:n_scenes]
    return seeds, images, [world.sample_scene(s) for s in seeds]


def caption_ids(
    tokenizer, stage: str, seed: int, step: int, dropout: float, scenes_: list, seeds: list[int], idx: list[int]
) -> torch.Tensor:
    """Token ids of one step's captions: varied training captions, ``dropout`` of them empty.
    A function of (stage, seed, step) only, so a resumed run is identical."""
    rng = random.Random(f"{stage}-step-{seed}-{step}")
    texts = ["" if rng.random() < dropout else world.training_caption(scenes_[i], seeds[i] * 7919 + step) for i in idx]
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def noised(noise_sched, x0: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, noise, t) for a batch of clean latents: uniform timesteps, seeded noise."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(x0),), generator=g)
    return noise_sched.add_noise(x0, noise, t), noise, t


def min_snr_loss(
    pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, snr: torch.Tensor, gamma: float = 5.0
) -> torch.Tensor:
    """Epsilon-prediction MSE with min-SNR-gamma weighting (Hang et al. 2023)."""
    weight = torch.clamp(snr[t], max=gamma) / snr[t]
    return (F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3)) * weight).mean()


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def tokenizer():
    return load_clip_tokenizer(CLIP_TOKENIZER_DIR)
