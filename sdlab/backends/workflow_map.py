"""Where sdlab's parameters go in a ComfyUI graph: traced per sampler, by output slot.

A link is `[node_id, slot]`. Following a sampler's `positive` input upstream, a node that carries
both conditionings (ControlNetApplyAdvanced, InpaintModelConditioning, ...) passes on only the
input its output slot comes from: slot 0 from its `positive`, slot 1 from its `negative`. So the
text encoder that is "the prompt" is the one reached through slot 0, never both.

Each sampler (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced) is mapped on its
own. A sampler whose latent comes from another sampler (the SDXL refiner, a second pass) is a
"refiner": it gets the prompts, seed, steps, guidance and sampler, but neither the size (its
latent is the base's) nor the checkpoint (its loader is its own). A graph whose prompts cannot be
placed for certain (an encoder feeding both conditionings, an unknown node carrying both) is
reported as a problem, naming the nodes, and never guessed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl")
CHECKPOINT_INPUTS = {
    "CheckpointLoaderSimple": "ckpt_name",
    "CheckpointLoader": "ckpt_name",
    "UNETLoader": "unet_name",
    "ImageOnlyCheckpointLoader": "ckpt_name",
}
# Nodes with several outputs: output slot -> the inputs that slot is made from (as ComfyUI defines them).
SLOT_INPUTS: dict[str, dict[int, tuple[str, ...]]] = {
    "ControlNetApplyAdvanced": {0: ("positive",), 1: ("negative",)},
    "ControlNetApplySD3": {0: ("positive",), 1: ("negative",)},
    "InpaintModelConditioning": {0: ("positive",), 1: ("negative",), 2: ("vae", "pixels", "mask")},
    "InstructPixToPixConditioning": {0: ("positive",), 1: ("negative",), 2: ("vae", "pixels")},
}

PARAMETERS = (
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "batch_size",
    "sampler_name",
    "scheduler",
    "denoise",
    "ckpt_name",
)


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def text_inputs(node: Mapping[str, Any]) -> list[str]:
    """The text inputs of a text encoder (both `text_g` and `text_l` of CLIPTextEncodeSDXL)."""
    return [k for k in TEXT_INPUTS if isinstance(node["inputs"].get(k), str)]


def _is_text_encoder(node: Mapping[str, Any]) -> bool:
    return bool(text_inputs(node))


def _is_latent_size(node: Mapping[str, Any]) -> bool:
    return "width" in node["inputs"] and "height" in node["inputs"] and not _is_text_encoder(node)


@dataclass
class SamplerMap:
    """The places of sdlab's parameters for one sampler."""

    node: str
    class_type: str
    stage: str  # "base", or "refiner" when another sampler's output feeds its latent
    targets: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.stage} sampler {self.node}"


def walk(
    graph: Mapping[str, Any],
    link: Any,
    accept: Callable[[Mapping[str, Any]], bool],
    *,
    visited: list[str] | None = None,
    problems: list[str] | None = None,
) -> list[str]:
    """Nodes satisfying `accept`, reached from `link` upstream (breadth first, stopping at accepted
    nodes). Through a node of SLOT_INPUTS only the inputs of the output slot used are followed.
    With `problems` (a conditioning walk), an unknown node that takes both `positive` and
    `negative` is reported there and not followed."""
    if not is_link(link):
        return []
    found: list[str] = []
    seen: set[tuple[str, int]] = set()
    queue = deque([(link[0], link[1])])
    while queue:
        nid, slot = queue.popleft()
        if (nid, slot) in seen or nid not in graph:
            continue
        seen.add((nid, slot))
        node = graph[nid]
        if accept(node):
            if nid not in found:
                found.append(nid)
            continue
        if visited is not None and nid not in visited:
            visited.append(nid)
        inputs, cls = node["inputs"], node["class_type"]
        if cls in SLOT_INPUTS:
            names: Any = SLOT_INPUTS[cls].get(slot, ())
        elif problems is not None and "positive" in inputs and "negative" in inputs:
            problems.append(
                f"node {nid} ({cls}) takes both a positive and a negative conditioning and sdlab "
                f"does not know which of its outputs carries which"
            )
            continue
        else:
            names = list(inputs)
        queue.extend((inputs[k][0], inputs[k][1]) for k in names if is_link(inputs.get(k)))
    return found


def map_sampler(graph: Mapping[str, Any], sid: str) -> SamplerMap:
    """Trace every parameter of sampler `sid` through the graph."""
    node = graph[sid]
    inputs = node["inputs"]
    latent = inputs.get("latent_image")
    stage = "refiner" if walk(graph, latent, lambda n: n["class_type"] in SAMPLER_CLASSES) else "base"
    m = SamplerMap(sid, node["class_type"], stage, {p: [] for p in PARAMETERS})

    def add(parameter: str, nid: str, input_name: str) -> None:
        if (nid, input_name) not in m.targets[parameter]:
            m.targets[parameter].append((nid, input_name))

    # 1. the conditionings: the sampler's own positive/negative, or its guider's
    holders = [sid]
    guider = inputs.get("guider")
    if is_link(guider) and guider[0] in graph:
        holders.append(guider[0])
    positive_roots, negative_roots, model_links = [], [], []
    for holder in holders:
        h = graph[holder]["inputs"]
        positive_roots += [h[k] for k in ("positive", "conditioning", "cond1", "cond2") if is_link(h.get(k))]
        negative_roots += [h[k] for k in ("negative",) if is_link(h.get(k))]
        if "cfg" in h:
            add("guidance_scale", holder, "cfg")
        if is_link(h.get("model")):
            model_links.append(h["model"])
    on_positive: list[str] = []
    positive, negative = [], []
    for root in positive_roots:
        positive += [
            t
            for t in walk(graph, root, _is_text_encoder, visited=on_positive, problems=m.problems)
            if t not in positive
        ]
    for root in negative_roots:
        negative += [t for t in walk(graph, root, _is_text_encoder, problems=m.problems) if t not in negative]
    both = [t for t in positive if t in negative]
    if both:
        m.problems.append(
            f"text encoder(s) {', '.join(both)} feed both the positive and the negative conditioning of sampler {sid}"
        )
    for t in positive:
        for k in text_inputs(graph[t]):
            add("prompt", t, k)
        if "guidance" in graph[t]["inputs"]:  # CLIPTextEncodeFlux
            add("guidance_scale", t, "guidance")
    for t in negative:
        for k in text_inputs(graph[t]):
            add("negative_prompt", t, k)
    for nid in on_positive:
        if graph[nid]["class_type"] == "FluxGuidance":
            add("guidance_scale", nid, "guidance")
    # 2. seed, steps, sampler, schedule, denoise: on the sampler or on the nodes feeding it
    for name in ("noise_seed", "seed"):
        if name in inputs:
            add("seed", sid, name)
            break
    for nid in walk(graph, inputs.get("noise"), lambda n: "noise_seed" in n["inputs"]):
        add("seed", nid, "noise_seed")
    own = (
        ("steps", "num_inference_steps"),
        ("sampler_name", "sampler_name"),
        ("scheduler", "scheduler"),
        ("denoise", "denoise"),
    )
    for name, parameter in own:
        if name in inputs:
            add(parameter, sid, name)
    for nid in walk(graph, inputs.get("sigmas"), lambda n: "steps" in n["inputs"]):
        for name, parameter in own:
            if name in graph[nid]["inputs"]:
                add(parameter, nid, name)
    for nid in walk(graph, inputs.get("sampler"), lambda n: "sampler_name" in n["inputs"]):
        add("sampler_name", nid, "sampler_name")
    # 3. size and checkpoint: a refiner's latent and model are not the request's to set
    if stage == "base":
        for nid in walk(graph, latent, _is_latent_size):
            for name in ("width", "height", "batch_size"):
                if name in graph[nid]["inputs"]:
                    add(name, nid, name)
        for link in model_links:
            for nid in walk(graph, link, lambda n: n["class_type"] in CHECKPOINT_INPUTS):
                add("ckpt_name", nid, CHECKPOINT_INPUTS[graph[nid]["class_type"]])
    return m


def map_samplers(graph: Mapping[str, Any]) -> tuple[list[SamplerMap], list[str]]:
    """Every sampler's map, and the problems that make the prompts' places uncertain."""
    maps = [map_sampler(graph, nid) for nid, n in graph.items() if n["class_type"] in SAMPLER_CLASSES]
    problems = [p for m in maps for p in m.problems]
    positive = {t: m for m in maps for t, _ in m.targets["prompt"]}
    for m in maps:
        for t, _ in m.targets["negative_prompt"]:
            if t in positive and positive[t] is not m:
                problems.append(
                    f"text encoder {t} is the positive prompt of sampler {positive[t].node} "
                    f"and the negative prompt of sampler {m.node}"
                )
    return maps, list(dict.fromkeys(problems))
