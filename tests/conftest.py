"""Shared fixtures: tiny random-weight pipelines of every family, built offline once per session."""

import os
import tempfile

# Tests never reach a model hub: the hub code path runs against pre-filled caches only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sdlab remembers file hashes (model identity) in a cache folder: the tests' own, never the user's.
os.environ.setdefault("SDLAB_CACHE_DIR", tempfile.mkdtemp(prefix="sdlab-test-cache-"))

import pytest


def pytest_configure(config):
    import torch

    # Tiny models gain nothing from a second thread, and on a busy machine two threads thrash.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Local diffusers folders of tiny pipelines, one per family."""
    from sdlab import testing

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: testing.save_tiny_pipeline(family, root / family) for family in testing.FAMILIES}


@pytest.fixture(scope="session")
def sd1_pipe():
    from sdlab import load_pipeline

    return load_pipeline("tiny", progress_bar=False)


@pytest.fixture(scope="session")
def sdxl_pipe(tiny_dirs):
    from sdlab import load_pipeline

    return load_pipeline(tiny_dirs["sdxl"], progress_bar=False)


@pytest.fixture(scope="session")
def flux_pipe(tiny_dirs):
    from sdlab import load_pipeline

    return load_pipeline(tiny_dirs["flux"], progress_bar=False)


@pytest.fixture(params=["sd1", "sdxl"])
def unet_pipe(request):
    """Each UNet family in turn (the ones with sdlab's per-image guidance)."""
    return request.getfixturevalue(f"{request.param}_pipe")


@pytest.fixture
def serve(sd1_pipe, tmp_path):
    """Start servers on the tiny pipeline (stopped, in reverse order, after the test)."""
    handles = []

    def start(model=None, **kwargs):
        kwargs.setdefault("cleanup_interval", 0.25)
        kwargs.setdefault("data_dir", tmp_path / f"server{len(handles)}")
        from sdlab.server import serve_in_thread

        handle = serve_in_thread(sd1_pipe if model is None else model, **kwargs)
        handles.append(handle)
        return handle

    yield start
    for handle in reversed(handles):
        handle.stop()
