"""A1111's prompt syntax in plain strings: emphasis, BREAK, long prompts, prompt editing, alternation.

A plain string prompt is read as AUTOMATIC1111's webui (v1.10) reads it:

    (word)  x1.1     (word:1.3)  x1.3     [word]  /1.1     \\( \\) \\[ \\] \\\\  literal characters
    BREAK           starts a new 77-token chunk; prompts past 75 tokens are encoded in chunks
    [from:to:when]  `from` until step `when`, then `to`     [to:when]  nothing, then `to`
    [from::when]    `from`, then nothing                    [a|b|c]    a, b, c, a, ... one per step
    `when`: an integer is a step; a number written with a point (0.5, 1.0) a fraction of the steps

Emphasis is applied as A1111's "Original" option does: each token's CLIP output is multiplied by
its weight, then the chunk is rescaled to its original mean. Prompt editing follows A1111's
`get_learned_conditioning_prompt_schedules`: the schedule is a list of (end step, text), and the
denoising step s (counting from 0) uses the first entry whose end step is >= s.

A string without any of this syntax is encoded exactly as the pipeline encodes it; send text
verbatim (brackets as literal characters) with `verbatim("a (literal) bracket")`. Syntax sdlab
cannot honour (composable diffusion's `AND`, extra networks other than `<lora:name:w>`) is an error;
`<lora:name:w>` tags apply LoRAs (sdlab.adapters) and are taken out of the text encoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..request import PROMPT_TYPES

UP = 1.1  # (text) multiplies by 1.1, [text] divides by 1.1
CHUNK = 75  # prompt tokens per 77-token chunk (start and end tokens around them)
COMMA_BACKTRACK = 20  # A1111's default: a chunk ending within 20 tokens of a comma breaks after it

_SYNTAX = re.compile(r"[()\[\]\\]|\bBREAK\b")
_AND = re.compile(r"\bAND\b")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_WHEN = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


class _NoParse(Exception):
    """The schedule grammar does not match: A1111 then uses the whole prompt for every step."""


# ------------------------------------------------------------------ what a prompt contains


def has_syntax(text: Any) -> bool:
    """Whether the string `text` uses A1111 syntax (brackets, escapes, BREAK), so that it is encoded
    with A1111's weights and schedule rather than as the pipeline encodes plain text."""
    return isinstance(text, str) and _SYNTAX.search(text) is not None


def check_supported(text: str, name: str = "prompt", *, negative: bool = False) -> None:
    """Raise `ValueError` naming the construct if `text` uses A1111 syntax sdlab cannot honour."""
    # LoRA tags in a prompt are applied by sdlab.adapters (GenerationRequest.create); other extra networks are not
    m = next((m for m in _EXTRA_NETWORK.finditer(text) if negative or m.group(1) != "lora"), None)
    if m:
        raise ValueError(
            f"`{name}` uses A1111's extra network {m.group(0)!r} at position {m.start()}: sdlab applies only "
            f"<lora:name:weight> tags, in the prompt (or `loras=`); remove it, or pass "
            f"sdlab.prompts.verbatim(text) to send the text as it is"
        )
    m = None if negative else _AND.search(text)  # A1111 reads AND in negative prompts as a word
    if m:
        raise ValueError(
            f"`{name}` uses A1111's composable diffusion (`AND` at position {m.start()}), which sdlab does not "
            f"support; write 'and', or pass sdlab.prompts.verbatim(text) to send the text as it is"
        )


def check_comfyui(text: Any, name: str = "prompt") -> None:
    """ComfyUI's CLIPTextEncode weights `(word:1.2)` and `(word)` and reads \\( \\) as A1111 does, but
    takes square brackets ([word], prompt editing, alternation) and BREAK as plain text: refuse them."""
    if not isinstance(text, str):
        return
    check_supported(text, name, negative=name == "negative_prompt")
    bare = re.sub(r"\\.", "", text)
    m = re.search(r"[\[\]]|\bBREAK\b", bare)
    if m:
        piece = first_construct(bare[m.start() :]) or m.group()
        raise ValueError(
            f"`{name}` {text!r} uses A1111 syntax ComfyUI reads as plain text ({piece!r}): ComfyUI weights only "
            f"(word:1.2) and (word); write (word:0.91) for [word], or pass sdlab.prompts.verbatim(text) to send it as written"
        )


def first_construct(text: str) -> str:
    """The first piece of A1111 syntax in `text`, for error messages, e.g. "(red:1.5)"."""
    m = _SYNTAX.search(text)
    if m is None:
        return ""
    if m.group() == "BREAK":
        return "BREAK"
    if m.group() == "\\":
        return text[m.start() : m.start() + 2]
    depth, start = 0, m.start()
    for i in range(start, len(text)):
        if text[i] in "([":
            depth += 1
        elif text[i] in ")]":
            depth -= 1
            if depth <= 0:
                return text[start : i + 1]
    return text[start : start + 30]


# ------------------------------------------------------------------ prompt editing and alternation


@dataclass(frozen=True)
class _Edit:
    before: tuple | None  # None: [to:when]
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple


def _parse_top(text: str) -> tuple:
    """The prompt as a tree: strings, _Edit and _Alternate. At the top level a bracket that does not
    start a valid construct is a literal character (A1111's grammar allows stray ( ) [ ] :)."""
    nodes: list = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in "([":
            try:
                parsed, i = _bracket(text, i)
                nodes += parsed
            except _NoParse:
                nodes.append(c)
                i += 1
        elif c in ")]:":
            nodes.append(c)
            i += 1
        else:
            parsed, i = _sequence(text, i, stops="([)]:")
            nodes += parsed
    return tuple(nodes)


def _sequence(text: str, i: int, stops: str) -> tuple[list, int]:
    """Plain text and nested constructs from `i` up to (not including) a character in `stops`."""
    nodes: list = []
    while i < len(text) and text[i] not in stops:
        c = text[i]
        if c in "([":
            parsed, i = _bracket(text, i)
            nodes += parsed
        elif c in ")]:|":
            raise _NoParse
        elif c == "\\":
            if i + 1 >= len(text):
                raise _NoParse
            nodes.append(text[i : i + 2])
            i += 2
        else:
            j = i
            while j < len(text) and text[j] not in "\\[]():|":
                j += 1
            nodes.append(text[i:j])
            i = j
    return nodes, i


def _expect(text: str, i: int) -> str:
    if i >= len(text):
        raise _NoParse
    return text[i]


def _bracket(text: str, i: int) -> tuple[list, int]:
    if text[i] == "(":  # emphasis: kept as text here, weighted when encoding
        inner, j = _sequence(text, i + 1, stops="):")
        if _expect(text, j) == ")":
            return ["(", *inner, ")"], j + 1
        weight, k = _sequence(text, j + 1, stops=")")
        _expect(text, k)
        return ["(", *inner, ":", *weight, ")"], k + 1
    first, j = _sequence(text, i + 1, stops=":|]")
    c = _expect(text, j)
    if c == "]":
        return ["[", *first, "]"], j + 1
    if c == "|":
        options = [tuple(first)]
        while _expect(text, j) == "|":
            option, j = _sequence(text, j + 1, stops="|]")
            options.append(tuple(option))
        return [_Alternate(tuple(options))], j + 1
    m = _WHEN.match(text, j + 1)  # [to:when]
    if m:
        return [_Edit(None, tuple(first), m.group(1))], m.end()
    second, k = _sequence(text, j + 1, stops=":]")
    if _expect(text, k) != ":":
        raise _NoParse
    m = _WHEN.match(text, k + 1)
    if not m:
        raise _NoParse
    return [_Edit(tuple(first), tuple(second), m.group(1))], m.end()


def when_step(when: str, steps: int) -> int:
    """A1111 v1.10: a number with a point is a fraction of the steps, without one a step; at most `steps`."""
    value = float(when)
    if "." in when:
        value *= steps
    return min(steps, int(value))


def _walk(nodes, steps: int, whens: list, alternates: list) -> None:
    for node in nodes:
        if isinstance(node, _Edit):
            whens.append(when_step(node.when, steps))
            _walk(node.before or (), steps, whens, alternates)
            _walk(node.after, steps, whens, alternates)
        elif isinstance(node, _Alternate):
            alternates.append(node)
            for option in node.options:
                _walk(option, steps, whens, alternates)


def _render(nodes, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, _Edit):
            chosen = (node.before or ()) if step <= when_step(node.when, steps) else node.after
            out.append(_render(chosen, step, steps))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node)
    return "".join(out)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """[(end step, text), ...] as A1111's `get_learned_conditioning_prompt_schedules` gives it, e.g.
    ("a [red:blue:0.5] circle", 10) -> [(5, "a red circle"), (10, "a blue circle")]. A prompt that
    does not parse as a schedule is one entry, the text as it is (A1111 does the same)."""
    if not isinstance(text, str):
        raise ValueError(f"`prompt` must be a string, got {type(text).__name__}")
    try:
        nodes = _parse_top(text)
    except _NoParse:
        return [(steps, text)]
    whens: list[int] = []
    alternates: list = []
    _walk(nodes, steps, whens, alternates)
    ends = {steps, *(w for w in whens if w >= 1)}
    if alternates:
        ends.update(range(1, steps + 1))
    return [(end, _render(nodes, end, steps)) for end in sorted(ends)]


def entry_at(schedule, step: int) -> int:
    """The index of the schedule entry denoising step `step` (from 0) uses, as A1111 picks it."""
    for index, (end, *_rest) in enumerate(schedule):
        if step <= end:
            return index
    return len(schedule) - 1


# ------------------------------------------------------------------ emphasis


def parse_attention(text: str) -> list[tuple[str, float]]:
    """The fragments of `text` with their weights, as A1111's `parse_prompt_attention` gives them;
    a BREAK is the fragment ("BREAK", -1). Unclosed brackets apply to the end, as in A1111."""
    out: list[list[Any]] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in out[start:]:
            fragment[1] *= factor

    for m in re.finditer(r"\\[()\[\]\\]|\\|\(|\[|:([+-]?[.\d]+)\)|\)|\]|[^\\()\[\]:]+|:", text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            out.append([token[1:], 1.0])  # a lone backslash is dropped, as in A1111
        elif token == "(":
            rounds.append(len(out))
        elif token == "[":
            squares.append(len(out))
        elif weight is not None and rounds:
            try:
                factor = float(weight)
            except ValueError:
                raise ValueError(f"`prompt`: weight {weight!r} at position {m.start()} is not a number") from None
            scale(rounds.pop(), factor)
        elif token == ")" and rounds:
            scale(rounds.pop(), UP)
        elif token == "]" and squares:
            scale(squares.pop(), 1 / UP)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i:
                    out.append(["BREAK", -1])
                out.append([part, 1.0])
    for start in rounds:
        scale(start, UP)
    for start in squares:
        scale(start, 1 / UP)
    merged: list[tuple[str, float]] = []
    for fragment, weight in out or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + fragment, weight)
        else:
            merged.append((fragment, weight))
    return merged


def chunk_tokens(tokenizer, fragments: list[tuple[str, float]]) -> list[tuple[list[int], list[float]]]:
    """77-token chunks (ids and per-token weights) of weighted fragments, as A1111 builds them:
    75 prompt tokens between start and end tokens, padded; BREAK ends a chunk; a full chunk with a
    comma among its last 20 tokens moves the words after the comma to the next chunk."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.get_vocab().get(",</w>")
    texts = [t for t, w in fragments]
    from .weighting import quiet_long_sequence_log

    with quiet_long_sequence_log():  # long on purpose: split into chunks below
        ids = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"] if texts else []
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        fill = CHUNK - len(tokens)
        # after the end token: the pad token (SD 2.x and SDXL's second encoder pad with "!", id 0)
        chunks.append(([bos, *tokens, eos] + [pad] * fill, [1.0, *weights, 1.0] + [1.0] * fill))
        tokens, weights, last_comma = [], [], -1

    for token_ids, (fragment, weight) in zip(ids, fragments):
        if fragment == "BREAK" and weight == -1:
            close()
            continue
        for token in token_ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = list(moved[0]), list(moved[1])
            if len(tokens) == CHUNK:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close()
    return chunks


# ------------------------------------------------------------------ encoding


def encode(pipe, text: str, *, clip_skip: int | None = None):
    """(prompt_embeds, pooled or None) of one schedule text with A1111's emphasis and chunks, shaped
    as the pipeline's `encode_prompt` gives them ([1, 77 * chunks, dim]). SD 1.x/2.x and SDXL."""
    import torch

    from .facts import family_of

    family = family_of(pipe)
    fragments = parse_attention(text)
    if family in ("sd1", "sd2"):
        embeds, _ = _encode_chunks(pipe, pipe.tokenizer, pipe.text_encoder, fragments, clip_skip, sdxl=False)
        return embeds, None
    if family == "sdxl":
        if pipe.text_encoder is None or pipe.tokenizer is None:
            raise ValueError("A1111 prompt syntax on SDXL needs both text encoders (a refiner has only one)")
        left, _ = _encode_chunks(pipe, pipe.tokenizer, pipe.text_encoder, fragments, clip_skip, sdxl=True)
        right, pooled = _encode_chunks(pipe, pipe.tokenizer_2, pipe.text_encoder_2, fragments, clip_skip, sdxl=True)
        return torch.cat([left, right], dim=-1), pooled
    raise ValueError(f"A1111 prompt syntax needs CLIP text encoders (SD 1.x/2.x, SDXL); this model is {family!r}")


def _encode_chunks(pipe, tokenizer, encoder, fragments, clip_skip, *, sdxl: bool):
    import torch

    device = getattr(pipe, "_execution_device", None) or pipe.device
    outs, pooled = [], None
    mask_needed = getattr(encoder.config, "use_attention_mask", False)
    for ids, weights in chunk_tokens(tokenizer, fragments):
        input_ids = torch.tensor([ids], device=device)
        mask = None
        if mask_needed:  # as the tokenizer's mask: up to and including the first end token
            end = ids.index(tokenizer.eos_token_id, 1) + 1
            mask = torch.tensor([[1] * end + [0] * (len(ids) - end)], device=device)
        out = encoder(input_ids, attention_mask=mask, output_hidden_states=True)
        if sdxl:  # diffusers' SDXL encode_prompt: the penultimate layer (clip_skip more skipped), no norm
            z = out.hidden_states[-((clip_skip or 0) + 2)]
            if pooled is None:
                pooled = out[0]
        elif clip_skip:
            z = getattr(encoder, "text_model", encoder).final_layer_norm(out.hidden_states[-(clip_skip + 1)])
        else:
            z = out[0]
        z = z.to(dtype=encoder.dtype, device=device)
        if any(w != 1.0 for w in weights):
            z = emphasize(z, torch.tensor(weights, dtype=z.dtype, device=device))
        outs.append(z)
    return torch.cat(outs, dim=1), pooled


def emphasize(z, weights):
    """A1111's "Original" emphasis: each token's output ([1, 77, dim]) times its weight, then the
    chunk rescaled to its original mean. Where a mean is zero to float precision (an encoder whose
    last layer norm has no bias, e.g. sdlab's tiny test models) the rescale would divide by zero
    and is left out."""
    mean = z.mean()
    z = z * weights.reshape(1, -1, 1)
    scale = z.abs().mean() * 1e-4
    if abs(mean) > scale and abs(z.mean()) > scale:
        z = z * (mean / z.mean())
    return z


# ------------------------------------------------------------------ verbatim text


@dataclass(frozen=True)
class VerbatimPrompt:
    """A prompt sent as it is written: brackets, colons and BREAK are plain characters."""

    text: str
    weighting: str = "verbatim"

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ValueError(f"`prompt` must be a string, got {type(self.text).__name__}")
        if self.weighting != "verbatim":
            raise ValueError(f"`weighting` must be 'verbatim', got {self.weighting!r}")

    def __str__(self) -> str:
        return self.text

    is_weighted = False

    @property
    def prompt_sent(self) -> str:
        return self.text

    def as_a1111(self) -> str:
        """The text in A1111's (and ComfyUI's) syntax: brackets and backslashes escaped."""
        return re.sub(r"([\\()\[\]])", r"\\\1", self.text)

    def describe(self) -> dict[str, Any]:
        return {"type": "weighted_prompt", "weighting": "verbatim", "text": self.text}

    def validate(self, pipe, *, clip_skip: int | None = None) -> None:
        """Every model reads plain text."""

    def encode(self, pipe, *, clip_skip: int | None = None):
        """Not used: the local backend encodes a verbatim prompt itself, as the pipeline encodes plain text."""
        raise TypeError("a verbatim prompt is encoded by sdlab's local backend: pass it to sdlab.generate or sweep")


PROMPT_TYPES["verbatim"] = VerbatimPrompt  # GenerationRequest.from_dict and regenerate rebuild it


def verbatim(prompt):
    """`prompt` (or each of a list) sent as written: "a (literal) bracket" keeps its brackets."""
    if isinstance(prompt, VerbatimPrompt):
        return prompt
    if isinstance(prompt, str):
        return VerbatimPrompt(prompt)
    if isinstance(prompt, (list, tuple)):
        return [verbatim(p) for p in prompt]
    raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")


def describe_encoding(prompt: Any, steps: int, prefix: str = "", *, a1111: bool | None = None) -> dict[str, Any]:
    """Record fields saying how a prompt was encoded: `prompt_encoding` ("plain", "a1111",
    "verbatim", "compel"), and for A1111 syntax its weights or its schedule. `a1111`: whether the
    backend encoded the string as A1111 does (default: when it uses A1111 syntax)."""
    if prompt is None:
        return {}
    if not isinstance(prompt, str):
        return {f"{prefix}prompt_encoding": getattr(prompt, "weighting", type(prompt).__name__)}
    if not (has_syntax(prompt) if a1111 is None else a1111):
        return {f"{prefix}prompt_encoding": "plain"}
    fields: dict[str, Any] = {f"{prefix}prompt_encoding": "a1111"}
    schedule = prompt_schedule(prompt, steps)
    if len(schedule) > 1:
        fields[f"{prefix}prompt_schedule"] = [[end, text] for end, text in schedule]
    else:
        fields[f"{prefix}prompt_weights"] = [[t, round(w, 6)] for t, w in parse_attention(schedule[0][1])]
    return fields
