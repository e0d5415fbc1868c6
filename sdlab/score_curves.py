"""A sweep's scores across its axes: mean and spread over seeds (or any axes) as a table, and as
curves (matplotlib).

    result.aggregate("judge.colour_shape", over="seed")      # one row per other-axes combination
    result.plot("judge.colour_shape", x="guidance_scale", hue="scheduler")
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["aggregate", "metric_names", "peaks", "plot"]


def metric_names(result) -> list[str]:
    """Every score name some cell of the sweep has, in first-seen order."""
    names: dict[str, None] = {}
    for cell in result.cells:
        names.update(dict.fromkeys(cell.metrics))
    return list(names)


def _check_metric(result, metric: str) -> None:
    names = metric_names(result)
    if metric not in names:
        failed = {e for c in result.cells for e in c.metric_errors if metric == e or metric.startswith(e + ".")}
        why = f"scorer {sorted(failed)[0]!r} failed on every cell (see table's metric_errors)" if failed else None
        raise ValueError(
            f"`metric`: no cell has a score {metric!r}"
            + (f"; {why}" if why else f"; scores: {', '.join(names) or 'none (sweep with metrics=[...])'}")
        )


def _names(value: str | Sequence[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def aggregate(
    result, metric: str, *, over: str | Sequence[str] | None = "seed", filter: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The mean and spread of `metric` over the axes `over` (default the seed axis): one row per
    combination of the other axes' values, in grid order, with `n` (cells with a value), `mean`,
    `std` (sample standard deviation; 0 for one value), `min`, `max` and `missing` (cells without
    a value: failed image or scorer, or a score that does not apply). `filter` pins axes to values
    first, as `grid` does."""
    _check_metric(result, metric)
    over_names = _names(over)
    for name in over_names:
        result.axis(name)
    cells = result.select(**filter) if filter else list(result.cells)
    by = [a for a in result.axes if a.name not in over_names]
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault(tuple(cell.coords[a.name] for a in by), []).append(cell)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(reversed(k))):  # first axis fastest, like the grid
        values = [c.metrics.get(metric) for c in groups[key]]
        numbers = [float(v) for v in values if v is not None]
        row: dict[str, Any] = {}
        for axis, i in zip(by, key):
            value = axis.values[i]
            row[axis.name] = value if isinstance(value, (str, int, float)) else axis.labels[i]
        row.update(
            metric=metric,
            n=len(numbers),
            mean=statistics.fmean(numbers) if numbers else None,
            std=statistics.stdev(numbers) if len(numbers) > 1 else (0.0 if numbers else None),
            min=min(numbers) if numbers else None,
            max=max(numbers) if numbers else None,
            missing=len(values) - len(numbers),
        )
        rows.append(row)
    return rows


def peaks(
    result, metric: str, *, x: str, over: str | Sequence[str] | None = "seed", filter: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Where `metric` peaks along axis `x`: for every combination of the axes that are neither `x`
    nor in `over`, the `aggregate` row of the `x` value with the highest mean (the first, i.e. the
    lowest on the axis, of equal means), with `tied` listing every `x` value that reaches it."""
    result.axis(x)
    over_names = _names(over)
    if x in over_names:
        raise ValueError("`x` must not be one of the axes in `over`")
    rows = aggregate(result, metric, over=over_names, filter=filter)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = tuple((k, row[k]) for k in result.axis_names if k in row and k != x)
        groups.setdefault(key, []).append(row)
    out = []
    for group in groups.values():
        scored = [r for r in group if r["mean"] is not None]
        if not scored:
            continue
        top = max(r["mean"] for r in scored)
        best = next(r for r in scored if r["mean"] == top)
        out.append({**best, "tied": [r[x] for r in scored if r["mean"] == top]})
    return out


def plot(
    result,
    metric: str,
    *,
    x: str,
    hue: str | None = None,
    filter: dict[str, Any] | None = None,
    ax=None,
):
    """`metric` against axis `x`, one line per value of `hue`, each point the mean over every other
    axis (seeds, ...) with a band of one standard deviation. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    xa = result.axis(x)
    ha = result.axis(hue) if hue is not None else None
    if hue == x:
        raise ValueError("`hue` must be another axis than `x`")
    keep = {x} | ({hue} if hue else set())
    rows = aggregate(result, metric, over=[a.name for a in result.axes if a.name not in keep], filter=filter)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xa.values)
    position = {label: (xa.values[i] if numeric else i) for i, label in enumerate(xa.labels)}

    def label_of(axis, value):
        return next(lab for v, lab in zip(axis.values, axis.labels) if v == value or lab == value)

    lines: dict[str, list] = {}
    for row in rows:
        if row["mean"] is None:
            continue
        name = label_of(ha, row[hue]) if ha else metric
        lines.setdefault(name, []).append((position[label_of(xa, row[x])], row["mean"], row["std"] or 0.0))
    for name, points in lines.items():
        points.sort()
        xs, means, stds = zip(*points)
        (line,) = ax.plot(xs, means, marker="o", label=name)
        lo = [m - s for m, s in zip(means, stds)]
        hi = [m + s for m, s in zip(means, stds)]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.18, linewidth=0)
    if not numeric:
        ax.set_xticks(list(position.values()), list(position.keys()))
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    spread = [a.name for a in result.axes if a.name not in keep and not (filter and a.name in filter)]
    ax.set_title(f"{metric}: mean ± sd over {', '.join(spread) or 'one cell'}", fontsize=9)
    if ha:
        ax.legend(title=hue, fontsize=8)
    ax.grid(alpha=0.3)
    return ax
