"""Issue 17.2-4 against the local ComfyUI that answers as the real one: a partly valid prompt is
cancelled (backend) or collected (CLI) and the error/output says which; video and animated
outputs come back as files with their records; the returned image size is checked and recorded."""

import hashlib
import time

import httpx
import numpy as np
import pytest
from fake_comfyui import FakeComfyUI

import sdlab
from sdlab.backends import ComfyUIBackend, open_backend
from sdlab.backends.workflow import Workflow
from sdlab.errors import BackendError

SIZE = dict(width=64, height=64, num_inference_steps=2)


@pytest.fixture(scope="module")
def fake():
    server = FakeComfyUI()
    server.start()
    yield server
    server.stop()


def txt2img_with(*extra_nodes, save=None):
    """sdlab's txt2img graph, optionally with node 9 (SaveImage) replaced and extra nodes added."""
    graph = Workflow.load().to_dict()
    if save is not None:
        graph["9"] = save
    for nid, node in extra_nodes:
        graph[nid] = node
    return graph


def frames_workflow(save_class, **save_inputs):
    """EmptyImage x3 -> ImageInvert -> a video / animation output node."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 3, "color": 0x204060}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    }
    if save_class == "SaveVideo":
        graph["3"] = {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 8.0}}
        graph["4"] = {"class_type": "SaveVideo", "inputs": {"video": ["3", 0], **save_inputs}}
    else:
        graph["4"] = {"class_type": save_class, "inputs": {"images": ["2", 0], **save_inputs}}
    return graph


def _wait_idle(backend):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        queue = backend.queue()
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        time.sleep(0.05)
    raise AssertionError("the fake server did not go idle")


# ------------------------------------------------------------------ 2. partly valid prompts

MISSING_BRANCH = [
    ("20", {"class_type": "LoadImage", "inputs": {"image": "missing.png"}}),
    ("21", {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "branch"}}),
]


def test_a_partly_valid_prompt_is_cancelled_and_the_error_says_so(fake):
    fake.step_delay = 0.05
    try:
        backend = ComfyUIBackend(fake.url, workflow=txt2img_with(*MISSING_BRANCH), poll_interval=0.05, timeout=20)
        with pytest.raises(BackendError) as info:
            sdlab.generate(backend, "half valid", seed=1, width=64, height=64, num_inference_steps=40)
        _wait_idle(backend)
    finally:
        fake.step_delay = 0.0
    err, text = info.value, str(info.value)
    assert "refused output node(s) 21 (SaveImage)" in text and "queued the rest (9 (SaveImage))" in text
    assert "sdlab cancelled it" in text and "node 20 (LoadImage), input 'image'" in text
    assert err.job_id and err.refused_outputs == ["21"]
    entry = fake.history.get(err.job_id)  # deleted before it ran, or interrupted: never a success
    assert entry is None or entry["status"]["status_str"] == "error"


def test_cli_run_collects_the_valid_branch_and_names_the_refused_one(fake, tmp_path, capsys):
    import json

    from sdlab.cli import main

    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept"}},
    }
    graph.update(dict(MISSING_BRANCH))
    wf = tmp_path / "partial.json"
    wf.write_text(json.dumps(graph))
    assert main(["comfyui", "run", str(wf), "--server", fake.url, "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "refused output node(s) 21" in captured.err and "node 20 (LoadImage), input 'image'" in captured.err
    assert [p.name.split("_")[0] for p in (tmp_path / "out").iterdir()] == ["kept"]
    assert (
        main(["comfyui", "run", str(wf), "--server", fake.url, "--out", str(tmp_path / "c"), "--partial", "cancel"])
        == 1
    )


# ------------------------------------------------------------------ 3. video and animated outputs


@pytest.mark.parametrize(
    "save_class, inputs, media",
    [
        ("SaveWEBM", {"filename_prefix": "webm", "codec": "vp9", "fps": 8.0, "crf": 32.0}, "video/webm"),
        ("SaveVideo", {"filename_prefix": "video/clip", "format": "auto", "codec": "auto"}, "video/mp4"),
        (
            "SaveAnimatedWEBP",
            {"filename_prefix": "anim", "fps": 8.0, "lossless": True, "quality": 80, "method": "default"},
            "image/webp",
        ),
    ],
)
def test_video_and_animated_outputs_are_returned_as_files(fake, save_class, inputs, media):
    backend = ComfyUIBackend(fake.url, poll_interval=0.05, timeout=20)
    result = backend.run_workflow(frames_workflow(save_class, **inputs))
    assert result.images == [] and len(result.files) == 1
    item = result.files[0]
    assert (item["node_id"], item["media_type"], item["kind"]) == (
        "4",
        media,
        "animated" if media == "image/webp" else "video",
    )
    served = httpx.get(
        fake.url + "/view", params={"filename": item["filename"], "subfolder": item["subfolder"]}
    ).content
    assert item["data"] == served and served[:4] in (b"\x1a\x45\xdf\xa3", b"RIFF") or served[4:8] == b"ftyp"


def test_cli_run_saves_videos(fake, tmp_path, capsys):
    import json

    from sdlab.cli import main

    wf = tmp_path / "webm.json"
    wf.write_text(json.dumps(frames_workflow("SaveWEBM", filename_prefix="clip", codec="vp9", fps=8.0, crf=32.0)))
    assert main(["comfyui", "run", str(wf), "--server", fake.url, "--out", str(tmp_path / "out")]) == 0
    saved = list((tmp_path / "out").glob("clip_*.webm"))
    assert len(saved) == 1 and saved[0].read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
    assert "video video/webm" in capsys.readouterr().out


def test_backend_takes_a_video_workflow_and_records_its_file(fake):
    save = {
        "class_type": "SaveWEBM",
        "inputs": {"images": ["8", 0], "filename_prefix": "gen", "codec": "vp9", "fps": 8.0, "crf": 32.0},
    }
    backend = ComfyUIBackend(fake.url, workflow=txt2img_with(save=save), poll_interval=0.05, timeout=20)
    still = ComfyUIBackend(fake.url, poll_interval=0.05, timeout=20)
    result = sdlab.generate(backend, "a moving square", seed=4, **SIZE)
    record = result.records[0]
    assert record["image_from"] == f"first frame of {record['output']['filename']} (node 9)"
    assert [(f["node_id"], f["media_type"], f["kind"]) for f in record["files"]] == [("9", "video/webm", "video")]
    served = httpx.get(fake.url + "/view", params={"filename": record["files"][0]["filename"]}).content
    assert record["files"][0]["sha256"] == hashlib.sha256(served).hexdigest()
    assert result.image.size == (64, 64) and (record["width"], record["height"]) == (64, 64)
    # the first frame is the picture the same prompt and seed make as a PNG (up to VP8's loss)
    png = sdlab.generate(still, "a moving square", seed=4, **SIZE).image
    assert np.abs(np.asarray(result.image, float) - np.asarray(png, float)).mean() < 12
    output = backend.run(result.request)
    again = output.info["files"][0][0]  # the bytes come back with the run too
    assert again["data"] == httpx.get(fake.url + "/view", params={"filename": again["filename"]}).content
    assert output.records[0]["files"][0]["sha256"] == hashlib.sha256(again["data"]).hexdigest()


def test_no_output_node_error_lists_the_accepted_classes(fake):
    graph = txt2img_with(save={"class_type": "SaveAudio", "inputs": {"audio": ["8", 0], "filename_prefix": "a"}})
    with pytest.raises(ValueError) as info:
        ComfyUIBackend(fake.url, workflow=graph)
    for cls in ("SaveImage", "PreviewImage", "SaveImageWebsocket", "SaveAnimatedWEBP", "SaveWEBM", "SaveVideo"):
        assert cls in str(info.value)


# ------------------------------------------------------------------ 4. sizes are checked

SHRINK = (
    "30",
    {
        "class_type": "ImageScale",
        "inputs": {"image": ["8", 0], "upscale_method": "nearest-exact", "width": 32, "height": 32, "crop": "disabled"},
    },
)


def shrinking_workflow():
    save = {"class_type": "SaveImage", "inputs": {"images": ["30", 0], "filename_prefix": "small"}}
    return txt2img_with(SHRINK, save=save)


def test_a_size_other_than_the_request_is_an_error(fake):
    backend = ComfyUIBackend(fake.url, workflow=shrinking_workflow(), poll_interval=0.05, timeout=20)
    with pytest.raises(BackendError, match=r"returned a 32x32 image for a 64x64 request.*allow_size_mismatch=True"):
        sdlab.generate(backend, "shrunk", seed=2, **SIZE)


def test_allowed_size_mismatch_records_the_returned_size(fake):
    backend = ComfyUIBackend(
        fake.url, workflow=shrinking_workflow(), allow_size_mismatch=True, poll_interval=0.05, timeout=20
    )
    result = sdlab.generate(backend, "shrunk", seed=2, **SIZE)
    r = result.records[0]
    assert result.image.size == (32, 32)
    assert (r["width"], r["height"], r["requested_width"], r["requested_height"]) == (32, 32, 64, 64)
    spec = open_backend(f"comfyui:{fake.url}?allow_size_mismatch=true")
    assert spec.allow_size_mismatch is True and open_backend(f"comfyui:{fake.url}").allow_size_mismatch is False
    with pytest.raises(ValueError, match="allow_size_mismatch"):
        ComfyUIBackend(fake.url, allow_size_mismatch="yes")
