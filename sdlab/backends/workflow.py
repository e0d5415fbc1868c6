"""ComfyUI workflow templates: an API-format graph whose inputs sdlab's parameters can set.

A workflow exported with ComfyUI's "Save (API Format)" is a dict `{node_id: {"class_type",
"inputs", "_meta": {"title"}}}`, where an input is a value or a link `[node_id, output_index]`.
Nodes are addressed by id ("3"), by title ("Positive prompt") or by class ("KSampler").

`Workflow.apply(prompt=..., seed=..., ...)` maps sdlab's parameters onto any such graph:
- the sampler: `KSampler` / `KSamplerAdvanced` (seed or noise_seed, steps, cfg, sampler_name,
  scheduler, denoise), or the custom-sampling nodes (`RandomNoise`, `BasicScheduler`,
  `KSamplerSelect`, `CFGGuider`, `FluxGuidance`);
- the prompts: the text encoders (`CLIPTextEncode` and friends) found by following the sampler's
  `positive` / `negative` links upstream;
- the size: the empty latent (`EmptyLatentImage`, `EmptySD3LatentImage`, ...) feeding the sampler;
- the model: `CheckpointLoaderSimple.ckpt_name` (or `UNETLoader.unet_name`).
An explicit `mapping={"seed": "12.value"}` overrides the automatic choice for a parameter.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping

WORKFLOWS_DIR = Path(__file__).parent / "workflows"
DEFAULT_WORKFLOW = WORKFLOWS_DIR / "txt2img_api.json"

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced")
OUTPUT_CLASSES = ("SaveImage", "PreviewImage", "SaveImageWebsocket", "SaveAnimatedWEBP", "SaveAnimatedPNG")
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl")
CHECKPOINT_INPUTS = {"CheckpointLoaderSimple": "ckpt_name", "CheckpointLoader": "ckpt_name",
                     "UNETLoader": "unet_name", "ImageOnlyCheckpointLoader": "ckpt_name"}

# sdlab parameter names a workflow can take (the keys of `mapping` and of `apply`).
PARAMETERS = (
    "prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale", "width", "height",
    "batch_size", "sampler_name", "scheduler", "denoise", "ckpt_name",
)

# A1111 sampler names (sdlab's `scheduler`) as ComfyUI (sampler_name, scheduler) pairs.
_COMFY_SAMPLERS = {
    "euler": "euler", "euler a": "euler_ancestral", "heun": "heun", "lms": "lms", "dpm2": "dpm_2",
    "dpm2 a": "dpm_2_ancestral", "dpm++ 2m": "dpmpp_2m", "dpm++ 2m sde": "dpmpp_2m_sde",
    "dpm++ sde": "dpmpp_sde", "dpm++ 2s a": "dpmpp_2s_ancestral", "dpm++ 3m sde": "dpmpp_3m_sde",
    "dpm fast": "dpm_fast", "dpm adaptive": "dpm_adaptive", "ddim": "ddim", "ddpm": "ddpm",
    "unipc": "uni_pc", "lcm": "lcm", "deis": "deis",
}
_COMFY_SCHEDULE_SUFFIXES = {"karras": "karras", "exponential": "exponential", "sgm uniform": "sgm_uniform",
                            "simple": "simple", "beta": "beta", "normal": "normal"}
COMFY_SAMPLER_NAMES = frozenset(_COMFY_SAMPLERS.values()) | {
    "euler_cfg_pp", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde_gpu",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu", "ipndm", "ipndm_v", "deis", "res_multistep",
    "gradient_estimation", "er_sde", "seeds_2", "seeds_3", "uni_pc_bh2", "lcm",
}
COMFY_SCHEDULER_NAMES = frozenset({"normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform",
                                   "beta", "linear_quadratic", "kl_optimal"})


def comfy_sampler(name: str) -> tuple[str, str]:
    """ComfyUI's (sampler_name, scheduler) for an A1111 name ("DPM++ 2M Karras") or a ComfyUI pair
    written "dpmpp_2m:karras" (or a bare ComfyUI sampler name, with the "normal" schedule)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`scheduler` must be a sampler name such as 'DPM++ 2M Karras' or 'dpmpp_2m:karras', got {name!r}")
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


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


class Workflow:
    """An API-format ComfyUI workflow, with sdlab's parameters settable on it.

    Methods that change the graph return a new `Workflow`; the template is never modified.
    """

    def __init__(self, graph: Mapping[str, Any], *, name: str | None = None):
        self.graph: dict[str, dict[str, Any]] = _check_api_format(graph)
        self.name = name

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: "str | Path | Mapping | Workflow | None" = None) -> "Workflow":
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

    def copy(self) -> "Workflow":
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
        return ", ".join(f"{nid} {n['class_type']}" + (f" ({n['_meta']['title']})" if n.get("_meta", {}).get("title") else "")
                         for nid, n in self.graph.items())

    def get(self, selector: str, input_name: str) -> Any:
        node = self.graph[self.node(selector)]
        if input_name not in node["inputs"]:
            raise ValueError(f"node {selector!r} ({node['class_type']}) has no input {input_name!r}; it has {sorted(node['inputs'])}")
        return node["inputs"][input_name]

    def set(self, selector: str, input_name: str, value: Any) -> "Workflow":
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

    def upstream(self, node_id: str, input_name: str, accept) -> list[str]:
        """Nodes satisfying `accept(node)` reached by following input `input_name` of `node_id`
        upstream (breadth first; the walk stops at accepted nodes)."""
        start = self.graph[node_id]["inputs"].get(input_name)
        if not _is_link(start):
            return []
        found, seen, queue = [], set(), deque([start[0]])
        while queue:
            nid = queue.popleft()
            if nid in seen or nid not in self.graph:
                continue
            seen.add(nid)
            node = self.graph[nid]
            if accept(node):
                found.append(nid)
                continue
            queue.extend(v[0] for v in node["inputs"].values() if _is_link(v))
        return found

    def samplers(self) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in SAMPLER_CLASSES]

    def output_nodes(self) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in OUTPUT_CLASSES]

    def _by_class(self, *classes: str) -> list[str]:
        return [nid for nid, n in self.graph.items() if n["class_type"] in classes]

    def _conditioning_roots(self, which: str) -> list[tuple[str, str]]:
        """(node, input) pairs where the positive or negative conditioning enters sampling."""
        roots = [(nid, which) for nid in self.samplers()]
        for nid in self._by_class("CFGGuider", "DualCFGGuider"):
            roots.append((nid, which))
        if which == "positive":
            roots += [(nid, "conditioning") for nid in self._by_class("BasicGuider")]
        return roots

    def text_nodes(self, which: str) -> list[str]:
        """The text encoders feeding the sampler's `which` ("positive" or "negative") conditioning."""
        found: list[str] = []
        for nid, input_name in self._conditioning_roots(which):
            for t in self.upstream(nid, input_name, lambda n: any(isinstance(n["inputs"].get(k), str) for k in TEXT_INPUTS)):
                if t not in found:
                    found.append(t)
        return found

    def latent_nodes(self) -> list[str]:
        """The empty latents (with width/height inputs) feeding the samplers."""
        accept = lambda n: "width" in n["inputs"] and "height" in n["inputs"]  # noqa: E731
        found: list[str] = []
        starts = [(nid, "latent_image") for nid in self.samplers() + self._by_class("SamplerCustomAdvanced", "SamplerCustom")]
        for nid, input_name in starts:
            for t in self.upstream(nid, input_name, accept):
                if t not in found:
                    found.append(t)
        return found

    def checkpoint_nodes(self) -> list[str]:
        return self._by_class(*CHECKPOINT_INPUTS)

    # ------------------------------------------------------------ sdlab parameters

    def targets(self, parameter: str, mapping: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
        """(node id, input name) pairs that parameter `parameter` sets in this workflow."""
        if parameter not in PARAMETERS:
            raise ValueError(f"unknown workflow parameter {parameter!r}; known: {', '.join(PARAMETERS)}")
        if mapping and parameter in mapping:
            specs = mapping[parameter]
            specs = [specs] if isinstance(specs, str) else list(specs)
            out = []
            for spec in specs:
                selector, dot, input_name = str(spec).rpartition(".")
                if not dot or not selector:
                    raise ValueError(f"`mapping[{parameter!r}]`={spec!r} must read 'node.input' (node by id, title or class)")
                out += [(nid, input_name) for nid in self._find_required(selector, f"mapping[{parameter!r}]")]
            return out
        g = self.graph
        samplers = self.samplers()
        if parameter == "prompt":
            return [(nid, _text_input(g[nid])) for nid in self.text_nodes("positive")]
        if parameter == "negative_prompt":
            return [(nid, _text_input(g[nid])) for nid in self.text_nodes("negative")]
        if parameter == "seed":
            return [(nid, "noise_seed" if "noise_seed" in g[nid]["inputs"] else "seed") for nid in samplers] + \
                [(nid, "noise_seed") for nid in self._by_class("RandomNoise")]
        if parameter == "num_inference_steps":
            return [(nid, "steps") for nid in samplers + self._by_class("BasicScheduler")]
        if parameter == "guidance_scale":
            return [(nid, "cfg") for nid in samplers + self._by_class("CFGGuider")] + \
                [(nid, "guidance") for nid in self._by_class("FluxGuidance")]
        if parameter in ("width", "height", "batch_size"):
            return [(nid, parameter) for nid in self.latent_nodes() if parameter in g[nid]["inputs"]]
        if parameter == "sampler_name":
            return [(nid, "sampler_name") for nid in samplers + self._by_class("KSamplerSelect")]
        if parameter == "scheduler":
            return [(nid, "scheduler") for nid in samplers + self._by_class("BasicScheduler")]
        if parameter == "denoise":
            return [(nid, "denoise") for nid in samplers + self._by_class("BasicScheduler") if "denoise" in g[nid]["inputs"]]
        if parameter == "ckpt_name":
            return [(nid, CHECKPOINT_INPUTS[g[nid]["class_type"]]) for nid in self.checkpoint_nodes()]
        raise AssertionError(parameter)  # pragma: no cover

    def _find_required(self, selector: str, what: str) -> list[str]:
        found = self.find(selector)
        if not found:
            raise ValueError(f"`{what}`: workflow has no node with id, title or class {selector!r}; nodes: {self.describe()}")
        return found

    def apply(self, mapping: Mapping[str, Any] | None = None, **params: Any) -> tuple["Workflow", list[str]]:
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


def _text_input(node: Mapping[str, Any]) -> str:
    for key in TEXT_INPUTS:
        if isinstance(node["inputs"].get(key), str):
            return key
    return "text"  # pragma: no cover - text_nodes only returns nodes with a text input


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
            raise ValueError(f"`workflow` node {node_id!r} is not an API-format node {{'class_type': ..., 'inputs': {{...}}}}")
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
