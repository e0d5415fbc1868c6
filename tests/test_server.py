"""The generation server against a real uvicorn on 127.0.0.1 with the tiny pipeline.

Every network call targets 127.0.0.1 and every wait is bounded. One server runs at a time: they
share the session's tiny pipeline, which only one worker thread may drive.
"""

import http.client
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import max_pixel_diff
from PIL import Image

import sdlab
from sdlab import generate, read_params
from sdlab.server import Limits

STEPS = 2
TIMEOUT = 120  # seconds for one HTTP exchange: generous, the machine may be shared and busy


@pytest.fixture(scope="module", autouse=True)
def shared_machine(request):
    """Server, clients and other engineers' jobs share two cores: one intra-op thread avoids
    OpenMP threads spinning against each other (20x slower on a loaded machine). Also starts the
    `sdlab serve` subprocess early, so that it imports diffusers while the other tests run."""
    import torch

    if any("cli_server" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("cli_server")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wait_until(client, job_ids, states=("done",), timeout=180.0):
    """Poll each job until it is in one of `states` (a long poll when waiting for its end);
    returns {id: status body}."""
    deadline = time.monotonic() + timeout
    ended = {"done", "failed", "cancelled"}
    params = {"wait": 5} if set(states) <= ended else {}
    bodies = {}
    for job_id in job_ids:
        while True:
            body = client.get(f"/jobs/{job_id}", params=params).json()
            if not params:
                time.sleep(0.05)
            if body["status"] in states:
                bodies[job_id] = body
                break
            assert time.monotonic() < deadline, body
    return bodies


def db_rows(db_path, sql, args=()):
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(sql, args)]


def assert_completed_once(db_path, results_dir, job_ids):
    """Each job done exactly once, with one PNG per image on disk carrying its record."""
    for job_id in job_ids:
        (job,) = db_rows(db_path, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        assert job["state"] == "done", job
        assert job["denoising_started_at"] is not None  # marked by the worker's first progress callback
        events = [
            e["state"] for e in db_rows(db_path, "SELECT state FROM events WHERE job_id = ? ORDER BY id", (job_id,))
        ]
        assert events.count("done") == 1 and events[-1] == "done", events
        images = db_rows(db_path, "SELECT * FROM images WHERE job_id = ? ORDER BY k", (job_id,))
        assert [i["k"] for i in images] == list(range(job["num_images"]))
        seeds = json.loads(job["request"])["seed"]
        for image in images:
            record = read_params(Path(results_dir) / image["path"])
            assert record["job_id"] == job_id and record["seed"] == seeds[image["k"]]


# ---------------------------------------------------------------------------- many clients


def test_concurrent_clients_every_job_completes_exactly_once(serve, sd1_pipe):
    server = serve(batch_size=3)
    submitted, errors = {}, []

    def client_thread(n):
        try:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
                ids = []
                for j in range(2):
                    body = {
                        "prompt": f"a {['red', 'blue'][j % 2]} circle",
                        "seed": 100 * n + j,
                        "num_images": 1 + (n + j) % 2,
                        "num_inference_steps": STEPS + (n % 2),
                    }
                    r = client.post("/generate", json=body)
                    assert r.status_code == 202, r.text
                    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
                    ids.append(r.json()["id"])
                    submitted[r.json()["id"]] = body
                for status in wait_until(client, ids).values():
                    for url in status["images"]:
                        first, second = client.get(url), client.get(url)
                        assert first.status_code == second.status_code == 200
                        assert first.content == second.content  # readable as often as needed
        except Exception as e:  # reported from the main thread
            errors.append(e)

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(submitted) == 12

    store = server.store
    assert_completed_once(store.db_path, store.results_dir, submitted)
    client = httpx.Client(base_url=server.url, timeout=TIMEOUT)

    # a PNG carries both chunks, with the seed resolved at submission
    job_id, body = next((k, v) for k, v in submitted.items() if v["num_images"] == 2)
    status = client.get(f"/jobs/{job_id}").json()
    assert status["seeds"] == [body["seed"], body["seed"] + 1] and status["attempts"] == 1
    png = Image.open(io.BytesIO(client.get(status["images"][1]).content))
    assert {"parameters", "sdlab"} <= set(png.text)
    assert f"Seed: {body['seed'] + 1}" in png.text["parameters"]

    # paging, and the metrics a scraper reads
    page = client.get("/jobs", params={"limit": 5, "offset": 10}).json()
    assert page["total"] == 12 and len(page["jobs"]) == 2
    assert client.get("/jobs", params={"status": "queued"}).json()["total"] == 0
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
    }
    assert samples[("sdlab_queue_depth", ())] == 0
    assert samples[("sdlab_jobs_finished_total", (("state", "done"),))] == 12
    assert samples[("sdlab_jobs_finished_total", (("state", "failed"),))] == 0
    assert samples[("sdlab_job_latency_seconds_count", ())] == 12
    assert samples[("sdlab_jobs_stored", (("state", "done"),))] == 12
    client.close()
    server.stop()

    # the server's image is the one `generate` makes (batched or not: one CPU generator per image)
    direct = generate(sd1_pipe, body["prompt"], seed=body["seed"] + 1, num_inference_steps=body["num_inference_steps"])
    assert max_pixel_diff(png.convert("RGB"), direct.image) <= 2


# ---------------------------------------------------------------------------- back-pressure and cancelling


def test_full_queue_answers_429_and_cancel_stops_queued_and_running_jobs(serve):
    server = serve(max_queue=2, limits=Limits(max_num_inference_steps=500), batch_size=1)  # one job a call
    client = httpx.Client(base_url=server.url, timeout=TIMEOUT)
    body = {"prompt": "a slow job", "num_inference_steps": 500}
    accepted, refused = [], None
    for _ in range(5):
        r = client.post("/generate", json=body)
        if r.status_code == 429:
            refused = r
            break
        assert r.status_code == 202
        accepted.append(r.json()["id"])
    assert refused is not None and int(refused.headers["retry-after"]) >= 1
    assert "queue" in refused.json()["detail"]

    # the first job runs: it shows step i of n, then is stopped at its next step
    running = wait_until(client, accepted[:1], states=("running",))[accepted[0]]
    deadline = time.monotonic() + 120
    while running["progress"] is None or running["progress"]["step"] < 1:
        assert time.monotonic() < deadline
        running = client.get(f"/jobs/{accepted[0]}").json()
    assert running["progress"]["total"] == 500
    queued = client.get(f"/jobs/{accepted[-1]}").json()
    assert queued["status"] == "queued" and queued["position"] == len(accepted) - 1
    for job_id in reversed(accepted):
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.delete(f"/jobs/{accepted[0]}").status_code == 409

    # the worker is free again soon (the running job did not go on to its 500th step)
    follow = client.post("/generate", json={"prompt": "after", "num_inference_steps": STEPS}).json()["id"]
    wait_until(client, [follow])
    for job_id in accepted:
        assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        events = [e["state"] for e in server.store.events(job_id)]
        assert "done" not in events
        assert not server.store.job_dir(job_id).exists()
    assert "running" not in [e["state"] for e in server.store.events(accepted[-1])]  # a queued job never runs
    assert client.get(f"/jobs/{accepted[0]}/images/0").status_code == 409
    client.close()


def test_a_failing_job_fails_alone_with_its_error(serve, sd1_pipe):
    from sdlab.backends.diffusers import DiffusersBackend

    class Flaky(DiffusersBackend):
        def run(self, request, **kwargs):
            if "boom" in request.prompt:
                raise RuntimeError("the GPU caught fire")
            return super().run(request, **kwargs)

    server = serve(Flaky(sd1_pipe), batch_size=3)  # a batch with the bad job fails, then each runs alone
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        ids = [
            client.post("/generate", json={"prompt": p, "num_inference_steps": STEPS}).json()["id"]
            for p in ("fine", "boom", "fine again")
        ]
        bodies = wait_until(client, ids, states=("done", "failed"))
        assert [bodies[i]["status"] for i in ids] == ["done", "failed", "done"]
        assert bodies[ids[1]]["error"] == "RuntimeError: the GPU caught fire" and bodies[ids[1]]["images"] == []
        assert client.get(f"/jobs/{ids[1]}/images/0").status_code == 409
        assert 'sdlab_jobs_finished_total{state="failed"} 1.0' in client.get("/metrics").text


# ---------------------------------------------------------------------------- validation, auth, paths


BAD_BODIES = [
    ({"prompt": "x", "width": 4096}, "width"),
    ({"prompt": "x", "width": 60}, "width"),  # not a multiple of 8: the backend's own check
    ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps"),
    ({"prompt": "x", "num_inference_steps": 500}, "num_inference_steps"),
    ({"prompt": "x", "num_images": 50}, "num_images"),
    ({"prompt": ["a", "b", "c"], "num_images": 3}, None),  # 9 images > 8 per job
    ({"prompt": "x", "steps": 5}, "steps"),  # diffusers' vocabulary only
    ({"prompt": 5}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x" * 3000}, "prompt"),
    ({"prompt": "x", "scheduler": "nope"}, "scheduler"),
    ({"prompt": "x", "seed": [1, 2], "num_images": 3}, "seed"),
    ({"prompt": "x", "seed": -2}, "seed"),
    ({"prompt": "x", "guidance_scale": "7"}, "guidance_scale"),
    ({"prompt": "x", "num_images": True}, "num_images"),
    ({"prompt": "x", "eta": 2.0}, "eta"),
]


def test_bad_bodies_answer_422_with_a_message_per_field(serve):
    server = serve(limits=Limits(max_width=256, max_height=256))
    client = httpx.Client(base_url=server.url, timeout=TIMEOUT)
    for body, field in BAD_BODIES:
        r = client.post("/generate", json=body)
        assert r.status_code == 422, (body, r.text)
        detail = r.json()["detail"]
        assert all(isinstance(d["msg"], str) and d["msg"] for d in detail)
        if field is not None:
            assert any(d["loc"][-1] == field or field in d["loc"] for d in detail), (body, detail)
    for raw in (b"not json", b'{"prompt": "x", "guidance_scale": NaN}', b"[1, 2]"):
        r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
    assert (
        client.post(
            "/generate", content=b'{"prompt": "' + b"x" * 100_000 + b'"}', headers={"content-type": "application/json"}
        ).status_code
        == 413
    )
    assert server.store.counts()["queued"] == 0
    assert client.get("/jobs").json()["total"] == 0
    client.close()


def test_token_is_required_everywhere_but_health(serve):
    server = serve(token="s3cret-token")
    good = {"authorization": "Bearer s3cret-token"}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        body = {"prompt": "x", "num_inference_steps": STEPS}
        assert client.post("/generate", json=body).status_code == 401
        r = client.post("/generate", json=body, headers={"authorization": "Bearer wrong-token"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = client.post("/generate", json=body, headers=good)
        assert r.status_code == 202
        job_id = r.json()["id"]
        for path in (
            f"/jobs/{job_id}",
            "/jobs",
            "/metrics",
            f"/jobs/{job_id}/images/0",
            "/openapi.json",
            "/docs",
            "/redoc",
            "/docs/oauth2-redirect",
        ):
            assert client.get(path).status_code == 401, path
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):  # and served with it
            r = client.get(path, headers=good)
            assert r.status_code == 200 and "text/html" in r.headers["content-type"], path
        assert client.delete(f"/jobs/{job_id}").status_code == 401
        assert client.get("/health").status_code == 200
        wait_until(httpx.Client(base_url=server.url, headers=good, timeout=TIMEOUT), [job_id])

        # the OpenAPI schema is valid and documents the limits and the bearer scheme
        from openapi_spec_validator import validate

        spec = client.get("/openapi.json", headers=good).json()
        validate(spec)
        assert "HTTPBearer" in spec["components"]["securitySchemes"]
        schema = spec["components"]["schemas"]["GenerateRequest"]
        assert schema["additionalProperties"] is False
        assert any(option.get("maximum") == Limits().max_width for option in schema["properties"]["width"]["anyOf"])


TRAVERSALS = [
    "/jobs/../jobs.db",
    "/jobs/..%2fjobs.db",
    "/jobs/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/jobs/{id}/images/..%2f..%2fjobs.db",
    "/jobs/{id}/images/../../jobs.db",
    "/jobs/{id}/images/-1",
    "/jobs/{id}/images/1",
    "/jobs/{id}/images/0.png",
    "/jobs/{id}/images/99999999999999999999",
    "/jobs/{id}%2f..%2f..%2fjobs.db/images/0",
    "/jobs/00000000-0000-0000-0000-000000000000/images/0",
    "/results/{id}/0.png",
    "/jobs.db",
]


def test_paths_outside_the_results_never_reach_the_disk(serve):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job_id = client.post("/generate", json={"prompt": "x", "num_inference_steps": STEPS}).json()["id"]
        status = wait_until(client, [job_id])[job_id]
        assert client.get(status["images"][0]).status_code == 200
    host, port = urlsplit(server.url).hostname, urlsplit(server.url).port
    for raw in TRAVERSALS:  # raw paths, sent as written (no client-side normalisation)
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        conn.request("GET", raw.replace("{id}", job_id))
        response = conn.getresponse()
        content = response.read()
        conn.close()
        assert response.status in (404, 422), (raw, response.status)
        assert b"SQLite" not in content and b"root:" not in content


# ---------------------------------------------------------------------------- retention


def test_retention_deletes_old_results(serve):
    server = serve(retention_seconds=2.0)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job_id = client.post("/generate", json={"prompt": "x", "num_inference_steps": STEPS}).json()["id"]
        start = time.monotonic()
        assert client.get(f"/jobs/{job_id}", params={"wait": 60}).json()["status"] == "done"  # a long poll
        assert time.monotonic() - start < 59  # answered when the job ended, not at the timeout
        folder = server.store.job_dir(job_id)
        assert (folder / "0.png").exists()
        deadline = time.monotonic() + 120
        while client.get(f"/jobs/{job_id}").status_code != 404:  # the periodic cleanup, no call from here
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert not folder.exists()
        assert client.get(f"/jobs/{job_id}/images/0").status_code == 404
        assert server.store.events(job_id) == []


def test_serve_command_is_registered():
    from sdlab.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "tiny", "--port", "0", "--max-images", "4"])
    assert args.host == "127.0.0.1" and args.max_images == 4 and args.func.__name__ == "_cmd_serve"


# ---------------------------------------------------------------------------- stop, crash and restart


def test_stopping_puts_the_running_job_back_in_the_queue(serve):
    server = serve(limits=Limits(max_num_inference_steps=500))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job_id = client.post("/generate", json={"prompt": "x", "num_inference_steps": 500}).json()["id"]
        wait_until(client, [job_id], states=("running",))
    store = server.store
    server.stop()  # stops at the next step; the job runs again after a restart
    (job,) = db_rows(store.db_path, "SELECT state, attempts FROM jobs WHERE id = ?", (job_id,))
    assert job == {"state": "queued", "attempts": 0}


class CliServer:
    """`sdlab serve --model tiny --port 0` in a subprocess, started early (it imports diffusers)."""

    def __init__(self, data_dir, log_path):
        self.data_dir, self.log_path = Path(data_dir), Path(log_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sdlab.cli",
                    "serve",
                    "--model",
                    "tiny",
                    "--device",
                    "cpu",
                    "--port",
                    "0",
                    "--data-dir",
                    str(self.data_dir),
                    "--log-level",
                    "warning",
                    "--max-queue",
                    "50",
                    "--batch-size",  # batches of 2: jobs still queued and running when the test kills it
                    "2",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )

    def wait_ready(self, timeout=300.0) -> str:
        deadline, url = time.monotonic() + timeout, None
        while True:
            log = self.log_path.read_text(errors="replace")
            assert self.proc.poll() is None, log
            assert time.monotonic() < deadline, log
            if url is None:
                found = re.search(r"sdlab server on (http://\S+)", log)
                url = found.group(1) if found else None
            elif httpx.get(f"{url}/health", timeout=60).status_code == 200:
                return url
            time.sleep(0.2)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-server")
    server = CliServer(root / "data", root / "serve.log")
    yield server
    server.kill()


def test_killed_server_restarts_and_every_job_completes(cli_server, serve, sd1_pipe):
    url = cli_server.wait_ready()
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        ids = [
            client.post("/generate", json={"prompt": "a green square", "seed": i, "num_inference_steps": 5}).json()[
                "id"
            ]
            for i in range(8)
        ]
        deadline = time.monotonic() + 180
        while sum(client.get(f"/jobs/{i}").json()["status"] == "done" for i in ids) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    cli_server.proc.send_signal(signal.SIGKILL)  # mid-queue: no shutdown code runs
    cli_server.proc.wait(10)

    db = cli_server.data_dir / "jobs.db"
    states = {r["id"]: r["state"] for r in db_rows(db, "SELECT id, state FROM jobs")}
    assert sorted(states) == sorted(ids)
    assert any(states[i] != "done" for i in ids), "every job finished before the kill; make the jobs longer"
    interrupted = [i for i in ids if states[i] == "running"]

    # the restart: the same app on the same data (in this process, to spare a second diffusers import)
    server = serve(data_dir=cli_server.data_dir)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        wait_until(client, ids)
        assert_completed_once(db, cli_server.data_dir / "results", ids)
        images = {}
        for job_id in interrupted:  # ran twice, completed once
            status = client.get(f"/jobs/{job_id}").json()
            assert status["attempts"] == 2
            image = Image.open(io.BytesIO(client.get(status["images"][0]).content)).convert("RGB")
            images[status["seeds"][0]] = image
    server.stop()
    for seed, image in images.items():  # the images of its stored seed, as if it had never crashed
        direct = generate(sd1_pipe, "a green square", seed=seed, num_inference_steps=5)
        assert max_pixel_diff(image, direct.image) <= 2


def test_a_job_that_keeps_killing_the_server_fails_after_max_attempts(tmp_path):
    from sdlab.request import GenerationRequest
    from sdlab.server.store import JobStore

    request = GenerationRequest(
        prompt=("x",),
        negative_prompt=(None,),
        seed=(1,),
        guidance_scale=(5.0,),
        width=64,
        height=64,
        num_inference_steps=2,
    )
    store = JobStore(tmp_path / "jobs.db", tmp_path / "results")
    job, position = store.submit(request, {"prompt": "x"}, batch_key="k", max_queue=10)
    assert position == 1
    for attempt in (1, 2, 3):  # claimed, then the process dies (nothing marks the job)
        (claimed,) = store.claim(batch_size=1, max_images=8)
        assert claimed.id == job.id and claimed.attempts == attempt
        store.mark_denoising([claimed])  # the worker's first progress callback
        recovered = store.recover(max_attempts=3)
        assert recovered == ({"requeued": 1, "failed": 0} if attempt < 3 else {"requeued": 0, "failed": 1})
    failed = store.get(job.id)
    assert failed.state == "failed" and "3 times" in failed.error
    assert not store.finish(claimed, [], 0.0)  # a stale worker cannot complete it afterwards
    store.close()


def test_deaths_before_a_job_starts_denoising_do_not_count_against_it(tmp_path):
    """A crash loop shorter than one job (the process dies between claiming and the first step)
    does not fail whichever job is first in the queue."""
    from sdlab.request import GenerationRequest
    from sdlab.server.store import JobStore

    request = GenerationRequest(
        prompt=("x",),
        negative_prompt=(None,),
        seed=(1,),
        guidance_scale=(5.0,),
        width=64,
        height=64,
        num_inference_steps=2,
    )
    store = JobStore(tmp_path / "jobs.db", tmp_path / "results")
    job, _ = store.submit(request, {"prompt": "x"}, batch_key="k", max_queue=10)
    for attempt in range(1, 7):  # twice max_attempts deaths, none of them while denoising
        (claimed,) = store.claim(batch_size=1, max_images=8)
        assert claimed.attempts == attempt
        assert store.recover(max_attempts=3) == {"requeued": 1, "failed": 0}
    assert store.get(job.id).state == "queued" and store.get(job.id).crashes == 0
    assert "had not started denoising" in store.events(job.id)[-1]["detail"]
    for deaths in (1, 2):  # now it dies while denoising: those count
        (claimed,) = store.claim(batch_size=1, max_images=8)
        store.mark_denoising([claimed])
        assert store.recover(max_attempts=3) == {"requeued": 1, "failed": 0}
        assert store.get(job.id).crashes == deaths
    (claimed,) = store.claim(batch_size=1, max_images=8)  # a death before denoising again: still not its fault
    assert store.recover(max_attempts=3) == {"requeued": 1, "failed": 0}
    (claimed,) = store.claim(batch_size=1, max_images=8)
    store.mark_denoising([claimed])
    assert store.recover(max_attempts=3) == {"requeued": 0, "failed": 1}
    assert "3 times while denoising" in store.get(job.id).error
    store.close()


@pytest.mark.parametrize(
    "field, value",
    [
        ("seed", -5),
        ("seed", 2**64),
        ("num_inference_steps", 0),
        ("guidance_scale", -1.0),
        ("guidance_scale", float("nan")),
        ("width", 60),
        ("width", 8),
        ("num_images", 0),
        ("clip_skip", -1),
        ("clip_skip", 13),
    ],
)
def test_the_server_refuses_what_generate_refuses_with_the_same_message(serve, sd1_pipe, field, value):
    import json

    with pytest.raises(ValueError) as by_generate:
        sdlab.generate(sd1_pipe, "a red circle", **{"seed": 0, "num_inference_steps": 1, field: value})
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        body = json.dumps({"prompt": "a red circle", "num_inference_steps": 1, field: value})  # NaN as JSON's NaN token
        r = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert [d["msg"] for d in r.json()["detail"]] == [str(by_generate.value)]
    assert server.store.counts()["queued"] == 0


def test_clip_skip_reaches_the_image_and_its_record(serve, sd1_pipe):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job = client.post(
            "/generate", json={"prompt": "a red circle", "seed": 4, "num_inference_steps": 2, "clip_skip": 1}
        ).json()
        wait_until(client, [job["id"]])
        png = client.get(f"/jobs/{job['id']}/images/0").content
    image = Image.open(io.BytesIO(png))
    record = sdlab.read_params(image)
    assert record["clip_skip"] == 1 and "Clip skip: 2" in image.info["parameters"]
    alone = sdlab.generate(sd1_pipe, "a red circle", seed=4, num_inference_steps=2, clip_skip=1)
    assert max_pixel_diff(image.convert("RGB"), alone.image) <= 2


def test_the_in_notebook_server_and_a_cell_on_one_pipeline_wait_for_each_other(serve, sd1_pipe):
    """Issue 18, finding 1: a notebook cell and the in-notebook server (or a widget) share a pipeline;
    the server's job waits for the cell's call to end instead of interleaving its denoising steps."""
    server = serve(batch_size=1)
    seen = {}

    def on_step(info):  # the cell, mid-way: the server claims a job of another size and guidance
        if info.get("step") == 1 and not seen:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
                body = {"prompt": "a blue square", "seed": 3, "num_inference_steps": STEPS, "guidance_scale": 5.0}
                seen["id"] = client.post("/generate", json=body).json()["id"]
                seen["state"] = wait_until(client, [seen["id"]], states=("running", "done", "failed"))[seen["id"]]
            seen["status"] = seen["state"]["status"]

    cell = generate(
        sd1_pipe,
        "a red circle",
        seed=1,
        width=128,
        height=128,
        guidance_scale=1.0,
        num_inference_steps=4,
        progress=on_step,
    )
    assert seen["status"] == "running"  # claimed by the worker, waiting for the pipeline
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job = wait_until(client, [seen["id"]])[seen["id"]]
        served = Image.open(io.BytesIO(client.get(job["images"][0]).content)).convert("RGB")
    alone = generate(sd1_pipe, "a blue square", seed=3, num_inference_steps=STEPS, guidance_scale=5.0)
    assert max_pixel_diff(served, alone.image) == 0
    again = generate(sd1_pipe, "a red circle", seed=1, width=128, height=128, guidance_scale=1.0, num_inference_steps=4)
    assert max_pixel_diff(cell.image, again.image) == 0
