"""Textual inversion embeddings: a token whose vectors come from a file, for one call.

    sdlab.generate(pipe, "a <my-style> shape", embeddings={"<my-style>": "learned_embeds.safetensors"})
    sdlab.generate(pipe, "a cat, easynegative", embeddings=["easynegative"])   # A1111: the file's name is the token

Files: A1111's `.pt` (`string_to_param`) and `.safetensors` (`emb_params`), and diffusers'
`learned_embeds.safetensors` ({token: vectors}); names are looked up in the embeddings folder
(`set_embedding_dir`, or $SDLAB_EMBEDDING_DIR). Identity is content (SHA-256); A1111's `TI hashes`
are its first 12 hex digits. Scoped like LoRAs: the tokens are added to a copy of the tokenizer and
to the text encoder for one call (diffusers' `load_textual_inversion`), and the pipeline's own
tokenizer and embedding layer are put back afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import identity

SUFFIXES = (".safetensors", ".pt", ".bin")
_dir: Path | None = None
_vectors: dict[str, Any] = {}


def set_embedding_dir(path: str | Path | None) -> None:
    """The folder where textual inversion embeddings are found by name."""
    global _dir
    if path is not None and not Path(path).is_dir():
        raise ValueError(f"`set_embedding_dir`: {str(path)!r} is not a folder")
    _dir = None if path is None else Path(path)


def embedding_dir() -> Path | None:
    if _dir is not None:
        return _dir
    env = os.environ.get("SDLAB_EMBEDDING_DIR")
    return Path(env) if env else None


@dataclass(frozen=True)
class Embedding:
    """A token and the embedding file that defines it."""

    token: str
    name: str
    path: str
    sha256: str

    @property
    def a1111_hash(self) -> str:
        """A1111's `TI hashes` value: the first 12 hex digits of the file's SHA-256."""
        return self.sha256[:12]

    def describe(self, *, path: bool = True) -> dict[str, Any]:
        out = {"token": self.token, "name": self.name, "sha256": self.sha256, "a1111_hash": self.a1111_hash}
        if path:
            out["path"] = self.path
        return out


def _find(ref: str | Path) -> Path:
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "learned_embeds.safetensors").is_file():
        return path / "learned_embeds.safetensors"
    folder = embedding_dir()
    if folder is not None:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and str(ref) in (p.name, p.stem):
                return p
    where = f"the embeddings folder {str(folder)!r}" if folder else "no embeddings folder (sdlab.set_embedding_dir)"
    raise ValueError(f"textual inversion embedding {str(ref)!r} not found: not a file, and not in {where}")


def resolve_embeddings(embeddings: Any) -> tuple[Embedding, ...]:
    """`embeddings=` as given to generate: {token: file or name}, or [name or file] (token = file name)."""
    if embeddings is None:
        return ()
    if isinstance(embeddings, Embedding):
        embeddings = [embeddings]
    if isinstance(embeddings, Mapping):
        items = list(embeddings.items())
    elif isinstance(embeddings, (list, tuple)):
        items = [(None, e) for e in embeddings]
    elif isinstance(embeddings, (str, Path)):
        items = [(None, embeddings)]
    else:
        raise ValueError(f"`embeddings` must map tokens to files, or list files/names, got {type(embeddings).__name__}")
    out = []
    for token, ref in items:
        if isinstance(ref, Embedding):
            out.append(ref)
            continue
        path = _find(ref).resolve()
        token = token if token is not None else path.stem
        if not isinstance(token, str) or not token.strip() or " " in token:
            raise ValueError(f"`embeddings` token {token!r} must be one word")
        out.append(Embedding(token=token, name=path.stem, path=str(path), sha256=identity.file_sha256(path)))
    tokens = [e.token for e in out]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"`embeddings` gives a token twice: {tokens}")
    return tuple(out)


def check_embeddings(embeddings: Any) -> tuple[Embedding, ...]:
    if embeddings is None:
        return ()
    if not isinstance(embeddings, tuple) or not all(isinstance(e, Embedding) for e in embeddings):
        raise ValueError("`embeddings` of a GenerationRequest is a tuple of sdlab.textual_inversion.Embedding")
    return embeddings


def vectors(embedding: Embedding):
    """The embedding's vectors [n, dim], read once per content hash; a corrupt file is a ValueError naming it."""
    cached = _vectors.get(embedding.sha256)
    if cached is not None:
        return cached
    import torch

    try:
        if embedding.path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(embedding.path)
        else:
            state = torch.load(embedding.path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"embedding file {embedding.path!r} cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "string_to_param" in state:  # A1111 .pt
        (value,) = list(state["string_to_param"].values())[:1] or [None]
    elif isinstance(state, dict) and "emb_params" in state:  # A1111 .safetensors
        value = state["emb_params"]
    elif isinstance(state, dict) and len(state) == 1:  # diffusers: {token: vectors}
        (value,) = state.values()
    elif torch.is_tensor(state):
        value = state
    else:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"embedding file {embedding.path!r} is not a textual inversion embedding one text encoder reads "
            f"(keys {keys}; SDXL's clip_l/clip_g pairs are not supported)"
        )
    if not torch.is_tensor(value) or value.ndim not in (1, 2):
        raise ValueError(f"embedding file {embedding.path!r} holds no [n, dim] vectors")
    value = value.detach().to(torch.float32).reshape(-1, value.shape[-1])
    _vectors[embedding.sha256] = value
    return value


def check_fits(pipe, embeddings: tuple[Embedding, ...]) -> None:
    """Each embedding's width is the text encoder's, and its token is not a word the tokenizer has."""
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is None or getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError(
            f"`embeddings` (textual inversion) need an SD 1.x/2.x pipeline with one CLIP text encoder; "
            f"{type(pipe).__name__} is not"
        )
    width = encoder.get_input_embeddings().weight.shape[1]
    vocab = pipe.tokenizer.get_vocab()
    for e in embeddings:
        v = vectors(e)
        if v.shape[1] != width:
            raise ValueError(
                f"embedding {e.path!r} has {v.shape[1]}-wide vectors; this text encoder takes {width} "
                f"(an embedding for another model family?)"
            )
        if e.token in vocab:
            raise ValueError(f"embedding token {e.token!r} is already a word of the tokenizer; name it differently")


@contextlib.contextmanager
def applied(pipe, embeddings: tuple[Embedding, ...]):
    """The embeddings' tokens in a copy of the tokenizer and in the text encoder for one call; the
    pipeline's own tokenizer and embedding layer (the same tensors) are put back afterwards."""
    if not embeddings:
        yield
        return
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    original_layer = encoder.get_input_embeddings()
    original_vocab = encoder.config.vocab_size
    working = copy.deepcopy(tokenizer)
    try:
        for e in embeddings:
            pipe.load_textual_inversion(
                {e.token: vectors(e).clone()}, token=e.token, tokenizer=working, text_encoder=encoder
            )
        pipe.tokenizer = working
        yield
    finally:
        pipe.tokenizer = tokenizer
        encoder.set_input_embeddings(original_layer)
        encoder.config.vocab_size = original_vocab


def find_by_hash(value: str) -> str | None:
    """The path of the file in the embeddings folder whose SHA-256 starts with `value` (A1111's 12 digits too)."""
    folder = embedding_dir()
    if folder is None or not value:
        return None
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in SUFFIXES and identity.file_sha256(p).startswith(value.lower()):
            return str(p.resolve())
    return None
