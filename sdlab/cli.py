"""The `sdlab` command line: a thin client of the library (generate, demo, sweep, serve, ...).

Feature modules register their own sub-commands with a `register_cli(subparsers)` function that
adds a parser and sets `func`; this module only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# Modules that contribute sub-commands (each has register_cli(subparsers)).
CLI_MODULES = ["sdlab.cli", "sdlab.sweeps", "sdlab.server", "sdlab.backends.cli"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="preset name, Hugging Face id, diffusers folder or .safetensors file (default: the embedded model)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    parser.add_argument("--offload", choices=["model", "sequential"], default=None, help="CPU offload (GPU only)")
    parser.add_argument("--attention", choices=["sdpa", "xformers"], default="sdpa")
    parser.add_argument("--controlnet", action="append", default=None, help="a ControlNet preset, id or folder (repeatable)")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--width", type=int, default=None, help="default: the model's native width")
    parser.add_argument("--height", type=int, default=None, help="default: the model's native height")
    parser.add_argument("--num-inference-steps", "--steps", dest="num_inference_steps", type=int, default=None)
    parser.add_argument("--guidance-scale", "--cfg", dest="guidance_scale", type=float, default=None)
    parser.add_argument("--scheduler", "--sampler", dest="scheduler", default=None, help='A1111 name ("DPM++ 2M Karras", "Euler a") or diffusers class')


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
    }


def load_from_args(args):
    from .backends import is_remote_spec, open_backend

    if is_remote_spec(args.model):  # "replicate:owner/name", "comfyui:http://host:8188"
        return open_backend(args.model)
    from .loading import load_pipeline

    return load_pipeline(args.model, **load_kwargs(args))


def _cmd_generate(args) -> int:
    from .generate import generate

    pipe = load_from_args(args)
    seeds = args.seed if args.seed is None or len(args.seed) > 1 else args.seed[0]
    result = generate(pipe, args.prompt, seed=seeds, num_images=args.num_images, **generation_kwargs(args))
    for path, record in zip(result.save(args.out), result.records):
        print(f"{path}  seed={record['seed']}  {record['seconds']:.2f}s")
    return 0


def _cmd_demo(args) -> int:
    """A labelled prompt x guidance grid with the embedded default model, offline, through a sweep."""
    from .loading import load_pipeline
    from .sweeps import sweep

    pipe = load_pipeline(args.model, progress_bar=False)
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
        title=f"sdlab demo: {pipe._sdlab_info['model']}, seed {args.seed}",
    )
    path = result.save_grid(Path(args.out) / "grid.png")
    print(f"{len(result)} images in {Path(args.out) / 'cells'}; grid: {path}")
    return 0


def _cmd_presets(args) -> int:
    from .presets import CONTROLNET_PRESETS, PRESETS

    for p in PRESETS.values():
        d = p.defaults
        print(f"{p.name:14} {p.family:5} {d.width}x{d.height} steps={d.num_inference_steps} guidance={d.guidance_scale:g}  {p.source}")
    for c in CONTROLNET_PRESETS.values():
        print(f"{c.name:14} {c.family:5} controlnet ({c.kind})  {c.source}")
    return 0


def _cmd_schedulers(args) -> int:
    from .schedulers import A1111_SCHEDULERS, FLOW_SCHEDULERS

    for name, (cls, over) in A1111_SCHEDULERS.items():
        print(f"{name:22} {cls} {over or ''}")
    for name, (cls, over) in FLOW_SCHEDULERS.items():
        print(f"{name:22} {cls} (flow matching: FLUX)")
    return 0


def _cmd_params(args) -> int:
    import json

    from .metadata import read_params

    if not Path(args.path).is_file():
        raise ValueError(f"{args.path}: no such file")
    print(json.dumps(read_params(args.path), indent=2, ensure_ascii=False, default=str))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt", description="Generate images; every PNG carries its parameters.")
    p.add_argument("prompt", help="the prompt")
    add_model_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--seed", type=int, nargs="+", default=None, help="one seed, or one per image (0 is a seed; default random, recorded)")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--out", default="outputs", help="output directory (default: outputs/)")
    p.set_defaults(func=_cmd_generate)

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
    except (ValueError,) as e:
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
