"""Wildcards (dynamic prompts): one template, many prompts.

    expand("a {red|green|blue} {circle|square}")            # 6 prompts, every combination in order
    expand("a __color__ __shape__", mode="random", n=4, seed=1)
    sdlab.sweep(pipe, axes={"prompt": wildcard_axis("a {red|blue} __shape__"), "seed": [1, 2]})

Syntax (the dynamic-prompts convention):
    {a|b|c}          one of the options; options may hold further {..} and __..__ (nesting)
    {2$$a|b|c}       two different options, joined by ", "; {1-2$$a|b|c} one or two;
                     {2$$ and $$a|b|c} joined by " and "
    {3::a|1::b}      option weights (random mode only)
    __name__         one line of the wildcard file name.txt (a sub-folder: __colors/warm__);
                     lines may use the same syntax; blank lines and lines starting with # are skipped
    \\{ \\} \\| \\_      literal characters
Wildcard files are looked up in `wildcards_dir` (a folder or a list of folders), then in the
sample lists shipped in `sdlab/data/wildcards/`. Weighting syntax such as (red:1.3) passes
through untouched, so `weighted(p)` can follow.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "wildcards"
MAX_COMBINATIONS = 10_000
MAX_DEPTH = 32

_PICK = re.compile(r"(\d+)(?:-(\d+))?\$\$(?:([^|{}]*?)\$\$)?")
_OPTION_WEIGHT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)::")
_WILDCARD = re.compile(r"__([\w\-/.]+?)__")
_ESCAPABLE = "{}|_"
_SPACES = re.compile(r"[ \t]{2,}")


# ------------------------------------------------------------------ the template tree


@dataclass(frozen=True)
class _Seq:
    nodes: tuple[_Node, ...]


@dataclass(frozen=True)
class _Variants:
    options: tuple[_Seq, ...]
    weights: tuple[float, ...]
    low: int = 1
    high: int = 1
    separator: str = ", "


@dataclass(frozen=True)
class _Wildcard:
    name: str
    options: tuple[_Seq, ...]


_Node = str | _Seq | _Variants | _Wildcard


class _Parser:
    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        self.files: dict[str, tuple[_Seq, ...]] = {}
        self.resolving: list[str] = []

    def parse(self, text: str, where: str = "`template`") -> _Seq:
        seq, pos = self._seq(text, 0, inside=False, where=where)
        if pos != len(text):  # pragma: no cover - _seq consumes everything at top level
            raise ValueError(f"{where}: unexpected {text[pos]!r} at position {pos}")
        return seq

    def _seq(self, text: str, pos: int, *, inside: bool, where: str) -> tuple[_Seq, int]:
        nodes: list[_Node] = []
        buf: list[str] = []

        def flush():
            if buf:
                nodes.append("".join(buf))
                buf.clear()

        while pos < len(text):
            c = text[pos]
            if c == "\\" and pos + 1 < len(text) and text[pos + 1] in _ESCAPABLE:
                buf.append(text[pos + 1])
                pos += 2
            elif inside and c in "|}":
                break
            elif c == "{":
                flush()
                node, pos = self._variants(text, pos, where)
                nodes.append(node)
            elif c == "}":
                raise ValueError(
                    f"{where}: unbalanced '}}' at position {pos} in {text!r}; write \\}} for a literal brace"
                )
            elif text.startswith("__", pos) and (m := _WILDCARD.match(text, pos)):
                flush()
                nodes.append(self._wildcard(m.group(1), where))
                pos = m.end()
            else:
                buf.append(c)
                pos += 1
        flush()
        return _Seq(tuple(nodes)), pos

    def _variants(self, text: str, start: int, where: str) -> tuple[_Variants, int]:
        pos = start + 1
        low = high = 1
        separator = ", "
        if m := _PICK.match(text, pos):
            low = int(m.group(1))
            high = int(m.group(2)) if m.group(2) else low
            separator = m.group(3) if m.group(3) is not None else separator
            pos = m.end()
        options, weights = [], []
        while True:
            weight = 1.0
            if m := _OPTION_WEIGHT.match(text, pos):
                weight = float(m.group(1))
                pos = m.end()
            option, pos = self._seq(text, pos, inside=True, where=where)
            options.append(option)
            weights.append(weight)
            if pos >= len(text):
                raise ValueError(f"{where}: '{{' at position {start} is never closed in {text!r}")
            pos += 1
            if text[pos - 1] == "}":
                break
        if not 0 <= low <= high:
            raise ValueError(f"{where}: bad count {low}-{high} in the '{{' at position {start}")
        if high > len(options):
            raise ValueError(f"{where}: '{{' at position {start} picks up to {high} of only {len(options)} options")
        return _Variants(tuple(options), tuple(weights), low, high, separator), pos

    def _wildcard(self, name: str, where: str) -> _Wildcard:
        if name in self.resolving:
            chain = " -> ".join(f"__{n}__" for n in self.resolving + [name])
            raise ValueError(f"{where}: wildcard __{name}__ refers to itself ({chain})")
        if len(self.resolving) >= MAX_DEPTH:
            raise ValueError(f"{where}: wildcards nested more than {MAX_DEPTH} deep")
        if name not in self.files:
            path = self._find(name, where)
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
            if not lines:
                raise ValueError(f"wildcard file {path} has no lines")
            self.resolving.append(name)
            try:
                self.files[name] = tuple(self.parse(line, where=f"{path.name}") for line in lines)
            finally:
                self.resolving.pop()
        return _Wildcard(name, self.files[name])

    def _find(self, name: str, where: str) -> Path:
        for d in self.dirs:
            path = d / f"{name}.txt"
            if path.is_file():
                return path
        known = _names(self.dirs)
        raise ValueError(
            f"{where}: no wildcard file {name}.txt in {', '.join(str(d) for d in self.dirs)}; "
            f"known wildcards: {', '.join(known) or 'none'}"
        )


# ------------------------------------------------------------------ counting, enumerating, sampling


def _count(node: _Node) -> int:
    if isinstance(node, str):
        return 1
    if isinstance(node, _Seq):
        return math.prod(_count(n) for n in node.nodes)
    if isinstance(node, _Wildcard):
        return sum(_count(o) for o in node.options)
    counts = [_count(o) for o in node.options]
    # e[k]: the number of ways to pick k options, each expanded (elementary symmetric sums)
    e = [1] + [0] * len(counts)
    for c in counts:
        for k in range(len(counts), 0, -1):
            e[k] += e[k - 1] * c
    return sum(e[k] for k in range(node.low, node.high + 1))


def _iter(node: _Node) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, _Seq):
        for parts in _iter_parts(node.nodes):
            yield "".join(parts)
    elif isinstance(node, _Wildcard):
        for option in node.options:
            yield from _iter(option)
    else:
        for k in range(node.low, node.high + 1):
            for combo in itertools.combinations(node.options, k):
                for parts in _iter_parts(combo):
                    yield node.separator.join(parts)


def _iter_parts(nodes: Sequence[_Node]) -> Iterator[tuple[str, ...]]:
    """Every combination of the nodes' expansions, the last node varying fastest (lazily)."""
    if not nodes:
        yield ()
        return
    for head in _iter(nodes[0]):
        for tail in _iter_parts(nodes[1:]):
            yield (head,) + tail


def _sample(node: _Node, rng: random.Random) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, _Seq):
        return "".join(_sample(n, rng) for n in node.nodes)
    if isinstance(node, _Wildcard):
        return _sample(rng.choice(node.options), rng)
    k = rng.randint(node.low, node.high)
    remaining = list(range(len(node.options)))
    chosen = []
    for _ in range(k):
        weights = [node.weights[i] for i in remaining]
        if sum(weights) <= 0:
            weights = None
        i = rng.choices(remaining, weights=weights)[0]
        remaining.remove(i)
        chosen.append(i)
    return node.separator.join(_sample(node.options[i], rng) for i in sorted(chosen))


def _tidy(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _is_choice(node: _Node) -> bool:
    return isinstance(node, (_Variants, _Wildcard))


# ------------------------------------------------------------------ public API


def _dirs(wildcards_dir) -> list[Path]:
    if wildcards_dir is None:
        dirs = []
    elif isinstance(wildcards_dir, (str, Path)):
        dirs = [Path(wildcards_dir)]
    elif isinstance(wildcards_dir, (list, tuple)):
        dirs = [Path(d) for d in wildcards_dir]
    else:
        raise ValueError(f"`wildcards_dir` must be a folder or a list of folders, got {type(wildcards_dir).__name__}")
    for d in dirs:
        if not d.is_dir():
            raise ValueError(f"`wildcards_dir` {str(d)!r} is not a folder")
    return dirs + [BUNDLED_DIR]


def _parse(template: str, wildcards_dir) -> _Seq:
    if not isinstance(template, str):
        raise ValueError(f"`template` must be a string, got {type(template).__name__}")
    return _Parser(_dirs(wildcards_dir)).parse(template)


def count_expansions(template: str, *, wildcards_dir=None) -> int:
    """How many prompts `expand(template)` makes in combinatorial mode."""
    return _count(_parse(template, wildcards_dir))


def _expand_labelled(template, mode, n, seed, wildcards_dir) -> list[tuple[str, str]]:
    if mode not in ("combinatorial", "random"):
        raise ValueError(f"`mode` must be 'combinatorial' or 'random', got {mode!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"`n` must be a positive integer or None, got {n!r}")
    root = _parse(template, wildcards_dir)

    def labelled(parts: Sequence[str]) -> tuple[str, str]:
        text = _tidy("".join(parts))
        choices = [_tidy(p) for node, p in zip(root.nodes, parts) if _is_choice(node)]
        return text, ", ".join(choices) if choices else text

    if mode == "combinatorial":
        total = _count(root)
        if n is None and total > MAX_COMBINATIONS:
            raise ValueError(
                f"`template` makes {total} prompts (more than {MAX_COMBINATIONS}); pass n= to take the first n, "
                f"or mode='random'"
            )
        parts_iter = _iter_parts(root.nodes)
        return [labelled(parts) for parts in itertools.islice(parts_iter, n)]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"`seed` must be an int or None, got {seed!r}")
    rng = random.Random(secrets.randbits(64) if seed is None else seed)
    return [labelled([_sample(node, rng) for node in root.nodes]) for _ in range(n or 1)]


def expand(
    template: str,
    *,
    mode: str = "combinatorial",
    n: int | None = None,
    seed: int | None = None,
    wildcards_dir: str | Path | Sequence[str | Path] | None = None,
) -> list[str]:
    """The prompts of a wildcard template.

    Args:
        template: text with {a|b} variants and __name__ wildcards (see the module docstring).
        mode: "combinatorial" gives every combination in order (the last choice varies fastest);
            "random" draws `n` prompts (default 1), independently, with `seed`.
        n: at most this many prompts (combinatorial: the first n).
        seed: the random mode's seed (None: a fresh one; the prompts themselves are what you keep).
        wildcards_dir: folder(s) of `name.txt` lists, searched before the shipped samples.
    """
    return [text for text, _ in _expand_labelled(template, mode, n, seed, wildcards_dir)]


def wildcard_axis(
    template: str,
    *,
    mode: str = "combinatorial",
    n: int | None = None,
    seed: int | None = None,
    wildcards_dir: str | Path | Sequence[str | Path] | None = None,
    weighted: bool = False,
    name: str = "prompt",
):
    """A sweep axis of the template's prompts, labelled by the choices made ("red, circle").

    `sdlab.sweep(pipe, axes={"prompt": wildcard_axis("a {red|blue} __shape__")})`; with
    `weighted=True` each prompt becomes a `WeightedPrompt` (weighting syntax in the template).
    """
    from ..axes import Axis

    pairs = _expand_labelled(template, mode, n, seed, wildcards_dir)
    values = [text for text, _ in pairs]
    if weighted:
        from .weighting import weighted as make_weighted

        values = make_weighted(values)
    return Axis(name, tuple(values), tuple(label for _, label in pairs), kind="param")


def list_wildcards(wildcards_dir: str | Path | Sequence[str | Path] | None = None) -> list[str]:
    """The wildcard names available (`__name__`), from `wildcards_dir` and the shipped samples."""
    return _names(_dirs(wildcards_dir))


def _names(dirs: list[Path]) -> list[str]:
    names = set()
    for d in dirs:
        if d.is_dir():
            names.update(p.relative_to(d).with_suffix("").as_posix() for p in d.rglob("*.txt"))
    return sorted(names)
