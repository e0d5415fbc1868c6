"""ComfyUI: workflow templates, the client and the backend against a local server that answers as a
real ComfyUI does (tests/fake_comfyui.py): errors, interrupts, cached re-runs, lost sockets."""

import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from fake_comfyui import COMFYUI_VERSION, FakeComfyUI
from helpers import max_pixel_diff
from PIL import Image

import sdlab
from sdlab.backends import ComfyUIBackend, open_backend
from sdlab.backends.comfyui_client import ComfyUIClient
from sdlab.backends.workflow import DEFAULT_WORKFLOW, Workflow, comfy_sampler
from sdlab.errors import BackendError

SIZE = dict(width=64, height=64, num_inference_steps=3)


@pytest.fixture(scope="module")
def server():
    fake = FakeComfyUI()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server):
    """The module's server with its knobs reset after each test."""
    yield server
    server.step_delay, server.noisy_status, server.previews = 0.0, False, False
    server.drop_socket_after, server.refuse_websocket = None, False


@pytest.fixture
def backend(fake):
    return ComfyUIBackend(fake.url, poll_interval=0.05, timeout=20)


def invert_workflow(color=0x102030, save="SaveImage"):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": save, "inputs": {"images": ["2", 0]}},
    }
    if save == "SaveImage":
        graph["3"]["inputs"]["filename_prefix"] = "probe"
    return graph


# ------------------------------------------------------------------ workflow templates


def test_default_workflow_maps_every_parameter():
    wf = Workflow.load()
    assert wf.name == "txt2img_api.json" and DEFAULT_WORKFLOW.is_file()
    assert wf.find("3") == ["3"] and wf.find("Positive prompt") == ["6"] and wf.find("KSampler") == ["3"]
    assert wf.targets("prompt") == [("6", "text")]
    assert wf.targets("negative_prompt") == [("7", "text")]  # found by following KSampler.negative
    out, unused = wf.apply(
        prompt="a cat",
        negative_prompt="blurry",
        seed=5,
        num_inference_steps=7,
        guidance_scale=3.5,
        width=320,
        height=256,
        batch_size=1,
        sampler_name="dpmpp_2m",
        scheduler="karras",
        ckpt_name="x.safetensors",
    )
    g = out.graph
    assert unused == []
    assert g["6"]["inputs"]["text"] == "a cat" and g["7"]["inputs"]["text"] == "blurry"
    assert (g["3"]["inputs"]["seed"], g["3"]["inputs"]["steps"], g["3"]["inputs"]["cfg"]) == (5, 7, 3.5)
    assert (g["3"]["inputs"]["sampler_name"], g["3"]["inputs"]["scheduler"]) == ("dpmpp_2m", "karras")
    assert (g["5"]["inputs"]["width"], g["5"]["inputs"]["height"]) == (320, 256)
    assert g["4"]["inputs"]["ckpt_name"] == "x.safetensors"
    assert wf.graph["6"]["inputs"]["text"] != "a cat"  # the template is untouched


def test_mapping_by_title_and_class_and_links():
    graph = Workflow.load().to_dict()
    graph["10"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}, "_meta": {"title": "Seed"}}
    graph["3"]["inputs"]["seed"] = ["10", 0]
    wf = Workflow(graph)
    with pytest.raises(ValueError, match="linked to node 10"):
        wf.apply(seed=3)
    out, _ = wf.apply({"seed": "Seed.value", "prompt": ["Positive prompt.text"]}, seed=3, prompt="p")
    assert out.graph["10"]["inputs"]["value"] == 3 and out.graph["6"]["inputs"]["text"] == "p"
    with pytest.raises(ValueError, match="no node"):
        wf.apply({"seed": "Nope.value"}, seed=1)
    with pytest.raises(ValueError, match="matches nodes"):
        wf.node("CLIPTextEncode")
    assert wf.set("Negative prompt", "text", "n").get("7", "text") == "n"


def test_custom_sampler_flux_graph_is_understood():
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5", "clip_name2": "l", "type": "flux"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["2", 0]}},
        "4": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.5, "conditioning": ["3", 0]}},
        "5": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["4", 0]}},
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {
            "class_type": "BasicScheduler",
            "inputs": {"scheduler": "simple", "steps": 20, "denoise": 1.0, "model": ["1", 0]},
        },
        "9": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "10": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["6", 0],
                "guider": ["5", 0],
                "sampler": ["7", 0],
                "sigmas": ["8", 0],
                "latent_image": ["9", 0],
            },
        },
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "flux"}},
    }
    out, unused = Workflow(graph).apply(
        prompt="new",
        negative_prompt="neg",
        seed=9,
        num_inference_steps=4,
        guidance_scale=2.0,
        width=512,
        height=768,
        sampler_name="euler",
        scheduler="simple",
    )
    g = out.graph
    assert g["3"]["inputs"]["text"] == "new" and g["6"]["inputs"]["noise_seed"] == 9
    assert g["8"]["inputs"]["steps"] == 4 and g["4"]["inputs"]["guidance"] == 2.0
    assert (g["9"]["inputs"]["width"], g["9"]["inputs"]["height"]) == (512, 768)
    assert unused == ["negative_prompt"]  # FLUX has no negative conditioning here


def test_ui_format_and_bad_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Save \\(API Format\\)"):
        Workflow({"nodes": [], "links": [], "version": 0.4})
    with pytest.raises(ValueError, match="no such file"):
        Workflow.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Workflow.load(bad)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
        ("Euler a", ("euler_ancestral", "normal")),
        ("DDIM", ("ddim", "ddim_uniform")),
        ("UniPC", ("uni_pc", "normal")),
        ("dpmpp_2m_sde:exponential", ("dpmpp_2m_sde", "exponential")),
        ("lcm", ("lcm", "normal")),
    ],
)
def test_scheduler_names_map_to_comfyui(name, expected):
    assert comfy_sampler(name) == expected


def test_unknown_scheduler_is_a_value_error(backend):
    with pytest.raises(ValueError, match="scheduler"):
        comfy_sampler("Nonsense 3000")
    with pytest.raises(ValueError, match="scheduler"):
        sdlab.generate(backend, "x", scheduler="Nonsense 3000", **SIZE)


# ------------------------------------------------------------------ the backend through sdlab.generate


def test_generate_through_comfyui(backend, fake):
    before = len(fake.requests)
    result = sdlab.generate(
        backend, "a red circle", seed=[7, 8], scheduler="DPM++ 2M Karras", guidance_scale=4.0, **SIZE
    )
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert max_pixel_diff(result.images[0], result.images[1]) > 0  # different seeds differ
    r = result.records[0]
    assert (r["backend"], r["model"], r["comfyui_version"]) == (
        "comfyui",
        "v1-5-pruned-emaonly.safetensors",
        COMFYUI_VERSION,
    )
    assert r["prompt_id"] and r["prompt_id"] != result.records[1]["prompt_id"]
    assert (r["sampler_name"], r["comfy_scheduler"], r["seed"]) == ("dpmpp_2m", "karras", 7)
    sent = [p for p in fake.prompts if p["prompt_id"] == r["prompt_id"]][0]
    assert sent["client_id"].startswith(backend.client.client_id) and sent["client_id"] in fake.socket_ids
    assert sent["prompt"]["3"]["inputs"]["cfg"] == 4.0 and sent["prompt"]["6"]["inputs"]["text"] == "a red circle"
    # the WebSocket was connected before the prompt was posted, and no Origin header was sent
    requests = fake.requests[before:]
    assert requests.index(("GET", "/ws")) < requests.index(("POST", "/prompt"))


def test_same_seed_same_pixels_and_prompt_changes_pixels(backend):
    a = sdlab.generate(backend, "a blue square", seed=3, **SIZE).image
    b = sdlab.generate(backend, "a blue square", seed=3, **SIZE).image
    c = sdlab.generate(backend, "a green star", seed=3, **SIZE).image
    assert max_pixel_diff(a, b) == 0 and max_pixel_diff(a, c) > 0


def test_cached_rerun_returns_the_same_file(backend):
    first = sdlab.generate(backend, "cache me", seed=11, **SIZE)
    again = sdlab.generate(backend, "cache me", seed=11, **SIZE)
    assert first.records[0]["cached"] is False and again.records[0]["cached"] is True
    assert again.records[0]["output"]["filename"] == first.records[0]["output"]["filename"]
    assert max_pixel_diff(first.image, again.image) == 0


def test_status_frames_and_binary_previews_interleaved(backend, fake):
    fake.noisy_status, fake.previews = True, True
    events = []
    result = sdlab.generate(backend, "noisy", seed=1, progress=events.append, **SIZE)
    assert result.image.size == (64, 64)
    assert [e["step"] for e in events] == [1, 2, 3] and events[0]["total"] == 3


def test_socket_dropped_mid_run_falls_back_to_history(backend, fake):
    fake.drop_socket_after = 3
    result = backend.run_workflow(
        Workflow.load().apply(prompt="dropped", seed=2, width=64, height=64, num_inference_steps=2)[0]
    )
    assert result.via == "history" and len(result.images) == 1


def test_websocket_refused_falls_back_to_history(backend, fake):
    fake.refuse_websocket = True
    result = sdlab.generate(backend, "no socket", seed=4, **SIZE)
    assert result.image.size == (64, 64)


def test_execution_error_names_node_and_exception(backend, fake):
    with pytest.raises(BackendError) as info:
        sdlab.generate(backend, "x", seed=1, ckpt_name="broken.safetensors", **SIZE)
    err = info.value
    assert "node 4 (CheckpointLoaderSimple)" in str(err) and "SafetensorError" in str(err)
    assert err.job_id and fake.history[err.job_id]["status"]["status_str"] == "error"


def test_runtime_error_from_an_uploaded_non_image(backend, fake):
    name = backend.upload_image(b"this is not an image", name="notes.png")["name"]
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(BackendError, match="PIL.UnidentifiedImageError"):
        backend.run_workflow(graph)


def test_upload_renames_a_clashing_name(backend):
    img = Image.new("RGB", (8, 8), "red")
    first = backend.upload_image(img, name="clash.png")
    same = backend.upload_image(img, name="clash.png")
    other = backend.upload_image(Image.new("RGB", (8, 8), "blue"), name="clash.png")
    assert first == same == {"name": "clash.png", "subfolder": "", "type": "input"}
    assert other["name"] == "clash (1).png"


def test_validation_400_names_node_class_and_input(backend):
    graph = invert_workflow()
    del graph["3"]["inputs"]["filename_prefix"]
    graph["1"]["inputs"]["width"] = 0
    with pytest.raises(BackendError) as info:
        backend.run_workflow(graph)
    text = str(info.value)
    assert "node 3 (SaveImage), input 'filename_prefix': Required input is missing" in text
    assert "node 1 (EmptyImage), input 'width'" in text and "(got 0)" in text
    assert set(info.value.node_errors) == {"1", "3"}


def test_unknown_class_is_a_readable_error(backend):
    with pytest.raises(BackendError, match="NoSuchNode does not exist"):
        backend.run_workflow({"1": {"class_type": "NoSuchNode", "inputs": {}}})


def test_interrupt_ends_the_run_with_the_node(backend, fake):
    fake.step_delay = 0.05
    errors = []

    def run():
        try:
            sdlab.generate(backend, "slow", seed=1, width=64, height=64, num_inference_steps=200)
        except BackendError as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    while not backend.queue()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    backend.interrupt()
    thread.join(20)
    assert errors and "interrupted at node 3 (KSampler)" in str(errors[0])


def test_timeout_interrupts_and_cleans_the_queue(fake):
    fake.step_delay = 0.05
    backend = ComfyUIBackend(fake.url, poll_interval=0.05, timeout=0.5)
    start = time.monotonic()
    with pytest.raises(BackendError, match="in time") as info:
        sdlab.generate(backend, "too slow", seed=1, num_images=2, width=64, height=64, num_inference_steps=200)
    assert time.monotonic() - start < 5 and info.value.job_id
    deadline = time.monotonic() + 5
    while (backend.queue()["queue_running"] or backend.queue()["queue_pending"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.queue() == {"queue_running": [], "queue_pending": []}


def test_raw_workflow_returns_its_images(backend):
    result = backend.run_workflow(invert_workflow(color=0x102030))
    assert len(result.images) == 1 and result.images[0].size == (32, 24)
    assert result.images[0].convert("RGB").getpixel((0, 0)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)
    assert result.files[0]["filename"].startswith("probe_") and result.files[0]["data"][:4] == b"\x89PNG"


def test_save_image_websocket_images_come_from_binary_frames(backend):
    graph = invert_workflow(save="SaveImageWebsocket")
    graph["1"]["inputs"]["batch_size"] = 3
    result = backend.run_workflow(graph)
    assert len(result.images) == 3 and result.files[0]["type"] == "websocket"


def test_a_prompt_of_another_client_does_not_end_ours(fake):
    other = ComfyUIClient(fake.url)
    mine = ComfyUIClient(fake.url, poll_interval=0.05)
    pid, _ = other.submit(invert_workflow(color=0x010203))
    result = mine.run(invert_workflow(color=0x040506), timeout=20)
    assert result.prompt_id != pid and result.images[0].getpixel((0, 0)) == (251, 250, 249)


def test_origin_header_that_does_not_match_is_refused(fake):
    response = httpx.post(
        fake.url + "/prompt", json={"prompt": invert_workflow()}, headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403


def test_history_and_queue_routes(backend, fake):
    assert backend.client.history("no-such-id") == {}
    assert httpx.get(fake.url + "/api/queue").json() == backend.queue()
    assert httpx.get(fake.url + "/view", params={"filename": "../x.png"}).status_code == 400
    assert httpx.get(fake.url + "/view", params={"filename": "missing.png"}).status_code == 404


def test_protocol_properties_and_validation(backend):
    assert isinstance(backend, sdlab.Backend) and sdlab.as_backend(backend) is backend
    assert backend.supports_per_image_guidance() is False and backend.size_multiple == 8
    d = backend.defaults
    assert (d.width, d.height, d.num_inference_steps, d.guidance_scale, d.negative_prompt) == (512, 512, 20, 7.5, None)
    ident = backend.identity()
    assert ident["model"] == "v1-5-pruned-emaonly.safetensors" and len(ident["workflow_sha256"]) == 64
    other = ComfyUIBackend(backend.server, ckpt_name="sd_xl_base_1.0.safetensors")
    assert other.identity() != ident and other.model_id == "sd_xl_base_1.0.safetensors"
    with pytest.raises(ValueError, match="width"):
        sdlab.generate(backend, "x", width=60, height=64)
    with pytest.raises(ValueError, match="controlnet_conditioning_scale"):
        sdlab.generate(backend, "x", controlnet_conditioning_scale=1.0, **SIZE)
    with pytest.raises(ValueError, match="`hires_scale`: not supported by the ComfyUI backend"):
        sdlab.generate(backend, "x", hires_scale=2, **SIZE)  # the default workflow's `image=` is img2img now


def test_workflow_inputs_and_many_images_keep_order(backend, fake):
    result = sdlab.generate(
        backend,
        ["one", "two"],
        seed=[1, 2, 3, 4],
        num_images=2,
        workflow_inputs={"Save Image.filename_prefix": "order"},
        **SIZE,
    )
    assert result.seeds == [1, 2, 3, 4] and [r["prompt"] for r in result.records] == ["one", "one", "two", "two"]
    assert all(r["output"]["filename"].startswith("order_") for r in result.records)


def test_open_backend_and_cli(fake, tmp_path, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(invert_workflow()))
    b = open_backend(f"comfyui:{fake.url}?ckpt_name=sd_xl_base_1.0.safetensors&timeout=30")
    assert isinstance(b, ComfyUIBackend) and b.model_id == "sd_xl_base_1.0.safetensors" and b.timeout == 30
    with pytest.raises(ValueError, match="unknown option"):
        open_backend(f"comfyui:{fake.url}?color=red")
    from sdlab.cli import main

    assert main(["comfyui", "run", str(wf), "--server", fake.url, "--out", str(tmp_path / "raw")]) == 0
    assert len(list((tmp_path / "raw").glob("probe_*.png"))) == 1
    assert (
        main(
            [
                "generate",
                "a cli circle",
                "--model",
                f"comfyui:{fake.url}",
                "--seed",
                "5",
                "--width",
                "64",
                "--height",
                "64",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    png = next((tmp_path / "gen").glob("*.png"))
    params = sdlab.read_params(png)
    assert params["backend"] == "comfyui" and params["seed"] == 5 and params["prompt_id"]
    assert main(["comfyui", "workflow"]) == 0
    assert "6.text (CLIPTextEncode)" in capsys.readouterr().out


def test_import_is_cheap():
    code = (
        "import sys, sdlab.backends, sdlab.testing.fakes; b = sdlab.backends.open_backend; "
        "print(sorted(m for m in ('httpx', 'websocket', 'replicate', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unreachable_server_is_a_clear_error():
    backend = ComfyUIBackend("http://127.0.0.1:9", timeout=5)
    with pytest.raises(BackendError, match="cannot reach ComfyUI"):
        sdlab.generate(backend, "x", seed=1, **SIZE)


def test_images_are_numpy_friendly(backend):
    image = sdlab.generate(backend, "array", seed=1, **SIZE).image
    assert np.asarray(image).shape == (64, 64, 3)


def test_concurrent_runs_on_one_backend_do_not_steal_each_others_frames(backend):
    out = {}
    threads = [
        threading.Thread(target=lambda k=k: out.__setitem__(k, sdlab.generate(backend, f"thread {k}", seed=k, **SIZE)))
        for k in range(3)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(out) == [0, 1, 2] and time.monotonic() - start < 4  # no waiting on the 5 s silence check
    assert all(out[k].records[0]["prompt"] == f"thread {k}" for k in out)


def test_weighted_prompt_reaches_comfyui_in_its_own_syntax(backend):
    from sdlab.prompts import weighted
    from sdlab.request import GenerationRequest

    prompt = weighted(r"a ((red)) circle++ on a [blue] \(flat\) background")
    assert prompt.as_a1111() == r"a (red:1.21) (circle:1.21) on a (blue:0.9091) \(flat\) background"
    request = GenerationRequest(
        prompt=(prompt,),
        negative_prompt=(weighted("(blurry:1.4)"),),
        seed=(1,),
        guidance_scale=(5.0,),
        width=64,
        height=64,
        num_inference_steps=3,
    )
    workflow, _ = backend.workflow_for(request, 0)
    assert workflow.graph["6"]["inputs"]["text"] == prompt.as_a1111()
    assert workflow.graph["7"]["inputs"]["text"] == "(blurry:1.4)"


def test_seed_variations_are_refused_by_name(backend, fake):
    with pytest.raises(ValueError, match="seed variations.*ComfyUI backend cannot set the initial noise"):
        sdlab.generate(backend, "x", seed=1, variation_seed=2, variation_strength=0.5, **SIZE)
