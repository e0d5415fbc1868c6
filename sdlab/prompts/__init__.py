"""Prompt engineering: structure and presets, the token budget, weighting and long prompts, wildcards.

    from sdlab import prompts

    prompt = prompts.build_prompt("a red circle", preset="photo")      # subject, style, quality
    negative = prompts.build_negative_prompt(preset="photo")
    prompts.token_budget(pipe, prompt)          # per tokenizer: count, limit, dropped words
    prompts.weighted("a (red:1.3) circle")      # weights and prompts past 77 tokens (compel)
    "a (red:1.3) [red:blue:0.5] circle"         # A1111's syntax in a plain string works as in A1111
    prompts.verbatim("a (literal) bracket")     # the text sent as written
    prompts.expand("a {red|green|blue} __shape__")  # wildcards, combinatorial or random

Importing this package loads no model library and reads no file; presets and wildcard lists are
read when first used.
"""

from .a1111 import VerbatimPrompt, parse_attention, prompt_schedule, verbatim
from .structure import (
    PromptPreset,
    build_negative_prompt,
    build_prompt,
    get_preset,
    list_presets,
    load_presets,
    register_preset,
)
from .tokens import TokenBudget, TokenCount, TokenLimitWarning, token_budget
from .weighting import WeightedPrompt, parse_weights, weighted
from .wildcards import count_expansions, expand, list_wildcards, wildcard_axis


def prompt_object(weighting: str, text: str):
    """The prompt object a record's `prompt_weighting` names ("compel", "verbatim"), rebuilt from its text."""
    from ..request import PROMPT_TYPES

    factory = PROMPT_TYPES.get(weighting)
    if factory is None:
        raise ValueError(f"prompt weighting {weighting!r} is unknown; sdlab knows {sorted(PROMPT_TYPES)}")
    return factory(text)


__all__ = [
    "VerbatimPrompt",
    "parse_attention",
    "prompt_object",
    "prompt_schedule",
    "verbatim",
    "PromptPreset",
    "TokenBudget",
    "TokenCount",
    "TokenLimitWarning",
    "WeightedPrompt",
    "build_negative_prompt",
    "build_prompt",
    "count_expansions",
    "expand",
    "get_preset",
    "list_presets",
    "list_wildcards",
    "load_presets",
    "parse_weights",
    "register_preset",
    "token_budget",
    "weighted",
    "wildcard_axis",
]
