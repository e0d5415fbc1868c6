"""LoRAs in a ComfyUI workflow: `LoraLoader` nodes between the checkpoint loader and its users.

A workflow without LoraLoader nodes gets one per LoRA, chained after its checkpoint loader: every
input that took the checkpoint's MODEL or CLIP output takes the last LoraLoader's instead. A
workflow with its own LoraLoader nodes (as many as the request has LoRAs) has them set, in graph
order. ComfyUI finds the file by name in its `models/loras` folder: `lora_name` is the file name
sdlab resolved locally (e.g. `style.safetensors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .workflow import Workflow
from .workflow_map import is_link


def lora_loaders(workflow: Workflow) -> list[str]:
    return sorted(workflow.find("LoraLoader"), key=_order)


def _order(nid: str):
    return (0, int(nid)) if nid.isdigit() else (1, nid)


def check_workflow(workflow: Workflow, count: int) -> None:
    """ValueError unless `count` LoRAs have a place in this workflow."""
    own = lora_loaders(workflow)
    if own and len(own) != count:
        raise ValueError(
            f"the workflow has {len(own)} LoraLoader node(s) for {count} LoRA(s); give as many LoRAs, or a "
            f"workflow without LoraLoader nodes (sdlab then inserts them)"
        )
    if not own and len([n for n in workflow.checkpoint_nodes() if _has_clip(workflow, n)]) != 1:
        raise ValueError("`loras` need one CheckpointLoaderSimple (MODEL and CLIP) in the workflow to load them after")


def _has_clip(workflow: Workflow, nid: str) -> bool:
    return workflow.graph[nid]["class_type"] in ("CheckpointLoaderSimple", "CheckpointLoader")


def with_loras(workflow: Workflow, loras: tuple[Any, ...]) -> Workflow:
    """A copy of `workflow` that applies `loras` (sdlab.adapters.Lora: name, UNet and CLIP weights)."""
    if not loras:
        return workflow
    check_workflow(workflow, len(loras))
    out = workflow.copy()
    graph = out.graph
    own = lora_loaders(out)
    if own:
        for nid, lora in zip(own, loras):
            _set(graph[nid], lora)
        return out
    (ckpt,) = [n for n in out.checkpoint_nodes() if _has_clip(out, n)]
    users = [(nid, name, value[1]) for nid, node in graph.items() for name, value in node["inputs"].items()
             if is_link(value) and value[0] == ckpt and value[1] in (0, 1)]  # fmt: skip
    next_id = max([int(n) for n in graph if n.isdigit()] or [0]) + 1
    source = ckpt
    for lora in loras:
        nid = str(next_id)
        next_id += 1
        graph[nid] = {"class_type": "LoraLoader", "inputs": {"model": [source, 0], "clip": [source, 1]},
                      "_meta": {"title": f"sdlab LoRA {lora.file.name}"}}  # fmt: skip
        _set(graph[nid], lora)
        source = nid
    for nid, name, slot in users:
        graph[nid]["inputs"][name] = [source, slot]
    return out


def _set(node: dict, lora) -> None:
    node["inputs"]["lora_name"] = Path(lora.file.path).name
    node["inputs"]["strength_model"] = float(lora.weight)
    node["inputs"]["strength_clip"] = float(lora.te_weight)
