"""Sweep files: a sweep written as YAML or TOML, run with `sdlab sweep --config sweep.yaml`.

    model: shapes
    prompt: a large red circle on a blue background
    axes:                         # in order: x, y, z, ...; values as lists or A1111 text
      guidance_scale: 1-9 [5]
      scheduler: Euler a, DPM++ 2M
      seed: 1-4
      colour: {prompt_sr: "red, green, blue"}      # also prompt_matrix: "base|a|b", prompt_order: "a, b"
    link: [[guidance_scale, scheduler]]           # optional: axes that move together
    parameters: {num_inference_steps: 20}         # fixed generation parameters and pipeline keywords
    metrics: [judge, sharpness, {similarity: {reference: {scheduler: DPM++ 2M}}}]

Also `negative_prompt`, `vary_seeds`, `title`, `batch_size` and `out_dir`. An unknown key or a
bad value is a `ValueError` naming the key and its line. `SweepResult.save_config()` writes the
file that rebuilds a sweep (`write_sweep_file`); `sdlab.sweeps.sweep_from_file` runs one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .axes import prompt_matrix, prompt_order, prompt_sr

__all__ = ["SweepFile", "read_sweep_file", "sweep_config", "write_sweep_file"]

KEYS = (
    "model",
    "prompt",
    "negative_prompt",
    "axes",
    "link",
    "vary_seeds",
    "parameters",
    "metrics",
    "title",
    "batch_size",
    "out_dir",
)
_PROMPT_AXES = {"prompt_sr": prompt_sr, "prompt_matrix": prompt_matrix, "prompt_order": prompt_order}
_TYPES = {
    "model": str,
    "prompt": str,
    "negative_prompt": str,
    "title": str,
    "out_dir": str,
    "vary_seeds": bool,
    "batch_size": int,
    "axes": dict,
    "parameters": dict,
    "link": list,
    "metrics": list,
}


@dataclass
class SweepFile:
    """A read sweep file: the model named, the `sweep` keyword arguments, and where each key is."""

    path: Path
    model: str | None
    kwargs: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)  # key path -> 1-based line

    def where(self, *keys: str) -> str:
        line = self.lines.get(tuple(keys))
        return f"{self.path}, line {line}" if line else str(self.path)

    def locate(self, message: str) -> str:
        """The message with the line of the first key of the file it names (`key` or 'key')."""
        for keys, line in sorted(self.lines.items(), key=lambda kv: -len(kv[0])):
            name = keys[-1]
            if f"`{name}`" in message or f"'{name}'" in message or f"{name!r}" in message:
                return f"{self.path}, line {line}: {message}"
        return f"{self.path}: {message}"


# ------------------------------------------------------------------ reading


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    import yaml

    lines: dict[tuple[str, ...], int] = {}

    def walk(node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = (*prefix, str(key.value))
                lines[path] = key.start_mark.line + 1
                walk(value, path)

    walk(yaml.compose(text), ())
    return lines


def _toml_lines(text: str, data: dict) -> dict[tuple[str, ...], int]:
    """tomllib keeps no positions: each key's line found in the text (its table's header first)."""
    rows = text.splitlines()
    lines: dict[tuple[str, ...], int] = {}

    def find(name: str, start: int, header: bool = False) -> int | None:
        quoted = re.escape(name) if re.fullmatch(r"[A-Za-z0-9_-]+", name) else re.escape(json.dumps(name))
        pattern = re.compile(rf"^\s*\[\s*{quoted}\s*\]" if header else rf"(^|[{{,\s]){quoted}\s*=")
        for i in range(start, len(rows)):
            if pattern.search(rows[i]):
                return i
        return None

    def walk(table: dict, prefix: tuple[str, ...], start: int) -> None:
        for key, value in table.items():
            path = (*prefix, key)
            at = find(".".join(path), 0, header=True) if isinstance(value, dict) else None
            if at is None:
                at = find(key, start)
            if at is not None:
                lines[path] = at + 1
                if isinstance(value, dict):
                    walk(value, path, at + 1 if find(".".join(path), 0, header=True) == at else at)

    walk(data, (), 0)
    return lines


def read_sweep_file(path: str | Path) -> SweepFile:
    """Read and check a YAML (.yaml, .yml) or TOML (.toml) sweep file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from e
        lines = _yaml_lines(text) if isinstance(data, dict) else {}
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
        lines = _toml_lines(text, data)
    else:
        raise ValueError(f"a sweep file is .yaml, .yml or .toml, got {path.name!r}")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping of keys ({', '.join(KEYS)})")
    file = SweepFile(path, None, {}, lines)

    def fail(keys: tuple[str, ...], message: str):
        raise ValueError(f"{file.where(*keys)}: `{'.'.join(keys)}`: {message}")

    for key, value in data.items():
        if key not in KEYS:
            fail((key,), f"unknown key; a sweep file has {', '.join(KEYS)}")
        want = _TYPES[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if value is not None and not ok:
            fail((key,), f"must be {_TYPE_NAMES[want]}, got {value!r}")
    file.model = data.get("model")
    kwargs: dict[str, Any] = {}
    for key in ("prompt", "negative_prompt", "title", "vary_seeds", "batch_size", "out_dir"):
        if data.get(key) is not None:
            kwargs[key] = data[key]
    axes: dict[str, Any] = {}
    for name, values in (data.get("axes") or {}).items():
        where = ("axes", name)
        if isinstance(values, dict):
            if len(values) != 1 or next(iter(values)) not in _PROMPT_AXES:
                fail(where, f"a mapping value is one of {', '.join(_PROMPT_AXES)}, got {sorted(values)}")
            kind, spec = next(iter(values.items()))
            try:
                axis = _PROMPT_AXES[kind](spec, name=name)
            except ValueError as e:
                fail(where, str(e))
            axes[name] = axis
        elif isinstance(values, (str, list)):
            if isinstance(values, list) and any(isinstance(v, (dict, list)) for v in values if name != "size"):
                fail(where, f"values are numbers or strings, got {values!r}")
            axes[name] = values
        else:
            fail(where, f"values are a list or A1111 text like '1-4', got {values!r}")
    if axes:
        kwargs["axes"] = axes
    link = data.get("link")
    if link is not None:
        if not all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in link):
            fail(("link",), f"is a list of lists of axis names, e.g. [[model, size]], got {link!r}")
        kwargs["link"] = [tuple(g) for g in link]
    for name, value in (data.get("parameters") or {}).items():
        if name in ("prompt", "negative_prompt"):
            fail(("parameters", name), "is a top-level key of the file")
        if name in axes:
            fail(("parameters", name), "is also an axis")
        if isinstance(value, dict) or (isinstance(value, list) and name in _ONE_VALUE):
            fail(("parameters", name), f"must be one value (sweep several on an axis), got {value!r}")
        kwargs[name] = value  # pipeline keywords may take lists (control_guidance_end per ControlNet)
    if data.get("metrics") is not None:
        from .metrics import resolve

        for i, m in enumerate(data["metrics"]):
            try:
                resolve([m])
            except (ValueError, TypeError) as e:
                fail(("metrics",), f"entry {i + 1}: {e}")
        kwargs["metrics"] = list(data["metrics"])
    file.kwargs = kwargs
    return file


_ONE_VALUE = ("seed", "guidance_scale", "num_inference_steps", "scheduler", "width", "height", "clip_skip")
_TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", dict: "a mapping", list: "a list"}


# ------------------------------------------------------------------ writing


def sweep_config(result) -> dict[str, Any]:
    """The sweep file's contents that rebuild `result` (its spec): model, prompts, axes, link,
    fixed parameters, metrics and run directory."""
    spec = result.spec
    config: dict[str, Any] = {}
    has_model_axis = any(a["kind"] == "model" for a in spec.get("axes", []))
    if not has_model_axis and result.cells:
        config["model"] = result.cells[0].model
    for key in ("prompt", "negative_prompt", "title"):
        if spec.get(key) is not None:
            config[key] = spec[key]
    axes: dict[str, Any] = {}
    for a in spec.get("axes", []):
        values = a["values"]
        if any(isinstance(v, dict) for v in values):
            raise ValueError(f"axis {a['name']!r} holds images or tensors, which a sweep file cannot carry")
        if a["kind"] == "sr":
            axes[a["name"]] = {"prompt_sr": list(values)}
        elif a["kind"] == "matrix":
            axes[a["name"]] = {"prompt_matrix": "|".join([values[0], *a["parts"]])}
        elif a["kind"] == "order":
            axes[a["name"]] = {"prompt_order": list(a["parts"])}
        elif a["kind"] == "size":
            axes[a["name"]] = list(a["labels"])
        else:
            axes[a["name"]] = list(values)
    config["axes"] = axes
    if spec.get("link"):
        config["link"] = [list(g) for g in spec["link"]]
    if spec.get("vary_seeds"):
        config["vary_seeds"] = True
    fixed = dict(spec.get("fixed") or {})
    parameters = {k: v for k, v in fixed.items() if k != "pipeline_kwargs" and v is not None}
    if not parameters.get("variation_strength"):
        parameters.pop("variation_strength", None)
        parameters.pop("variation_seed", None)
    parameters.update(fixed.get("pipeline_kwargs") or {})
    for name in axes:
        parameters.pop(name, None)
    if parameters:
        config["parameters"] = parameters
    metrics = []
    for m in spec.get("metrics") or []:
        if m.get("config") is None:
            raise ValueError(
                f"metric {m['name']!r} is a Python function or holds a model object; a sweep file names built-in "
                "metrics only (judge, sharpness, colourfulness, saturation, clip_score, similarity)"
            )
        metrics.append(m["config"])
    if metrics:
        config["metrics"] = metrics
    if spec.get("out_dir"):
        config["out_dir"] = spec["out_dir"]
    return config


def write_sweep_file(path: str | Path, config: dict[str, Any]) -> Path:
    """Write a sweep file, YAML or TOML by its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=None)
    elif suffix == ".toml":
        text = _toml(config)
    else:
        raise ValueError(f"a sweep file is .yaml, .yml or .toml, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"a sweep file cannot hold {type(value).__name__} values ({value!r})")


def _toml(config: dict[str, Any]) -> str:
    """This schema's TOML: scalars and lists first, then the `axes` and `parameters` tables."""
    out = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    for k, v in config.items():
        if isinstance(v, dict):
            out += ["", f"[{_toml_key(k)}]"] + [f"{_toml_key(n)} = {_toml_value(x)}" for n, x in v.items()]
    return "\n".join(out) + "\n"
