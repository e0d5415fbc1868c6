"""A small CLIP tokenizer shipped with sdlab.

Even diffusers' own tests download their tiny tokenizer from the hub. sdlab cannot, so it ships
one: a genuine CLIP byte-level BPE (``vocab.json`` + ``merges.txt``) whose merges keep every
word of ``data/vocabulary.txt`` whole. Any other text still tokenizes, a character at a time,
exactly as CLIP's BPE would, so token budgets and truncation behave as on a real model.

``python -m sdlab.testing.clip_tokenizer`` rebuilds ``data/clip_tokenizer/`` from the word list.
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
VOCABULARY_FILE = DATA_DIR / "vocabulary.txt"
CLIP_TOKENIZER_DIR = DATA_DIR / "clip_tokenizer"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_vocabulary(path: str | Path = VOCABULARY_FILE) -> list[str]:
    """The words of a vocabulary file: whitespace separated, ``#`` starts a comment."""
    words: list[str] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0]
        words.extend(w.lower() for w in line.split())
    return list(dict.fromkeys(words))


def build_clip_tokenizer(words: list[str], directory: str | Path, *, model_max_length: int = 77) -> Path:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) that keeps ``words`` whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if not words:
        raise ValueError("`words` must not be empty")
    alphabet = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
        min_frequency=1,
    )
    bpe.train_from_iterator(words, trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]

    # CLIP's layout: the 256 characters, the same with </w>, then one token per merge.
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    for left, right in merges:
        vocab_list.append(left + right)
    vocab_list += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (directory / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return directory


def load_clip_tokenizer(directory: str | Path = CLIP_TOKENIZER_DIR, *, model_max_length: int = 77):
    """The shipped CLIP tokenizer as a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=model_max_length)


if __name__ == "__main__":
    out = build_clip_tokenizer(read_vocabulary(), CLIP_TOKENIZER_DIR)
    print(f"wrote {out}")
