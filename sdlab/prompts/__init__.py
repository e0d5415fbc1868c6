"""Prompt engineering: structure and presets, the token budget, weighting and long prompts, wildcards.

    from sdlab import prompts

    prompt = prompts.build_prompt("a red circle", preset="photo")      # subject, style, quality
    negative = prompts.build_negative_prompt(preset="photo")
    prompts.token_budget(pipe, prompt)          # per tokenizer: count, limit, dropped words
    prompts.weighted("a (red:1.3) circle")      # weights and prompts past 77 tokens (compel)
    prompts.expand("a {red|green|blue} __shape__")  # wildcards, combinatorial or random

Importing this package loads no model library and reads no file; presets and wildcard lists are
read when first used.
"""

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

__all__ = [
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
