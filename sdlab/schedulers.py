"""Schedulers by the names people use: A1111's ("DPM++ 2M Karras", "Euler a") and diffusers' class names.

Every scheduler is built from the pipeline's own scheduler config (`from_config`), so the model's
training schedule (beta schedule, prediction type, timestep spacing) is kept and only the
sampling method changes.
"""

from __future__ import annotations

import weakref

from typing import Any

# A1111 sampler name -> (diffusers class name, config overrides).
A1111_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler Karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}

# Flow-matching models (FLUX) take only flow-matching schedulers; A1111/Forge call theirs "Euler".
FLOW_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
}

_CLASS_TO_A1111 = {}
for _name, (_cls, _over) in A1111_SCHEDULERS.items():
    _CLASS_TO_A1111.setdefault((_cls, tuple(sorted(_over.items()))), _name)


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def is_flow_matching(scheduler_or_config: Any) -> bool:
    config = getattr(scheduler_or_config, "config", scheduler_or_config)
    cls = getattr(scheduler_or_config, "__class__", type(None)).__name__
    name = config.get("_class_name", cls) if hasattr(config, "get") else cls
    return "FlowMatch" in str(name) or "FlowMatch" in cls


def scheduler_names(pipe: Any | None = None) -> list[str]:
    """The A1111 names valid for `pipe` (all of them when `pipe` is None)."""
    if pipe is not None and is_flow_matching(pipe.scheduler):
        return list(FLOW_SCHEDULERS)
    return list(A1111_SCHEDULERS)


def resolve_scheduler_name(name: str, *, flow_matching: bool = False) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config overrides) for an A1111 name or a diffusers class name."""
    import diffusers

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`scheduler` must be a non-empty name, got {name!r}")
    table = FLOW_SCHEDULERS if flow_matching else A1111_SCHEDULERS
    wanted = _normalise(name)
    for a1111, spec in table.items():
        if _normalise(a1111) == wanted:
            return spec
    # Diffusers class names are accepted as they are (case-insensitive).
    for cls_name in dir(diffusers):
        if cls_name.lower() == name.strip().lower() and cls_name.endswith("Scheduler"):
            if flow_matching != ("FlowMatch" in cls_name):
                kind = "flow-matching" if flow_matching else "non-flow-matching"
                raise ValueError(f"`scheduler`={name!r} does not fit this {kind} model; valid: {', '.join(table)}")
            return cls_name, {}
    raise ValueError(
        f"unknown `scheduler` {name!r}; valid names: {', '.join(table)} "
        f"(or a diffusers scheduler class name such as 'DPMSolverMultistepScheduler')"
    )


def make_scheduler(name: str, base_config: Any):
    """A new scheduler `name` built from `base_config` (a pipeline's `scheduler.config`)."""
    import diffusers

    flow = is_flow_matching(base_config)
    cls_name, overrides = resolve_scheduler_name(name, flow_matching=flow)
    cls = getattr(diffusers, cls_name)
    config = dict(base_config)
    # Karras sigmas etc. must not leak from the base config into a scheduler asked for without them.
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if key in config and key not in overrides:
            config[key] = False
    if cls_name == "DPMSolverMultistepScheduler" and "algorithm_type" not in overrides:
        config["algorithm_type"] = "dpmsolver++"
    config.update(overrides)
    return cls.from_config(config)


def set_scheduler(pipe: Any, name: str):
    """Replace `pipe.scheduler` by scheduler `name`, built from the pipeline's own config. Returns it."""
    scheduler = make_scheduler(name, pipe.scheduler.config)
    pipe.scheduler = scheduler
    _NAMES[scheduler] = canonical_name(name, flow_matching=is_flow_matching(scheduler))
    return scheduler


# The name a scheduler was asked for by (an A1111 name where it has one), per scheduler object.
_NAMES: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def scheduler_name(scheduler: Any) -> str:
    """The name a scheduler object was made by (`set_scheduler`), else `describe_scheduler`'s."""
    return _NAMES.get(scheduler) or describe_scheduler(scheduler)


def canonical_name(name: str, *, flow_matching: bool = False) -> str:
    """The A1111 spelling of `name` if it has one, else the diffusers class name."""
    table = FLOW_SCHEDULERS if flow_matching else A1111_SCHEDULERS
    wanted = _normalise(name)
    for a1111 in table:
        if _normalise(a1111) == wanted:
            return a1111
    return resolve_scheduler_name(name, flow_matching=flow_matching)[0]


def describe_scheduler(scheduler: Any) -> str:
    """The A1111 name of a scheduler instance when it matches one, else its class name."""
    cls = type(scheduler).__name__
    config = scheduler.config
    if "FlowMatch" in cls:
        for a1111, (flow_cls, _) in FLOW_SCHEDULERS.items():
            if flow_cls == cls:
                return a1111
        return cls
    best = None
    for a1111, (a_cls, overrides) in A1111_SCHEDULERS.items():
        if a_cls != cls:
            continue
        if all(config.get(k) == v for k, v in overrides.items()):
            karras_wanted = overrides.get("use_karras_sigmas", False)
            if bool(config.get("use_karras_sigmas", False)) != karras_wanted:
                continue
            if best is None or len(overrides) > len(A1111_SCHEDULERS[best][1]):
                best = a1111
    return best or cls
