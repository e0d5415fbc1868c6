"""The local backend: a diffusers pipeline run by sdlab.

What it adds to a plain pipeline call:
- one CPU `torch.Generator` per image, so an image made in a batch equals the same seed made alone;
- prompt embeddings computed once per distinct prompt (an LRU cache on the backend);
- per-image guidance scales in ONE batched denoising loop (SD 1.x/2.x and SDXL). Diffusers'
  pipelines take one float, so the pipeline's own classifier-free guidance is switched off for the
  call and the UNet is wrapped: it runs the unconditional rows of the images that need guidance
  together with all conditional rows, then combines them per image, exactly as the pipeline would.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BackendError
from ..request import GenerationRequest, describe_value
from .base import BackendOutput, Defaults, ProgressCallback

EMBEDDING_CACHE_SIZE = 256


@dataclass
class _GuidanceState:
    """Per-call state of the guided UNet: which rows get guidance, with what."""

    rows: torch.Tensor  # indices of images with guidance > 1
    scales: torch.Tensor  # guidance of those rows, shape [k]
    negative_embeds: torch.Tensor  # [k, seq, dim]
    negative_pooled: torch.Tensor | None  # SDXL: [k, dim]
    guidance_rescale: float = 0.0


class _GuidedUNetForward:
    """Replaces `unet.forward` while sdlab runs a call; a plain pass-through otherwise."""

    def __init__(self, unet):
        self.unet = unet
        self.original = unet.forward
        self.state: _GuidanceState | None = None

    def __call__(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        state = self.state
        if state is None or len(state.rows) == 0:
            return self.original(sample, timestep, encoder_hidden_states, *args, **kwargs)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        rows, k = state.rows, len(state.rows)
        return_dict = kwargs.pop("return_dict", True)
        x = torch.cat([sample[rows], sample])
        hidden = torch.cat([state.negative_embeds.to(encoder_hidden_states), encoder_hidden_states])
        if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.shape[0] == sample.shape[0]:
            timestep = torch.cat([timestep[rows], timestep])
        added = kwargs.get("added_cond_kwargs")
        if added:
            added = dict(added)
            if "text_embeds" in added:
                added["text_embeds"] = torch.cat([state.negative_pooled.to(added["text_embeds"]), added["text_embeds"]])
            if "time_ids" in added:
                added["time_ids"] = torch.cat([added["time_ids"][rows], added["time_ids"]])
            kwargs["added_cond_kwargs"] = added
        out = self.original(x, timestep, hidden, *args, return_dict=False, **kwargs)[0]
        uncond, cond = out[:k], out[k:]
        guided = cond.clone()
        scales = state.scales.to(out.dtype).view(-1, *([1] * (out.ndim - 1)))
        mixed = uncond + scales * (cond[rows] - uncond)
        if state.guidance_rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            mixed = rescale_noise_cfg(mixed, cond[rows], guidance_rescale=state.guidance_rescale)
        guided[rows] = mixed
        return UNet2DConditionOutput(sample=guided) if return_dict else (guided,)


class DiffusersBackend:
    """A diffusers pipeline behind sdlab's backend protocol."""

    name = "diffusers"

    def __init__(self, pipe):
        from ..loading import pipeline_info

        self.pipe = pipe
        self.info = pipeline_info(pipe)
        self.family: str = self.info["family"]
        self._embeddings: OrderedDict[tuple, Any] = OrderedDict()
        self._guided: _GuidedUNetForward | None = None
        self._call_params = set(inspect.signature(type(pipe).__call__).parameters) - {"self"}

    # ------------------------------------------------------------ protocol properties

    @property
    def model_id(self) -> str:
        return str(self.info["model"])

    @property
    def defaults(self) -> Defaults:
        return self.info["defaults"]

    @property
    def size_multiple(self) -> int:
        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        if self.family == "flux":
            return max(16, scale * 2)
        return max(8, scale)

    @property
    def max_batch_size(self) -> int:
        return 64

    @property
    def is_controlnet(self) -> bool:
        return getattr(self.pipe, "controlnet", None) is not None

    def supports_per_image_guidance(self) -> bool:
        unet = getattr(self.pipe, "unet", None)
        return (
            self.family in ("sd1", "sd2", "sdxl")
            and unet is not None
            and unet.config.get("time_cond_proj_dim") is None
            and not self.is_controlnet
        )

    def identity(self) -> dict[str, Any]:
        import diffusers
        import transformers

        return {
            "backend": self.name,
            "model": self.model_id,
            "model_location": self.info.get("model_location"),
            "family": self.family,
            "controlnet": self.info.get("controlnet"),
            "dtype": self.info.get("dtype"),
            "device_type": str(self.info.get("device", "cpu")).split(":")[0],
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def validate(self, request: GenerationRequest) -> None:
        from ..request import check_size
        from ..schedulers import is_flow_matching, resolve_scheduler_name

        check_size(request.width, request.height, self.size_multiple)
        if request.scheduler is not None:
            resolve_scheduler_name(request.scheduler, flow_matching=is_flow_matching(self.pipe.scheduler))
        unknown = sorted(set(request.pipeline_kwargs) - self._call_params)
        if unknown:
            raise ValueError(
                f"unknown argument(s) {unknown} for {type(self.pipe).__name__}; "
                f"it accepts: {', '.join(sorted(self._call_params - _SET_BY_SDLAB))}"
            )
        if self.is_controlnet and "image" not in request.pipeline_kwargs:
            raise ValueError("this is a ControlNet pipeline: pass the control image as `image=`")
        if not self.supports_per_image_guidance() and len(set(request.guidance_scale)) > 1:
            raise ValueError(
                f"{type(self.pipe).__name__} takes one `guidance_scale` per call; split the request by guidance"
            )

    # ------------------------------------------------------------ running

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool | None = None,
    ) -> BackendOutput:
        self.validate(request)
        pipe = self.pipe
        n = len(request)
        start = time.perf_counter()
        # 1. generators: one CPU generator per image
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in request.seed]
        kwargs = dict(request.pipeline_kwargs)
        steps = request.num_inference_steps

        def on_step_end(_pipe, step, timestep, callback_kwargs):
            if progress is not None:
                progress({"step": step + 1, "total": steps, "timestep": float(timestep), "images": n})
            return callback_kwargs

        with self._scheduler(request.scheduler) as scheduler_name, self._progress_bar(progress_bar):
            scheduler_class = type(pipe.scheduler).__name__
            # 2. prompt embeddings (cached per distinct prompt) and the call
            if self.supports_per_image_guidance():
                call = self._call_per_image_guidance(request, kwargs)
            else:
                call = self._call_native(request, kwargs)
            try:
                with torch.inference_mode():
                    output = pipe(
                        **call,
                        width=request.width,
                        height=request.height,
                        num_inference_steps=steps,
                        generator=generators,
                        output_type="pil",
                        callback_on_step_end=on_step_end,
                        **kwargs,
                    )
            finally:
                if self._guided is not None:
                    self._guided.state = None
        seconds = time.perf_counter() - start
        images = list(output.images)
        if len(images) != n:
            raise BackendError(f"the pipeline returned {len(images)} images for {n} requested", backend=self.name)
        record = {
            "backend": self.name,
            "model": self.model_id,
            "model_family": self.family,
            "pipeline": type(pipe).__name__,
            "scheduler": scheduler_name,
            "scheduler_class": scheduler_class,
            "device": self.info.get("device"),
            "dtype": self.info.get("dtype"),
        }
        if self.info.get("controlnet"):
            record["controlnet"] = self.info["controlnet"]
        return BackendOutput(images=images, records=[dict(record) for _ in range(n)], seconds=seconds)

    def _call_per_image_guidance(self, request: GenerationRequest, kwargs: dict) -> dict[str, Any]:
        """Pipeline CFG off; the guided UNet does per-image guidance in the same batch."""
        device = self._device()
        positive = [self._encode(p, negative=False) for p in request.prompt]
        scales = torch.tensor(request.guidance_scale, dtype=torch.float32)
        rows = torch.nonzero(scales > 1.0).flatten()
        call: dict[str, Any] = {"guidance_scale": 1.0}
        call["prompt_embeds"] = torch.cat([p[0] for p in positive]).to(device)
        negative_embeds = negative_pooled = None
        if len(rows):
            negatives = [self._encode(request.negative_prompt[i], negative=True) for i in rows.tolist()]
            negative_embeds = torch.cat([e[0] for e in negatives]).to(device)
            if self.family == "sdxl":
                negative_pooled = torch.cat([e[1] for e in negatives]).to(device)
        if self.family == "sdxl":
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
        guided = self._install_guided_unet()
        guided.state = _GuidanceState(
            rows=rows.to(device),
            scales=scales[rows].to(device),
            negative_embeds=negative_embeds,
            negative_pooled=negative_pooled,
            guidance_rescale=float(kwargs.pop("guidance_rescale", 0.0) or 0.0),
        )
        return call

    def _call_native(self, request: GenerationRequest, kwargs: dict) -> dict[str, Any]:
        """The pipeline's own guidance (one scale for the call), embeddings from the cache."""
        device = self._device()
        guidance = request.guidance_scale[0]
        call: dict[str, Any] = {"guidance_scale": guidance}
        positive = [self._encode(p, negative=False) for p in request.prompt]
        if self.family == "flux":
            call["prompt_embeds"] = torch.cat([p[0] for p in positive]).to(device)
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
            if any(neg is not None for neg in request.negative_prompt):
                negatives = [self._encode(neg or "", negative=False) for neg in request.negative_prompt]
                call["negative_prompt_embeds"] = torch.cat([e[0] for e in negatives]).to(device)
                call["negative_pooled_prompt_embeds"] = torch.cat([e[1] for e in negatives]).to(device)
            return call
        call["prompt_embeds"] = torch.cat([p[0] for p in positive]).to(device)
        if self.family == "sdxl":
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
        negatives = [self._encode(neg, negative=True) for neg in request.negative_prompt]
        call["negative_prompt_embeds"] = torch.cat([e[0] for e in negatives]).to(device)
        if self.family == "sdxl":
            call["negative_pooled_prompt_embeds"] = torch.cat([e[1] for e in negatives]).to(device)
        return call

    # ------------------------------------------------------------ helpers

    def _device(self):
        return getattr(self.pipe, "_execution_device", None) or self.pipe.device

    def _encode(self, text: str | None, *, negative: bool):
        """(embeds, pooled-or-None) for one text, cached. A missing negative prompt is encoded as the
        pipeline would: "" for SD, zeros for SDXL models with `force_zeros_for_empty_prompt`."""
        key = (self.family, text, negative and text is None)
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached
        pipe = self.pipe
        device = self._device()
        with torch.inference_mode():
            if self.family in ("sd1", "sd2"):
                embeds, _ = pipe.encode_prompt(text or "", device, 1, False)
                value = (embeds, None)
            elif self.family == "sdxl":
                if text is None and negative and pipe.config.get("force_zeros_for_empty_prompt", False):
                    pos, _, pooled, _ = pipe.encode_prompt("", device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                    value = (torch.zeros_like(pos), torch.zeros_like(pooled))
                else:
                    embeds, _, pooled, _ = pipe.encode_prompt(
                        text or "", device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                    )
                    value = (embeds, pooled)
            elif self.family == "flux":
                max_len = int(self.info.get("load_kwargs", {}).get("max_sequence_length", 512))
                embeds, pooled, _ = pipe.encode_prompt(text or "", None, device=device, num_images_per_prompt=1, max_sequence_length=max_len)
                value = (embeds, pooled)
            else:  # pragma: no cover
                raise BackendError(f"unsupported family {self.family!r}", backend=self.name)
        value = tuple(v.detach() if v is not None else None for v in value)
        self._embeddings[key] = value
        while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return value

    def _install_guided_unet(self) -> _GuidedUNetForward:
        unet = self.pipe.unet
        current = unet.__dict__.get("forward")
        if isinstance(current, _GuidedUNetForward):
            self._guided = current
            return current
        guided = _GuidedUNetForward(unet)
        unet.forward = guided
        self._guided = guided
        return guided

    @contextlib.contextmanager
    def _scheduler(self, name: str | None):
        """Use scheduler `name` for one call (built from the pipeline's config), then restore."""
        from ..schedulers import canonical_name, describe_scheduler, is_flow_matching, make_scheduler

        pipe = self.pipe
        if name is None:
            yield getattr(pipe, "_sdlab_scheduler_name", None) or describe_scheduler(pipe.scheduler)
            return
        previous = pipe.scheduler
        pipe.scheduler = make_scheduler(name, previous.config)
        try:
            yield canonical_name(name, flow_matching=is_flow_matching(previous))
        finally:
            pipe.scheduler = previous

    @contextlib.contextmanager
    def _progress_bar(self, enabled: bool | None):
        if enabled is None:
            yield
            return
        pipe = self.pipe
        old = dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.set_progress_bar_config(**{**old, "disable": not enabled})
        try:
            yield
        finally:
            pipe._progress_bar_config = old


_SET_BY_SDLAB = {
    "prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "prompt_embeds", "negative_prompt_embeds",
    "pooled_prompt_embeds", "negative_pooled_prompt_embeds", "width", "height", "num_inference_steps",
    "guidance_scale", "generator", "num_images_per_prompt", "output_type", "return_dict",
    "callback_on_step_end", "callback_on_step_end_tensor_inputs", "callback", "callback_steps", "latents",
}


def describe_kwargs(kwargs: dict) -> dict:
    return {k: describe_value(v) for k, v in kwargs.items()}
