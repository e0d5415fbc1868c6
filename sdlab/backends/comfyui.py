"""The ComfyUI backend: each image is one prompt of a workflow template (sdlab's txt2img, or any
API-format workflow) whose prompt, seed, steps, guidance, size, sampler and checkpoint sdlab sets.
The protocol work (socket before submit, messages, errors, history fallback) is `ComfyUIClient`'s.

What comes back is checked, not trusted: the image's size is recorded and must be the requested
one (unless `allow_size_mismatch=True`); every output file (videos and animated images too) is
listed in the record with its digest, and for a workflow whose output is a video the image is
its first frame, recorded as such. A prompt ComfyUI only partly accepts is cancelled, not run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BackendError
from ..request import GenerationRequest, check_size, is_prompt_object, prompt_text
from .base import BackendOutput, Defaults, ProgressCallback
from .comfyui_client import DEFAULT_SERVER, ComfyUIClient, ComfyUIResult, normalise_server, prompt_error
from .comfyui_media import file_record, first_frame
from .workflow import OUTPUT_CLASSES, Workflow, comfy_sampler

__all__ = ["COMFYUI_KWARGS", "ComfyUIBackend", "ComfyUIClient", "ComfyUIResult", "normalise_server", "prompt_error"]

# Request parameters that become None in a record when the workflow has no place for them.
_RECORD_KEYS = {"negative_prompt", "seed", "num_inference_steps", "guidance_scale", "width", "height"}
# Pipeline keywords the ComfyUI backend takes (everything else is an error).
COMFYUI_KWARGS = ("ckpt_name", "denoise", "image", "workflow_inputs")


class ComfyUIBackend:
    """A ComfyUI server behind sdlab's backend protocol: each image is one prompt of a workflow
    template whose prompt, seed, steps, guidance, size, sampler and checkpoint sdlab sets.

    Args:
        server: the server's URL ("http://127.0.0.1:8188").
        workflow: an API-format workflow (path, dict or `Workflow`); default: sdlab's txt2img.
        ckpt_name: the checkpoint file to load (default: the workflow's).
        mapping: explicit places for parameters, e.g. {"seed": "12.value"} (node.input, the node by
            id, title or class) for workflows the automatic mapping does not understand.
        timeout: seconds a `run` may take before its prompts are interrupted.
        allow_size_mismatch: accept images whose size is not the requested one (the record then
            has the returned width/height and the requested ones as requested_width/height);
            by default such an image is an error.
    """

    num_controlnets = 0  # ControlNet images are not mapped to remote models

    name = "comfyui"

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        workflow: str | Path | Mapping | Workflow | None = None,
        ckpt_name: str | None = None,
        mapping: Mapping[str, Any] | None = None,
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        max_batch_size: int = 8,
        allow_size_mismatch: bool = False,
        client: ComfyUIClient | None = None,
    ):
        if not isinstance(allow_size_mismatch, bool):
            raise ValueError(f"`allow_size_mismatch` must be True or False, got {allow_size_mismatch!r}")
        self.client = client or ComfyUIClient(server, poll_interval=poll_interval)
        self.server = self.client.server
        self.workflow = Workflow.load(workflow)
        self.mapping = dict(mapping or {})
        if ckpt_name is not None:
            self.workflow, unused = self.workflow.apply(self.mapping, ckpt_name=ckpt_name)
            if unused:
                raise ValueError(
                    f"`ckpt_name`: the workflow has no checkpoint loader feeding a base sampler's model; "
                    f"pass mapping={{'ckpt_name': 'node.ckpt_name'}} (nodes: {self.workflow.describe()})"
                )
        self.allow_size_mismatch = allow_size_mismatch
        self.timeout = float(timeout)
        self._max_batch_size = int(max_batch_size)
        self._values = self.workflow.values(self.mapping)
        self._comfyui_version: str | None = None
        if not self.workflow.output_nodes():
            raise ValueError(
                f"`workflow` has no output node the ComfyUI backend takes ({', '.join(OUTPUT_CLASSES)}); "
                f"its nodes: {self.workflow.describe()}"
            )

    def __repr__(self) -> str:
        return f"ComfyUIBackend({self.server!r}, model={self.model_id!r})"

    # ------------------------------------------------------------ protocol properties

    @property
    def model_id(self) -> str:
        ckpt = self._values.get("ckpt_name")
        return str(ckpt) if ckpt else f"workflow:{self.workflow.name or self.workflow.sha256()[:12]}"

    @property
    def defaults(self) -> Defaults:
        v = self._values
        negative = v.get("negative_prompt") or None
        sampler, schedule = v.get("sampler_name"), v.get("scheduler")
        return Defaults(
            width=int(v.get("width", 512)),
            height=int(v.get("height", 512)),
            num_inference_steps=int(v.get("num_inference_steps", 20)),
            guidance_scale=float(v.get("guidance_scale", 7.5)),
            negative_prompt=negative,
            scheduler=f"{sampler}:{schedule}" if sampler and schedule else None,
        )

    @property
    def size_multiple(self) -> int:
        return 8

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    def supports_per_image_guidance(self) -> bool:
        return False

    def identity(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "server": self.server,
            "model": self.model_id,
            "workflow": self.workflow.name,
            "workflow_sha256": self.workflow.sha256(),
            "mapping": {k: self.mapping[k] for k in sorted(self.mapping)},
        }

    def validate(self, request: GenerationRequest) -> None:
        if request.has_variation:
            raise ValueError(
                "`variation_seed`/`variation_strength` (A1111's seed variations) need the local backend; "
                "the ComfyUI backend cannot set the initial noise"
            )
        from . import comfyui_img2img

        comfyui_img2img.validate(request, default_workflow=self._is_default_workflow())
        if request.has_loras:  # LoraLoader nodes: the workflow's own, or inserted after the checkpoint loader
            from .comfyui_loras import check_workflow

            check_workflow(self.workflow, len(request.loras[0]))
        if request.embeddings:
            tokens = ", ".join(e.token for e in request.embeddings)
            raise ValueError(f"`embeddings` ({tokens}) need the local backend; the ComfyUI backend does not load them")
        check_size(request.width, request.height, self.size_multiple)
        if request.scheduler is not None:
            comfy_sampler(request.scheduler)
        kwargs = dict(request.pipeline_kwargs)
        unknown = sorted(set(kwargs) - set(COMFYUI_KWARGS))
        if unknown:
            raise ValueError(
                f"unknown argument(s) {unknown} for the ComfyUI backend; it accepts: {', '.join(COMFYUI_KWARGS)}"
            )
        if "image" in kwargs and not self.workflow.find("LoadImage"):
            raise ValueError("`image` needs a LoadImage node in the workflow, and this workflow has none")
        inputs = kwargs.get("workflow_inputs") or {}
        if not isinstance(inputs, Mapping):
            raise ValueError("`workflow_inputs` must be a dict {'node.input': value} (node by id, title or class)")
        for spec in inputs:
            selector, dot, _ = str(spec).rpartition(".")
            if not dot or not self.workflow.find(selector):
                raise ValueError(
                    f"`workflow_inputs` key {spec!r} must read 'node.input' with a node of this workflow; nodes: {self.workflow.describe()}"
                )
        if len(set(request.guidance_scale)) > 1:
            raise ValueError(
                "the ComfyUI backend takes one `guidance_scale` per request; split the request by guidance"
            )
        from ..prompts.a1111 import check_comfyui

        for name in ("prompt", "negative_prompt"):
            for text in getattr(request, name):
                check_comfyui(text, name)
        if not self.workflow.targets("prompt", self.mapping):
            raise ValueError(
                "the workflow has no text encoder feeding a sampler's positive input; pass mapping={'prompt': 'node.text'}"
            )
        steps_places = self.workflow.targets("num_inference_steps", self.mapping)
        for m in self.workflow.sampler_maps():
            start = self.workflow.graph[m.node]["inputs"].get("start_at_step")
            if (
                (m.node, "steps") in steps_places
                and isinstance(start, int)
                and start > 0
                and start >= request.num_inference_steps
            ):
                raise ValueError(
                    f"`num_inference_steps`={request.num_inference_steps}: the {m.label} ({m.class_type}) starts at step "
                    f"{start} of the workflow, so it would run no step; ask for more than {start} steps or change its start_at_step"
                )

    # ------------------------------------------------------------ running

    @property
    def takes_image_fields(self) -> bool:
        """`image=`/`mask_image=`/`strength=` are request fields here (sdlab's templates) with the default
        workflow; a custom workflow's own LoadImage takes `image=` as a workflow input instead."""
        return self._is_default_workflow()

    def _is_default_workflow(self) -> bool:
        return self.workflow.sha256() == Workflow.load(None).sha256()

    def workflow_for(
        self, request: GenerationRequest, i: int, *, image_name: str | None = None, init_name: str | None = None
    ) -> tuple[Workflow, list[str]]:
        """The workflow of image `i` of `request` and the request parameters it had no place for."""
        sampler = schedule = None
        if request.scheduler is not None:
            sampler, schedule = comfy_sampler(request.scheduler)
        kwargs = request.pipeline_kwargs
        workflow, unused = self.workflow.apply(
            self.mapping,
            prompt=comfy_prompt(request.prompt[i]),
            negative_prompt=comfy_prompt(request.negative_prompt[i]) or "",
            seed=int(request.seed[i]),
            num_inference_steps=request.num_inference_steps,
            guidance_scale=float(request.guidance_scale[i]),
            width=request.width,
            height=request.height,
            batch_size=1,
            sampler_name=sampler,
            scheduler=schedule,
            denoise=kwargs.get("denoise"),
            ckpt_name=kwargs.get("ckpt_name"),
        )
        # batch_size is ours (always 1); an empty negative prompt needs no place to go
        unused = [
            u for u in unused if u != "batch_size" and not (u == "negative_prompt" and not request.negative_prompt[i])
        ]
        if request.loras[i]:  # LoraLoader nodes with this image's weights (sdlab.backends.comfyui_loras)
            from .comfyui_loras import with_loras

            workflow = with_loras(workflow, request.loras[i])
        if image_name is not None:
            for nid in workflow.find("LoadImage"):
                workflow._set(nid, "image", image_name)
        if request.image is not None:  # img2img / inpainting: ComfyUI's templates (comfyui_img2img)
            from . import comfyui_img2img

            comfyui_img2img.apply(workflow, request, init_name)
        for spec, value in (kwargs.get("workflow_inputs") or {}).items():
            selector, _, input_name = str(spec).rpartition(".")
            for nid in workflow.find(selector):
                workflow._set(nid, input_name, value)
        return workflow, unused

    def validate_many(self, requests) -> None:
        for request in requests:
            self.validate(request)

    def run(
        self, request: GenerationRequest, *, progress: ProgressCallback | None = None, progress_bar: bool | None = None
    ) -> BackendOutput:  # progress_bar: a remote job shows no local bar
        self.validate(request)
        n = len(request)
        start = time.perf_counter()
        image_name = None
        if "image" in request.pipeline_kwargs:
            image_name = self.client.upload_image(request.pipeline_kwargs["image"])["name"]
        init_names: list[str | None] = [None] * n
        if request.image is not None:  # each distinct init image (with its mask as alpha) uploaded once
            import hashlib

            from . import comfyui_img2img

            uploaded: dict[str, str] = {}
            for i in range(n):
                data = comfyui_img2img.png_bytes(comfyui_img2img.upload_image(request, i))
                digest = hashlib.sha256(data).hexdigest()
                if digest not in uploaded:
                    uploaded[digest] = self.client.upload_image(data, name=f"sdlab-{digest[:16]}.png")["name"]
                init_names[i] = uploaded[digest]
        built = [self.workflow_for(request, i, image_name=image_name, init_name=init_names[i]) for i in range(n)]

        def on_progress(event: dict[str, Any]) -> None:
            if progress is not None:
                progress({**event, "images": n})

        results = self.client.execute(
            [w for w, _ in built], timeout=self.timeout, progress=on_progress, partial="cancel"
        )
        version = self._server_version()
        images, records, files = [], [], []
        for result, (workflow, unused) in zip(results, built):
            image, source, from_frame = _image_of(result)
            values = workflow.values(self.mapping)
            record = {
                "backend": self.name,
                "model": self.model_id,
                "server": self.server,
                "prompt_id": result.prompt_id,
                "comfyui_version": version,
                "workflow": self.workflow.name,
                "workflow_sha256": self.workflow.sha256(),
                "scheduler": request.scheduler or self.defaults.scheduler,
                "sampler_name": values.get("sampler_name"),
                "comfy_scheduler": values.get("scheduler"),
                "cached": result.cached,
                "output": file_record(source),
                "files": [file_record(f) for f in result.files],
            }
            if from_frame:
                record["image_from"] = f"first frame of {source['filename']} (node {source['node_id']})"
            if unused:
                record["unused_parameters"] = unused
                for name in set(unused) & _RECORD_KEYS:
                    record[name] = None  # the workflow had no place for it: the image does not depend on it
            record.update(self._checked_size(image, request, result, workflow))
            images.append(image.convert("RGB") if image.mode != "RGB" else image)
            records.append(record)
            files.append(result.files)
        return BackendOutput(
            images=images,
            records=records,
            seconds=time.perf_counter() - start,
            info={"prompt_ids": [r.prompt_id for r in results], "files": files},
        )

    def _checked_size(
        self, image, request: GenerationRequest, result: ComfyUIResult, workflow: Workflow
    ) -> dict[str, Any]:
        """The record's width/height: the returned image's. A size other than the request's is an
        error unless `allow_size_mismatch` (then the requested size is recorded beside it)."""
        width, height = image.size
        if (width, height) == (request.width, request.height):
            return {"width": width, "height": height}
        if not self.allow_size_mismatch:
            places = (
                ", ".join(f"{nid}.{inp}" for nid, inp in workflow.targets("width", self.mapping))
                or "no node sdlab sets"
            )
            raise BackendError(
                f"ComfyUI prompt {result.prompt_id} returned a {width}x{height} image for a {request.width}x{request.height} "
                f"request: the workflow does not make the requested size (sdlab set the size in: {places}). Ask for "
                f"{width}x{height}, fix the workflow, or pass ComfyUIBackend(..., allow_size_mismatch=True) to keep "
                f"and record the returned size.",
                backend=self.name,
                job_id=result.prompt_id,
            )
        return {"width": width, "height": height, "requested_width": request.width, "requested_height": request.height}

    def run_workflow(
        self,
        workflow: str | Path | Mapping | Workflow,
        *,
        timeout: float | None = None,
        progress: ProgressCallback | None = None,
        partial: str = "cancel",
    ) -> ComfyUIResult:
        """Run a raw API-format workflow as it is and return its files and images (no sdlab parameters).
        `partial`: "cancel" or "collect" a prompt ComfyUI only partly accepts (see ComfyUIClient.execute)."""
        return self.client.run(
            Workflow.load(workflow),
            timeout=self.timeout if timeout is None else timeout,
            progress=progress,
            partial=partial,
        )

    def upload_image(self, image, **kwargs) -> dict[str, Any]:
        return self.client.upload_image(image, **kwargs)

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.client.interrupt(prompt_id)

    def queue(self) -> dict[str, Any]:
        return self.client.queue()

    def _server_version(self) -> str | None:
        if self._comfyui_version is None:
            try:
                self._comfyui_version = str(
                    self.client.system_stats().get("system", {}).get("comfyui_version") or "unknown"
                )
            except BackendError:
                self._comfyui_version = "unknown"
        return self._comfyui_version


def _image_of(result: ComfyUIResult):
    """(image, the file it comes from, True if it is the first frame of a video/animation)."""
    stills = [f for f in result.files if f["kind"] == "image"]
    if stills:
        return result.images[0], stills[0], False
    moving = [f for f in result.files if f["kind"] in ("video", "animated")]
    if moving:
        return first_frame(moving[0]["data"], moving[0]["filename"]), moving[0], True
    kinds = ", ".join(f"{f['filename']} ({f['kind']})" for f in result.files) or "nothing"
    raise BackendError(
        f"ComfyUI prompt {result.prompt_id} produced no image or video (it returned {kinds})",
        backend="comfyui",
        job_id=result.prompt_id,
    )


def comfy_prompt(value: Any) -> str | None:
    """A prompt as ComfyUI's CLIPTextEncode reads it: a string as it is; a prompt object
    (sdlab.prompts.weighted) in A1111 syntax, ``(text:1.2)``, which ComfyUI weights the same way."""
    if is_prompt_object(value):
        return value.as_a1111() if hasattr(value, "as_a1111") else prompt_text(value)
    if isinstance(value, str) and "<lora:" in value:  # applied as LoraLoader nodes, never read as words
        from ..adapters import strip_tags

        return strip_tags(value)
    return value
