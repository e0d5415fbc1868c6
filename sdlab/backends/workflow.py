"""ComfyUI workflow templates: an API-format graph whose inputs sdlab's parameters can set.

A workflow exported with ComfyUI's "Save (API Format)" is a dict `{node_id: {"class_type",
"inputs", "_meta": {"title"}}}`, where an input is a value or a link `[node_id, output_index]`.
Nodes are addressed by id ("3"), by title ("Positive prompt") or by class ("KSampler").

`Workflow.apply(prompt=..., seed=..., ...)` maps sdlab's parameters onto any such graph:
- each sampler: `KSampler` / `KSamplerAdvanced` (seed or noise_seed, steps, cfg, sampler_name,
  scheduler, denoise), or the custom-sampling nodes (`RandomNoise`, `BasicScheduler`,
  `KSamplerSelect`, `CFGGuider`, `FluxGuidance`) linked to it;
- the prompts: the text encoders (`CLIPTextEncode` and friends) found by following each sampler's
  `positive` / `negative` links upstream output slot by output slot (workflow_map.py);
- the size: the empty latent (`EmptyLatentImage`, `EmptySD3LatentImage`, ...) feeding a base sampler;
- the model: the `CheckpointLoaderSimple.ckpt_name` (or `UNETLoader.unet_name`) feeding a base
  sampler's model (an SDXL refiner keeps its own loader).
An explicit `mapping={"seed": "12.value"}` overrides the automatic choice for a parameter.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .workflow_map import CHECKPOINT_INPUTS, PARAMETERS, SAMPLER_CLASSES, TEXT_INPUTS, SamplerMap, map_samplers  # noqa: F401
from .workflow_map import is_link as _is_link

WORKFLOWS_DIR = Path(__file__).parent / "workflows"
DEFAULT_WORKFLOW = WORKFLOWS_DIR / "txt2img_api.json"

# Output nodes the ComfyUI backend takes: still images, animated images and videos (for a video,
# the backend's image is its first frame and the file comes back with the record).
IMAGE_OUTPUT_CLASSES = ("SaveImage", "PreviewImage", "SaveImageWebsocket")
ANIMATED_OUTPUT_CLASSES = ("SaveAnimatedWEBP", "SaveAnimatedPNG")
VIDEO_OUTPUT_CLASSES = ("SaveWEBM", "SaveVideo", "VHS_VideoCombine")
OUTPUT_CLASSES = IMAGE_OUTPUT_CLASSES + ANIMATED_OUTPUT_CLASSES + VIDEO_OUTPUT_CLASSES

# A1111 sampler names (sdlab's `scheduler`) as ComfyUI (sampler_name, scheduler) pairs.
_COMFY_SAMPLERS = {
    "euler": "euler",
    "euler a": "euler_ancestral",
    "heun": "heun",
    "lms": "lms",
    "dpm2": "dpm_2",
    "dpm2 a": "dpm_2_ancestral",
    "dpm++ 2m": "dpmpp_2m",
    "dpm++ 2m sde": "dpmpp_2m_sde",
    "dpm++ sde": "dpmpp_sde",
    "dpm++ 2s a": "dpmpp_2s_ancestral",
    "dpm++ 3m sde": "dpmpp_3m_sde",
    "dpm fast": "dpm_fast",
    "dpm adaptive": "dpm_adaptive",
    "ddim": "ddim",
    "ddpm": "ddpm",
    "unipc": "uni_pc",
    "lcm": "lcm",
    "deis": "deis",
}
_COMFY_SCHEDULE_SUFFIXES = {
    "karras": "karras",
    "exponential": "exponential",
    "sgm uniform": "sgm_uniform",
    "simple": "simple",
    "beta": "beta",
    "normal": "normal",
}
COMFY_SAMPLER_NAMES = frozenset(_COMFY_SAMPLERS.values()) | {
    "euler_cfg_pp",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde_gpu",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde_gpu",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "gradient_estimation",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "uni_pc_bh2",
    "lcm",
}
COMFY_SCHEDULER_NAMES = frozenset(
    {
        "normal",
        "karras",
        "exponential",
        "sgm_uniform",
        "simple",
        "ddim_uniform",
        "beta",
        "linear_quadratic",
        "kl_optimal",
    }
)


def comfy_sampler(name: str) -> tuple[str, str]:
    """ComfyUI's (sampler_name, scheduler) for an A1111 name ("DPM++ 2M Karras") or a ComfyUI pair
    written "dpmpp_2m:karras" (or a bare ComfyUI sampler name, with the "normal" schedule)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"`scheduler` must be a sampler name such as 'DPM++ 2M Karras' or 'dpmpp_2m:karras', got {name!r}"
        )
    text = name.strip()
    if ":" in text:
        sampler, _, schedule = text.partition(":")
        if sampler in COMFY_SAMPLER_NAMES and schedule in COMFY_SCHEDULER_NAMES:
            return sampler, schedule
    elif text in COMFY_SAMPLER_NAMES:
        return text, "normal"
    low = " ".join(text.lower().split())
    schedule = "ddim_uniform" if low == "ddim" else "normal"
    for suffix, comfy in _COMFY_SCHEDULE_SUFFIXES.items():
        if low.endswith(" " + suffix):
            low, schedule = low[: -len(suffix) - 1], comfy
            break
    if low in _COMFY_SAMPLERS:
        return _COMFY_SAMPLERS[low], schedule
    raise ValueError(
        f"`scheduler`={name!r} has no ComfyUI equivalent; use an A1111 name "
        f"({', '.join(sorted(k.title() for k in _COMFY_SAMPLERS))}, optionally + ' Karras') "
        f"or a ComfyUI pair such as 'dpmpp_2m:karras'"
    )


class Workflow:
    """An API-format ComfyUI workflow, with sdlab's parameters settable on it.

    Methods that change the graph return a new `Workflow`; the template is never modified.
    """

    def __init__(self, graph: Mapping[str, Any], *, name: str | None = None):
        self.graph: dict[str, dict[str, Any]] = _check_api_format(graph)
        self.name = name

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path | Mapping | Workflow | None = None) -> Workflow:
        """A workflow from a JSON file, a dict or a Workflow; None gives sdlab's default txt2img."""
        if source is None:
            source = DEFAULT_WORKFLOW
        if isinstance(source, Workflow):
            return source.copy()
        if isinstance(source, Mapping):
            return cls(copy.deepcopy(dict(source)))
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"`workflow`: no such file {str(path)!r}")
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"`workflow`: {path} is not valid JSON ({e})") from None
        return cls(graph, name=path.name)

    def copy(self) -> Workflow:
        return Workflow(copy.deepcopy(self.graph), name=self.name)

    def to_dict(self) -> dict[str, Any]:
        """The graph as ComfyUI's POST /prompt takes it (a deep copy)."""
        return copy.deepcopy(self.graph)

    def sha256(self) -> str:
        text = json.dumps(self.graph, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"Workflow({self.name or 'dict'}, {len(self.graph)} nodes)"

    # ------------------------------------------------------------ addressing

    def find(self, selector: str) -> list[str]:
        """Node ids matching `selector`: a node id, else a `_meta.title`, else a `class_type`."""
        selector = str(selector)
        if selector in self.graph:
            return [selector]
        by_title = [nid for nid, node in self.graph.items() if node.get("_meta", {}).get("title") == selector]
        if by_title:
            return by_title
        return [nid for nid, node in self.graph.items() if node["class_type"] == selector]

    def node(self, selector: str) -> str:
        """The one node id matching `selector` (ValueError if none or several)."""
        found = self.find(selector)
        if not found:
            raise ValueError(f"workflow has no node with id, title or class {selector!r}; nodes: {self.describe()}")
        if len(found) > 1:
            raise ValueError(f"{selector!r} matches nodes {found}; address one by id or by a unique title")
        return found[0]

    def describe(self) -> str:
        return ", ".join(
            f"{nid} {n['class_type']}" + (f" ({n['_meta']['title']})" if n.get("_meta", {}).get("title") else "")
            for nid, n in self.graph.items()
        )

    def get(self, selector: str, input_name: str) -> Any:
        node = self.graph[self.node(selector)]
        if input_name not in node["inputs"]:
            raise ValueError(
                f"node {selector!r} ({node['class_type']}) has no input {input_name!r}; it has {sorted(node['inputs'])}"
            )
        return node["inputs"][input_name]

    def set(self, selector: str, input_name: str, value: Any) -> Workflow:
        """A copy with input `input_name` of the node `selector` set to `value`."""
        out = self.copy()
        out._set(out.node(selector), input_name, value)
        return out

    def _set(self, node_id: str, input_name: str, value: Any, *, create: bool = True) -> None:
        node = self.graph[node_id]
        current = node["inputs"].get(input_name)
        if _is_link(current) and not _is_link(value):
            raise ValueError(
                f"input {input_name!r} of node {node_id} ({node['class_type']}) is linked to node {current[0]}; "
                f"set the value on that node instead (e.g. mapping={{...: '{current[0]}.<input>'}})"
            )
        if input_name not in node["inputs"] and not create:
            raise ValueError(f"node {node_id} ({node['class_type']}) has no input {input_name!r}")
        node["inputs"][input_name] = value

    # ------------------------------------------------------------ structure

    def samplers(self) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in SAMPLER_CLASSES]

    def output_nodes(self) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in OUTPUT_CLASSES]

    def sampler_maps(self) -> list[SamplerMap]:
        """Each sampler's parameter places, traced by output slot (see workflow_map)."""
        return map_samplers(self.graph)[0]

    def text_nodes(self, which: str) -> list[str]:
        """The text encoders feeding the samplers' `which` ("positive" or "negative") conditioning."""
        parameter = {"positive": "prompt", "negative": "negative_prompt"}[which]
        return list(dict.fromkeys(nid for nid, _ in self.targets(parameter)))

    def checkpoint_nodes(self) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in CHECKPOINT_INPUTS]

    # ------------------------------------------------------------ sdlab parameters

    def targets(self, parameter: str, mapping: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
        """(node id, input name) pairs that parameter `parameter` sets in this workflow.

        ValueError, naming the nodes, when the prompts' places are uncertain (give them in `mapping`)."""
        return [(nid, input_name) for nid, input_name, _ in self.places(parameter, mapping)]

    def places(self, parameter: str, mapping: Mapping[str, Any] | None = None) -> list[tuple[str, str, list[str]]]:
        """(node id, input name, [the samplers it is for]) for each place `parameter` sets."""
        if parameter not in PARAMETERS:
            raise ValueError(f"unknown workflow parameter {parameter!r}; known: {', '.join(PARAMETERS)}")
        if mapping and parameter in mapping:
            specs = mapping[parameter]
            specs = [specs] if isinstance(specs, str) else list(specs)
            out = []
            for spec in specs:
                selector, dot, input_name = str(spec).rpartition(".")
                if not dot or not selector:
                    raise ValueError(
                        f"`mapping[{parameter!r}]`={spec!r} must read 'node.input' (node by id, title or class)"
                    )
                out += [
                    (nid, input_name, ["mapping"]) for nid in self._find_required(selector, f"mapping[{parameter!r}]")
                ]
            return out
        maps, problems = map_samplers(self.graph)
        if problems and parameter in ("prompt", "negative_prompt"):
            raise ValueError(
                f"cannot tell where `{parameter}` goes in this workflow: {'; '.join(problems)}. "
                f"Name the text inputs with mapping={{'prompt': '<node>.text', 'negative_prompt': '<node>.text'}}"
            )
        places: dict[tuple[str, str], list[str]] = {}
        for m in maps:
            for target in m.targets[parameter]:
                places.setdefault(target, []).append(m.label)
        if parameter == "ckpt_name" and not maps and len(self.checkpoint_nodes()) == 1:
            nid = self.checkpoint_nodes()[0]  # no sampler sdlab knows: the one loader is the model
            places[(nid, CHECKPOINT_INPUTS[self.graph[nid]["class_type"]])] = []
        return [(nid, input_name, labels) for (nid, input_name), labels in places.items()]

    def _find_required(self, selector: str, what: str) -> list[str]:
        found = self.find(selector)
        if not found:
            raise ValueError(
                f"`{what}`: workflow has no node with id, title or class {selector!r}; nodes: {self.describe()}"
            )
        return found

    def apply(self, mapping: Mapping[str, Any] | None = None, **params: Any) -> tuple[Workflow, list[str]]:
        """A copy with sdlab parameters set (None values are left as the template has them).

        Returns the new workflow and the names of given parameters it has no place for."""
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown workflow parameter(s) {unknown}; known: {', '.join(PARAMETERS)}")
        out = self.copy()
        unused = []
        for name, value in params.items():
            if value is None:
                continue
            targets = out.targets(name, mapping)
            if not targets:
                unused.append(name)
                continue
            for nid, input_name in targets:
                out._set(nid, input_name, value)
        return out, unused

    def values(self, mapping: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The template's current value of each parameter it has a place for (the first target's)."""
        values: dict[str, Any] = {}
        for name in PARAMETERS:
            for nid, input_name in self.targets(name, mapping):
                value = self.graph[nid]["inputs"].get(input_name)
                if value is not None and not _is_link(value):
                    values[name] = value
                    break
        return values


def _check_api_format(graph: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(graph, Mapping):
        raise ValueError(f"`workflow` must be a dict of nodes (ComfyUI's API format), got {type(graph).__name__}")
    if "nodes" in graph and "links" in graph:
        raise ValueError(
            "`workflow` is in ComfyUI's UI format (it has 'nodes' and 'links'); export it with "
            "'Save (API Format)' (enable the dev mode options in ComfyUI's settings if the menu item is missing)"
        )
    if "prompt" in graph and isinstance(graph["prompt"], Mapping) and len(graph) <= 5:
        graph = graph["prompt"]  # a saved POST /prompt body
    out: dict[str, dict[str, Any]] = {}
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or "class_type" not in node or not isinstance(node.get("inputs", {}), Mapping):
            raise ValueError(
                f"`workflow` node {node_id!r} is not an API-format node {{'class_type': ..., 'inputs': {{...}}}}"
            )
        out[str(node_id)] = {**node, "inputs": dict(node.get("inputs", {}))}
    if not out:
        raise ValueError("`workflow` has no nodes")
    return out


def iter_links(graph: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
    """(node id, input name, source node id) for every link of an API-format graph."""
    for nid, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                yield nid, name, value[0]
