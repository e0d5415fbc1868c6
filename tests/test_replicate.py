"""Replicate: the backend with the REAL `replicate` client against a local server that speaks
Replicate's predictions API (tests/fake_replicate.py): mapping, outputs, failures and retries."""

import base64
import io
import subprocess
import sys
import time

import pytest
from fake_replicate import GENERIC_VERSION, SDXL_VERSION, FakeReplicate
from helpers import max_pixel_diff
from PIL import Image

import sdlab
from sdlab.backends import ReplicateBackend, open_backend
from sdlab.backends.replicate_client import _output_items
from sdlab.errors import BackendError, MissingDependencyError

replicate = pytest.importorskip("replicate")

SCHNELL = "black-forest-labs/flux-schnell"
PRO = "black-forest-labs/flux-1.1-pro"


@pytest.fixture(scope="module")
def fake():
    server = FakeReplicate(size_scale=0.125)
    server.start()
    yield server
    server.stop()


def make(fake, model=SCHNELL, **kwargs):
    options = dict(api_token=fake.token, base_url=fake.url, poll_interval=0.02, backoff=0.02)
    options.update(kwargs)
    return ReplicateBackend(model, **options)


def test_flux_schnell_one_prediction_per_image_with_its_seed(fake):
    backend = make(fake)
    before = fake.count("POST", "/v1/models/black-forest-labs/flux-schnell/predictions")
    events = []
    result = sdlab.generate(backend, "a red fox", seed=[10, 11, 12], width=1024, height=576, progress=events.append)
    assert sorted(e["step"] for e in events if e.get("status") == "succeeded") == [1, 2, 3]
    assert fake.count("POST", "/v1/models/black-forest-labs/flux-schnell/predictions") - before == 3
    assert [im.size for im in result.images] == [(170, 96)] * 3  # 16:9 at 1 MP (1360x768), scaled by the fake
    r = result.records[0]
    assert (r["backend"], r["model"], r["aspect_ratio"], r["output_format"]) == ("replicate", SCHNELL, "16:9", "png")
    assert r["version"].startswith("dp-") and r["prediction_id"] in fake.predictions
    assert fake.predictions[r["prediction_id"]].input == {
        "prompt": "a red fox",
        "seed": 10,
        "aspect_ratio": "16:9",
        "num_inference_steps": 4,
        "num_outputs": 1,
        "output_format": "png",
    }
    assert r["guidance_scale"] is None and r["unused_parameters"] == ["guidance_scale"]
    alone = sdlab.generate(backend, "a red fox", seed=11, width=1024, height=576).image
    assert max_pixel_diff(alone, result.images[1]) == 0  # image 1 of the batch == seed 11 alone
    assert max_pixel_diff(result.images[0], result.images[1]) > 0


def test_flux_11_pro_custom_size_single_url_output(fake):
    backend = make(fake, PRO)
    result = sdlab.generate(backend, "a lighthouse", seed=3, width=512, height=768)
    r = result.records[0]
    assert fake.predictions[r["prediction_id"]].input["aspect_ratio"] == "custom"
    assert isinstance(fake.predictions[r["prediction_id"]].output, str)  # one URL, not a list
    assert result.image.size == (64, 96) and r["num_inference_steps"] is None and r["guidance_scale"] is None
    small = sdlab.generate(backend, "a lighthouse", seed=3, width=128, height=128)  # below 256: an aspect ratio
    assert small.records[0]["aspect_ratio"] == "1:1"


def test_community_model_by_version_and_negative_prompt(fake):
    backend = make(fake, f"stability-ai/sdxl:{SDXL_VERSION}")
    before = fake.count("POST", "/v1/predictions")
    result = sdlab.generate(
        backend,
        "a castle",
        negative_prompt="fog",
        seed=1,
        width=512,
        height=512,
        num_inference_steps=20,
        guidance_scale=6.0,
    )
    assert fake.count("POST", "/v1/predictions") - before == 1
    r = result.records[0]
    sent = fake.predictions[r["prediction_id"]].input
    assert sent["negative_prompt"] == "fog" and sent["guidance_scale"] == 6.0 and sent["num_outputs"] == 1
    assert r["version"] == SDXL_VERSION and backend.identity()["version"] == SDXL_VERSION


def test_unknown_model_gets_the_generic_mapping(fake):
    backend = make(fake, f"sdlab/fake-diffusion:{GENERIC_VERSION}", output_format=None)
    result = sdlab.generate(
        backend, "generic", seed=2, width=256, height=128, num_inference_steps=9, guidance_scale=2.0
    )
    sent = fake.predictions[result.records[0]["prediction_id"]].input
    assert sent == {
        "prompt": "generic",
        "seed": 2,
        "width": 256,
        "height": 128,
        "num_inference_steps": 9,
        "guidance_scale": 2.0,
    }
    assert result.image.size == (32, 16)


def test_values_a_model_cannot_take_are_value_errors(fake):
    backend = make(fake)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sdlab.generate(backend, "x", num_inference_steps=20)
    with pytest.raises(ValueError, match="width"):
        sdlab.generate(backend, "x", width=800, height=480)  # 5:3 is not a FLUX aspect ratio
    with pytest.raises(ValueError, match="strength"):
        sdlab.generate(backend, "x", strength=0.5)
    with pytest.raises(ValueError, match="aspect_ratio"):
        sdlab.generate(backend, "x", aspect_ratio="7:3")
    with pytest.raises(ValueError, match="guidance_scale"):
        sdlab.generate(make(fake, "black-forest-labs/flux-dev"), "x", guidance_scale=12.0)
    with pytest.raises(ValueError, match="output_format"):
        make(fake, PRO, output_format="gif")
    with pytest.raises(ValueError, match="model"):
        ReplicateBackend("flux-schnell")
    assert fake.count("POST", "/v1/models/black-forest-labs/flux-dev") == 0  # nothing was sent


def test_explicit_aspect_ratio_and_extra_inputs_pass_through(fake):
    backend = make(fake, inputs={"go_fast": False, "megapixels": "0.25"})
    result = sdlab.generate(backend, "x", seed=1, aspect_ratio="2:3", output_format="webp")
    sent = fake.predictions[result.records[0]["prediction_id"]].input
    assert (sent["aspect_ratio"], sent["go_fast"], sent["megapixels"], sent["output_format"]) == (
        "2:3",
        False,
        "0.25",
        "webp",
    )
    assert result.records[0]["output_format"] == "webp" and result.image.size == (52, 78)


def test_failed_prediction_is_a_backend_error_with_its_id(fake):
    fake.plan("fail")
    with pytest.raises(BackendError, match="NSFW content detected") as info:
        sdlab.generate(make(fake), "x", seed=1)
    assert info.value.job_id in fake.predictions and info.value.job_id in str(info.value)
    assert fake.predictions[info.value.job_id].status == "failed"


def test_canceled_prediction_is_a_backend_error(fake):
    fake.plan("cancel")
    with pytest.raises(BackendError, match="was canceled") as info:
        sdlab.generate(make(fake), "x", seed=1)
    assert info.value.job_id in fake.predictions


def test_429_waits_retry_after_then_succeeds(fake):
    fake.throttle("create", retry_after=1)
    before = len(fake.requests)
    start = time.monotonic()
    result = sdlab.generate(make(fake), "throttled", seed=1)
    assert time.monotonic() - start >= 1.0
    statuses = [s for m, p, s in fake.requests[before:] if m == "POST"]
    assert statuses == [429, 201] and result.image is not None


def test_429_on_polling_is_retried(fake):
    fake.throttle("get", retry_after=1)
    assert sdlab.generate(make(fake), "poll throttled", seed=1).image is not None


def test_5xx_is_retried_with_backoff(fake):
    fake.http_error("create", 503)
    fake.http_error("get", 500)
    fake.http_error("file", 502)
    before = len(fake.requests)
    result = sdlab.generate(make(fake), "flaky", seed=1)
    statuses = [s for _, _, s in fake.requests[before:]]
    assert 503 in statuses and 500 in statuses and 502 in statuses and result.image is not None


def test_a_500_on_create_is_not_retried(fake):
    fake.http_error("create", 500)
    with pytest.raises(BackendError, match="HTTP 500"):
        sdlab.generate(make(fake), "x", seed=1)


def test_timeout_cancels_the_prediction(fake):
    fake.plan("hang")
    start = time.monotonic()
    with pytest.raises(BackendError, match="did not finish within 0.3 s") as info:
        sdlab.generate(make(fake, timeout=0.3), "x", seed=1)
    assert time.monotonic() - start < 5
    assert fake.predictions[info.value.job_id].status == "canceled"


def test_one_failure_cancels_the_other_predictions_of_the_run(fake):
    fake.plan("fail", "hang")
    with pytest.raises(BackendError, match="failed") as info:
        sdlab.generate(make(fake, timeout=10), "x", seed=[1, 2])
    other = [p for p in fake.predictions.values() if p.plan == "hang" and p.id != info.value.job_id][-1]
    assert other.status == "canceled"


def test_outputs_are_checked(fake):
    fake.plan("not_image")
    with pytest.raises(BackendError, match="not an image"):
        sdlab.generate(make(fake), "x", seed=1)
    fake.plan("wrong_format")
    with pytest.raises(BackendError, match="expected png"):
        sdlab.generate(make(fake), "x", seed=1)


def test_output_shapes_string_list_and_file_output(fake):
    client = replicate.Client(api_token=fake.token, base_url=fake.url)
    url = "https://replicate.delivery/x/out-0.webp"
    assert _output_items(url) == [url]
    assert _output_items([url, url]) == [url, url]
    assert _output_items({"image": url}) == [url]
    assert _output_items("just text") == [] and _output_items(None) == []
    file_output = replicate.helpers.FileOutput(url, client)
    assert _output_items([file_output]) == [file_output]
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    backend = make(fake)
    assert backend._fetch(replicate.helpers.FileOutput(data_url, client).url, "p") == buf.getvalue()


def test_tokens(fake, monkeypatch):
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(BackendError, match="REPLICATE_API_TOKEN"):
        sdlab.generate(ReplicateBackend(SCHNELL, base_url=fake.url), "x", seed=1)
    with pytest.raises(BackendError, match="token was rejected"):
        sdlab.generate(make(fake, api_token="wrong"), "x", seed=1)
    monkeypatch.setenv("REPLICATE_API_TOKEN", fake.token)
    assert sdlab.generate(ReplicateBackend(SCHNELL, base_url=fake.url, poll_interval=0.02), "env token", seed=1).image


def test_unknown_version_and_invalid_input_are_readable(fake):
    with pytest.raises(BackendError, match="HTTP 422"):
        sdlab.generate(make(fake, "stability-ai/sdxl:" + "0" * 64), "x", seed=1, width=512, height=512)
    with pytest.raises(BackendError, match="guidance_scale: Must be less than or equal to 50"):
        sdlab.generate(
            make(fake, f"sdlab/fake-diffusion:{GENERIC_VERSION}"), "x", seed=1, width=64, height=64, guidance_scale=60.0
        )


def test_missing_package_is_a_missing_dependency_error(fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "replicate", None)
    with pytest.raises(MissingDependencyError, match="sdlab\\[replicate\\]"):
        _ = make(fake).client


def test_protocol_identity_and_open_backend(fake, monkeypatch, tmp_path):
    backend = make(fake)
    assert isinstance(backend, sdlab.Backend) and sdlab.as_backend(backend) is backend
    assert (
        backend.supports_per_image_guidance() is False and backend.max_batch_size == 4 and backend.size_multiple == 16
    )
    assert backend.identity()["model"] == SCHNELL and backend.identity()["version"] is None
    assert make(fake, output_format="webp").identity() != backend.identity()
    d = backend.defaults
    assert (d.width, d.height, d.num_inference_steps) == (1024, 1024, 4)
    b = open_backend(f"replicate:{PRO}?output_format=webp&timeout=30")
    assert isinstance(b, ReplicateBackend) and b.output_format == "webp" and b.timeout == 30 and b.model_id == PRO
    monkeypatch.setenv("REPLICATE_API_TOKEN", fake.token)
    monkeypatch.setenv("REPLICATE_BASE_URL", fake.url)
    from sdlab.cli import main

    assert (
        main(["generate", "a cli fox", "--model", f"replicate:{SCHNELL}", "--seed", "4", "--out", str(tmp_path)]) == 0
    )
    params = sdlab.read_params(next(tmp_path.glob("*.png")))
    assert params["model"] == SCHNELL and params["prediction_id"] and params["version"].startswith("dp-")


def test_import_does_not_load_the_client():
    code = "import sys, sdlab.backends; sdlab.backends.ReplicateBackend; print('replicate' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_prompt_objects_are_sent_as_plain_text_or_refused_if_weighted(fake):
    from sdlab.prompts import weighted

    backend = make(fake)
    result = sdlab.generate(backend, weighted("a red fox"), seed=4, width=512, height=512)
    assert fake.predictions[result.records[0]["prediction_id"]].input["prompt"] == "a red fox"
    with pytest.raises(ValueError, match=r"`prompt` 'a \(red:1.3\) fox' has weights.*'a red fox'"):
        sdlab.generate(backend, weighted("a (red:1.3) fox"), seed=4, width=512, height=512)


def test_seed_variations_are_refused_by_name_before_anything_is_sent(fake):
    before = len(fake.predictions)
    with pytest.raises(ValueError, match="seed variations.*Replicate backend cannot set the initial noise"):
        sdlab.generate(make(fake), "x", seed=1, variation_seed=2, variation_strength=0.5)
    assert len(fake.predictions) == before
    sdlab.generate(make(fake), "x", seed=1, variation_seed=2, variation_strength=0.0)  # strength 0: no variation


# ------------------------------------------------------------------ LoRAs

DEV_LORA = "black-forest-labs/flux-dev-lora"


def lora_file(path, keys, seed=0):
    """A small LoRA safetensors file with these tensor names (FLUX's or a UNet's)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({k: torch.randn(4, 4, generator=g) for k in keys}, str(path))
    return str(path)


FLUX_KEYS = [
    "transformer.single_transformer_blocks.0.attn.to_k.lora_A.weight",
    "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight",
]
SD_KEYS = [
    "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
    "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight",
]


def test_a_flux_lora_is_uploaded_once_and_arrives_with_its_scale_as_recorded(fake, tmp_path):
    import hashlib

    path = lora_file(tmp_path / "style.safetensors", FLUX_KEYS)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    backend = make(fake, DEV_LORA)
    uploads = len(fake.uploads)
    result = sdlab.generate(backend, "a red fox", loras={path: 0.75}, seed=[1, 2], width=512, height=512)
    assert len(fake.uploads) - uploads == 1  # one upload for the images of the run
    for r in result.records:
        sent = fake.predictions[r["prediction_id"]]
        assert sent.received == {"lora_weights": sha}  # the server read back this file
        assert sent.input["lora_scale"] == 0.75 and sent.input["lora_weights"] == r["replicate_input"]["lora_weights"]
        assert [(d["sha256"], d["weight"]) for d in r["loras"]] == [(sha, 0.75)]
        (applied,) = r["replicate_loras"]
        assert (applied["sha256"], applied["lora_scale"], applied["lora_weights"]) == (
            sha,
            0.75,
            sent.input["lora_weights"],
        )
    half = sdlab.generate(backend, "a red fox", loras={path: 0.5}, seed=1, width=512, height=512)
    plain = sdlab.generate(backend, "a red fox", seed=1, width=512, height=512)
    assert fake.predictions[half.records[0]["prediction_id"]].input["lora_scale"] == 0.5
    assert "lora_weights" not in fake.predictions[plain.records[0]["prediction_id"]].input
    assert "replicate_loras" not in plain.records[0] and "loras" not in plain.records[0]
    assert max_pixel_diff(half.image, result.images[0]) > 0 and max_pixel_diff(plain.image, half.image) > 0
    sdlab.set_lora_dir(tmp_path)  # an A1111 tag: applied through the LoRA inputs, not sent as text
    try:
        tagged = sdlab.generate(backend, "a red fox <lora:style:0.5>", seed=1, width=512, height=512)
    finally:
        sdlab.set_lora_dir(None)
    tagged_sent = fake.predictions[tagged.records[0]["prediction_id"]]
    assert (tagged_sent.input["prompt"], tagged_sent.input["lora_scale"]) == ("a red fox ", 0.5)  # as A1111 encodes it
    assert tagged_sent.received == fake.predictions[half.records[0]["prediction_id"]].received == {"lora_weights": sha}
    assert tagged.records[0]["prompt"] == "a red fox <lora:style:0.5>"


def test_two_loras_go_to_a_models_declared_lora_inputs(fake, tmp_path):
    from fake_replicate import TRAINED_VERSION

    a = lora_file(tmp_path / "a.safetensors", FLUX_KEYS, seed=1)
    b = lora_file(tmp_path / "b.safetensors", FLUX_KEYS, seed=2)
    backend = make(
        fake,
        f"sdlab/fake-flux-lora:{TRAINED_VERSION}",
        lora_inputs=[("lora_weights", "lora_scale"), ("extra_lora", "extra_lora_scale")],
    )
    r = sdlab.generate(backend, "a fox", loras={a: 1.0, b: 0.25}, seed=3).records[0]
    sent = fake.predictions[r["prediction_id"]]
    assert sent.received == {"lora_weights": r["loras"][0]["sha256"], "extra_lora": r["loras"][1]["sha256"]}
    assert (sent.input["lora_scale"], sent.input["extra_lora_scale"]) == (1.0, 0.25)
    assert [(d["name"], d.get("lora_scale", d.get("extra_lora_scale"))) for d in r["replicate_loras"]] == [
        ("a", 1.0),
        ("b", 0.25),
    ]
    assert backend.identity()["lora_inputs"] == [["lora_weights", "lora_scale"], ["extra_lora", "extra_lora_scale"]]


def test_loras_a_model_cannot_take_are_refused_by_name_before_any_call(fake, tmp_path):
    flux = lora_file(tmp_path / "flux-style.safetensors", FLUX_KEYS)
    other = lora_file(tmp_path / "other.safetensors", FLUX_KEYS, seed=5)
    sd = lora_file(tmp_path / "sd-style.safetensors", SD_KEYS)
    pt = tmp_path / "old.pt"
    pt.write_bytes(b"\x80\x02not a safetensors file")
    before = len(fake.requests)
    cases = [
        (make(fake), {flux: 1.0}, r"flux-style.*flux-schnell takes no LoRA inputs"),
        (make(fake, DEV_LORA), {flux: 1.0, other: 0.5}, r"flux-style, other.*takes 1 LoRA\(s\) \(lora_weights\)"),
        (
            make(fake, DEV_LORA),
            {flux: (1.0, 0.5)},
            r"'flux-style': text-encoder weight 0.5 differs .* one `lora_scale`",
        ),
        (make(fake, DEV_LORA), {flux: 4.0}, r"'flux-style' weight 4 is outside -1..3"),
        (make(fake, DEV_LORA), {sd: 1.0}, r"'sd-style' .* is not a FLUX LoRA"),
        (make(fake, DEV_LORA), {str(pt): 1.0}, r"'old' .* is not a safetensors file"),
    ]
    for backend, loras, message in cases:
        with pytest.raises(ValueError, match=message):
            sdlab.generate(backend, "x", loras=loras, seed=1, width=512, height=512)
    with pytest.raises(ValueError, match="`lora_scale` is given as an input and by `loras`"):
        sdlab.generate(make(fake, DEV_LORA, inputs={"lora_scale": 1.0}), "x", loras={flux: 1.0}, seed=1)
    assert fake.requests[before:] == []  # nothing was uploaded or created


def test_a_lora_file_changed_after_it_was_resolved_is_not_sent(fake, tmp_path):
    from sdlab.adapters import Lora, resolve_lora
    from sdlab.request import GenerationRequest

    path = lora_file(tmp_path / "style.safetensors", FLUX_KEYS)
    request = GenerationRequest.create("a fox", seed=1, width=512, height=512, loras=[Lora(resolve_lora(path), 1.0)])
    lora_file(path, FLUX_KEYS, seed=9)  # saved over after the request was made
    before = len(fake.requests)
    with pytest.raises(ValueError, match="'style' .* changed since it was resolved"):
        make(fake, DEV_LORA).run(request)
    assert fake.requests[before:] == []


def test_per_image_lora_weights_in_one_run_each_reach_their_prediction(fake, tmp_path):
    from sdlab.request import GenerationRequest

    path = lora_file(tmp_path / "style.safetensors", FLUX_KEYS)
    backend = make(fake, DEV_LORA)
    parts = [
        GenerationRequest.create("a fox", defaults=backend.defaults, seed=4, width=512, height=512, loras={path: w})
        for w in (0.25, 1.0, -0.5)
    ]
    uploads = len(fake.uploads)
    output = backend.run(GenerationRequest.concat(parts))  # one run, as a lora_weight sweep batches it
    assert len(fake.uploads) - uploads == 1
    sent = [fake.predictions[r["prediction_id"]].input["lora_scale"] for r in output.records]
    recorded = [r["replicate_loras"][0]["lora_scale"] for r in output.records]
    assert sent == recorded == [0.25, 1.0, -0.5]
