"""Schedulers by the names people use: A1111's ("DPM++ 2M Karras", "Euler a") and diffusers' class names.

Every scheduler is built from the pipeline's own scheduler config (`from_config`), so the model's
training schedule (beta schedule, prediction type, timestep spacing) is kept and only the
sampling method changes.

Names are A1111's sampler, optionally followed by one of its (v1.10) schedule types that
diffusers can express: "DPM++ 2M SDE Exponential", "Euler SGM Uniform", "DPM2 a Karras". A bare
sampler name ("DPM++ 2M") runs on the model's own timestep spacing, which is what A1111 calls
the "Uniform" schedule type (and what its bare names meant before v1.9). A1111 v1.10's
"Automatic" is the sampler's own default (Karras for DPM++ 2M, Exponential for DPM++ 2M SDE):
`from_a1111("DPM++ 2M SDE", "Automatic")` is "DPM++ 2M SDE Exponential".
"""

from __future__ import annotations

import difflib
import functools
import inspect
import weakref
from typing import Any

# A1111 v1.10's samplers that diffusers has a scheduler for: name -> (diffusers class name, config
# overrides, the schedule type A1111 v1.10 picks for "Automatic"; None: the model's own sigmas).
SAMPLERS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "Karras"),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}, "Karras"),
    "DPM++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        "Exponential",
    ),
    "DPM++ 2M SDE Heun": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
        "Exponential",
    ),
    "DPM++ 3M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        "Exponential",
    ),
    "DPM2": ("KDPM2DiscreteScheduler", {}, "Karras"),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}, "Karras"),
    "Euler": ("EulerDiscreteScheduler", {}, None),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}, None),
    "Heun": ("HeunDiscreteScheduler", {}, None),
    "LMS": ("LMSDiscreteScheduler", {}, None),
    "LCM": ("LCMScheduler", {}, None),
    "DDIM": ("DDIMScheduler", {}, None),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}, None),
    "UniPC": ("UniPCMultistepScheduler", {}, None),
    # diffusers' own (not in A1111): bare names only
    "DDPM": ("DDPMScheduler", {}, None),
    "DEIS": ("DEISMultistepScheduler", {}, None),
    "TCD": ("TCDScheduler", {}, None),
}
# A1111 runs these on their own timesteps and ignores the schedule type; the last three are not A1111's.
TIMESTEP_SAMPLERS = frozenset({"DDIM", "PLMS", "UniPC"})
NOT_A1111 = frozenset({"DDPM", "DEIS", "TCD"})

# A1111 v1.10 schedule types diffusers can express (the mapping table of diffusers' scheduler
# overview), as config overrides: (needed, used where the class has the option).
SCHEDULE_TYPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "Karras": ({"use_karras_sigmas": True}, {}),
    "Exponential": ({"use_exponential_sigmas": True}, {"timestep_spacing": "linspace"}),
    "Beta": ({"use_beta_sigmas": True}, {"timestep_spacing": "linspace"}),
    "SGM Uniform": ({"timestep_spacing": "trailing"}, {}),
    "Simple": ({"timestep_spacing": "trailing"}, {}),
}
# Every A1111 v1.10 schedule type, by its labels, names and aliases (modules/sd_schedulers.py).
A1111_SCHEDULE_TYPES: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm uniform": "SGM Uniform",
    "sgm_uniform": "SGM Uniform",
    "sgmuniform": "SGM Uniform",
    "kl optimal": "KL Optimal",
    "kl_optimal": "KL Optimal",
    "align your steps": "Align Your Steps",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}
# A1111 v1.10 samplers diffusers has no scheduler for.
A1111_ONLY_SAMPLERS = ("DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++")


def _options(cls_name: str) -> set[str]:
    import diffusers

    return set(inspect.signature(getattr(diffusers, cls_name).__init__).parameters)


def _build_table() -> dict[str, tuple[str, dict[str, Any]]]:
    table: dict[str, tuple[str, dict[str, Any]]] = {}
    for sampler, (cls_name, overrides, _default) in SAMPLERS.items():
        table[sampler] = (cls_name, dict(overrides))
        if sampler in TIMESTEP_SAMPLERS or sampler in NOT_A1111:
            continue
        options = _options(cls_name)
        for schedule, (needed, optional) in SCHEDULE_TYPES.items():
            if not set(needed) <= options:
                continue
            extra = {k: v for k, v in optional.items() if k in options}
            table[f"{sampler} {schedule}"] = (cls_name, {**overrides, **needed, **extra})
    return table


@functools.lru_cache(maxsize=1)
def a1111_schedulers() -> dict[str, tuple[str, dict[str, Any]]]:
    """sdlab name -> (diffusers class name, config overrides): every A1111 sampler x schedule type
    diffusers can build (read from diffusers' classes on first use: importing sdlab imports no diffusers)."""
    return _build_table()


def __getattr__(name: str) -> Any:  # `A1111_SCHEDULERS`, the table, built when first asked for
    if name == "A1111_SCHEDULERS":
        return a1111_schedulers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Flow-matching models (FLUX) take only flow-matching schedulers; A1111/Forge call theirs "Euler".
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def split_a1111(name: str) -> tuple[str, str | None]:
    """(sampler, A1111 schedule type label or None) of a name, as A1111 v1.10 splits "DPM++ 2M Karras"."""
    text = " ".join(str(name).split())
    low = text.lower()
    samplers = {_normalise(s): s for s in [*SAMPLERS, *A1111_ONLY_SAMPLERS]}
    if _normalise(text) in samplers:
        return samplers[_normalise(text)], None
    for alias in sorted(A1111_SCHEDULE_TYPES, key=len, reverse=True):  # "SGM Uniform" before "Uniform"
        if low.endswith(" " + alias):
            head = text[: -len(alias) - 1]
            return samplers.get(_normalise(head), head), A1111_SCHEDULE_TYPES[alias]
    return text, None


def from_a1111(sampler: str, schedule_type: str | None = None) -> str:
    """The sdlab name of A1111's (Sampler, Schedule type) pair, read as A1111 v1.10 reads it: a
    schedule in the sampler name ("DPM++ 2M Karras") counts, "Automatic" is the sampler's default,
    "Uniform" (the model's own sigmas) is the bare name, and A1111's own-timestep samplers (DDIM,
    PLMS, UniPC) ignore the schedule type. Names sdlab cannot build come back as they are
    ("DPM++ 2S a Karras"): building them is the error that lists the near names."""
    base, in_name = split_a1111(sampler)
    schedule = in_name or (
        A1111_SCHEDULE_TYPES.get(_normalise(schedule_type), schedule_type) if schedule_type else None
    )
    if schedule == "Automatic":
        schedule = SAMPLERS[base][2] if base in SAMPLERS else None
    if schedule in (None, "Uniform") or base in TIMESTEP_SAMPLERS:
        return base
    return f"{base} {schedule}"


def to_a1111(name: str) -> tuple[str, str | None]:
    """(Sampler, Schedule type) as A1111 v1.10 writes them for an sdlab name; A1111 reads them back
    into the same sampler and schedule. A bare name is written "Uniform" when A1111's default for
    the sampler is another schedule, else "Automatic" (as A1111 writes it). Names A1111 does not
    have (diffusers class names, DEIS, ComfyUI pairs) are written as they are, without a type."""
    base, schedule = split_a1111(name)
    if base not in SAMPLERS or base in NOT_A1111:
        return str(name), None
    if schedule is None or schedule == "Uniform":
        return base, "Uniform" if SAMPLERS[base][2] else "Automatic"
    if schedule == "Automatic":
        return base, SAMPLERS[base][2] or "Automatic"
    return base, schedule


def is_flow_matching(scheduler_or_config: Any) -> bool:
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    cls = getattr(scheduler_or_config, "__class__", type(None)).__name__
    name = config.get("_class_name", cls) if hasattr(config, "get") else cls
    return "FlowMatch" in str(name) or "FlowMatch" in cls


def scheduler_names(pipe: Any | None = None) -> list[str]:
    """The names valid for `pipe` (all of them when `pipe` is None)."""
    if pipe is not None and is_flow_matching(pipe.scheduler):
        return list(FLOW_SCHEDULERS)
    return list(a1111_schedulers())


def _lookup(name: str, table: dict[str, Any]) -> str | None:
    """The table key `name` means: matched loosely, with A1111's "Uniform" and "Automatic" understood."""
    by_norm = {_normalise(k): k for k in table}
    if _normalise(name) in by_norm:
        return by_norm[_normalise(name)]
    base, schedule = split_a1111(name)
    if schedule is None:
        return None
    if table is FLOW_SCHEDULERS:  # flow models have one schedule: the model's own (Forge writes it "Simple")
        return by_norm.get(_normalise(base)) if schedule in ("Automatic", "Uniform", "Simple") else None
    if base in TIMESTEP_SAMPLERS and schedule not in ("Automatic", "Uniform"):
        return None  # asked for by name, a schedule DDIM/PLMS/UniPC would not use is an error, never dropped
    return by_norm.get(_normalise(from_a1111(base, schedule)))


def _unknown(name: str, table: dict[str, Any], flow_matching: bool) -> ValueError:
    base, schedule = split_a1111(name)
    why = ""
    if base in A1111_ONLY_SAMPLERS:
        why = f" (A1111's {base!r} sampler has no diffusers scheduler)"
    elif base in SAMPLERS and schedule and not flow_matching:
        why = f" (diffusers cannot build A1111's {base!r} with schedule type {schedule!r})"
    by_norm = {_normalise(k): k for k in table}
    near = [by_norm[n] for n in difflib.get_close_matches(_normalise(name), list(by_norm), n=6, cutoff=0.6)]
    if base in SAMPLERS:
        near += [k for k in table if split_a1111(k)[0] == base and k not in near][: max(0, 8 - len(near))]
    hint = f"; near names: {', '.join(near)}" if near else f"; valid names: {', '.join(table)}"
    return ValueError(
        f"unknown `scheduler` {name!r}{why}{hint} (all: sdlab.scheduler_names(pipe), `sdlab schedulers`; "
        f"or a diffusers scheduler class name such as 'DPMSolverMultistepScheduler')"
    )


def resolve_scheduler_name(name: str, *, flow_matching: bool = False) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config overrides) for an sdlab/A1111 name or a diffusers class name."""
    import diffusers

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`scheduler` must be a non-empty name, got {name!r}")
    table = FLOW_SCHEDULERS if flow_matching else a1111_schedulers()
    key = _lookup(name, table)
    if key is not None:
        return table[key]
    # Diffusers class names are accepted as they are (case-insensitive).
    for cls_name in dir(diffusers):
        if cls_name.lower() == name.strip().lower() and cls_name.endswith("Scheduler"):
            if flow_matching != ("FlowMatch" in cls_name):
                kind = "flow-matching" if flow_matching else "non-flow-matching"
                raise ValueError(f"`scheduler`={name!r} does not fit this {kind} model; valid: {', '.join(table)}")
            return cls_name, {}
    raise _unknown(name, table, flow_matching)


# The model's own timestep spacing, kept in a scheduler's config when a schedule type replaced it,
# so that a bare name built later from that config runs on the model's spacing again.
_MODEL_SPACING = "_sdlab_model_timestep_spacing"


def make_scheduler(name: str, base_config: Any):
    """A new scheduler `name` built from `base_config` (a pipeline's `scheduler.config`)."""
    import diffusers

    flow = is_flow_matching(base_config)
    cls_name, overrides = resolve_scheduler_name(name, flow_matching=flow)
    cls = getattr(diffusers, cls_name)
    config = dict(base_config)
    # Karras sigmas etc. must not leak from the base config into a scheduler asked for without them.
    for key in _SIGMA_FLAGS:
        if key in config and key not in overrides:
            config[key] = False
    defaults = list(config.get("_use_default_values") or [])
    if _MODEL_SPACING in config and "timestep_spacing" not in overrides:
        original = config.pop(_MODEL_SPACING)
        if original:
            config["timestep_spacing"] = original
        else:  # the model never set one: the class's own default
            config.pop("timestep_spacing", None)
    elif "timestep_spacing" in overrides and _MODEL_SPACING not in config:
        defaulted = "timestep_spacing" in defaults or "timestep_spacing" not in config
        config[_MODEL_SPACING] = "" if defaulted else config["timestep_spacing"]
    if cls_name == "DPMSolverMultistepScheduler" and "algorithm_type" not in overrides:
        config["algorithm_type"] = "dpmsolver++"
    if cls_name == "DPMSolverMultistepScheduler" and "solver_type" not in overrides:
        config["solver_type"] = "midpoint"
    config.update(overrides)
    # diffusers drops the keys of `_use_default_values` when the class changes: never the ones asked for
    config["_use_default_values"] = [k for k in defaults if k not in overrides]
    scheduler = cls.from_config(config)
    lost = {k: v for k, v in overrides.items() if scheduler.config.get(k) != v}
    if lost:
        raise ValueError(f"`scheduler`={name!r}: {cls_name} did not take {lost}")
    return scheduler


def set_scheduler(pipe: Any, name: str):
    """Replace `pipe.scheduler` by scheduler `name`, built from the pipeline's own config. Returns it."""
    scheduler = make_scheduler(name, pipe.scheduler.config)
    pipe.scheduler = scheduler
    _NAMES[scheduler] = canonical_name(name, flow_matching=is_flow_matching(scheduler))
    return scheduler


# The name a scheduler was asked for by (an A1111 name where it has one), per scheduler object.
_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def scheduler_name(scheduler: Any) -> str:
    """The name a scheduler object was made by (`set_scheduler`), else `describe_scheduler`'s."""
    return _NAMES.get(scheduler) or describe_scheduler(scheduler)


def canonical_name(name: str, *, flow_matching: bool = False) -> str:
    """sdlab's spelling of `name` ("dpm++_2m_sde automatic" -> "DPM++ 2M SDE Exponential"), else
    the diffusers class name."""
    table = FLOW_SCHEDULERS if flow_matching else a1111_schedulers()
    key = _lookup(name, table)
    if key is not None:
        return key
    return resolve_scheduler_name(name, flow_matching=flow_matching)[0]


def describe_scheduler(scheduler: Any) -> str:
    """The sdlab name of a scheduler instance when it matches one, else its class name."""
    cls = type(scheduler).__name__
    config = scheduler.config
    if "FlowMatch" in cls:
        for a1111, (flow_cls, _) in FLOW_SCHEDULERS.items():
            if flow_cls == cls:
                return a1111
        return cls
    best = None
    for a1111, (a_cls, overrides) in a1111_schedulers().items():
        if a_cls != cls or not all(config.get(k) == v for k, v in overrides.items()):
            continue
        if any(bool(config.get(flag, False)) != bool(overrides.get(flag, False)) for flag in _SIGMA_FLAGS):
            continue
        if best is None or len(overrides) > len(a1111_schedulers()[best][1]):
            best = a1111
    return best or cls
