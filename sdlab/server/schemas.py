"""The server's request and response bodies (pydantic). The request model is built from the
operator's `Limits`, so the limits are enforced by validation and shown in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

from ..request import MAX_SEED
from .limits import EXTRA_KEYS, Limits

# Extra keys that are sdlab's own arguments (applied by sdlab, not passed to the pipeline).
SDLAB_ARGUMENTS = {"clip_skip": "CLIP layers to skip, diffusers' convention (A1111's 'Clip skip: 2' is 1)"}

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class _GenerateBase(BaseModel):
    """What `POST /generate` accepts: `sdlab.generate`'s parameters, within the operator's limits."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_images: ClassVar[int] = 8

    @model_validator(mode="after")
    def _check_image_count(self):
        prompts = 1 if isinstance(self.prompt, str) else len(self.prompt)
        total = prompts * self.num_images
        if total > self.max_images:
            raise ValueError(
                f"{prompts} prompt(s) x `num_images`={self.num_images} make {total} images; "
                f"this server allows at most {self.max_images} per job"
            )
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `sdlab.generation.build_request` (extra keys as pipeline kwargs,
        but for sdlab's own arguments such as `clip_skip`)."""
        data = self.model_dump()
        extra = {k: data.pop(k) for k in EXTRA_KEYS if k in data and k not in SDLAB_ARGUMENTS}
        data["pipeline_kwargs"] = {k: v for k, v in extra.items() if v is not None}
        return data


def generate_model(limits: Limits) -> type[_GenerateBase]:
    """The `GenerateRequest` model for these limits."""
    text = Annotated[str, StringConstraints(max_length=limits.max_prompt_length)]
    texts = Annotated[list[text], Field(min_length=1, max_length=limits.max_images)]
    seed = Annotated[int, Field(description=f"0..{MAX_SEED}, or -1 for random")]
    seeds = Annotated[list[seed], Field(min_length=1, max_length=limits.max_images)]
    fields: dict[str, Any] = {
        "prompt": (text | texts, Field(description="a prompt, or a list of prompts (num_images images each)")),
        "negative_prompt": (
            text | texts | None,
            Field(None, description="one, or one per prompt; default: the model's"),
        ),
        "width": (int | None, Field(None, le=limits.max_width, description="default: the model's native width")),
        "height": (int | None, Field(None, le=limits.max_height, description="default: the model's native height")),
        "num_inference_steps": (int | None, Field(None, le=limits.max_num_inference_steps)),
        # the operator's maximum is checked after the request's own checks (NaN gets the request's message)
        "guidance_scale": (float | None, Field(None, json_schema_extra={"maximum": limits.max_guidance_scale})),
        "seed": (
            seed | seeds | None,
            Field(
                None,
                description="an int (image i gets seed+i), one per image, or null/-1 for random; resolved at submission",
            ),
        ),
        "num_images": (int, Field(1, le=limits.max_images, description="images per prompt")),
        "scheduler": (
            str | None,
            Field(None, max_length=64, description='an A1111 name ("DPM++ 2M Karras") or a diffusers class'),
        ),
    }
    for key in limits.extra_keys:
        kind, low, high = EXTRA_KEYS[key]
        if key in SDLAB_ARGUMENTS:  # checked by the request itself, as generate checks it
            fields[key] = (kind | None, Field(None, description=SDLAB_ARGUMENTS[key]))
        else:
            fields[key] = (kind | None, Field(None, ge=low, le=high, description="passed to the pipeline"))
    model = create_model("GenerateRequest", __base__=_GenerateBase, **fields)
    model.max_images = limits.max_images
    return model


class Progress(BaseModel):
    step: int
    total: int


class JobStatus(BaseModel):
    id: str
    status: JobState
    position: int | None = Field(None, description="1 = next to run (queued jobs only)")
    progress: Progress | None = Field(None, description="denoising step of a running job")
    error: str | None = None
    num_images: int
    seeds: list[int]
    images: list[str] = Field(default_factory=list, description="URLs of the PNGs (done jobs)")
    params: dict[str, Any] = Field(description="the parameters as submitted")
    attempts: int
    created: str
    started: str | None = None
    finished: str | None = None
    seconds: float | None = Field(None, description="time spent generating")


class Submitted(BaseModel):
    id: str
    status: JobState
    position: int | None
    seeds: list[int]
    url: str


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    model: str | None
    queued: int
    running: int
    error: str | None = None
