"""A small T5 tokenizer shipped with sdlab, for the tiny FLUX pipelines.

FLUX's second text encoder is T5, and its tokenizer is a SentencePiece Unigram model. Like the
CLIP tokenizer in ``sdlab.testing.clip_tokenizer``, sdlab cannot download one, so it ships one: a Unigram
``tokenizer.json`` laid out as T5's (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, ``▁`` word
boundaries, ``</s>`` appended) whose pieces are the words of ``data/vocabulary.txt`` plus every
printable ASCII character, so any ASCII text tokenizes and other characters become ``<unk>``.

``transformers.T5TokenizerFast.from_pretrained(T5_TOKENIZER_DIR)`` (``T5Tokenizer`` in
transformers 5, where the two names are one class) and ``AutoTokenizer`` load it.

``python -m sdlab.testing.t5_tokenizer`` rebuilds ``data/t5_tokenizer/`` from the word list.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdlab.testing.clip_tokenizer import DATA_DIR, read_vocabulary

T5_TOKENIZER_DIR = DATA_DIR / "t5_tokenizer"

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPACE = "\u2581"  # SentencePiece's word-boundary mark "▁"

# Unigram log-probabilities: a whole word always beats spelling it out.
_WORD_SCORE = -5.0
_SPACE_CHAR_SCORE = -9.0
_CHAR_SCORE = -10.0


def build_t5_tokenizer(words: list[str], directory: str | Path, *, model_max_length: int = 512) -> Path:
    """Write a T5 tokenizer (tokenizer.json, configs) that keeps ``words`` whole."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if not words:
        raise ValueError("`words` must not be empty")
    # 1. the vocabulary, in T5's order: specials, the boundary mark, words, characters
    chars = [chr(c) for c in range(33, 127)]
    pieces = [(PAD_TOKEN, 0.0), (EOS_TOKEN, 0.0), (UNK_TOKEN, 0.0), (SPACE, -2.0)]
    pieces += [(SPACE + w, _WORD_SCORE) for w in words]
    pieces += [(SPACE + c, _SPACE_CHAR_SCORE) for c in chars]
    pieces += [(c, _CHAR_SCORE) for c in chars]
    unique: dict[str, float] = {}
    for piece, score in pieces:
        unique.setdefault(piece, score)  # a one-letter word keeps its word score
    pieces = list(unique.items())

    # 2. the pipeline T5Tokenizer itself builds: whitespace split, "▁" prefix, "</s>" appended
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", EOS_TOKEN], pair=["$A", EOS_TOKEN, "$B", EOS_TOKEN], special_tokens=[(EOS_TOKEN, 1)]
    )
    tokenizer.add_special_tokens([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN])

    # 3. the files transformers reads
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"eos_token": EOS_TOKEN, "unk_token": UNK_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": model_max_length,
        "extra_ids": 0,
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return directory


def load_t5_tokenizer(directory: str | Path = T5_TOKENIZER_DIR, *, model_max_length: int = 512):
    """The shipped T5 tokenizer as a ``transformers.T5TokenizerFast``."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(directory), model_max_length=model_max_length)


if __name__ == "__main__":
    out = build_t5_tokenizer(read_vocabulary(), T5_TOKENIZER_DIR)
    print(f"wrote {out}")
