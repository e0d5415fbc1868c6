"""What the operator allows one job to ask for: sizes, steps, images, prompt length, extra keys."""

from __future__ import annotations

from dataclasses import dataclass

# Pipeline keywords a job may pass besides sdlab's own parameters, with their accepted range.
# Only scalars: they travel as JSON and are stored with the job. The backend still checks that its
# pipeline accepts each one (FLUX has no `eta`, for instance): a job that names one it does not get 422.
EXTRA_KEYS: dict[str, tuple[type, float, float]] = {
    "eta": (float, 0.0, 1.0),
    "guidance_rescale": (float, 0.0, 1.0),
    "clip_skip": (int, 0, 12),
}


# The smallest width and height each model family can denoise. SD-family UNets halve the latent
# (1/8 of the image) at each down block and GroupNorm needs more than one value per channel: below
# 64 pixels the deepest block of SD 1.x/2.x/XL sees a 1x1 map (8x8 fails inside GroupNorm). FLUX has
# no down blocks but packs 2x2 latent patches; 64 keeps every family on sizes it was seen to run.
@dataclass(frozen=True)
class Limits:
    """Per-job limits. Requests beyond them get 422 naming the field and the limit."""

    max_width: int = 1536
    max_height: int = 1536
    max_num_inference_steps: int = 100
    max_images: int = 8  # images per job: prompts x num_images
    max_prompt_length: int = 2000  # characters, per prompt and negative prompt
    max_guidance_scale: float = 30.0
    extra_keys: tuple[str, ...] = ("eta", "guidance_rescale", "clip_skip")
    max_body_bytes: int = 64 * 1024

    def check_guidance(self, request) -> None:
        """The operator's guidance limit, once the request has checked its own values."""
        for g in request.guidance_scale:
            if g > self.max_guidance_scale:
                raise ValueError(
                    f"`guidance_scale` must be at most {self.max_guidance_scale:g} on this server, got {g:g}"
                )

    def __post_init__(self):
        for name in (
            "max_width",
            "max_height",
            "max_num_inference_steps",
            "max_images",
            "max_prompt_length",
            "max_body_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if not self.max_guidance_scale >= 0:
            raise ValueError(f"`max_guidance_scale` must be >= 0, got {self.max_guidance_scale!r}")
        unknown = sorted(set(self.extra_keys) - set(EXTRA_KEYS))
        if unknown:
            raise ValueError(f"`extra_keys` {unknown} are not known; choose among {sorted(EXTRA_KEYS)}")
        object.__setattr__(self, "extra_keys", tuple(self.extra_keys))
