"""What the one request path costs: sdlab's layers against the calls they wrap, in one process.

Two ratios (medians over interleaved repeats; 1.00 means free):
1. sweep / ideal batch: a 16-cell 4-seed x 4-guidance sweep (planning, validation, cache keys with the
   weights' identity, 16 PNGs with their records, the manifest) against ONE batched call of the same
   16 images straight to the backend (`backend.run` of the concatenated request: nothing else).
2. generate / raw pipeline: `sdlab.generate` of one image against the diffusers pipeline called
   directly with the same prompt, seed, guidance and steps.

    python benchmarks/request_path.py [--model shapes] [--repeats 5] [--steps 20]

Run it on an otherwise idle machine: the ratios are same-run comparisons, the seconds are not portable.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sdlab
from sdlab.backends import as_backend
from sdlab.request import GenerationRequest

PROMPT = "a large red circle on a blue background"
SEEDS = [1, 2, 3, 4]
GUIDANCES = [1.5, 3.0, 5.0, 7.0]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="shapes", help="a model for load_pipeline (default: the bundled shapes model)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = sdlab.load_pipeline(args.model, progress_bar=False)
    backend = as_backend(pipe)
    d = backend.defaults
    size = dict(width=d.width, height=d.height)
    print(
        f"model {args.model} ({d.width}x{d.height}), {args.steps} steps, {args.repeats} repeats, torch threads {torch.get_num_threads()}"
    )

    cells = [(s, g) for g in GUIDANCES for s in SEEDS]
    ideal_request = GenerationRequest(
        prompt=(PROMPT,) * 16,
        negative_prompt=(d.negative_prompt,) * 16,
        seed=tuple(s for s, _ in cells),
        guidance_scale=tuple(g for _, g in cells),
        num_inference_steps=args.steps,
        **size,
    )

    def ideal():
        backend.run(ideal_request)

    def sweep():
        sdlab.sweep(
            pipe,
            PROMPT,
            axes={"seed": SEEDS, "guidance_scale": GUIDANCES},
            batch_size=16,
            out_dir=Path(tempfile.mkdtemp(prefix="sdlab-bench-")),
            num_inference_steps=args.steps,
            verbose=False,
            **size,
        )

    def generate():
        sdlab.generate(pipe, PROMPT, seed=7, guidance_scale=5.0, num_inference_steps=args.steps, **size)

    def raw():
        with torch.inference_mode():
            pipe(
                PROMPT,
                generator=torch.Generator("cpu").manual_seed(7),
                guidance_scale=5.0,
                num_inference_steps=args.steps,
                **size,
            )

    for fn in (ideal, sweep, generate, raw):  # warm-up: allocations, embedding cache, file hashes
        fn()
    times: dict[str, list[float]] = {"ideal": [], "sweep": [], "generate": [], "raw": []}
    for r in range(args.repeats):
        for name, fn in (("ideal", ideal), ("sweep", sweep), ("raw", raw), ("generate", generate)):
            times[name].append(timed(fn))
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"sweep / ideal batch    : {med['sweep'] / med['ideal']:.3f}  ({med['sweep']:.2f} s vs {med['ideal']:.2f} s for 16 images)"
    )
    print(
        f"generate / raw pipeline: {med['generate'] / med['raw']:.3f}  ({med['generate']:.3f} s vs {med['raw']:.3f} s for one image)"
    )


if __name__ == "__main__":
    main()
