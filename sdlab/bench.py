"""Scheduler and step-count benchmarks: latency, memory and how close each gets to a reference.

    result = sdlab.bench.benchmark_schedulers(pipe, "a large red circle on a blue background",
                                              schedulers=["Euler", "DPM++ 2M", "DDIM"],
                                              num_inference_steps=[5, 10, 20], seeds=(0, 1))
    result.table                   # one row per scheduler x step count
    result.fastest_to(0.9)         # per scheduler, the quickest setting with SSIM >= 0.9
    result.plot_quality_vs_time()  # which scheduler reaches a quality in the least time

How one setting is measured:
1. The reference: every seed generated once with `reference_steps` steps (a high count, where
   deterministic schedulers have converged) by `reference_scheduler` (default: the model's).
2. `warmup` untimed calls, then `repeats` timed calls of the setting; all seeds are one batch.
   Every call goes through `run_request`, the one generation path.
3. Per call: wall time (CUDA synchronised), the time inside `pipe.vae.decode` (wrapped for the
   call), the number of denoiser evaluations (Heun and DPM2 evaluate twice a step) and peak
   memory (the CUDA allocator's peak on GPU; the process's resident set, sampled, on CPU).
4. Convergence: each image against the reference image of its seed: mean absolute difference
   (0-255 levels), PSNR (dB) and SSIM (scikit-image), averaged over seeds. Ancestral and SDE
   schedulers add fresh noise every step, so they converge to other images than the reference:
   their distance stays large at any step count, which is expected.
5. Load: the load average (`os.getloadavg`, 1 minute) is read before and after the timed calls;
   above the number of cores the machine was busy, the timings are noise: the result says so
   (`busy`, `warning`, first of `notes`).
6. Model FLOP utilisation (GPU only): the published FLOPs of the denoiser per evaluation (SD1.5
   0.803 T at 512x512, SDXL 6.76 T at 1024x1024, FLUX 74.4 T at 1024x1024, scaled by latent area,
   x2 for classifier-free guidance) plus the VAE decode, per second, over `peak_tflops`.
"""

from __future__ import annotations

import contextlib
import html
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backends import as_backend, local_pipeline
from .executors import Interrupted
from .generation import build_request, run_request
from .loading import pipeline_info
from .metrics import image_distance  # the sweeps' similarity scorer: one implementation

# Published FLOPs of one denoiser forward for one image, the pixel area they were counted at, and
# the denoiser's parameter count (shared/reference/performance-figures.md; 1 MAC = 2 FLOP).
KNOWN_DENOISER_FLOPS: dict[str, tuple[float, int, float]] = {
    "sd1": (0.803e12, 512 * 512, 859.5e6),
    "sdxl": (6.76e12, 1024 * 1024, 2567e6),
    "flux": (74.4e12, 1024 * 1024, 11.90e9),
}
VAE_DECODE_FLOPS = (2.51e12, 512 * 512)  # SD/SDXL/FLUX VAE decoder at 512x512
PARAMETER_TOLERANCE = 0.05  # a denoiser within 5% of the published size counts as that architecture

METRICS = ("mae", "psnr", "ssim")

__all__ = ["BenchResult", "benchmark_schedulers", "model_flops"]


# ------------------------------------------------------------------ FLOPs


def _denoiser(pipe) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def model_flops(
    pipe, *, width: int, height: int, guidance_scale: float
) -> tuple[float | None, float | None, str | None]:
    """(FLOPs of one denoising evaluation for one image incl. guidance, FLOPs of one VAE decode,
    reason if unknown). Known only for denoisers of the published SD1.5, SDXL and FLUX sizes."""
    family = pipeline_info(pipe).family if pipe is not None else None
    denoiser = _denoiser(pipe) if pipe is not None else None
    if family not in KNOWN_DENOISER_FLOPS or denoiser is None:
        return None, None, f"FLOPs per step are published only for SD1.5, SDXL and FLUX (this is {family or 'unknown'})"
    flops, area, params = KNOWN_DENOISER_FLOPS[family]
    count = sum(p.numel() for p in denoiser.parameters())
    if abs(count - params) > PARAMETER_TOLERANCE * params:
        return (
            None,
            None,
            (
                f"this {family} denoiser has {count / 1e6:.1f} M parameters, not the published "
                f"{params / 1e6:.0f} M, so its FLOPs are unknown (pass flops_per_evaluation=)"
            ),
        )
    scale = (width * height) / area
    cfg = 2.0 if family in ("sd1", "sd2", "sdxl") and guidance_scale > 1 else 1.0
    vae = VAE_DECODE_FLOPS[0] * (width * height) / VAE_DECODE_FLOPS[1]
    return flops * scale * cfg, vae, None


# ------------------------------------------------------------------ measuring one call


def _cuda_device(pipe) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    if not torch.cuda.is_available() or pipe is None:
        return False
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    return str(device).startswith("cuda")


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


@contextlib.contextmanager
def _timed_vae_decode(pipe, cuda: bool, sink: list[float]):
    """Wrap `pipe.vae.decode` for one call, adding the seconds spent in it to `sink`."""
    vae = getattr(pipe, "vae", None) if pipe is not None else None
    if vae is None:
        yield
        return
    had_own = "decode" in vae.__dict__
    original = vae.decode

    def decode(*args, **kwargs):
        _sync(cuda)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _sync(cuda)
            sink.append(time.perf_counter() - start)

    vae.decode = decode
    try:
        yield
    finally:
        if had_own:
            vae.decode = original
        else:
            del vae.decode


class _RssSampler:
    """Peak resident set of this process during a block, sampled by a background thread."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@dataclass
class _Call:
    seconds: float
    vae_seconds: float | None
    evaluations: int
    peak_memory_mb: float
    images: list


def _measure(backend, request, cuda: bool, on_step: Callable[[dict], None] | None = None) -> _Call:
    """One timed call through `run_request`, with VAE time, evaluations and peak memory.
    `on_step` sees every denoising step (it may raise `Interrupted` to stop the call)."""
    pipe = local_pipeline(backend)
    vae_times: list[float] = []
    evaluations = 0

    def count(info: dict) -> None:
        nonlocal evaluations
        if info.get("step"):  # step 0 announces the call; each later step is one denoiser evaluation
            evaluations += 1
        if on_step is not None:
            on_step(info)

    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        memory = contextlib.nullcontext()
    else:
        memory = _RssSampler()
    with memory, _timed_vae_decode(pipe, cuda, vae_times):
        _sync(cuda)
        start = time.perf_counter()
        result = run_request(backend, request, progress=count, progress_bar=False)
        _sync(cuda)
        seconds = time.perf_counter() - start
    if cuda:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = memory.peak / 2**20
    has_vae = pipe is not None and getattr(pipe, "vae", None) is not None
    return _Call(seconds, sum(vae_times) if has_vae else None, evaluations, peak, result.images)


# ------------------------------------------------------------------ the result


@dataclass
class BenchResult:
    """Rows of a scheduler x steps benchmark, with the reference and how it was run."""

    rows: list[dict[str, Any]]
    prompt: str
    seeds: tuple[int, ...]
    reference: dict[str, Any]
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    images: dict[tuple[str, int], list] = field(default_factory=dict)  # (scheduler, steps) -> last call's
    load: dict[str, Any] = field(default_factory=dict)  # load average before/after the timed calls, cores
    busy: bool = False  # the load average was above the core count while timing: timings are noise

    @property
    def warning(self) -> str | None:
        """Why the timings cannot be trusted (a busy machine), or None."""
        return busy_warning(self.load) if self.busy else None

    COLUMNS = (
        "scheduler",
        "num_inference_steps",
        "evaluations",
        "seconds",
        "seconds_per_image",
        "seconds_per_step",
        "vae_decode_seconds",
        "peak_memory_mb",
        "mae",
        "psnr",
        "ssim",
        "mfu",
        "error",
    )

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per scheduler x step count (a copy)."""
        return [dict(r) for r in self.rows]

    @property
    def schedulers(self) -> list[str]:
        return list(dict.fromkeys(r["scheduler"] for r in self.rows))

    def to_pandas(self):
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as e:
            from .errors import MissingDependencyError

            raise MissingDependencyError("pandas", "BenchResult.to_pandas()") from e
        return pd.DataFrame(self.table)

    def fastest_to(self, quality: float, *, metric: str = "ssim") -> list[dict[str, Any]]:
        """Per scheduler, the quickest setting whose `metric` reaches `quality` (SSIM/PSNR at
        least, MAE at most), quickest first. Schedulers that never reach it are left out."""
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
        best: dict[str, dict] = {}
        for row in self.rows:
            value = row.get(metric)
            if row.get("error") or value is None:
                continue
            good = value <= quality if metric == "mae" else value >= quality
            if good and (row["scheduler"] not in best or row["seconds"] < best[row["scheduler"]]["seconds"]):
                best[row["scheduler"]] = row
        return sorted((dict(r) for r in best.values()), key=lambda r: r["seconds"])

    # ---------------------------------------------------------------- display

    def _cells(self, row: dict) -> list[str]:
        def fmt(key: str) -> str:
            value = row.get(key)
            if value is None:
                return "-"
            if key == "mfu":
                return f"{100 * value:.1f}%"
            if key.startswith("seconds") or key == "vae_decode_seconds":
                return f"{value:.3f}"
            if key == "peak_memory_mb":
                return f"{value:.0f}"
            if key in ("mae", "psnr"):
                return "inf" if value == math.inf else f"{value:.2f}"
            if key == "ssim":
                return f"{value:.3f}"
            return str(value)

        return [fmt(k) for k in self.COLUMNS]

    def __repr__(self) -> str:
        header = list(self.COLUMNS)
        body = [self._cells(r) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
        lines = [
            f"BenchResult: {len(self.rows)} settings on {self.device}, seeds {list(self.seeds)}, "
            f"reference {self.reference.get('scheduler')} x {self.reference.get('num_inference_steps')} steps"
        ]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    HTML_LABELS = {
        "num_inference_steps": "steps",
        "evaluations": "evals",
        "seconds": "s/call",
        "seconds_per_image": "s/image",
        "seconds_per_step": "s/step",
        "vae_decode_seconds": "VAE s",
        "peak_memory_mb": "peak MB",
        "mae": "MAE",
        "psnr": "PSNR",
        "ssim": "SSIM",
        "mfu": "MFU",
    }

    def to_html(self) -> str:
        head = "".join(f"<th title='{k}'>{html.escape(self.HTML_LABELS.get(k, k))}</th>" for k in self.COLUMNS)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in self._cells(r)) + "</tr>" for r in self.rows
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes if n != self.warning)
        warning = (
            f"<p class='sdlab-bench-busy' style='color:#b00020'><b>Warning:</b> {html.escape(self.warning)}</p>"
            if self.busy
            else ""
        )
        ref = self.reference
        caption = (
            f"{len(self.rows)} settings on {html.escape(self.device)}; seeds {list(self.seeds)}; reference: "
            f"{html.escape(str(ref.get('scheduler')))} with {ref.get('num_inference_steps')} steps. "
            "seconds = median per call (all seeds in one batch); mae in 0-255 levels; psnr in dB."
        )
        return (
            f"{warning}<div style='overflow-x:auto'><table class='sdlab-bench'>"
            f"<caption style='caption-side:bottom;text-align:left'>{caption}</caption>"
            f"<tr>{head}</tr>{rows}</table></div>" + (f"<ul>{notes}</ul>" if notes else "")
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    # ---------------------------------------------------------------- plots

    def _series(self) -> dict[str, list[dict]]:
        series: dict[str, list[dict]] = {}
        for row in self.rows:
            if not row.get("error"):
                series.setdefault(row["scheduler"], []).append(row)
        for rows in series.values():
            rows.sort(key=lambda r: r["num_inference_steps"])
        return series

    def plot_quality_vs_time(self, metric: str = "ssim", *, ax=None):
        """Quality against seconds per image, one line per scheduler through its step counts.
        Up and to the left is better (for MAE: down and to the left). Returns the figure."""
        if metric not in METRICS:
            raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
        fig, ax = _figure_and_axes(ax)
        finite = [r[metric] for rows in self._series().values() for r in rows if r.get(metric) not in (None, math.inf)]
        cap = (max(finite) + 5.0) if (metric == "psnr" and finite) else None
        for name, rows in self._series().items():
            xs = [r["seconds_per_image"] for r in rows]
            ys = [cap if (cap is not None and r[metric] == math.inf) else r[metric] for r in rows]
            ax.plot(xs, ys, marker="o", label=name)
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(
                    str(r["num_inference_steps"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7
                )
        label = {
            "ssim": "SSIM to reference (1 = identical)",
            "psnr": "PSNR to reference (dB)",
            "mae": "mean abs. difference (0-255)",
        }[metric]
        ax.set_xlabel("seconds per image")
        ax.set_ylabel(label)
        ref = self.reference
        ax.set_title(
            f"quality vs time (reference: {ref.get('scheduler')}, {ref.get('num_inference_steps')} steps)", fontsize=9
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return fig

    def plot_latency_vs_steps(self, *, ax=None):
        """Median latency per image against the step count, one line per scheduler."""
        fig, ax = _figure_and_axes(ax)
        for name, rows in self._series().items():
            ax.plot(
                [r["num_inference_steps"] for r in rows], [r["seconds_per_image"] for r in rows], marker="o", label=name
            )
        ax.set_xlabel("num_inference_steps")
        ax.set_ylabel("seconds per image (median)")
        ax.set_title(f"latency vs steps on {self.device}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        return fig


def _figure_and_axes(ax):
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    return fig, ax


# ------------------------------------------------------------------ the benchmark


def system_load_average() -> float | None:
    """The 1-minute load average, or None where the system has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _is_busy(load: dict[str, Any]) -> bool:
    readings = [v for v in (load.get("before"), load.get("after")) if v is not None]
    return bool(load.get("cores")) and any(v > load["cores"] for v in readings)


def busy_warning(load: dict[str, Any]) -> str:
    return (
        f"the machine was busy while timing (load average {load.get('before')} before, "
        f"{load.get('after')} after, on {load.get('cores')} cores): the timings are not reliable; "
        "run again on an idle machine"
    )


def _check_list(values: Any, name: str) -> list:
    if isinstance(values, (str, int)):
        values = [values]
    values = list(values)
    if not values:
        raise ValueError(f"`{name}` is empty; give at least one")
    return values


def benchmark_schedulers(
    pipe: Any,
    prompt: str,
    *,
    schedulers: Sequence[str],
    num_inference_steps: Sequence[int],
    seeds: Sequence[int] = (0,),
    repeats: int = 3,
    warmup: int = 1,
    reference_steps: int = 100,
    reference_scheduler: str | None = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    width: int | None = None,
    height: int | None = None,
    peak_tflops: float | None = None,
    flops_per_evaluation: float | None = None,
    progress: Callable[[dict], None] | None = None,
    load_average: Callable[[], float | None] = system_load_average,
) -> BenchResult:
    """Measure schedulers x step counts: latency, VAE time, memory and distance to a reference.

    Args:
        pipe: a pipeline (from `load_pipeline`) or a backend.
        prompt: the prompt of every image.
        schedulers: scheduler names (`sdlab.scheduler_names(pipe)`).
        num_inference_steps: the step counts to try with each scheduler.
        seeds: one image per seed, generated together as one batch; metrics average over them.
        repeats: timed calls per setting; the median is reported.
        warmup: untimed calls before the first timed one.
        reference_steps, reference_scheduler: the converged reference each image is compared to
            (default scheduler: the model's own).
        peak_tflops: the accelerator's peak (e.g. 312 for an A100 in bf16) for model FLOP
            utilisation; on CPU utilisation is not reported.
        flops_per_evaluation: FLOPs of one denoiser evaluation for one image (before guidance
            doubling), for models whose figure is not published.
        progress: called with a dict (`done`, `total`, `phase`, `scheduler`, `num_inference_steps`)
            before each call and, with `phase` "step" and `denoising_step`, at every denoising step;
            raising `sdlab.executors.Interrupted` there stops the benchmark (it is raised on).
        load_average: returns the machine's load average (default: `os.getloadavg`'s 1 minute),
            read before and after the timed calls; above `os.cpu_count()` the result is `busy`.

    Returns:
        A `BenchResult` (`.table`, `.to_pandas()`, `.fastest_to()`, `.plot_quality_vs_time()`,
        `.plot_latency_vs_steps()`).
    """
    from .request import check_positive_int

    # 1. validate everything before any model work
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}")
    schedulers = [str(s) for s in _check_list(schedulers, "schedulers")]
    step_counts = [
        check_positive_int(s, "num_inference_steps") for s in _check_list(num_inference_steps, "num_inference_steps")
    ]
    seeds = tuple(_check_list(seeds, "seeds"))
    repeats = check_positive_int(repeats, "repeats")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    reference_steps = check_positive_int(reference_steps, "reference_steps")
    if peak_tflops is not None and not (isinstance(peak_tflops, (int, float)) and peak_tflops > 0):
        raise ValueError(f"`peak_tflops` must be a positive number (TFLOP/s) or None, got {peak_tflops!r}")
    if not callable(load_average):
        raise ValueError(f"`load_average` must be a callable returning a number or None, got {load_average!r}")
    backend = as_backend(pipe)
    common = dict(
        negative_prompt=negative_prompt, guidance_scale=guidance_scale, width=width, height=height, seed=list(seeds)
    )
    requests = {}
    for scheduler in schedulers:
        for n in step_counts:
            requests[(scheduler, n)] = build_request(
                backend, prompt, scheduler=scheduler, num_inference_steps=n, **common
            )
    reference_request = build_request(
        backend, prompt, scheduler=reference_scheduler, num_inference_steps=reference_steps, **common
    )
    first = next(iter(requests.values()))
    pipe_obj = local_pipeline(backend)
    cuda = _cuda_device(pipe_obj)
    device = str(getattr(pipe_obj, "device", backend.name)) if pipe_obj is not None else backend.name
    total = 1 + warmup + len(requests) * repeats
    done = 0

    def report(phase: str, scheduler: str | None, n: int | None) -> None:
        if progress is not None:
            progress({"done": done, "total": total, "phase": phase, "scheduler": scheduler, "num_inference_steps": n})

    def stepper(scheduler: str | None, n: int | None) -> Callable[[dict], None] | None:
        if progress is None:
            return None

        def step(info: dict) -> None:
            progress(
                {
                    "done": done,
                    "total": total,
                    "phase": "step",
                    "scheduler": scheduler,
                    "num_inference_steps": n,
                    "denoising_step": info.get("step"),
                }
            )

        return step

    # 2. the reference images, one per seed
    report("reference", reference_scheduler, reference_steps)
    reference_call = _measure(backend, reference_request, cuda, stepper(reference_scheduler, reference_steps))
    done += 1
    reference_name = _scheduler_label(backend, reference_request)
    reference = {
        "scheduler": reference_name,
        "num_inference_steps": reference_steps,
        "seconds": reference_call.seconds,
        "images": reference_call.images,
    }

    # 3. warm-up calls, untimed
    for _ in range(warmup):
        report("warmup", first.scheduler, first.num_inference_steps)
        run_request(backend, first, progress=stepper(first.scheduler, first.num_inference_steps), progress_bar=False)
        done += 1

    # 4. every setting, timed
    flops, vae_flops, flops_note = model_flops(
        pipe_obj, width=first.width, height=first.height, guidance_scale=first.guidance_scale[0]
    )
    if flops_per_evaluation is not None:
        cfg = 2.0 if first.guidance_scale[0] > 1 and backend.supports_per_image_guidance() else 1.0
        flops, flops_note = float(flops_per_evaluation) * cfg, None
        if vae_flops is None:
            vae_flops = VAE_DECODE_FLOPS[0] * first.width * first.height / VAE_DECODE_FLOPS[1]
    if not cuda:
        mfu_note = "model FLOP utilisation is reported on a GPU only (this run is on CPU)"
    elif peak_tflops is None:
        mfu_note = "pass peak_tflops= (the GPU's peak, e.g. 312 for an A100 in bf16) for model FLOP utilisation"
    else:
        mfu_note = flops_note
    rows = []
    images: dict[tuple[str, int], list] = {}
    n_images = len(seeds)
    load = {"before": load_average(), "after": None, "cores": os.cpu_count()}
    for (scheduler, n), request in requests.items():
        calls: list[_Call] = []
        error = None
        for _ in range(repeats):
            report("measure", scheduler, n)
            try:
                calls.append(_measure(backend, request, cuda, stepper(scheduler, n)))
            except (Interrupted, KeyboardInterrupt):
                raise  # a cancel: no half table
            except Exception as e:  # noqa: BLE001 - one failing setting does not stop the benchmark
                error = f"{type(e).__name__}: {e}"
            done += 1
            if error:
                break
        rows.append(
            _row(scheduler, n, calls, error, reference["images"], n_images, flops, vae_flops, peak_tflops, cuda)
        )
        images[(scheduler, n)] = list(calls[-1].images) if calls else []
    load["after"] = load_average()
    busy = _is_busy(load)
    report("done", None, None)
    notes = ([busy_warning(load)] if busy else []) + ([mfu_note] if mfu_note else [])
    return BenchResult(
        rows=rows,
        prompt=prompt,
        seeds=tuple(first.seed),
        reference=reference,
        device=device,
        settings={
            "repeats": repeats,
            "warmup": warmup,
            "width": first.width,
            "height": first.height,
            "guidance_scale": first.guidance_scale[0],
            "peak_tflops": peak_tflops,
            "flops_per_evaluation": flops,
            "vae_decode_flops": vae_flops,
            "memory": "cuda max_memory_allocated" if cuda else "process RSS (includes the weights)",
        },
        notes=notes,
        images=images,
        load=load,
        busy=busy,
    )


def _scheduler_label(backend, request) -> str | None:
    if request.scheduler is not None:
        from .schedulers import canonical_name, is_flow_matching

        pipe = local_pipeline(backend)
        flow = is_flow_matching(pipe.scheduler) if pipe is not None else False
        return canonical_name(request.scheduler, flow_matching=flow)
    pipe = local_pipeline(backend)
    if pipe is None:
        return backend.defaults.scheduler
    from .schedulers import scheduler_name

    return scheduler_name(pipe.scheduler)


def _row(scheduler, n, calls, error, references, n_images, flops, vae_flops, peak_tflops, cuda) -> dict[str, Any]:
    row: dict[str, Any] = {"scheduler": scheduler, "num_inference_steps": n}
    if not calls:
        row.update({k: None for k in BenchResult.COLUMNS if k not in row})
        row["error"] = error
        return row
    seconds = statistics.median(c.seconds for c in calls)
    vae = [c.vae_seconds for c in calls if c.vae_seconds is not None]
    vae_seconds = statistics.median(vae) if vae else None
    evaluations = calls[-1].evaluations
    distances = [image_distance(img, ref) for img, ref in zip(calls[-1].images, references)]
    row.update(
        {
            "evaluations": evaluations,
            "seconds": seconds,
            "seconds_min": min(c.seconds for c in calls),
            "seconds_per_image": seconds / n_images,
            "seconds_per_step": (seconds - (vae_seconds or 0.0)) / n,
            "seconds_per_evaluation": (seconds - (vae_seconds or 0.0)) / max(evaluations, 1),
            "vae_decode_seconds": vae_seconds,
            "peak_memory_mb": max(c.peak_memory_mb for c in calls),
            "mae": statistics.fmean(d["mae"] for d in distances),
            "psnr": statistics.fmean(d["psnr"] for d in distances)
            if all(math.isfinite(d["psnr"]) for d in distances)
            else math.inf,
            "ssim": statistics.fmean(d["ssim"] for d in distances),
            "tflop_per_image": None,
            "mfu": None,
            "error": error,
        }
    )
    if flops is not None:
        per_image = evaluations * flops + (vae_flops or 0.0)
        row["tflop_per_image"] = per_image / 1e12
        if cuda and peak_tflops:
            row["mfu"] = per_image * n_images / seconds / (peak_tflops * 1e12)
    return row
