"""The guide's prompt structure: a subject, then style, then quality tags; presets kept as data.

    build_prompt("a portrait of a software engineer", preset="photo")
    # 'a portrait of a software engineer, professional photography, natural lighting, ...'
    build_negative_prompt(preset="photo")

Presets live in `sdlab/data/prompt_presets.toml` (one table a preset: `style`, `quality`,
`negative_prompt`, `description`). Add your own with `register_preset(...)` or a TOML file of the
same layout with `load_presets(path)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

PRESETS_FILE = Path(__file__).resolve().parent.parent / "data" / "prompt_presets.toml"
PRESET_KEYS = ("description", "style", "quality", "negative_prompt")

_registry: dict[str, PromptPreset] | None = None


@dataclass(frozen=True)
class PromptPreset:
    """A named style: tags that follow the subject, and a negative prompt that suits them."""

    name: str
    style: tuple[str, ...] = ()
    quality: tuple[str, ...] = ()
    negative_prompt: tuple[str, ...] = ()
    description: str = ""

    def __str__(self) -> str:
        parts = []
        if self.style or self.quality:
            parts.append(", ".join(self.style + self.quality))
        if self.negative_prompt:
            parts.append("negative: " + ", ".join(self.negative_prompt))
        return f"{self.name}: {self.description or ''} [{' | '.join(parts)}]"


# ------------------------------------------------------------------ building prompts


def build_prompt(
    subject: str,
    *,
    style: str | Sequence[str] | None = None,
    quality: str | Sequence[str] | None = None,
    preset: str | None = None,
) -> str:
    """The prompt `subject, style tags, quality tags`, comma separated.

    Args:
        subject: what the image shows; always first, where it carries most weight.
        style: tags (a string, split at commas, or a list) for the look: medium, lighting, lens.
        quality: tags such as "highly detailed", "sharp focus".
        preset: a preset name (see `list_presets()`); its style and quality tags come first and
            `style` / `quality` are added after them. A tag given twice appears once.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"`subject` must be a non-empty string, got {subject!r}")
    style_tags = _tags(style, "style")
    quality_tags = _tags(quality, "quality")
    if preset is not None:
        p = get_preset(preset)
        if not (p.style or p.quality):
            raise ValueError(
                f"preset {preset!r} has no style or quality tags (it is a negative-prompt preset); "
                f"use build_negative_prompt(preset={preset!r})"
            )
        style_tags = list(p.style) + style_tags
        quality_tags = list(p.quality) + quality_tags
    return ", ".join(_unique([subject.strip().rstrip(",").strip()] + style_tags + quality_tags))


def build_negative_prompt(preset: str | None = None, *, extra: str | Sequence[str] | None = None) -> str:
    """A negative prompt: the tags of preset `preset` (see `list_presets()`), then `extra` tags."""
    tags = []
    if preset is not None:
        p = get_preset(preset)
        if not p.negative_prompt:
            raise ValueError(
                f"preset {preset!r} has no negative_prompt; presets with one: "
                f"{', '.join(q.name for q in list_presets() if q.negative_prompt)}"
            )
        tags = list(p.negative_prompt)
    tags += _tags(extra, "extra")
    if not tags:
        raise ValueError("give a `preset` or `extra` tags for the negative prompt")
    return ", ".join(_unique(tags))


def _tags(value: str | Sequence[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, (list, tuple)):
        raise ValueError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}")
    tags = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"`{name}` must contain only strings, got {item!r}")
        tags.extend(t.strip() for t in item.split(",") if t.strip())
    return tags


def _unique(tags: list[str]) -> list[str]:
    seen, out = set(), []
    for t in tags:
        if t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    return out


# ------------------------------------------------------------------ the registry


def _presets() -> dict[str, PromptPreset]:
    global _registry
    if _registry is None:
        _registry = {}
        for preset in _read_presets(PRESETS_FILE):
            _registry[preset.name] = preset
    return _registry


def list_presets() -> list[PromptPreset]:
    """Every preset (bundled and registered), by name."""
    return [p for _, p in sorted(_presets().items())]


def get_preset(name: str) -> PromptPreset:
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown prompt preset {name!r}; known presets: {', '.join(sorted(presets))}")
    return presets[name]


def register_preset(
    name: str,
    *,
    style: str | Sequence[str] | None = None,
    quality: str | Sequence[str] | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    description: str = "",
    replace: bool = False,
) -> PromptPreset:
    """Add a preset (for this session). A preset may hold style/quality tags, a negative prompt or both."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    if not isinstance(description, str):
        raise ValueError(f"`description` must be a string, got {description!r}")
    preset = PromptPreset(
        name=name.strip(),
        style=tuple(_tags(style, "style")),
        quality=tuple(_tags(quality, "quality")),
        negative_prompt=tuple(_tags(negative_prompt, "negative_prompt")),
        description=description,
    )
    if not (preset.style or preset.quality or preset.negative_prompt):
        raise ValueError(f"preset {name!r} needs `style`, `quality` or `negative_prompt` tags")
    presets = _presets()
    if preset.name in presets and not replace:
        raise ValueError(f"a prompt preset named {preset.name!r} exists; pass replace=True to replace it")
    presets[preset.name] = preset
    return preset


def load_presets(path: str | Path, *, replace: bool = False) -> list[PromptPreset]:
    """Register every preset of a TOML file laid out like `sdlab/data/prompt_presets.toml`:

    [my-style]
    description = "what it is for"
    style = ["tag", "tag"]
    quality = ["tag"]
    negative_prompt = ["tag"]
    """
    presets = _read_presets(Path(path))
    existing = _presets()
    clashes = [p.name for p in presets if p.name in existing]
    if clashes and not replace:
        raise ValueError(f"{path}: preset(s) {clashes} exist already; pass replace=True to replace them")
    for p in presets:
        existing[p.name] = p
    return presets


def _read_presets(path: Path) -> list[PromptPreset]:
    if not path.is_file():
        raise ValueError(f"prompt preset file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    out = []
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: `{name}` must be a table ([{name}]) with keys {', '.join(PRESET_KEYS)}")
        unknown = sorted(set(table) - set(PRESET_KEYS))
        if unknown:
            raise ValueError(
                f"{path}: preset [{name}] has unknown key(s) {unknown}; accepted: {', '.join(PRESET_KEYS)}"
            )
        fields: dict[str, Any] = {k: table.get(k) for k in ("style", "quality", "negative_prompt")}
        try:
            preset = PromptPreset(
                name=name,
                style=tuple(_tags(fields["style"], "style")),
                quality=tuple(_tags(fields["quality"], "quality")),
                negative_prompt=tuple(_tags(fields["negative_prompt"], "negative_prompt")),
                description=str(table.get("description", "")),
            )
        except ValueError as e:
            raise ValueError(f"{path}: preset [{name}]: {e}") from None
        if not (preset.style or preset.quality or preset.negative_prompt):
            raise ValueError(f"{path}: preset [{name}] needs `style`, `quality` or `negative_prompt`")
        out.append(preset)
    return out
