"""The token budget: how much of a prompt each text encoder of a pipeline actually reads.

CLIP reads 77 tokens (a start token, 75 of the prompt's, an end token); the rest is cut off
without a word. SD 1.x/2.x have one CLIP, SDXL two (both 77), FLUX a CLIP (77, only for its
pooled vector) and T5 (the pipeline's `max_sequence_length`, 512 by default).

    token_budget(pipe, prompt)
    # TokenBudget(sd1) 'a large red circle, ...'
    #   CLIP  92/77 tokens, 15 over: dropped "golden hour, bokeh"

The local backend calls `warn_if_truncated` once per distinct prompt (a `TokenLimitWarning` naming
the dropped words) and `record_fields` for every image's record.
"""

from __future__ import annotations

import contextlib
import html
import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .facts import family_of, pipeline_of, t5_length

_WORD = re.compile(r"[^\s,;|]+")
MAX_SHOWN = 12  # dropped words shown in summaries and warnings (all are in `dropped_words`)


class TokenLimitWarning(UserWarning):
    """A prompt is longer than a text encoder reads: its last words are dropped."""


@dataclass(frozen=True)
class TokenCount:
    """One tokenizer's view of a prompt."""

    tokenizer: str  # the pipeline attribute: "tokenizer", "tokenizer_2"
    label: str  # "CLIP", "CLIP-L", "CLIP-G", "T5"
    count: int  # tokens of the prompt, start/end tokens included
    limit: int  # tokens the encoder reads, start/end tokens included
    kept_text: str
    dropped_text: str = ""
    dropped_words: tuple[str, ...] = ()
    role: str = "sequence"  # "sequence": attended to by the denoiser; "pooled": one summary vector
    chunks: int = 1  # weighted prompts past the limit are encoded in chunks of `limit` (nothing dropped)
    partial: bool = False  # the first dropped word is cut in two (its start is read)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_text)

    def dropped(self) -> str:
        """The dropped words, quoted, the first marked if only its end is dropped."""
        words = self.dropped_words
        text = " ".join(words if len(words) <= MAX_SHOWN else words[:MAX_SHOWN] + ("...",))
        more = f" ({len(words)} words)" if len(words) > MAX_SHOWN else ""
        return repr(text) + more + (f" ({words[0]!r} only in part)" if self.partial else "")

    def summary(self) -> str:
        label = self.label + (" (pooled)" if self.role == "pooled" else "")
        if self.chunks > 1:
            return f"{label}: {self.count} tokens in {self.chunks} chunks of {self.limit} (read in chunks: nothing dropped)"
        if self.truncated:
            return f"{label}: {self.count}/{self.limit} tokens, {self.count - self.limit} over: drops {self.dropped()}"
        return f"{label}: {self.count}/{self.limit} tokens, {self.limit - self.count} free"


@dataclass(frozen=True)
class TokenBudget:
    """Every tokenizer's count for one prompt; `truncated` if any of them drops words."""

    prompt: str
    family: str
    counts: tuple[TokenCount, ...]
    weighted: bool = False

    @property
    def truncated(self) -> bool:
        return any(c.truncated for c in self.counts)

    @property
    def dropped_words(self) -> tuple[str, ...]:
        """The words some encoder does not read (the longest list among the tokenizers)."""
        return max((c.dropped_words for c in self.counts), key=len, default=())

    def __getitem__(self, label: str) -> TokenCount:
        for c in self.counts:
            if label in (c.label, c.tokenizer):
                return c
        raise KeyError(f"no tokenizer {label!r}; this budget has {', '.join(c.label for c in self.counts)}")

    def __repr__(self) -> str:
        short = self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + "..."
        lines = [f"TokenBudget({self.family}) {short!r}"]
        lines += [f"  {c.summary()}" for c in self.counts]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for c in self.counts:
            label = html.escape(c.label + (" (pooled)" if c.role == "pooled" else ""))
            text = html.escape(c.kept_text)
            if c.truncated:
                text += f' <span style="color:#c00;text-decoration:line-through">{html.escape(c.dropped_text)}</span>'
            count = f"{c.count} in {c.chunks} chunks" if c.chunks > 1 else f"{c.count}/{c.limit}"
            rows.append(f"<tr><td>{label}</td><td>{count}</td><td style='text-align:left'>{text}</td></tr>")
        return (
            f"<table><tr><th>encoder</th><th>tokens</th><th style='text-align:left'>read (dropped struck out)</th></tr>"
            f"{''.join(rows)}</table>"
        )

    def warning_message(self) -> str:
        parts = []
        for c in self.counts:
            if c.truncated and c.role == "sequence":
                parts.append(f"{c.label} reads {c.limit} tokens (the prompt has {c.count}) and drops {c.dropped()}")
        advice = "shorten it or move what matters to the front"
        if self.family in ("sd1", "sd2", "sdxl"):
            advice += "; as a plain string (not verbatim) sdlab reads all of it in 77-token chunks"
        return (
            f"prompt {self.prompt[:60]!r}{'...' if len(self.prompt) > 60 else ''}: "
            + "; ".join(parts)
            + f". To keep those words, {advice}."
        )


def token_budget(pipe: Any, prompt: Any) -> TokenBudget:
    """Count `prompt`'s tokens with each tokenizer of `pipe` and show what would be dropped.

    Args:
        pipe: a diffusers pipeline (from `load_pipeline`) or its sdlab backend.
        prompt: a string or a `WeightedPrompt` (counted by the text its tokenizer sees; on SD 1.x/2.x
            and SDXL it is encoded in chunks, so nothing is dropped).
    """
    from .weighting import WEIGHTING_FAMILIES, WeightedPrompt

    pipe = pipeline_of(pipe)
    family = family_of(pipe)
    is_weighted = isinstance(prompt, WeightedPrompt)
    if is_weighted:
        text = prompt.prompt_sent
    elif isinstance(prompt, str):
        text = prompt
    elif isinstance(getattr(prompt, "text", None), str):
        text = prompt.text
    else:
        raise ValueError(f"`prompt` must be a string or a WeightedPrompt, got {type(prompt).__name__}")
    # SD 1.x/2.x and SDXL encode weighted prompts and plain strings in 77-token chunks (as A1111 does)
    chunked = (is_weighted or isinstance(prompt, str)) and family in WEIGHTING_FAMILIES
    counts = []
    for attr, label, limit, role in _encoders(pipe, family):
        count = _count(getattr(pipe, attr), attr, label, limit, role, text, chunked=chunked)
        if count.chunks > 1:
            chunks = _compel_chunks(pipe, attr, prompt) if is_weighted else _a1111_chunks(pipe, attr, text)
            count = replace(count, chunks=chunks or count.chunks)
        counts.append(count)
    if not counts:
        raise ValueError(f"{type(pipe).__name__} has no tokenizer to count with")
    return TokenBudget(
        prompt=text if not is_weighted else prompt.text, family=family, counts=tuple(counts), weighted=is_weighted
    )


def _encoders(pipe, family: str) -> list[tuple[str, str, int, str]]:
    """(attribute, label, limit, role) of each tokenizer the pipeline uses for the prompt."""

    def limit(attr):
        return int(getattr(pipe, attr).model_max_length)

    if family in ("sd1", "sd2"):
        out = [("tokenizer", "CLIP", None, "sequence")]
    elif family == "sdxl":
        out = [("tokenizer", "CLIP-L", None, "sequence"), ("tokenizer_2", "CLIP-G", None, "sequence")]
    elif family == "flux":
        t5 = t5_length(pipe)
        out = [("tokenizer", "CLIP", None, "pooled"), ("tokenizer_2", "T5", t5, "sequence")]
    else:
        out = [(a, a, None, "sequence") for a in ("tokenizer", "tokenizer_2", "tokenizer_3")]
    return [
        (a, label, n if n is not None else limit(a), role)
        for a, label, n, role in out
        if getattr(pipe, a, None) is not None
    ]


def _count(tokenizer, attr: str, label: str, limit: int, role: str, text: str, *, chunked: bool) -> TokenCount:
    special = len(tokenizer("")["input_ids"])  # CLIP: start and end; T5: end
    room = limit - special
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError):  # a slow tokenizer: no offsets
        enc, offsets = tokenizer(text, add_special_tokens=False, verbose=False), None
    ids = enc["input_ids"]
    count = len(ids) + special
    if chunked and len(ids) > room:
        return TokenCount(attr, label, count, limit, text, role=role, chunks=_chunk_count(ids, room))
    if len(ids) <= room:
        return TokenCount(attr, label, count, limit, text, role=role)
    if offsets is not None:
        cut = offsets[room][0]
        kept, dropped = text[:cut].rstrip(), text[cut:].strip()
        words = [m for m in _WORD.finditer(text) if m.end() > cut]
        partial = bool(words) and words[0].start() < cut
        words = tuple(m.group() for m in words)
    else:
        kept = tokenizer.decode(ids[:room]).strip()
        dropped = tokenizer.decode(ids[room:]).strip()
        words, partial = tuple(_WORD.findall(dropped)), False
    return TokenCount(attr, label, count, limit, kept, dropped, words, role=role, partial=partial)


def _chunk_count(ids: list[int], room: int) -> int:
    return math.ceil(len(ids) / room)  # the least; see _compel_chunks


def _a1111_chunks(pipe, attr: str, text: str) -> int:
    """How many chunks A1111's encoding makes of a plain string (it moves a phrase cut by the 75-token
    boundary to the next chunk, so a chunk may hold fewer)."""
    from .a1111 import chunk_tokens, parse_attention

    return len(chunk_tokens(getattr(pipe, attr), parse_attention(text)))


def _compel_chunks(pipe, attr: str, prompt) -> int | None:
    """How many chunks compel makes (it splits at sentence, phrase or word ends, so a chunk may
    hold fewer than 75 tokens); None without compel."""
    from .weighting import require_compel

    try:
        compel = require_compel()
    except ImportError:
        return None
    encoder = getattr(pipe, attr.replace("tokenizer", "text_encoder"), None)
    if encoder is None:
        return None
    provider = compel.EmbeddingsProvider(tokenizer=getattr(pipe, attr), text_encoder=encoder, truncate=False)
    texts = [t for t, _ in prompt.fragments]
    weights = [w for _, w in prompt.fragments]
    from .weighting import quiet_long_sequence_log

    with quiet_long_sequence_log():
        ids, _, _ = provider.get_token_ids_and_expand_weights(texts, weights, device="cpu")
    return len(ids) // provider.max_token_count


# ------------------------------------------------------------------ used by the local backend


def warn_if_truncated(pipe: Any, prompt: Any) -> TokenBudget | None:
    """Warn (`TokenLimitWarning`) if an encoder the denoiser attends to drops words of `prompt`."""
    if prompt is None or (isinstance(prompt, str) and not prompt):
        return None
    budget = token_budget(pipe, prompt)
    if drops_words(budget):
        warnings.warn(budget.warning_message(), TokenLimitWarning, stacklevel=_caller_stacklevel())
    return budget


def drops_words(budget: TokenBudget | None) -> bool:
    """Whether an encoder the denoiser attends to drops words (what `warn_if_truncated` warns of)."""
    return budget is not None and any(c.truncated and c.role == "sequence" for c in budget.counts)


@contextlib.contextmanager
def quiet_truncation_log(pipe: Any):
    """Hide diffusers' "The following part of your input was truncated ..." log line while `pipe`
    encodes a prompt that a TokenLimitWarning has already reported (it would say it again)."""
    import logging

    logs = {logging.getLogger(c.__module__) for c in type(pipe).__mro__ if c.__module__.startswith("diffusers.")}
    levels = {log: log.level for log in logs}
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in levels.items():
            log.setLevel(level)


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside sdlab: a warning then names the user's own line
    (their notebook cell), not sdlab's internals."""
    import sys

    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def record_fields(pipe: Any, prompt: Any, negative_prompt: Any) -> dict[str, Any]:
    """What the text encoders were given, for an image's record: for weighted prompts
    `prompt_sent` and `prompt_weights`; for prompts cut short `truncated_words` (per tokenizer);
    the same with a `negative_` prefix for the negative prompt. Empty for short plain prompts."""
    from .a1111 import has_syntax
    from .weighting import WeightedPrompt

    fields: dict[str, Any] = {}
    for prefix, value in (("", prompt), ("negative_", negative_prompt)):
        if value is None or (isinstance(value, str) and not value):
            continue
        if isinstance(value, str) and has_syntax(value):  # A1111 syntax: encoded in chunks, nothing dropped
            continue
        if isinstance(value, WeightedPrompt):
            fields[f"{prefix}prompt_sent"] = value.prompt_sent
            fields[f"{prefix}prompt_weights"] = [[t, w] for t, w in value.fragments]
        budget = token_budget(pipe, value)
        if budget.truncated:
            fields[f"{prefix}truncated_words"] = {c.label: list(c.dropped_words) for c in budget.counts if c.truncated}
    return fields
