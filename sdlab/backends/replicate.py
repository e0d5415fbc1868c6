"""Replicate: hosted models (FLUX 1.1 Pro, FLUX schnell/dev, any `owner/name[:version]`) behind
sdlab's backend protocol, through the official `replicate` client.

What the production guide's `replicate.run(...)[0]` misses, and this backend does:
- one prediction per image, so every image has its own seed (a batch of `num_outputs` shares one);
- sdlab's parameters mapped to each model's input names (a small table of known models; a
  generic mapping for others), values the model cannot take rejected before any call;
- timeouts, retries with exponential backoff on 429 (honouring Retry-After) and 5xx, failed and
  canceled predictions as `BackendError`s carrying the prediction id;
- outputs as a URL, a list of URLs or `FileOutput`s, downloaded, checked (an image, of the
  expected format) and recorded with model, version and prediction id.

This module is the adapter; `replicate_models` holds the model table and the input mapping,
`replicate_client` the HTTP work (predictions, retries, downloads, the thread pool).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..request import GenerationRequest
from .base import BackendOutput, Defaults, ProgressCallback
from .replicate_client import ReplicateClient
from .replicate_models import (
    KNOWN_MODELS,
    PIL_FORMATS,
    ReplicateModel,
    describe_input,
    model_spec,
    parse_model,
    plain_prompt,
    prediction_input,
)

__all__ = ["KNOWN_MODELS", "ReplicateBackend", "ReplicateClient", "ReplicateModel", "parse_model", "plain_prompt"]


class ReplicateBackend:
    """A Replicate model behind sdlab's backend protocol.

    Args:
        model: "black-forest-labs/flux-1.1-pro", "black-forest-labs/flux-schnell", any "owner/name"
            or "owner/name:version".
        api_token: default `REPLICATE_API_TOKEN`.
        inputs: model inputs sent with every prediction (e.g. {"go_fast": False}).
        input_names: override the input name of sdlab parameters, e.g. {"num_inference_steps": "steps"}
            (None: the model does not take it).
        output_format: asked of models that take it ("png", "jpg" or "webp"); images are checked.
        timeout: seconds one prediction may take before it is canceled.
        max_concurrency: predictions in flight at once (one `run` carries up to this many images).
        max_retries: retries of a call answered 429 or 5xx (or lost), with exponential backoff.
        client: a `replicate.Client` (default: one built from `api_token` and `base_url`).
        lora_inputs: (file input, scale input) name pairs, one per LoRA the model takes, for models
            outside the table, e.g. [("lora_weights", "lora_scale"), ("extra_lora", "extra_lora_scale")].
            A request's `loras` are uploaded through the files API and sent there (sdlab.backends.replicate_loras).

    The HTTP work (predictions, retries, downloads, the thread pool) is `ReplicateClient`'s
    (`self.http`); the model table and input mapping are in `replicate_models`.
    """

    num_controlnets = 0  # ControlNet images are not mapped to remote models

    name = "replicate"

    def __init__(
        self,
        model: str,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        input_names: Mapping[str, str | None] | None = None,
        output_format: str | None = "png",
        output_quality: int | None = None,
        defaults: Defaults | None = None,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
        max_concurrency: int = 4,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        client: Any = None,
        lora_inputs: Any = None,
    ):
        self.model, self.version = parse_model(model)
        self.spec = spec = model_spec(self.model, input_names=input_names, defaults=defaults, lora_inputs=lora_inputs)
        fmt = output_format.lower() if isinstance(output_format, str) else output_format
        if fmt is not None and fmt not in PIL_FORMATS:
            raise ValueError(f"`output_format` must be one of png, jpg, webp (or None), got {output_format!r}")
        if spec.output_formats and fmt is not None and fmt not in spec.output_formats:
            raise ValueError(f"`output_format`={fmt!r}: {self.model} makes {', '.join(spec.output_formats)}")
        self.output_format = fmt
        if output_quality is not None and not (isinstance(output_quality, int) and 0 <= output_quality <= 100):
            raise ValueError(f"`output_quality` must be an int from 0 to 100, got {output_quality!r}")
        self.output_quality = output_quality
        self.inputs = dict(inputs or {})
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"`max_concurrency` must be a positive int, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self.http = ReplicateClient(
            self.model,
            self.version,
            api_token=api_token,
            base_url=base_url,
            timeout=timeout,
            poll_interval=poll_interval,
            max_retries=max_retries,
            backoff=backoff,
            max_retry_wait=max_retry_wait,
            client=client,
        )

    def __repr__(self) -> str:
        return f"ReplicateBackend({self.model_ref!r})"

    @property
    def model_ref(self) -> str:
        return f"{self.model}:{self.version}" if self.version else self.model

    # ------------------------------------------------------------ protocol properties

    @property
    def model_id(self) -> str:
        return self.model_ref

    @property
    def defaults(self) -> Defaults:
        return self.spec.defaults

    @property
    def size_multiple(self) -> int:
        return self.spec.size_multiple

    @property
    def max_batch_size(self) -> int:
        return self.max_concurrency

    def supports_per_image_guidance(self) -> bool:
        return False

    def identity(self) -> dict[str, Any]:
        out = {
            "backend": self.name,
            "model": self.model,
            "version": self.version,  # None: the model's current version (official models)
            "inputs": {k: self.inputs[k] for k in sorted(self.inputs)},
            "output_format": self.output_format,
            "output_quality": self.output_quality,
        }
        if self.spec.loras:  # where LoRAs go (written only for models that take them)
            out["lora_inputs"] = [list(pair) for pair in self.spec.loras]
        return out

    def validate(self, request: GenerationRequest) -> None:
        if request.has_variation:
            raise ValueError(
                "`variation_seed`/`variation_strength` (A1111's seed variations) need the local backend; "
                "the Replicate backend cannot set the initial noise"
            )
        from ..inputs import refuse_remote

        refuse_remote(request, "Replicate")
        if request.has_loras:  # only to a model's LoRA inputs, one file per input, one weight per LoRA
            from .replicate_loras import check_loras

            for entries in request.loras:
                check_loras(self.spec, self.model, entries)
        if request.embeddings:
            tokens = ", ".join(e.token for e in request.embeddings)
            raise ValueError(
                f"`embeddings` ({tokens}) need the local backend; the Replicate backend does not load them"
            )
        for i in range(len(request)):
            self.model_input(request, i)
        if len(set(request.guidance_scale)) > 1:
            raise ValueError(
                "the Replicate backend takes one `guidance_scale` per request; split the request by guidance"
            )

    # ------------------------------------------------------------ inputs

    def model_input(
        self, request: GenerationRequest, i: int, lora_urls: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        """The prediction input of image `i` and the sdlab parameters the model does not take
        (`lora_urls`: each LoRA file's uploaded URL by sha256).

        Raises ValueError (naming the argument) for values the model cannot take."""
        return prediction_input(
            self.spec,
            self.model,
            request,
            i,
            inputs=self.inputs,
            output_format=self.output_format,
            output_quality=self.output_quality,
            lora_urls=lora_urls,
        )

    def upload_loras(self, request: GenerationRequest) -> dict[str, dict[str, Any]]:
        """The request's LoRA files uploaded once each: sha256 -> {"id", "url", "sha256"}. The bytes
        sent are hashed as they are read: a file changed since it was resolved is refused."""
        import hashlib

        uploads: dict[str, dict[str, Any]] = {}
        for lora in {lora.file.sha256: lora for entries in request.loras for lora in entries}.values():
            data = Path(lora.file.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != lora.file.sha256:
                raise ValueError(
                    f"LoRA {lora.file.name!r} ({lora.file.path}) changed since it was resolved "
                    f"(sha256 {lora.file.sha256[:12]}...); resolve it again"
                )
            uploads[lora.file.sha256] = self.http.upload(data, Path(lora.file.path).name, lora.file.sha256)
        return uploads

    # ------------------------------------------------------------ running

    def validate_many(self, requests) -> None:
        for request in requests:
            self.validate(request)

    def run(
        self, request: GenerationRequest, *, progress: ProgressCallback | None = None, progress_bar: bool | None = None
    ) -> BackendOutput:  # progress_bar: a remote job shows no local bar
        self.validate(request)
        uploads = self.upload_loras(request) if request.has_loras else {}
        urls = {sha: up["url"] for sha, up in uploads.items()}
        inputs = [self.model_input(request, i, urls) for i in range(len(request))]
        start = time.perf_counter()
        results = self.http.run_all([data for data, _ in inputs], max_workers=self.max_concurrency, progress=progress)
        images, records = [], []
        for (image, record), (data, unused) in zip(results, inputs):
            if unused:
                record["unused_parameters"] = unused
                for name in unused:
                    record[name] = None
            record["replicate_input"] = {k: describe_input(v) for k, v in data.items()}
            if request.loras[len(images)]:  # what each LoRA input was sent: the file (by hash) and the scale
                record["replicate_loras"] = [
                    {
                        "name": lora.file.name,
                        "sha256": lora.file.sha256,
                        file_input: uploads[lora.file.sha256]["url"],
                        "file_id": uploads[lora.file.sha256]["id"],
                        scale_input: data[scale_input],
                    }
                    for lora, (file_input, scale_input) in zip(request.loras[len(images)], self.spec.loras)
                ]
            images.append(image)
            records.append(record)
        return BackendOutput(
            images=images,
            records=records,
            seconds=time.perf_counter() - start,
            info={"prediction_ids": [r["prediction_id"] for r in records]},
        )

    # ------------------------------------------------------------ the client's settings and parts

    @property
    def client(self):
        """The `replicate.Client` (built on first use)."""
        return self.http.client

    @property
    def timeout(self) -> float:
        return self.http.timeout

    @property
    def poll_interval(self) -> float:
        return self.http.poll_interval

    @property
    def max_retries(self) -> int:
        return self.http.max_retries

    @property
    def backoff(self) -> float:
        return self.http.backoff

    @property
    def max_retry_wait(self) -> float:
        return self.http.max_retry_wait

    def _fetch(self, url: str, pid: str) -> bytes:
        return self.http.fetch(url, pid)
