"""The `sdlab` command line: a thin client of the library (generate, sweep, demo, params, ...).

`sdlab serve` and `sdlab comfyui` register themselves (their packages have optional dependencies)
through a `register_cli(subparsers)` function that adds a parser and sets `func`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from .axes import prompt_matrix, prompt_sr
from .backends import open_model
from .generation import generate
from .presets import default_model
from .sweeps import SweepResult, sweep, sweep_from_file

# Modules that contribute sub-commands (each has register_cli(subparsers)).
CLI_MODULES = ["sdlab.cli", "sdlab.server", "sdlab.backends.cli"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="preset name, Hugging Face id, diffusers folder or .safetensors file (default: the embedded model)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--offload", choices=["model", "sequential"], default=None, help="CPU offload (GPU only)")
    parser.add_argument("--attention", choices=["sdpa", "xformers"], default="sdpa")
    parser.add_argument(
        "--controlnet", action="append", default=None, help="a ControlNet preset, id or folder (repeatable)"
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--width", type=int, default=None, help="default: the model's native width")
    parser.add_argument("--height", type=int, default=None, help="default: the model's native height")
    parser.add_argument("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=None)
    parser.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=None)
    parser.add_argument(
        "--scheduler",
        "--sampler",
        dest="scheduler",
        default=None,
        help='A1111 name ("DPM++ 2M Karras", "Euler a") or diffusers class',
    )
    parser.add_argument(
        "--clip-skip",
        dest="clip_skip",
        type=int,
        default=None,
        help="CLIP layers to skip, diffusers' convention (A1111's 'Clip skip: 2' is --clip-skip 1)",
    )


def load_kwargs(args) -> dict:
    """The `load_pipeline` options of the model arguments (`add_model_arguments`)."""
    kwargs = {"device": args.device, "dtype": args.dtype, "offload": args.offload, "attention": args.attention}
    controlnet = args.controlnet[0] if args.controlnet and len(args.controlnet) == 1 else args.controlnet
    if controlnet:
        kwargs["controlnet"] = controlnet
    return kwargs


def generation_kwargs(args) -> dict:
    """The generation parameters of the shared arguments (`add_generation_arguments`), as the
    keyword arguments `generate` and `sweep` both take."""
    return {
        "negative_prompt": args.negative_prompt,
        "width": args.width,
        "height": args.height,
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "scheduler": args.scheduler,
        "clip_skip": args.clip_skip,
    }


def add_executor_arguments(parser: argparse.ArgumentParser, ray_help: str) -> None:
    """Where the work runs: here, or on Ray workers (`executor_from_args`)."""
    parser.add_argument(
        "--executor", choices=["local", "ray"], default="local", help=f"ray: {ray_help} (pip install 'sdlab[ray]')"
    )
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (model copies; one batch each at once)")
    parser.add_argument(
        "--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (default: 1 if the cluster has GPUs)"
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address, e.g. ray://head:10001 (default: RAY_ADDRESS, else a local one)",
    )


def executor_from_args(args):
    """A `RayExecutor` whose workers load the model with the load options, or None (this process)."""
    if args.executor != "ray":
        return None
    from .executors import RayExecutor  # imports nothing of Ray until used

    return RayExecutor(
        args.ray_address,
        num_workers=args.workers,
        num_gpus_per_worker=args.gpus_per_worker,
        load_kwargs=load_kwargs(args),
    )


def load_from_args(args):
    """The backend of the model arguments: "replicate:owner/name", "comfyui:http://host:8188", or
    a local model loaded with the load options."""
    from .backends import is_remote_spec

    return open_model(args.model) if is_remote_spec(args.model) else open_model(args.model, **load_kwargs(args))


def _cmd_generate(args) -> int:
    pipe = load_from_args(args)
    seeds = args.seed if args.seed is None or len(args.seed) > 1 else args.seed[0]
    result = generate(pipe, args.prompt, seed=seeds, num_images=args.num_images, **generation_kwargs(args))
    for path, record in zip(result.save(args.out), result.records):
        print(f"{path}  seed={record['seed']}  {record['seconds']:.2f}s")
    return 0


def _cmd_demo(args) -> int:
    """A labelled prompt x guidance grid with the embedded default model, offline, through a sweep."""
    pipe = open_model(args.model)
    result = sweep(
        pipe,
        None,
        axes={
            "guidance_scale": [1.0, 3.0, 5.0, 7.5],
            "prompt": [
                "a large red circle on a blue background",
                "a small yellow star on a black background",
                "a large green triangle on a white background",
            ],
        },
        seed=args.seed,
        batch_size=12,
        out_dir=args.out,
        title=f"sdlab demo: {pipe.model_id}, seed {args.seed}",
    )
    path = result.save_grid(Path(args.out) / "grid.png")
    print(f"{len(result)} images in {Path(args.out) / 'cells'}; grid: {path}")
    return 0


def _cmd_presets(args) -> int:
    from .presets import CONTROLNET_PRESETS, PRESETS

    for p in PRESETS.values():
        d = p.defaults
        print(
            f"{p.name:14} {p.family:5} {d.width}x{d.height} steps={d.num_inference_steps} guidance={d.guidance_scale:g}  {p.source}"
        )
    for c in CONTROLNET_PRESETS.values():
        print(f"{c.name:14} {c.family:5} controlnet ({c.kind})  {c.source}")
    return 0


def _cmd_schedulers(args) -> int:
    from .schedulers import A1111_SCHEDULERS, FLOW_SCHEDULERS

    for name, (cls, over) in A1111_SCHEDULERS.items():
        print(f"{name:22} {cls} {over or ''}")
    for name, (cls, _) in FLOW_SCHEDULERS.items():
        print(f"{name:22} {cls} (flow matching: FLUX)")
    return 0


def _cmd_params(args) -> int:
    import json

    from .metadata import read_params

    if not Path(args.path).is_file():
        raise ValueError(f"{args.path}: no such file")
    print(json.dumps(read_params(args.path), indent=2, ensure_ascii=False, default=str))
    return 0


def _parse_axis_arg(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"`--axis` takes NAME=VALUES, e.g. seed=1-4 or 'guidance_scale=1,3,5', got {text!r}")
    name, values = text.split("=", 1)
    return name.strip(), values


def _cmd_sweep(args) -> int:
    if args.config:
        return _cmd_sweep_file(args)
    axes: dict[str, Any] = {}
    for text in args.axis or []:
        name, values = _parse_axis_arg(text)
        axes[name] = values
    for text in args.sr or []:
        a = prompt_sr(text)
        axes[a.name] = a
    if args.matrix:
        axes["matrix"] = prompt_matrix(args.matrix)
    link = [tuple(n.strip() for n in group.split(",")) for group in (args.link or [])]
    model_axis = "model" in axes
    executor = executor_from_args(args)
    if executor is not None:  # each Ray worker loads the model itself
        pipe = None if model_axis else (args.model or default_model())
    else:
        pipe = None if model_axis else load_from_args(args)
    try:
        result = _sweep_from_args(args, pipe, axes, link, executor)
    finally:
        if executor is not None:
            executor.close()
    path = result.save_grid(Path(args.out) / "grid.png" if args.out else None, x=args.x, y=args.y, z=args.z)
    failed = len(result.failed)
    print(f"grid: {path}" + (f" ({failed} failed cells)" if failed else ""))
    if args.html is not None:
        print(f"viewer: {result.save_html(args.html or None)}")
    return 1 if failed == len(result) else 0


def _cmd_sweep_file(args) -> int:
    """`sdlab sweep --config sweep.yaml`: the file's sweep; --model, --out, --batch-size, -x/-y/-z
    and --executor still apply, the file holds everything else."""
    from .sweep_file import read_sweep_file

    given = [
        flag
        for flag, value in (
            ("a prompt", args.prompt),
            ("--axis", args.axis),
            ("--sr", args.sr),
            ("--matrix", args.matrix),
            ("--link", args.link),
        )
        if value
    ]
    if given:
        raise ValueError(f"`--config` holds the sweep's prompt and axes; drop {', '.join(given)}")
    file = read_sweep_file(args.config)
    model = args.model or file.model
    overrides: dict[str, Any] = {}
    if args.out:
        overrides["out_dir"] = args.out
    if args.batch_size_given is not None:
        overrides["batch_size"] = args.batch_size_given
    executor = executor_from_args(args)
    model_axis = "model" in file.kwargs.get("axes", {})
    if model_axis:
        pipe = None
    elif executor is not None:
        pipe = model or default_model()
    else:
        args.model = model
        pipe = load_from_args(args)
    try:
        result = sweep_from_file(file, pipe, executor=executor, **overrides)
    finally:
        if executor is not None:
            executor.close()
    path = result.save_grid(result.out_dir / "grid.png", x=args.x, y=args.y, z=args.z)
    failed = len(result.failed)
    print(f"grid: {path}" + (f" ({failed} failed cells)" if failed else ""))
    if args.html is not None:
        print(f"viewer: {result.save_html(args.html or None)}")
    return 1 if failed == len(result) else 0


def _sweep_from_args(args, pipe, axes, link, executor) -> SweepResult:
    return sweep(
        pipe,
        args.prompt,
        axes=axes,
        batch_size=8 if args.batch_size_given is None else args.batch_size_given,
        out_dir=args.out,
        link=link or None,
        vary_seeds=args.vary_seeds,
        seed=args.seed,
        title=args.title,
        executor=executor,
        **generation_kwargs(args),
    )


def _register_sweep(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="a labelled grid over seeds, guidance, steps, schedulers, prompts ...",
        description="Sweep generation parameters into a labelled grid; cells are batched, cached and resumable.",
        epilog='example: sdlab sweep "a red circle" --axis seed=1-4 --axis "guidance_scale=1.5,3,5,7" --out runs/demo',
    )
    p.add_argument("prompt", nargs="?", default=None)
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument(
        "--axis",
        action="append",
        metavar="NAME=VALUES",
        help="an axis, e.g. seed=1-4, 'guidance_scale=0-10 [5]', 'scheduler=Euler a,DDIM' (repeatable; order = x, y, z)",
    )
    p.add_argument(
        "--sr", action="append", metavar="SEARCH,REPLACE,...", help="a prompt search/replace axis (repeatable)"
    )
    p.add_argument("--matrix", default=None, metavar="'base|a|b'", help="a prompt matrix axis")
    p.add_argument("--link", action="append", metavar="A,B", help="axes that move together (zip), e.g. model,size")
    p.add_argument("--vary-seeds", action="store_true", help="add each cell's position to its seed")
    p.add_argument("--seed", type=int, default=0, help="seed of cells without a seed axis (-1: random, recorded)")
    p.add_argument("--batch-size", type=int, default=None, dest="batch_size_given")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a sweep file (.yaml or .toml: model, prompt, axes, link, parameters, metrics); see sdlab.sweep_file",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/sweeps); cached cells are reused")
    p.add_argument("--title", default=None)
    p.add_argument("-x", default=None, help="axis across the grid")
    p.add_argument("-y", default=None, help="axis down the grid")
    p.add_argument("-z", default=None, help="axis of sub-grids")
    p.add_argument(
        "--html",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="also write the HTML viewer (default folder: RUN_DIR/viewer); see `sdlab view`",
    )
    add_executor_arguments(p, "spread the batches over Ray workers, each loading --model itself")
    p.set_defaults(func=_cmd_sweep)


def _cmd_view(args) -> int:
    from .sweep_reading import load_sweep_result

    result = load_sweep_result(args.path, spec=args.spec)
    index = result.save_html(args.out, thumbnail_size=args.thumbnail_size, copy_images=not args.no_images)
    made = sum(1 for c in result.cells if c.ok)
    print(f"viewer: {index} ({len(result)} cells, {made} with images); open it in a browser, no server needed")
    return 0


def _register_view(subparsers) -> None:
    p = subparsers.add_parser(
        "view",
        help="write the HTML viewer of a sweep's run directory (opens from disk, no server)",
        description="Write a self-contained HTML viewer of a sweep (its run directory or grid PNG): any two "
        "axes across and down, the rest stepped through, parameters and scores on hover, A1111 text copied.",
        epilog="example: sdlab view runs/demo && xdg-open runs/demo/viewer/index.html",
    )
    p.add_argument("path", help="a sweep's run directory, or the grid PNG / spec JSON of one")
    p.add_argument("--out", default=None, help="the viewer's folder (default: RUN_DIR/viewer)")
    p.add_argument("--spec", default=None, help="which sweep of a directory that holds several (spec JSON or grid PNG)")
    p.add_argument("--thumbnail-size", type=int, default=256, help="longest side of the thumbnails (default 256)")
    p.add_argument("--no-images", action="store_true", help="thumbnails only, no copies of the full PNGs")
    p.set_defaults(func=_cmd_view)


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate images from a prompt",
        description="Generate images; every PNG carries its parameters.",
    )
    p.add_argument("prompt", help="the prompt")
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=None,
        help="one seed, or one per image (0 is a seed; default random, recorded)",
    )
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--out", default="outputs", help="output directory (default: outputs/)")
    p.set_defaults(func=_cmd_generate)

    _register_sweep(subparsers)
    _register_view(subparsers)

    p = subparsers.add_parser("demo", help="a labelled prompt x guidance grid with the embedded model, offline")
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/demo")
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser("presets", help="list model and ControlNet presets")
    p.set_defaults(func=_cmd_presets)
    p = subparsers.add_parser("schedulers", help="list scheduler names")
    p.set_defaults(func=_cmd_schedulers)
    p = subparsers.add_parser("params", help="print the generation parameters a PNG carries (sdlab or A1111)")
    p.add_argument("path")
    p.set_defaults(func=_cmd_params)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlab",
        description="sdlab: reproducible text-to-image generation, sweeps and serving on diffusers.",
        epilog="Run 'sdlab COMMAND --help' for a command's options.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in CLI_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"sdlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .errors import SdlabError

        if isinstance(e, SdlabError):
            print(f"sdlab: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
