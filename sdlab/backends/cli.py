"""`sdlab comfyui ...`: run a raw API-format workflow on a ComfyUI server, see its queue, interrupt.

(Generation with sdlab's parameters on a remote backend is `sdlab generate --model comfyui:URL`
or `--model replicate:owner/name`.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from .comfyui_client import ComfyUIClient, node_error_lines
    from .workflow import Workflow

    workflow = Workflow.load(args.workflow)
    client = ComfyUIClient(args.server)
    result = client.run(workflow, timeout=args.timeout, partial=args.partial)
    if result.refused_outputs:
        print(
            f"ComfyUI refused output node(s) {', '.join(result.refused_outputs)} of prompt {result.prompt_id}; "
            f"the outputs it accepted ran and are collected below:",
            file=sys.stderr,
        )
        for line in node_error_lines(result.node_errors):
            print(f"  {line}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(result.files):
        name = item.get("filename") or f"{result.prompt_id}-{i}.png"
        path = _free_path(out / Path(name).name)
        path.write_bytes(item["data"])  # ComfyUI's own bytes: its embedded workflow is kept
        print(f"{path}  node={item['node_id']}  {item['kind']} {item['media_type']}  prompt_id={result.prompt_id}")
    if not result.files:
        print(f"prompt {result.prompt_id} finished without output files")
    return 0


def _free_path(path: Path) -> Path:
    if not path.exists():
        return path
    i = 1
    while (candidate := path.with_name(f"{path.stem}-{i}{path.suffix}")).exists():
        i += 1
    return candidate


def _cmd_queue(args) -> int:
    from .comfyui_client import ComfyUIClient

    queue = ComfyUIClient(args.server).queue()
    for state in ("queue_running", "queue_pending"):
        for row in queue.get(state, []):
            print(f"{state.split('_')[1]:8} {row[1]}  number={row[0]}")
    if not queue.get("queue_running") and not queue.get("queue_pending"):
        print("queue empty")
    return 0


def _cmd_interrupt(args) -> int:
    from .comfyui_client import ComfyUIClient

    ComfyUIClient(args.server).interrupt(args.prompt_id)
    print("interrupt sent" + (f" for {args.prompt_id}" if args.prompt_id else ""))
    return 0


def _cmd_workflow(args) -> int:
    """Show how sdlab's parameters map onto a workflow, and for which sampler."""
    from .workflow import PARAMETERS, Workflow

    workflow = Workflow.load(args.workflow)
    graph = workflow.graph
    for m in workflow.sampler_maps():
        print(f"{m.label} ({m.class_type})")
    for name in PARAMETERS:
        places = (
            ", ".join(
                f"{nid}.{inp} ({graph[nid]['class_type']})" + (f" [{'; '.join(labels)}]" if labels else "")
                for nid, inp, labels in workflow.places(name)
            )
            or "-"
        )
        print(f"{name:20} {places}")
    print(json.dumps({"outputs": workflow.output_nodes()}))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "comfyui",
        help="run a raw ComfyUI workflow, show the queue, interrupt",
        description="Talk to a ComfyUI server (default http://127.0.0.1:8188).",
    )
    sub = p.add_subparsers(dest="comfyui_command", metavar="ACTION")
    run = sub.add_parser("run", help="run an API-format workflow JSON and save its output files (images, videos)")
    run.add_argument("workflow", help="a workflow exported with 'Save (API Format)'")
    run.add_argument("--server", default="http://127.0.0.1:8188")
    run.add_argument("--out", default="outputs/comfyui")
    run.add_argument("--timeout", type=float, default=600.0)
    run.add_argument(
        "--partial",
        choices=("collect", "cancel"),
        default="collect",
        help="when ComfyUI refuses some outputs and queues the rest: collect what runs (default) or cancel it",
    )
    run.set_defaults(func=_cmd_run)
    q = sub.add_parser("queue", help="the server's running and pending prompts")
    q.add_argument("--server", default="http://127.0.0.1:8188")
    q.set_defaults(func=_cmd_queue)
    i = sub.add_parser("interrupt", help="interrupt the running prompt")
    i.add_argument("--server", default="http://127.0.0.1:8188")
    i.add_argument("--prompt-id", default=None, help="only if this prompt is the one running")
    i.set_defaults(func=_cmd_interrupt)
    w = sub.add_parser("workflow", help="show where sdlab's parameters go in a workflow")
    w.add_argument("workflow", nargs="?", default=None, help="default: sdlab's txt2img workflow")
    w.set_defaults(func=_cmd_workflow)
