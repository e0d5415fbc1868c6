"""Issue 17.1: each parameter traced through the graph by output slot, per sampler, against the
local ComfyUI that runs two-conditioning nodes and SDXL base + refiner graphs as the real one."""

import json

import pytest
from comfyui_graphs import controlnet_graph, inpaint_graph, sdxl_refiner_graph
from fake_comfyui import FakeComfyUI
from PIL import Image

import sdlab
from sdlab.backends import ComfyUIBackend
from sdlab.backends.workflow import Workflow

PROMPT, NEGATIVE = "a large yellow star on a black background", "a red circle"


@pytest.fixture(scope="module")
def fake():
    server = FakeComfyUI()
    server.start()
    yield server
    server.stop()


def _sent(fake, record):
    return next(p["prompt"] for p in fake.prompts if p["prompt_id"] == record["prompt_id"])


def test_controlnet_apply_advanced_positive_and_negative_follow_their_slots(fake):
    backend = ComfyUIBackend(fake.url, workflow=controlnet_graph(), poll_interval=0.05, timeout=20)
    sketch = Image.new("RGB", (64, 64), "white")
    result = sdlab.generate(
        backend, PROMPT, negative_prompt=NEGATIVE, seed=3, image=sketch, width=64, height=64, num_inference_steps=2
    )
    sent = _sent(fake, result.records[0])
    assert sent["6"]["inputs"]["text"] == PROMPT  # node 6 -> slot 0 of node 11 -> KSampler.positive
    assert sent["7"]["inputs"]["text"] == NEGATIVE  # node 7 -> slot 1 of node 11 -> KSampler.negative
    assert result.records[0]["prompt"] == PROMPT and result.records[0]["negative_prompt"] == NEGATIVE


def test_swapped_slots_swap_the_encoders():
    graph = controlnet_graph()
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["11", 1], ["11", 0]
    wf = Workflow(graph)
    assert wf.targets("prompt") == [("7", "text")] and wf.targets("negative_prompt") == [("6", "text")]


def test_inpaint_model_conditioning_slots_and_latent(fake):
    wf = Workflow(inpaint_graph())
    assert wf.targets("prompt") == [("6", "text")] and wf.targets("negative_prompt") == [("7", "text")]
    assert wf.targets("width") == []  # the latent (slot 2) is made from the image: the size is the image's
    backend = ComfyUIBackend(fake.url, workflow=inpaint_graph(), poll_interval=0.05, timeout=20)
    result = sdlab.generate(
        backend,
        PROMPT,
        negative_prompt=NEGATIVE,
        seed=1,
        image=Image.new("RGB", (64, 48), "gray"),
        width=64,
        height=48,
        num_inference_steps=2,
    )
    sent = _sent(fake, result.records[0])
    assert (sent["6"]["inputs"]["text"], sent["7"]["inputs"]["text"]) == (PROMPT, NEGATIVE)
    assert result.image.size == (64, 48)


def test_sdxl_base_and_refiner_are_mapped_each_and_the_refiner_keeps_its_checkpoint(fake):
    backend = ComfyUIBackend(
        fake.url, workflow=sdxl_refiner_graph(), ckpt_name="sd_xl_base_1.0.safetensors", poll_interval=0.05, timeout=20
    )
    assert backend.model_id == "sd_xl_base_1.0.safetensors"
    result = sdlab.generate(
        backend, PROMPT, negative_prompt=NEGATIVE, seed=9, width=64, height=64, num_inference_steps=24
    )
    sent = _sent(fake, result.records[0])
    assert sent["12"]["inputs"]["ckpt_name"] == "sd_xl_refiner_1.0.safetensors"  # not the base checkpoint
    assert sent["6"]["inputs"]["text_g"] == sent["6"]["inputs"]["text_l"] == sent["15"]["inputs"]["text"] == PROMPT
    assert sent["7"]["inputs"]["text_g"] == sent["7"]["inputs"]["text_l"] == sent["16"]["inputs"]["text"] == NEGATIVE
    assert sent["10"]["inputs"]["noise_seed"] == 9 and (
        sent["5"]["inputs"]["width"],
        sent["5"]["inputs"]["height"],
    ) == (64, 64)
    wf = Workflow(sdxl_refiner_graph())
    maps = {m.node: m for m in wf.sampler_maps()}
    assert (maps["10"].stage, maps["11"].stage) == ("base", "refiner")
    assert maps["10"].targets["prompt"] == [("6", "text_g"), ("6", "text_l")]
    assert maps["11"].targets["prompt"] == [("15", "text")] and maps["11"].targets["negative_prompt"] == [
        ("16", "text")
    ]
    assert maps["11"].targets["width"] == [] and maps["11"].targets["ckpt_name"] == []
    assert wf.targets("ckpt_name") == [("4", "ckpt_name")] and wf.targets("width") == [("5", "width")]


def test_a_refiner_that_would_run_no_step_is_refused(fake):
    backend = ComfyUIBackend(fake.url, workflow=sdxl_refiner_graph(), poll_interval=0.05, timeout=20)
    # the refiner starts at step 20 of the graph: with 8 steps ComfyUI would return the base image alone
    with pytest.raises(ValueError, match=r"refiner sampler 11 \(KSamplerAdvanced\) starts at step 20 .* no step"):
        sdlab.generate(backend, PROMPT, seed=1, width=64, height=64, num_inference_steps=8)


def test_cli_workflow_says_which_sampler_each_place_is_for(tmp_path, capsys):
    from sdlab.cli import main

    path = tmp_path / "sdxl.json"
    path.write_text(json.dumps(sdxl_refiner_graph()))
    assert main(["comfyui", "workflow", str(path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "6.text_g (CLIPTextEncodeSDXL) [base sampler 10]" in lines["prompt"]
    assert "15.text (CLIPTextEncodeSDXLRefiner) [refiner sampler 11]" in lines["prompt"]
    assert (
        "12." not in lines["ckpt_name"]
        and "4.ckpt_name (CheckpointLoaderSimple) [base sampler 10]" in lines["ckpt_name"]
    )


def test_one_encoder_on_both_conditionings_is_refused_naming_it(fake):
    graph = controlnet_graph()
    graph["11"]["inputs"]["negative"] = ["6", 0]
    with pytest.raises(
        ValueError, match=r"text encoder\(s\) 6 feed both the positive and the negative conditioning of sampler 3"
    ):
        ComfyUIBackend(fake.url, workflow=graph)
    # an explicit mapping is not guessed, so it is taken
    backend = ComfyUIBackend(fake.url, workflow=graph, mapping={"prompt": "6.text", "negative_prompt": "7.text"})
    assert backend.workflow.targets("prompt", backend.mapping) == [("6", "text")]


def test_unknown_two_conditioning_node_is_refused_naming_it(fake, tmp_path):
    graph = controlnet_graph()
    graph["11"]["class_type"] = "ACN_AdvancedControlNetApply"
    with pytest.raises(
        ValueError, match=r"node 11 \(ACN_AdvancedControlNetApply\) takes both a positive and a negative"
    ):
        ComfyUIBackend(fake.url, workflow=graph)
    from sdlab.cli import main

    path = tmp_path / "acn.json"
    path.write_text(json.dumps(graph))
    assert main(["comfyui", "workflow", str(path)]) == 2


def test_encoder_positive_for_one_sampler_and_negative_for_another_is_refused():
    graph = sdxl_refiner_graph()
    graph["11"]["inputs"]["negative"] = ["6", 0]
    with pytest.raises(
        ValueError, match="text encoder 6 is the positive prompt of sampler 10 and the negative prompt of sampler 11"
    ):
        Workflow(graph).targets("prompt")


def test_a_checkpoint_with_no_place_is_refused_not_dropped(fake):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(ValueError, match="`ckpt_name`: the workflow has no checkpoint loader"):
        ComfyUIBackend(fake.url, workflow=graph, ckpt_name="sd_xl_base_1.0.safetensors")
