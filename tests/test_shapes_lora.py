"""The bundled `outlined` LoRA of the shapes model: every layer it holds is applied, it teaches the
style at weight 1 and not at weight 0, through sdlab's one path (a fast subset of
benchmarks/eval_lora.py)."""

import sys
from pathlib import Path

import pytest
import torch

import sdlab
from sdlab import adapters
from sdlab.bundled import world
from sdlab.bundled.judge import judge
from sdlab.presets import SHAPES_DIR, SHAPES_LORA_DIR

ROOT = Path(__file__).resolve().parents[1]
LORA = SHAPES_LORA_DIR / "outlined.safetensors"

pytestmark = pytest.mark.skipif(
    not (SHAPES_DIR / "model_index.json").exists() or not LORA.exists(),
    reason=f"no bundled model or LoRA at {SHAPES_LORA_DIR} (train them: training/README.md)",
)


def _train_lora():
    sys.path.insert(0, str(ROOT / "training"))
    try:
        import train_lora
    finally:
        sys.path.remove(str(ROOT / "training"))
    return train_lora


def _lora_modules(model, name):
    return len(adapters._lora_layers(model, name))  # the layers sdlab counts when it checks a LoRA's fit


def _pairs(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    return sum(k.startswith("unet.") for k in keys) // 2, sum(k.startswith("text_encoder.") for k in keys) // 2


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return sdlab.load_pipeline("shapes", progress_bar=False)


@pytest.mark.parametrize("name", sorted(p.name for p in SHAPES_LORA_DIR.glob("*.safetensors")))
def test_every_layer_of_the_file_is_applied(pipe, name):
    """Finding: training/train_lora.py saved in diffusers' older key format, of which diffusers 0.42
    applies only the feed-forward and projection layers (28 of 84 UNet layers) and silently drops
    the attention layers; the hexagon LoRA was judged that way. Each shipped file applies all."""
    unet_pairs, text_pairs = _pairs(SHAPES_LORA_DIR / name)
    pipe.load_lora_weights(SHAPES_LORA_DIR, weight_name=name, adapter_name="check")
    try:
        assert (_lora_modules(pipe.unet, "check"), _lora_modules(pipe.text_encoder, "check")) == (
            unet_pairs,
            text_pairs,
        )
        assert unet_pairs == 84 and text_pairs == 18
    finally:
        pipe.unload_lora_weights()


def test_the_trainers_export_loads_every_layer(tmp_path):
    """The trainer's own export of a freshly adapted base model (attention, projection and
    feed-forward layers) round-trips through diffusers' loader with every layer."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model

    train_lora = _train_lora()
    base = StableDiffusionPipeline.from_pretrained(SHAPES_DIR)
    unet_config = LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=train_lora.UNET_TARGETS)
    text_config = LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=train_lora.TEXT_TARGETS)
    base.unet.add_adapter(unet_config)
    inject_adapter_in_model(text_config, base.text_encoder)
    train_lora.export(base.unet, base.text_encoder, tmp_path, "x.safetensors", text_config)
    fresh = StableDiffusionPipeline.from_pretrained(SHAPES_DIR)
    fresh.load_lora_weights(tmp_path, weight_name="x.safetensors", adapter_name="x")
    assert (_lora_modules(fresh.unet, "x"), _lora_modules(fresh.text_encoder, "x")) == (84, 18)


def test_outlined_at_weight_one_not_at_zero_and_the_pipeline_unchanged_after(pipe):
    """Held-out outlined prompts and seeds (as benchmarks/eval_lora.py, 16 of its 32): the judge reads
    outlines at weight 1 and none at weight 0; the record names the LoRA with its weight and
    hash; afterwards the pipeline makes the same image as before."""
    train_lora = _train_lora()
    seeds = train_lora.concept_seeds("outlined", 16, held_out=True, start=world.EVAL_SEED_START)
    prompts = [world.caption(train_lora.concept_scene("outlined", s), s) for s in seeds]
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    before = sdlab.generate(pipe, prompts[0], seed=seeds[0], **kw).image
    outlined = {}
    for weight in (0.0, 1.0):
        results = [sdlab.generate(pipe, p, seed=s, loras={LORA: weight}, **kw) for p, s in zip(prompts, seeds)]
        outlined[weight] = sum(bool(judge(r.image).outlined) for r in results)
        record = results[0].records[0]
        assert [(x["name"], x["weight"]) for x in record["loras"]] == [("outlined", weight)], record["loras"]
    assert outlined[0.0] == 0 and outlined[1.0] >= 10, outlined  # measured 12 of 16 (eval_lora: 81% of 32)
    after = sdlab.generate(pipe, prompts[0], seed=seeds[0], **kw).image
    assert list(after.getdata()) == list(before.getdata())
