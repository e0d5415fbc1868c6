"""Prompt weighting and prompts past 77 tokens for SD 1.x/2.x and SDXL, through compel.

    prompt = weighted("a large (red:1.3) circle on a [blue] background")
    sdlab.generate(pipe, prompt, seed=1)

A `WeightedPrompt` goes wherever a prompt string goes (`generate`, `sweep`, a request): the local
backend asks it for its embeddings (`.encode(pipe)`) instead of encoding the text itself, and the
image's record keeps the text as written, the text the encoder saw and the weights.

Syntax (A1111's, plus compel's +/- and (text)N):
    (text:1.3)   weight 1.3          (text)   x1.1          [text]   /1.1 (nesting multiplies)
    word++       x1.1 per +          word--   x0.9 per -    (text)1.3, (text)+, (text)-  as compel
    \\( \\) \\[ \\]  literal brackets
Long prompts are encoded in chunks of 77 tokens (75 words' tokens and start/end), so nothing is
dropped. Weights below 1 fade a fragment out (compel masks it); negative weights are refused.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MissingDependencyError
from ..request import PROMPT_TYPES
from .facts import family_of

WEIGHTING_FAMILIES = ("sd1", "sd2", "sdxl")
UP = 1.1  # (text) and word+
DOWN_COMPEL = 0.9  # word-

_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER = r"[+-]?" + _UNSIGNED
_END = r"(?=[\s,.;:)\]]|$)"  # a compel suffix must end the word
_TOKEN = re.compile(
    rf"""
      \\(?P<escaped>[\\()\[\]])                      # \( \) \[ \] \\
    | (?P<open>\()
    | (?P<open_square>\[)
    | :\s*(?P<weight>{_NUMBER})\s*\)                  # (text:1.3)
    | \)(?P<suffix>\++|-+|{_UNSIGNED}){_END}        # (text)++ (text)- (text)1.3  (compel)
    | (?P<close>\))
    | (?P<close_square>\])
    | (?P<word>\w+)(?P<word_suffix>\++|-+){_END}      # word++ word--  (compel)
    | (?P<text>\w+|\s+|.)
    """,
    re.VERBOSE | re.DOTALL,
)


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """The fragments of `prompt` with their weights, e.g. "a (red:1.3) circle" ->
    [("a ", 1.0), ("red", 1.3), (" circle", 1.0)]. Brackets that do not match are an error."""
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` must be a string, got {type(prompt).__name__}")
    out: list[list[Any]] = []
    stack: list[list[Any]] = []  # [bracket, index of its first fragment, position, saw ':' or '|']

    def close(bracket: str, position: int, factor: float) -> None:
        if not stack or stack[-1][0] != bracket:
            other = {"(": ")", "[": "]"}
            found = ")" if bracket == "(" else "]"
            expected = f"; expected {other[stack[-1][0]]!r}" if stack else ""
            raise ValueError(
                f"`prompt`: unbalanced {found!r} at position {position} in {prompt!r}{expected}; "
                f"write \\{found} for a literal bracket"
            )
        _, start, _, editing = stack.pop()
        if editing and bracket == "[":
            raise ValueError(
                f"`prompt`: A1111 prompt editing / alternation ([a:b:when], [a|b]) at position {position} "
                f"is not supported; write \\[ \\] for literal brackets"
            )
        if factor < 0:
            raise ValueError(f"`prompt`: negative weight {factor:g} at position {position}; weights must be >= 0")
        for fragment in out[start:]:
            fragment[1] *= factor

    for m in _TOKEN.finditer(prompt):
        kind = m.lastgroup
        if kind == "escaped":
            out.append([m.group("escaped"), 1.0])
        elif kind in ("open", "open_square"):
            stack.append(["(" if kind == "open" else "[", len(out), m.start(), False])
        elif kind == "weight":
            close("(", m.start(), float(m.group("weight")))
        elif kind == "suffix":
            close("(", m.start(), _compel_factor(m.group("suffix")))
        elif kind == "close":
            close("(", m.start(), UP)
        elif kind == "close_square":
            close("[", m.start(), 1 / UP)
        elif m.group("word_suffix"):
            out.append([m.group("word"), _compel_factor(m.group("word_suffix"))])
        else:
            text = m.group("text")
            if text in (":", "|") and stack and stack[-1][0] == "[":
                stack[-1][3] = True
            out.append([text, 1.0])
    if stack:
        bracket, _, position, _ = stack[-1]
        raise ValueError(f"`prompt`: {bracket!r} at position {position} is never closed in {prompt!r}")
    merged: list[tuple[str, float]] = []
    for text, weight in out:
        weight = round(weight, 6)
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged


def _compel_factor(suffix: str) -> float:
    if suffix[0] == "+":
        return UP ** len(suffix)
    if suffix[0] == "-":
        return DOWN_COMPEL ** len(suffix)
    return float(suffix)


@dataclass(frozen=True)
class WeightedPrompt:
    """A prompt with weights, encoded by compel: pass it to `generate` or `sweep` like a string.

    `text` is the prompt as written; `prompt_sent` is what the tokenizer sees (brackets and
    weights removed) and `fragments` its pieces with their weights.
    """

    text: str
    weighting: str = "compel"
    fragments: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ValueError(f"`prompt` must be a string, got {type(self.text).__name__}")
        if self.weighting != "compel":
            raise ValueError(f"`weighting` must be 'compel', got {self.weighting!r}")
        object.__setattr__(self, "fragments", tuple(parse_weights(self.text)))

    def __str__(self) -> str:
        return self.text

    @property
    def prompt_sent(self) -> str:
        """The text the tokenizer sees: the fragments joined, without weight syntax."""
        return "".join(text for text, _ in self.fragments)

    @property
    def is_weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.fragments)

    def as_a1111(self) -> str:
        """The prompt in A1111's (and ComfyUI's) syntax, each weighted fragment as ``(text:w)`` with
        nesting and compel's forms multiplied out, literal brackets escaped; e.g.
        "a ((red)) circle+" -> "a (red:1.21) (circle:1.1)"."""
        out = []
        for text, weight in self.fragments:
            text = re.sub(r"([\\()\[\]])", r"\\\1", text)
            out.append(text if weight == 1.0 else f"({text}:{weight:.4g})")
        return "".join(out)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (cache keys, records)."""
        return {
            "type": "weighted_prompt",
            "weighting": self.weighting,
            "text": self.text,
            "prompt_sent": self.prompt_sent,
            "weights": [[text, weight] for text, weight in self.fragments],
        }

    def validate(self, pipe, *, clip_skip: int | None = None) -> None:
        """Raise before any model work if `pipe` cannot encode this prompt (with `clip_skip`)."""
        family = family_of(pipe)
        if family not in WEIGHTING_FAMILIES:
            raise ValueError(
                f"weighted prompts need an SD 1.x/2.x or SDXL pipeline (CLIP text encoders); this one is "
                f"{family!r}. FLUX reads prompts of up to 512 tokens with T5: pass the plain text "
                f"{self.prompt_sent!r}"
            )
        if clip_skip and (family not in ("sd1", "sd2") or clip_skip != 1):
            raise ValueError(
                f"`clip_skip`={clip_skip} with a weighted prompt: compel can skip exactly one CLIP layer on "
                f"SD 1.x/2.x (A1111's 'Clip skip: 2'); this is {family!r}. Pass the plain text or clip_skip=None"
            )
        require_compel()

    def encode(self, pipe, *, clip_skip: int | None = None):
        """(prompt_embeds, pooled_prompt_embeds or None), as the pipeline's `encode_prompt` gives them
        (SDXL: both CLIP encoders' penultimate states side by side; pooled from the second), but
        weighted and, past 77 tokens, in several 77-token chunks."""
        import torch

        self.validate(pipe, clip_skip=clip_skip)
        compel = require_compel()
        family = family_of(pipe)
        with torch.no_grad(), quiet_long_sequence_log():
            if family in ("sd1", "sd2"):
                # clip_skip=1: the penultimate layer through the final layer norm, as diffusers' encode_prompt
                states = (
                    compel.ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NORMALIZED
                    if clip_skip
                    else compel.ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
                )
                encoder = compel.Compel(
                    tokenizer=pipe.tokenizer,
                    text_encoder=pipe.text_encoder,
                    returned_embeddings_type=states,
                    truncate_long_prompts=False,
                )
                with _text_model_alias(pipe.text_encoder):
                    return self._embeds(encoder), None
            if pipe.text_encoder is None or pipe.tokenizer is None:
                raise ValueError("weighted prompts for SDXL need both text encoders (a refiner has only one)")
            states = compel.ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
            first = compel.Compel(
                tokenizer=pipe.tokenizer,
                text_encoder=pipe.text_encoder,
                returned_embeddings_type=states,
                truncate_long_prompts=False,
            )
            second = compel.Compel(
                tokenizer=pipe.tokenizer_2,
                text_encoder=pipe.text_encoder_2,
                returned_embeddings_type=states,
                truncate_long_prompts=False,
                requires_pooled=True,
            )
            left, right = self._embeds(first), self._embeds(second)
            length = max(left.shape[1], right.shape[1])
            left = pad_embeddings(left, length, first.conditioning_provider.empty_z)
            right = pad_embeddings(right, length, second.conditioning_provider.empty_z)
            pooled = second.conditioning_provider.get_pooled_embeddings([self.prompt_sent])
            return torch.cat([left, right], dim=-1), pooled.to(right.dtype)

    def _embeds(self, encoder):
        from compel.prompt_parser import FlattenedPrompt

        prompt = FlattenedPrompt([(text, float(weight)) for text, weight in self.fragments])
        (embeds, _tokens), _options = encoder.build_conditioning_tensor_for_prompt_object(prompt)
        return embeds if embeds.ndim == 3 else embeds.unsqueeze(0)


PROMPT_TYPES["compel"] = WeightedPrompt  # GenerationRequest.from_dict rebuilds weighted prompts


def weighted(prompt: str | WeightedPrompt | Sequence[str]) -> WeightedPrompt | list[WeightedPrompt]:
    """A prompt (or each of a list) with weights and long-prompt support, for `generate` and `sweep`.

    Syntax errors (unbalanced brackets, negative weights) raise `ValueError` here; a pipeline that
    cannot use weights (FLUX) or a missing compel is reported when generating, before model work.
    """
    if isinstance(prompt, WeightedPrompt):
        return prompt
    if isinstance(prompt, str):
        return WeightedPrompt(prompt)
    if isinstance(prompt, (list, tuple)):
        return [weighted(p) for p in prompt]
    raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt).__name__}")


def require_compel():
    """The compel module, or a `MissingDependencyError` saying how to install it."""
    try:
        import compel
    except ImportError:
        raise MissingDependencyError("compel", "Prompt weighting and prompts past 77 tokens") from None
    return compel


def pad_embeddings(embeds, length: int, empty):
    """`embeds` [batch, n, dim] extended to `length` tokens with copies of `empty` ([1, 77, dim], the
    empty prompt's embeddings), as compel and A1111 pad a prompt to a longer one's length. All-zero
    embeddings (SDXL's zeroed empty negative prompt) are padded with zeros."""
    import torch

    n = embeds.shape[1]
    if n == length:
        return embeds
    empty = empty if empty.ndim == 3 else empty.unsqueeze(0)
    chunk = empty.shape[1]
    if n > length or (length - n) % chunk:
        raise ValueError(f"cannot pad embeddings of {n} tokens to {length} with chunks of {chunk}")
    pad = empty.to(device=embeds.device, dtype=embeds.dtype).expand(embeds.shape[0], -1, -1)
    if not torch.any(embeds):
        pad = torch.zeros_like(pad)
    return torch.cat([embeds] + [pad] * ((length - n) // chunk), dim=1)


@contextlib.contextmanager
def quiet_long_sequence_log():
    """Hide transformers' "Token indices sequence length is longer than ..." log line while compel
    tokenizes a long prompt on purpose (it then splits it into 77-token chunks)."""
    import logging

    log = logging.getLogger("transformers.tokenization_utils_base")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _text_model_alias(encoder):
    """compel reaches the final layer norm as `text_encoder.text_model.final_layer_norm`; transformers
    5 flattened CLIPTextModel (no `text_model`). For the call only, the encoder stands for itself."""
    if "text_model" in encoder.__dict__ or hasattr(encoder, "text_model"):
        yield
        return
    object.__setattr__(encoder, "text_model", encoder)  # an instance attribute, not a registered submodule
    try:
        yield
    finally:
        del encoder.__dict__["text_model"]
