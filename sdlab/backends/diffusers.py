"""The local backend: a diffusers pipeline run by sdlab.

What it adds to a plain pipeline call:
- one CPU `torch.Generator` per image, so an image made in a batch equals the same seed made alone;
- prompt embeddings computed once per distinct prompt (an LRU cache on the backend);
- A1111's seed variations: each image's initial noise slerped from its seed's towards its variation
  seed's (`variation_noise`), built here and passed as `latents`;
- per-image guidance scales in ONE batched denoising loop (SD 1.x/2.x and SDXL). Diffusers'
  pipelines take one float, so the pipeline's own classifier-free guidance is switched off for the
  call and the UNet is wrapped: it runs the unconditional rows of the images that need guidance
  together with all conditional rows, then combines them per image, exactly as the pipeline would.
  On ControlNet pipelines the ControlNet is wrapped too (`_GuidedControlNetForward`): it computes the
  residuals of those unconditional rows, which the guided UNet puts in front of the conditional ones.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .. import identity
from ..errors import BackendError
from ..request import RESERVED_KWARGS, GenerationRequest
from .base import BackendOutput, Defaults, ProgressCallback

EMBEDDING_CACHE_SIZE = 256
MIN_SIZE = 64  # below this the UNet/transformer of every supported family fails (GroupNorm) or makes noise
_MISSING = object()


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp (modules/rng.py), as it is: on one image's noise [C, H, W], per column along H;
    nearly equal noises (mean cosine above 0.9995) are mixed linearly, as A1111 mixes them."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def variation_noise(
    shape: tuple[int, ...], generator: torch.Generator, variation_seed: int | None, strength: float
) -> torch.Tensor:
    """One image's initial noise [C, H, W] (float32, CPU) as A1111 makes it: the seed's noise from
    `generator` (the pipeline's own draw: the generator advances as in diffusers' prepare_latents),
    slerped towards the noise of `variation_seed` by `strength`; no variation noise at strength 0."""
    noise = torch.randn((1, *shape), generator=generator, device="cpu", dtype=torch.float32)[0]
    if not strength:
        return noise
    other = torch.Generator("cpu").manual_seed(int(variation_seed))
    subnoise = torch.randn((1, *shape), generator=other, device="cpu", dtype=torch.float32)[0]
    return slerp(strength, noise, subnoise)


@dataclass
class _GuidanceState:
    """Per-call state of the guided UNet: which rows get guidance, with what."""

    rows: torch.Tensor  # indices of images with guidance > 1
    scales: torch.Tensor  # guidance of those rows, shape [k]
    negative_embeds: torch.Tensor  # [k, seq, dim]
    negative_pooled: torch.Tensor | None  # SDXL: [k, dim]
    guidance_rescale: float = 0.0
    # ControlNet pipelines: the unconditional rows' residuals (down list, mid) of the current step,
    # left by the guided ControlNet for the guided UNet, which takes them
    residuals: tuple | None = None
    # A1111 prompt editing / alternation (sdlab.prompts.a1111): the embeddings of every step
    prompt_steps: _PromptSteps | None = None


class _PromptSteps:
    """Per-image schedules of embeddings ([(end step, (embeds, pooled))], A1111's prompt editing),
    for the positive prompts and the negative prompts of the guided rows, all padded to one length.
    `update(step, callback_kwargs)` puts step `step`'s embeddings in place when they change."""

    def __init__(self, positive: list, negative: list, state: _GuidanceState):
        self.positive, self.negative, self.state = positive, negative, state
        self.current = self._indices(0)

    def _indices(self, step: int) -> tuple:
        from ..prompts.a1111 import entry_at

        return tuple(entry_at(s, step) for s in self.positive), tuple(entry_at(s, step) for s in self.negative)

    def update(self, step: int, callback_kwargs: dict) -> None:
        indices = self._indices(step)
        if indices == self.current:
            return
        self.current = indices
        positive = [s[i][1] for s, i in zip(self.positive, indices[0])]
        callback_kwargs["prompt_embeds"] = torch.cat([e[0] for e in positive])
        if "add_text_embeds" in callback_kwargs:  # SDXL: the pooled embeddings
            callback_kwargs["add_text_embeds"] = torch.cat([e[1] for e in positive])
        if self.negative:
            negative = [s[i][1] for s, i in zip(self.negative, indices[1])]
            self.state.negative_embeds = torch.cat([e[0] for e in negative])
            if self.state.negative_pooled is not None:
                self.state.negative_pooled = torch.cat([e[1] for e in negative])


def _expand_rows(state: _GuidanceState, sample, timestep, encoder_hidden_states, kwargs: dict):
    """Inputs for [unconditional rows of the guided images; all rows], batched as the pipeline's own
    CFG would: same latents, timesteps and SDXL time ids, negative embeddings in the first k rows."""
    rows = state.rows
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
        kwargs = {**kwargs, "added_cond_kwargs": added}
    return x, timestep, hidden, kwargs


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
        x, timestep, hidden, kwargs = _expand_rows(state, sample, timestep, encoder_hidden_states, kwargs)
        kwargs = _with_unconditional_residuals(state, kwargs)
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


def _with_unconditional_residuals(state: _GuidanceState, kwargs: dict) -> dict:
    """ControlNet pipelines: the residuals the pipeline passes are for the conditional rows; put the
    unconditional rows' residuals (left by the guided ControlNet) in front, matching the batch."""
    down = kwargs.get("down_block_additional_residuals")
    mid = kwargs.get("mid_block_additional_residual")
    if down is None and mid is None:
        return kwargs
    if state.residuals is None:
        raise BackendError(
            "the UNet got ControlNet residuals without those of its unconditional rows: the ControlNet was not "
            "wrapped by sdlab (was pipe.controlnet replaced during a call?)",
            backend="diffusers",
        )
    down_uncond, mid_uncond = state.residuals
    state.residuals = None
    kwargs = dict(kwargs)
    kwargs["down_block_additional_residuals"] = [torch.cat([u, c]) for u, c in zip(down_uncond, down)]
    kwargs["mid_block_additional_residual"] = torch.cat([mid_uncond, mid])
    return kwargs


class _GuidedControlNetForward:
    """Replaces `controlnet.forward` (ControlNetModel or MultiControlNetModel) while sdlab runs a call
    with per-image guidance; a plain pass-through otherwise.

    With its CFG off, the pipeline runs the ControlNet on the conditional rows only. The guided UNet
    also needs the residuals of the unconditional rows, computed as the pipeline's own CFG computes
    them (negative prompt; same latents, control image and conditioning scale). So the ControlNet
    runs once on [unconditional rows of the guided images; all rows]: the pipeline gets the
    conditional part, the unconditional part waits in the shared state for the guided UNet.
    """

    def __init__(self, controlnet, guided_unet: _GuidedUNetForward):
        self.controlnet = controlnet
        self.original = controlnet.forward
        self.guided_unet = guided_unet  # its `state` is this call's state

    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs):
        state = self.guided_unet.state
        if state is None or len(state.rows) == 0:
            return self.original(sample, timestep, encoder_hidden_states, controlnet_cond, *args, **kwargs)
        rows, k = state.rows, len(state.rows)
        return_dict = kwargs.pop("return_dict", True)
        x, timestep, hidden, kwargs = _expand_rows(state, sample, timestep, encoder_hidden_states, kwargs)
        if isinstance(controlnet_cond, (list, tuple)):  # MultiControlNetModel: one image batch per ControlNet
            cond = [torch.cat([c[rows], c]) for c in controlnet_cond]
        else:
            cond = torch.cat([controlnet_cond[rows], controlnet_cond])
        down, mid = self.original(x, timestep, hidden, cond, *args, return_dict=False, **kwargs)
        state.residuals = ([d[:k] for d in down], mid[:k])
        down, mid = [d[k:] for d in down], mid[k:]
        if return_dict:
            from diffusers.models.controlnets.controlnet import ControlNetOutput

            return ControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)
        return down, mid


class DiffusersBackend:
    """A diffusers pipeline behind sdlab's backend protocol."""

    name = "diffusers"

    def __init__(self, pipe):
        from ..loading import pipeline_info

        self.pipe = pipe
        self.info = pipeline_info(pipe)
        self.family: str = self.info.family
        self._embeddings: OrderedDict[tuple, Any] = OrderedDict()
        self._encoders_stamp: tuple = ()
        self._long_texts: dict[str, bool] = {}
        self._lock = threading.RLock()  # one call at a time on this pipeline (the backend is one per pipeline)
        self._call_params = set(inspect.signature(type(pipe).__call__).parameters) - {"self"}
        self._lora_call = None  # sdlab.adapters.LoraCall while a call with LoRAs runs
        self._ti_key: tuple = ()  # (token, sha256) of the textual inversion embeddings of the running call

    # ------------------------------------------------------------ protocol properties

    @property
    def model_id(self) -> str:
        return str(self.info.model)

    @property
    def defaults(self) -> Defaults:
        return self.info.defaults

    @property
    def lock(self):
        """The reentrant lock `run` holds: one call at a time on this pipeline."""
        return self._lock

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

    @property
    def num_controlnets(self) -> int:
        controlnet = getattr(self.pipe, "controlnet", None)
        return 0 if controlnet is None else len(getattr(controlnet, "nets", [controlnet]))

    def _controlnets(self) -> list:
        controlnet = getattr(self.pipe, "controlnet", None)
        return [] if controlnet is None else list(getattr(controlnet, "nets", [controlnet]))

    def supports_per_image_guidance(self) -> bool:
        from diffusers import ControlNetModel

        unet = getattr(self.pipe, "unet", None)
        return (
            self.family in ("sd1", "sd2", "sdxl")
            and unet is not None
            and unet.config.get("time_cond_proj_dim") is None
            # ControlNet pipelines too, when their ControlNets are plain ControlNetModels (_GuidedControlNetForward)
            and all(type(net) is ControlNetModel for net in self._controlnets())
        )

    def _needs_native_guidance(self, pipeline_kwargs) -> bool:
        """ControlNet `guess_mode` (implied by ControlNets with global pooling) keeps the pipeline's own
        CFG: it gives the unconditional rows no ControlNet residuals, and one guidance per call."""
        if not self.is_controlnet:
            return False
        nets = self._controlnets()
        return bool(pipeline_kwargs.get("guess_mode")) or any(n.config.get("global_pool_conditions") for n in nets)

    def identity(self) -> dict[str, Any]:
        import diffusers
        import transformers

        return {
            "backend": self.name,
            "model": self.model_id,
            "weights": self.info.weights_identity(self.pipe),  # content: file hashes, hub commit, or tensors
            "family": self.family,
            "controlnet": self.info.controlnet,
            "dtype": self.info.dtype,
            "device_type": str(self.info.device).split(":")[0],
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def validate(self, request: GenerationRequest) -> None:
        from ..request import check_size
        from ..schedulers import is_flow_matching, resolve_scheduler_name

        check_size(request.width, request.height, self.size_multiple)
        for name, value in (("width", request.width), ("height", request.height)):
            if value < MIN_SIZE:
                raise ValueError(
                    f"`{name}` must be at least {MIN_SIZE} for {self.family} models (smaller images fail inside "
                    f"the denoiser), got {value}"
                )
        if request.scheduler is not None:
            resolve_scheduler_name(request.scheduler, flow_matching=is_flow_matching(self.pipe.scheduler))
        unknown = sorted(set(request.pipeline_kwargs) - self._call_params)
        if unknown:
            raise ValueError(
                f"unknown argument(s) {unknown} for {type(self.pipe).__name__}; "
                f"it accepts: {', '.join(sorted(self._call_params - RESERVED_KWARGS))}"
            )
        if request.has_variation and not self.supports_variation():
            raise ValueError(
                f"`variation_seed`/`variation_strength` need a text-to-image pipeline that takes `latents` "
                f"(SD 1.x/2.x, SDXL, FLUX); {type(self.pipe).__name__} does not"
            )
        if request.clip_skip and self.family not in ("sd1", "sd2", "sdxl"):
            raise ValueError(
                f"`clip_skip` applies to CLIP-encoded SD 1.x/2.x and SDXL models; this one is {self.family!r}"
            )
        if request.num_inference_steps > int(self.pipe.scheduler.config.get("num_train_timesteps", 1000)):
            raise ValueError(
                f"`num_inference_steps`={request.num_inference_steps} is more than the scheduler's "
                f"{self.pipe.scheduler.config.get('num_train_timesteps')} training timesteps"
            )
        if self.is_controlnet:  # control image(s) and ControlNet keywords, checked before any model work
            from ..controlnet.images import check_control_kwargs

            check_control_kwargs(
                request.pipeline_kwargs,
                width=request.width,
                height=request.height,
                num_controlnets=self.num_controlnets,
            )
        if not self.supports_per_image_guidance() and len(set(request.guidance_scale)) > 1:
            raise ValueError(
                f"{type(self.pipe).__name__} takes one `guidance_scale` per call; split the request by guidance"
            )
        # prompt objects (sdlab.prompts.WeightedPrompt) say whether this model can encode them
        for p in (*request.prompt, *request.negative_prompt):
            if p is not None and not isinstance(p, str) and hasattr(p, "validate"):
                p.validate(self.pipe, clip_skip=request.clip_skip)
        self._validate_a1111(request)
        from . import img2img, passes

        img2img.validate(self, request)
        passes.validate(self, request)
        self._validate_loras(request)
        self._validate_embeddings(request)

    def _validate_loras(self, request: GenerationRequest) -> None:
        """LoRAs (sdlab.adapters): each file fits this pipeline; adapters loaded outside sdlab are refused."""
        from .. import adapters

        if not request.has_loras:
            adapters.check_no_foreign_adapters(self.pipe)
            return
        if self.family not in ("sd1", "sd2", "sdxl"):
            raise ValueError(f"`loras` are applied to SD 1.x/2.x and SDXL UNets; this model is {self.family!r}")
        with self._lock:  # the check loads each LoRA once and removes it: never during another thread's call
            for lora in request.loras[0]:
                adapters.check_fits(self.pipe, lora.file)

    def _validate_embeddings(self, request: GenerationRequest) -> None:
        if request.embeddings:  # textual inversion: each file read, its width and token checked
            from ..textual_inversion import check_fits

            check_fits(self.pipe, request.embeddings)

    def _text_loras(self, request: GenerationRequest, i: int) -> tuple:
        """(adapter, text encoder weight) of image i's LoRAs that change its text encoders (weight 0 changes nothing)."""
        from .. import adapters

        out = []
        for lora in request.loras[i]:
            parts = adapters.check_fits(self.pipe, lora.file)
            if lora.te_weight and any(v for k, v in parts.items() if k.startswith("text_encoder")):
                out.append((adapters.adapter_name(lora.file), lora.te_weight))
        return tuple(out)

    def _unet_lora_scales(self, request: GenerationRequest, state) -> dict:
        """Each LoRA's UNet weight: one number when all images share it, else one per row of the UNet's
        batch ([unconditional rows of the guided images; all rows], as the guided UNet lays it out)."""
        from .. import adapters

        scales = {}
        for j, lora in enumerate(request.loras[0]):
            weights = [entries[j].weight for entries in request.loras]
            if len(set(weights)) == 1:
                scales[adapters.adapter_name(lora.file)] = weights[0]
                continue
            w = torch.tensor(weights, dtype=torch.float32)
            rows = state.rows.cpu() if state is not None else torch.zeros(0, dtype=torch.long)
            scales[adapters.adapter_name(lora.file)] = torch.cat([w[rows], w]).to(self._device())
        return scales

    def _validate_a1111(self, request: GenerationRequest) -> None:
        """Plain strings are read with A1111's syntax (sdlab.prompts.a1111): refuse what cannot be honoured."""
        from ..prompts import a1111

        editing = False
        for name, values in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            for p in values:
                if not isinstance(p, str):
                    continue
                a1111.check_supported(p, name, negative=name == "negative_prompt")
                if not a1111.has_syntax(p):
                    continue
                if self.family not in ("sd1", "sd2", "sdxl"):
                    raise ValueError(
                        f"`{name}` {p!r} uses A1111 prompt syntax ({a1111.first_construct(p)!r}), but this "
                        f"{self.family!r} model reads prompts with T5, which cannot weight or schedule them; remove "
                        f"it, or pass sdlab.prompts.verbatim(text) to send the brackets as characters"
                    )
                editing = editing or len(a1111.prompt_schedule(p, request.num_inference_steps)) > 1
        if not editing:
            return
        per_image = self.supports_per_image_guidance() and not self._needs_native_guidance(request.pipeline_kwargs)
        needed = {"prompt_embeds", "add_text_embeds"} if self.family == "sdxl" else {"prompt_embeds"}
        if not per_image or not needed <= set(getattr(self.pipe, "_callback_tensor_inputs", ())):
            raise ValueError(
                f"A1111 prompt editing / alternation ([from:to:when], [a|b]) needs sdlab's per-image guidance "
                f"path, which {type(self.pipe).__name__} does not use here; write the prompt without it"
            )

    def supports_variation(self) -> bool:
        """Seed variations replace the initial noise: text-to-image pipelines only (an img2img or
        inpainting pipeline's `latents` are not its starting noise)."""
        return (
            self.family in ("sd1", "sd2", "sdxl", "flux")
            and "latents" in self._call_params
            and not {"strength", "mask_image"} & self._call_params
        )

    def _initial_latents(self, request: GenerationRequest, generators: list, dtype) -> torch.Tensor:
        """The `latents` of a call with seed variations: each image's noise (`variation_noise`), shaped
        as diffusers' prepare_latents shapes it (FLUX: drawn unpacked, then packed). SD/SDXL pipelines
        scale given latents by the scheduler's init_noise_sigma themselves, as they scale their own."""
        pipe, n = self.pipe, len(request)
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        if self.family == "flux":
            channels = pipe.transformer.config.in_channels // 4
            h, w = 2 * (request.height // (scale * 2)), 2 * (request.width // (scale * 2))
        else:
            channels = pipe.unet.config.in_channels
            h, w = request.height // scale, request.width // scale
        noises = [
            variation_noise((channels, h, w), g, v, s)
            for g, v, s in zip(generators, request.variation_seed, request.variation_strength)
        ]
        latents = torch.stack(noises).to(device=self._device(), dtype=dtype)
        if self.family == "flux":
            latents = pipe._pack_latents(latents, n, channels, h, w)
        return latents

    def validate_many(self, requests) -> None:
        for request in requests:
            self.validate(request)

    # ------------------------------------------------------------ running

    def run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool | None = None,
    ) -> BackendOutput:
        """Make the images of `request`. One call at a time per pipeline: a notebook cell and a
        widget (or any two threads) using the same pipeline wait for each other instead of
        interleaving their denoising steps, schedulers and guidance state."""
        with self._lock:
            from . import passes

            if passes.is_multi_pass(request):  # hires fix, SDXL refiner: two calls, one record
                return passes.run(self, request, progress=progress, progress_bar=progress_bar)
            return self._run(request, progress=progress, progress_bar=progress_bar)

    def _run(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool | None = None,
        output_type: str = "pil",
        call_extra: dict[str, Any] | None = None,
    ) -> BackendOutput:
        from . import img2img

        self.validate(request)
        self._check_encoders()  # before any encoding: cached embeddings of changed text encoders go
        groups = self._length_groups(request)
        if len(groups) > 1:  # long weighted prompts (sdlab.prompts): one call per embedding length
            return self._run_groups(
                request,
                groups,
                progress=progress,
                progress_bar=progress_bar,
                output_type=output_type,
                call_extra=call_extra,
            )
        if len(set(request.guidance_scale)) > 1 and self._needs_native_guidance(request.pipeline_kwargs):
            by_guidance: dict[float, list[int]] = {}  # guess_mode: one call per guidance scale
            for i, g in enumerate(request.guidance_scale):
                by_guidance.setdefault(g, []).append(i)
            return self._run_groups(
                request,
                list(by_guidance.values()),
                progress=progress,
                progress_bar=progress_bar,
                output_type=output_type,
                call_extra=call_extra,
            )
        per_image = self.supports_per_image_guidance() and not self._needs_native_guidance(request.pipeline_kwargs)
        if request.has_loras and not per_image:  # one UNet LoRA weight per call: group images by their weights
            by_weights: dict[tuple, list[int]] = {}
            for i, entries in enumerate(request.loras):
                by_weights.setdefault(tuple(lora.weight for lora in entries), []).append(i)
            if len(by_weights) > 1:
                return self._run_groups(
                    request,
                    list(by_weights.values()),
                    progress=progress,
                    progress_bar=progress_bar,
                    output_type=output_type,
                    call_extra=call_extra,
                )
        pipe = self.pipe
        n = len(request)
        start = time.perf_counter()
        # 1. generators: one CPU generator per image
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in request.seed]
        kwargs = dict(request.pipeline_kwargs)
        kwargs.update(call_extra or {})  # a pass of hires fix / refiner (sdlab.backends.passes)
        steps = img2img.effective_steps(request)  # img2img runs int(steps * strength) of them

        def on_step_end(_pipe, step, timestep, callback_kwargs):
            latents = callback_kwargs.get("latents")
            if latents is not None and not torch.isfinite(latents).all():  # never a black image without a word
                raise BackendError(
                    f"the latents became NaN/inf at step {step + 1} of {steps} (guidance_scale "
                    f"{sorted(set(request.guidance_scale))}, dtype {self.info.dtype}): no image was made; "
                    f"lower the guidance or use float32",
                    backend=self.name,
                )
            if progress is not None:
                progress({"step": step + 1, "total": steps, "timestep": float(timestep), "images": n})
            if state is not None and state.prompt_steps is not None:  # A1111 prompt editing: next step's text
                state.prompt_steps.update(step + 1, callback_kwargs)
            return callback_kwargs

        if progress is not None:  # step 0: the call starts (a server counts a crash from here on against the job)
            progress({"step": 0, "total": steps, "images": n})
        with (
            self._scheduler(request.scheduler) as scheduler_name,
            self._progress_bar(progress_bar),
            self._loras(request) as lora_call,  # LoRAs and embeddings in the pipeline for this call only
        ):
            scheduler_class = type(pipe.scheduler).__name__
            # 2. prompt embeddings (cached per distinct prompt and text-encoder LoRA weights) and the call
            state = None
            if self.supports_per_image_guidance() and not self._needs_native_guidance(kwargs):
                call, state = self._call_per_image_guidance(request, kwargs)
            else:
                call = self._call_native(request, kwargs)
            if lora_call is not None:  # each LoRA's UNet weight, per row where images differ
                lora_call.set_unet(self._unet_lora_scales(request, state))
            if request.has_variation:  # A1111's seed variations: sdlab makes the initial noise
                call["latents"] = self._initial_latents(request, generators, call["prompt_embeds"].dtype)
            if state is not None and state.prompt_steps is not None:
                inputs = ["latents", "prompt_embeds", "add_text_embeds"] if self.family == "sdxl" else None
                call["callback_on_step_end_tensor_inputs"] = inputs or ["latents", "prompt_embeds"]
            # 3. the call (on the img2img/inpainting pipeline of the same components for image inputs);
            #    sdlab's guided UNet/ControlNet only for its duration
            task_pipe = img2img.derived_pipeline(self, img2img.task_of(request))
            with self._guided_forward(state), torch.inference_mode():
                output = task_pipe(
                    **call,
                    **img2img.call_kwargs(self, task_pipe, request),
                    num_inference_steps=request.num_inference_steps,
                    generator=generators,
                    output_type=output_type,
                    callback_on_step_end=on_step_end,
                    **kwargs,
                )
        seconds = time.perf_counter() - start
        images, task_record = img2img.finish(request, list(output.images), output_type)  # inpainting: A1111's overlay
        if len(images) != n:
            raise BackendError(f"the pipeline returned {len(images)} images for {n} requested", backend=self.name)
        record = {
            "backend": self.name,
            "model": self.model_id,
            "model_family": self.family,
            "pipeline": type(task_pipe).__name__,
            "scheduler": scheduler_name,
            "scheduler_class": scheduler_class,
            "model_weights": self.info.weights_identity(pipe),
            "device": self.info.device,
            "dtype": self.info.dtype,
        }
        if self.info.model_hash:
            record["model_hash"] = self.info.model_hash
        if self.info.controlnet:
            record["controlnet"] = self.info.controlnet
        record.update(task_record)
        records = [dict(record) for _ in range(n)]
        # what the text encoders were given (sdlab.prompts): weights, the text sent, dropped words
        from ..adapters import strip_tags
        from ..prompts.a1111 import describe_encoding
        from ..prompts.tokens import record_fields

        for i, r in enumerate(records):
            prompt = strip_tags(request.prompt[i]) if isinstance(request.prompt[i], str) else request.prompt[i]
            r.update(record_fields(pipe, prompt, request.negative_prompt[i]))  # what was encoded: no <lora:> tags
            r.update(describe_encoding(request.prompt[i], steps, a1111=self._a1111(request.prompt[i])))
            r.update(
                describe_encoding(
                    request.negative_prompt[i], steps, "negative_", a1111=self._a1111(request.negative_prompt[i])
                )
            )
            if request.clip_skip:
                r["clip_skip_convention"] = "diffusers (layers skipped; A1111 Clip skip = clip_skip + 1)"
        return BackendOutput(images=images, records=records, seconds=seconds)

    def _length_groups(self, request: GenerationRequest) -> list[list[int]]:
        """Image indices grouped by the token length of their embeddings. Only prompt objects
        (sdlab.prompts.weighted) encode past 77 tokens; each group runs as its own call, so an image
        is padded only to its own negative prompt's length and equals the same seed made alone."""
        everything = list(range(len(request)))
        prompts = (*request.prompt, *request.negative_prompt)
        if all(p is None or (isinstance(p, str) and not self._a1111(p)) for p in prompts):
            return [everything]
        per_image = self.supports_per_image_guidance() and not self._needs_native_guidance(request.pipeline_kwargs)
        groups: dict[int, list[int]] = {}
        skip, steps = request.clip_skip, request.num_inference_steps
        for i in everything:
            length = _max_length(self._conditioning(request.prompt[i], negative=False, clip_skip=skip, steps=steps))
            if not per_image or request.guidance_scale[i] > 1.0:
                negative = self._conditioning(request.negative_prompt[i], negative=True, clip_skip=skip, steps=steps)
                length = max(length, _max_length(negative))
            groups.setdefault(length, []).append(i)
        return list(groups.values())

    def _run_groups(self, request: GenerationRequest, groups: list[list[int]], **kwargs) -> BackendOutput:
        images: list[Any] = [None] * len(request)
        records: list[Any] = [None] * len(request)
        seconds = 0.0
        for group in groups:
            out = self._run(request.select(group), **kwargs)
            seconds += out.seconds
            for j, i in enumerate(group):
                images[i], records[i] = out.images[j], out.records[j]
        return BackendOutput(images=images, records=records, seconds=seconds)

    def _call_per_image_guidance(
        self, request: GenerationRequest, kwargs: dict
    ) -> tuple[dict[str, Any], _GuidanceState]:
        """Pipeline CFG off; the guided UNet does per-image guidance in the same batch."""
        device = self._device()
        skip, steps = request.clip_skip, request.num_inference_steps
        # per image: [(end step, embeddings)], one entry unless A1111 prompt editing changes the text
        positive_steps = [
            self._conditioning(p, negative=False, clip_skip=skip, steps=steps, lora=self._text_loras(request, i))
            for i, p in enumerate(request.prompt)
        ]
        scales = torch.tensor(request.guidance_scale, dtype=torch.float32)
        rows = torch.nonzero(scales > 1.0).flatten()
        negative_steps = [
            self._conditioning(
                request.negative_prompt[i],
                negative=True,
                clip_skip=skip,
                steps=steps,
                lora=self._text_loras(request, i),
            )
            for i in rows.tolist()
        ]
        length = max(_max_length(s) for s in positive_steps + negative_steps)
        positive = [s[0][1] for s in positive_steps]  # denoising step 0 uses each schedule's first entry
        negatives = [s[0][1] for s in negative_steps]
        call: dict[str, Any] = {"guidance_scale": 1.0}
        call["prompt_embeds"] = self._cat_embeds([p[0] for p in positive], length, skip).to(device)
        negative_embeds = negative_pooled = None
        if len(rows):
            negative_embeds = self._cat_embeds([e[0] for e in negatives], length, skip).to(device)
            if self.family == "sdxl":
                negative_pooled = torch.cat([e[1] for e in negatives]).to(device)
        if self.family == "sdxl":
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
        state = _GuidanceState(
            rows=rows.to(device),
            scales=scales[rows].to(device),
            negative_embeds=negative_embeds,
            negative_pooled=negative_pooled,
            guidance_rescale=float(kwargs.pop("guidance_rescale", 0.0) or 0.0),
        )
        if any(len(s) > 1 for s in positive_steps + negative_steps):

            def ready(schedule):
                return [(end, self._ready(e, length, skip, device)) for end, e in schedule]

            positive_ready = [ready(s) for s in positive_steps]
            state.prompt_steps = _PromptSteps(positive_ready, [ready(s) for s in negative_steps], state)
        return call, state

    def _ready(self, embeddings, length: int, clip_skip, device):
        """(embeds, pooled) of one prompt padded to `length` tokens, on the pipeline's device."""
        embeds, pooled = embeddings
        embeds = self._cat_embeds([embeds], length, clip_skip).to(device)
        return embeds, pooled.to(device) if pooled is not None else None

    def _conditioning(
        self, prompt, *, negative: bool, clip_skip: int | None, steps: int, lora: tuple = ()
    ) -> list[tuple[int, Any]]:
        """[(end step, (embeds, pooled))] of one prompt: a string with A1111 prompt editing or
        alternation has one entry per text of its schedule (sdlab.prompts.a1111), anything else one."""
        from ..prompts.a1111 import prompt_schedule

        if isinstance(prompt, str) and self._a1111(prompt):  # the texts A1111 encodes: brackets of editing resolved
            return [
                (end, self._encode(text, negative=negative, clip_skip=clip_skip, lora=lora))
                for end, text in prompt_schedule(prompt, steps)
            ]
        return [(steps, self._encode(prompt, negative=negative, clip_skip=clip_skip, lora=lora))]

    def _call_native(self, request: GenerationRequest, kwargs: dict) -> dict[str, Any]:
        """The pipeline's own guidance (one scale for the call), embeddings from the cache."""
        device = self._device()
        guidance = request.guidance_scale[0]
        call: dict[str, Any] = {"guidance_scale": guidance}
        skip, steps = request.clip_skip, request.num_inference_steps
        # A1111 syntax without prompt editing (validate refuses editing here): one schedule entry
        positive = [
            self._conditioning(p, negative=False, clip_skip=skip, steps=steps, lora=self._text_loras(request, i))[0][1]
            for i, p in enumerate(request.prompt)
        ]
        if self.family == "flux":
            call["prompt_embeds"] = torch.cat([p[0] for p in positive]).to(device)
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
            if any(neg is not None for neg in request.negative_prompt):
                negatives = [self._encode(neg or "", negative=False) for neg in request.negative_prompt]
                call["negative_prompt_embeds"] = torch.cat([e[0] for e in negatives]).to(device)
                call["negative_pooled_prompt_embeds"] = torch.cat([e[1] for e in negatives]).to(device)
            return call
        negatives = [
            self._conditioning(neg, negative=True, clip_skip=skip, steps=steps, lora=self._text_loras(request, i))[0][1]
            for i, neg in enumerate(request.negative_prompt)
        ]
        length = max(e[0].shape[1] for e in positive + negatives)
        call["prompt_embeds"] = self._cat_embeds([p[0] for p in positive], length, skip).to(device)
        if self.family == "sdxl":
            call["pooled_prompt_embeds"] = torch.cat([p[1] for p in positive]).to(device)
        call["negative_prompt_embeds"] = self._cat_embeds([e[0] for e in negatives], length, skip).to(device)
        if self.family == "sdxl":
            call["negative_pooled_prompt_embeds"] = torch.cat([e[1] for e in negatives]).to(device)
        return call

    # ------------------------------------------------------------ helpers

    def _device(self):
        return getattr(self.pipe, "_execution_device", None) or self.pipe.device

    def _cat_embeds(self, embeds: list[torch.Tensor], length: int, clip_skip: int | None = None) -> torch.Tensor:
        """Embeddings concatenated along the batch, each padded with empty-prompt chunks to `length`
        tokens (only long weighted prompts from sdlab.prompts make them longer than 77)."""
        if all(e.shape[1] == length for e in embeds):
            return torch.cat(embeds)
        from ..prompts.weighting import pad_embeddings

        empty = self._encode("", negative=False, clip_skip=clip_skip)[0]
        return torch.cat([pad_embeddings(e, length, empty) for e in embeds])

    def _a1111(self, text: Any) -> bool:
        """Whether a plain string is encoded as A1111 encodes it (sdlab.prompts.a1111): on CLIP-only
        models (SD 1.x/2.x, SDXL) when it uses A1111 syntax or is longer than one 77-token window (in
        chunks, as A1111 does, rather than cut short). Other strings go through the pipeline's own encoding."""
        if not isinstance(text, str) or self.family not in ("sd1", "sd2", "sdxl"):
            return False
        from ..prompts.a1111 import has_syntax

        if "<lora:" in text:  # judged as encoded: without its LoRA tags
            from ..adapters import strip_tags

            text = strip_tags(text)

        if has_syntax(text):
            return True
        long = self._long_texts.get(text)
        if long is None:
            tokenizer = self.pipe.tokenizer
            long = len(tokenizer(text, verbose=False)["input_ids"]) > tokenizer.model_max_length
            if len(self._long_texts) > EMBEDDING_CACHE_SIZE:
                self._long_texts.clear()
            self._long_texts[text] = long
        return long

    def _check_encoders(self) -> None:
        """Forget cached embeddings when the text encoders changed since they were computed (weights
        written in place, e.g. by training in a notebook, or an encoder replaced)."""
        encoders = {n: m for n, m in self.pipe.components.items() if n.startswith("text_encoder") and m is not None}
        stamp = identity.modules_version(encoders)
        if stamp != self._encoders_stamp:
            self._embeddings.clear()
            self._encoders_stamp = stamp

    def _encode(self, text: str | None, *, negative: bool, clip_skip: int | None = None, lora: tuple = ()):
        """(embeds, pooled-or-None) for one text, cached. A missing negative prompt is encoded as the
        pipeline would: "" for SD, zeros for SDXL models with `force_zeros_for_empty_prompt`.
        A prompt object (sdlab.prompts.WeightedPrompt: `.text`, `.encode(pipe)`) encodes itself.
        `clip_skip` (diffusers' convention) is applied here, as the pipeline's encode_prompt does.
        `lora`: (adapter, weight) of the text-encoder LoRAs of this image (sdlab.adapters), part of the key."""
        if isinstance(text, str) and "<lora:" in text:  # A1111 encodes the prompt without its LoRA tags
            from ..adapters import strip_tags

            text = strip_tags(text)
        as_given = text
        if getattr(text, "weighting", None) == "verbatim":  # sdlab.prompts.verbatim: the text as it is
            text, syntax = text.text, False
        else:
            syntax = self._a1111(text)
        is_object = text is not None and not isinstance(text, str)
        key = (
            (
                (self.family, clip_skip, type(text).__name__, text.text)
                if is_object
                else (self.family, clip_skip, text, negative and text is None, syntax)
            )
            + ((lora,) if lora else ())
            + ((self._ti_key,) if self._ti_key else ())
        )
        cached = self._embeddings.get(key)
        if cached is not None:
            self._embeddings.move_to_end(key)
            return cached
        pipe = self.pipe
        device = self._device()
        if self._lora_call is not None:  # the text encoders' LoRA layers at this image's weights (others at 0)
            self._lora_call.set_text({name: dict(lora).get(name, 0.0) for name in self._lora_call.names})
        elif lora:  # pragma: no cover - a bug, never a silent image without its LoRA
            raise BackendError("text-encoder LoRA weights asked outside a call with LoRAs", backend=self.name)
        quiet = contextlib.nullcontext()
        if isinstance(text, str) and not syntax:  # once per distinct prompt: a TokenLimitWarning naming dropped words
            from ..prompts.tokens import drops_words, quiet_truncation_log, warn_if_truncated

            if drops_words(warn_if_truncated(pipe, as_given)):
                quiet = quiet_truncation_log(pipe)  # diffusers' own log line would say it again
        with quiet, torch.inference_mode():
            if is_object:
                value = text.encode(pipe, clip_skip=clip_skip)
            elif syntax:  # A1111 emphasis, BREAK and 77-token chunks (sdlab.prompts.a1111)
                from ..prompts import a1111

                value = a1111.encode(pipe, text, clip_skip=clip_skip)
            elif self.family in ("sd1", "sd2") and clip_skip:
                value = (self._encode_skipping(text or "", clip_skip), None)
            elif self.family in ("sd1", "sd2"):
                embeds, _ = pipe.encode_prompt(text or "", device, 1, False)
                value = (embeds, None)
            elif self.family == "sdxl":
                if text is None and negative and pipe.config.get("force_zeros_for_empty_prompt", False):
                    pos, _, pooled, _ = pipe.encode_prompt(
                        "", device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                    )
                    value = (torch.zeros_like(pos), torch.zeros_like(pooled))
                else:
                    embeds, _, pooled, _ = pipe.encode_prompt(
                        text or "",
                        device=device,
                        num_images_per_prompt=1,
                        do_classifier_free_guidance=False,
                        clip_skip=clip_skip,
                    )
                    value = (embeds, pooled)
            elif self.family == "flux":
                max_len = int(self.info.load_kwargs.get("max_sequence_length", 512))
                embeds, pooled, _ = pipe.encode_prompt(
                    text or "", None, device=device, num_images_per_prompt=1, max_sequence_length=max_len
                )
                value = (embeds, pooled)
            else:  # pragma: no cover
                raise BackendError(f"unsupported family {self.family!r}", backend=self.name)
        value = tuple(v.detach() if v is not None else None for v in value)
        self._embeddings[key] = value
        while len(self._embeddings) > EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return value

    def _encode_skipping(self, text: str, clip_skip: int) -> torch.Tensor:
        """SD 1.x/2.x embeddings from the CLIP layer `clip_skip` before the last, through the final
        layer norm: what diffusers' `encode_prompt(clip_skip=...)` computes (written out here: its
        own code reaches `text_encoder.text_model`, which transformers 5 no longer has)."""
        pipe = self.pipe
        tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
        tokens = tokenizer(
            text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        device = self._device()
        mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
        out = encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
        norm = getattr(encoder, "text_model", encoder).final_layer_norm
        return norm(out.hidden_states[-(clip_skip + 1)]).to(dtype=encoder.dtype, device=device)

    @contextlib.contextmanager
    def _guided_forward(self, state: _GuidanceState | None):
        """sdlab's guided UNet (and ControlNet) forward for one call, removed afterwards: the user's
        pipeline is the same object, with the same forward methods, after the call."""
        if state is None:
            yield
            return
        unet = self.pipe.unet
        guided = _GuidedUNetForward(unet)
        guided.state = state
        patched = [(unet, guided)]
        if self.is_controlnet:
            patched.append((self.pipe.controlnet, _GuidedControlNetForward(self.pipe.controlnet, guided)))
        saved = [(module, module.__dict__.get("forward", _MISSING)) for module, _ in patched]
        for module, wrapper in patched:
            module.forward = wrapper
        try:
            yield
        finally:
            for module, previous in saved:
                if previous is _MISSING:
                    del module.forward
                else:
                    module.forward = previous

    @contextlib.contextmanager
    def _loras(self, request: GenerationRequest):
        """The request's LoRAs (sdlab.adapters.LoraCall) and textual inversion tokens in the pipeline for
        one call, removed afterwards."""
        from ..textual_inversion import applied

        with applied(self.pipe, request.embeddings):  # textual inversion tokens, for this call too
            self._ti_key = tuple((e.token, e.sha256) for e in request.embeddings)
            try:
                if not request.has_loras:
                    yield None
                    return
                from ..adapters import LoraCall

                with LoraCall(self.pipe, request.loras[0]) as lora_call:
                    self._lora_call = lora_call
                    try:
                        yield lora_call
                    finally:
                        self._lora_call = None
            finally:
                self._ti_key = ()

    @contextlib.contextmanager
    def _scheduler(self, name: str | None):
        """Use scheduler `name` for one call (built from the pipeline's config), then restore."""
        from ..schedulers import canonical_name, is_flow_matching, make_scheduler, scheduler_name

        pipe = self.pipe
        if name is None:
            yield scheduler_name(pipe.scheduler)
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


def _max_length(schedule: list[tuple[int, Any]]) -> int:
    """The longest embeddings (tokens) of a prompt's schedule entries."""
    return max(embeddings[0].shape[1] for _, embeddings in schedule)
