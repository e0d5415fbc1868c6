"""Textual inversion embeddings (sdlab.textual_inversion): by token, for one call, recorded by content."""

import numpy as np
import pytest
import torch
from helpers import max_pixel_diff
from safetensors.torch import save_file

import sdlab
from sdlab.metadata import infotext
from sdlab.textual_inversion import set_embedding_dir

KW = dict(seed=3, num_inference_steps=3, guidance_scale=4.0)


def width(pipe) -> int:
    return pipe.text_encoder.get_input_embeddings().weight.shape[1]


def diffusers_file(path, token, pipe, seed):
    g = torch.Generator().manual_seed(seed)
    save_file({token: torch.randn(width(pipe), generator=g)}, str(path))
    return path


@pytest.fixture
def ti_dir(tmp_path, sd1_pipe):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    g = torch.Generator().manual_seed(5)
    torch.save(
        {"string_to_param": {"*": torch.randn(2, width(sd1_pipe), generator=g)}, "name": "shapey"}, folder / "shapey.pt"
    )
    set_embedding_dir(folder)
    yield folder
    set_embedding_dir(None)


def test_an_embedding_is_used_for_its_token_and_removed_after(sd1_pipe, tmp_path):
    layer = sd1_pipe.text_encoder.get_input_embeddings()
    vocab = len(sd1_pipe.tokenizer)
    plain = sdlab.generate(sd1_pipe, "a <sparkle> cat", **KW)
    one = sdlab.generate(
        sd1_pipe,
        "a <sparkle> cat",
        embeddings={"<sparkle>": diffusers_file(tmp_path / "a.safetensors", "<sparkle>", sd1_pipe, 1)},
        **KW,
    )
    two = sdlab.generate(
        sd1_pipe,
        "a <sparkle> cat",
        embeddings={"<sparkle>": diffusers_file(tmp_path / "b.safetensors", "<sparkle>", sd1_pipe, 2)},
        **KW,
    )
    assert max_pixel_diff(one.image, plain.image) > 0 and max_pixel_diff(one.image, two.image) > 0
    assert sd1_pipe.text_encoder.get_input_embeddings() is layer and len(sd1_pipe.tokenizer) == vocab
    after = sdlab.generate(sd1_pipe, "a <sparkle> cat", **KW)
    assert max_pixel_diff(after.image, plain.image) == 0
    (entry,) = one.records[0]["embeddings"]
    assert entry["token"] == "<sparkle>" and entry["a1111_hash"] == entry["sha256"][:12]


def test_a1111_pt_by_name_recorded_with_ti_hashes(sd1_pipe, ti_dir):
    result = sdlab.generate(sd1_pipe, "a shapey circle", embeddings=["shapey"], **KW)
    (entry,) = result.records[0]["embeddings"]
    assert entry["token"] == "shapey"
    assert f'TI hashes: "shapey: {entry["a1111_hash"]}"' in infotext(result.records[0]) or (
        f"TI hashes: shapey: {entry['a1111_hash']}" in infotext(result.records[0])
    )


def test_an_embedding_saved_over_the_same_file_changes_the_image(sd1_pipe, tmp_path):
    path = diffusers_file(tmp_path / "e.safetensors", "<e>", sd1_pipe, 1)
    first = sdlab.generate(sd1_pipe, "a <e> cat", embeddings={"<e>": path}, **KW)
    diffusers_file(path, "<e>", sd1_pipe, 7)  # the embedding cache keys on content, not on the token
    second = sdlab.generate(sd1_pipe, "a <e> cat", embeddings={"<e>": path}, **KW)
    assert max_pixel_diff(first.image, second.image) > 0


def test_bad_embeddings_are_refused_naming_the_file(sd1_pipe, tmp_path):
    wide = tmp_path / "wide.safetensors"
    save_file({"<w>": torch.zeros(width(sd1_pipe) + 8)}, str(wide))
    with pytest.raises(ValueError, match="wide.safetensors.*wide vectors"):
        sdlab.generate(sd1_pipe, "a <w>", embeddings={"<w>": wide}, **KW)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pt"):
        sdlab.generate(sd1_pipe, "a <w>", embeddings={"<w>": broken}, **KW)
    with pytest.raises(ValueError, match="'nothing' not found"):
        sdlab.generate(sd1_pipe, "a cat", embeddings=["nothing"], **KW)
    with pytest.raises(ValueError, match="already a word"):
        sdlab.generate(
            sd1_pipe, "a cat", embeddings={"cat": diffusers_file(tmp_path / "c.safetensors", "c", sd1_pipe, 1)}, **KW
        )


def test_regenerate_finds_the_embedding_by_hash(sd1_pipe, ti_dir, tmp_path):
    result = sdlab.generate(sd1_pipe, "a shapey circle", embeddings=["shapey"], **KW)
    (path,) = result.save(tmp_path / "out")
    (ti_dir / "shapey.pt").rename(ti_dir / "moved.pt")
    again = sdlab.regenerate(path, sd1_pipe)
    assert max_pixel_diff(again.image, result.image) == 0
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))


def test_sweep_embedding_axis_linked_with_its_trigger_word(sd1_pipe, tmp_path):
    a = diffusers_file(tmp_path / "a.safetensors", "<a>", sd1_pipe, 1)
    b = diffusers_file(tmp_path / "b.safetensors", "<b>", sd1_pipe, 2)
    result = sdlab.sweep(
        sd1_pipe,
        "a {trigger} cat",
        axes={"embedding": [{"<a>": a}, {"<b>": b}], "trigger": ["<a>", "<b>"]},
        link=[("embedding", "trigger")],
        out_dir=tmp_path / "run",
        num_inference_steps=3,
        guidance_scale=4.0,
        seed=3,
        verbose=False,
    )
    assert [(c.request.prompt[0], c.request.embeddings[0].token) for c in result.cells] == [
        ("a <a> cat", "<a>"),
        ("a <b> cat", "<b>"),
    ]
    from PIL import Image

    alone = sdlab.generate(sd1_pipe, "a <b> cat", embeddings={"<b>": b}, **KW)
    assert max_pixel_diff(Image.open(result.cells[1].path), alone.image) == 0
