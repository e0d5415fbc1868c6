"""The generation server against damaged or foreign files, a full disk, odd queries and hosts.

Real SQLite files and a real uvicorn on 127.0.0.1 with the tiny pipeline (the `serve` fixture of
test_server.py); the only outer edge touched is SQLite's own page limit, which makes writes fail
the way a full disk does (SQLITE_FULL).
"""

import http.client
import json
import shutil
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from test_server import STEPS, TIMEOUT, wait_until


def make_store_with_results(data_dir: Path, n: int = 3):
    """A store whose `n` jobs are done, each with a result folder holding one file."""
    from sdlab.request import GenerationRequest
    from sdlab.server.store import JobStore

    store = JobStore(data_dir / "jobs.db", data_dir / "results")
    ids = []
    for i in range(n):
        request = GenerationRequest(
            prompt=("x",),
            negative_prompt=(None,),
            seed=(i,),
            guidance_scale=(5.0,),
            width=64,
            height=64,
            num_inference_steps=2,
        )
        store.submit(request, {"prompt": "x"}, batch_key="k", max_queue=10)
        (job,) = store.claim(batch_size=1, max_images=8)
        folder = store.job_dir(job.id)
        folder.mkdir(parents=True)
        (folder / "0.png").write_bytes(b"a result")
        assert store.finish(job, [folder / "0.png"], 1.0)
        ids.append(job.id)
    store.close()
    return ids


def result_folders(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "results").iterdir() if p.is_dir())


# ---------------------------------------------------------------------------- item 5: results are never disowned


@pytest.mark.parametrize("damage", ["zero_bytes", "deleted"])
def test_a_new_or_empty_database_beside_results_is_refused_and_deletes_nothing(tmp_path, damage):
    from sdlab.server.store import JobStore, StoreMismatch

    ids = make_store_with_results(tmp_path)
    db = tmp_path / "jobs.db"
    for extra in (tmp_path / "jobs.db-wal", tmp_path / "jobs.db-shm"):
        extra.unlink(missing_ok=True)
    if damage == "zero_bytes":
        db.write_bytes(b"")
    else:
        db.unlink()
    with pytest.raises(StoreMismatch) as refused:
        store = JobStore(db, tmp_path / "results")
        store.remove_orphans()  # what the worker does at start-up
    message = str(refused.value)
    assert str(db) in message and "new or empty" in message and "nothing was deleted" in message
    assert "move" in message and "--data-dir" in message
    assert result_folders(tmp_path) == sorted(ids)


def test_a_database_beside_another_stores_results_is_refused(tmp_path):
    from sdlab.server.store import JobStore, StoreMismatch

    make_store_with_results(tmp_path / "a")
    ids_b = make_store_with_results(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "jobs.db", tmp_path / "b" / "jobs.db")
    with pytest.raises(StoreMismatch, match="did not make the results"):
        JobStore(tmp_path / "b" / "jobs.db", tmp_path / "b" / "results").remove_orphans()
    assert result_folders(tmp_path / "b") == sorted(ids_b)


def test_orphans_are_still_removed_when_the_store_ids_match(tmp_path):
    from sdlab.server.store import STORE_ID_FILE, JobStore

    ids = make_store_with_results(tmp_path)
    orphan = tmp_path / "results" / "00000000-0000-4000-8000-000000000000"  # left by a crash during expire
    orphan.mkdir()
    store = JobStore(tmp_path / "jobs.db", tmp_path / "results")
    assert (tmp_path / "results" / STORE_ID_FILE).read_text().strip() == store.store_id
    assert store.remove_orphans() == 1
    assert result_folders(tmp_path) == sorted(ids)
    store.close()


# ---------------------------------------------------------------------------- item 6: a corrupt database


def damage_header(db: Path) -> None:
    db.write_bytes(b"this is not a database\n" * 200)


def damage_a_page(db: Path) -> None:
    with open(db, "r+b") as f:  # the second page (a table's b-tree) overwritten
        f.seek(4096)
        f.write(b"\xff" * 4096)


@pytest.mark.parametrize("damage", [damage_header, damage_a_page])
def test_a_corrupt_database_stops_sdlab_serve_with_one_line_and_exit_code_1(tmp_path, capsys, damage):
    from sdlab.cli import main

    data_dir = tmp_path / "data"
    ids = make_store_with_results(data_dir, n=8)
    damage(data_dir / "jobs.db")
    argv = ["serve", "--model", "tiny", "--device", "cpu", "--port", "0", "--data-dir", str(data_dir)]
    outcome = []
    # on a thread: a server that started on the damaged file anyway would serve forever
    thread = threading.Thread(target=lambda: outcome.append(main(argv)), daemon=True)
    thread.start()
    thread.join(120)
    err = capsys.readouterr().err.strip()
    assert not thread.is_alive(), "sdlab serve started on a damaged database"
    assert outcome == [1], err
    assert len(err.splitlines()) == 1, err
    assert str(data_dir / "jobs.db") in err and "not a readable sdlab job database" in err
    assert "restore it from a backup" in err and "--data-dir" in err
    assert result_folders(data_dir) == sorted(ids)


# ---------------------------------------------------------------------------- item 7: a full disk


def fill_the_database(store) -> None:
    """SQLite's page limit at the current size: the next write that needs a page fails with
    SQLITE_FULL, as it does when the disk is full."""
    with store._lock:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_answers_507_on_generate_and_keeps_serving_reads(serve):
    server = serve(max_queue=200)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        done = client.post("/generate", json={"prompt": "before", "num_inference_steps": STEPS}).json()["id"]
        image_url = wait_until(client, [done])[done]["images"][0]
        fill_the_database(server.store)
        accepted, refused = [], None
        for i in range(60):  # each job takes a few hundred bytes: a new page is needed within a few
            r = client.post("/generate", json={"prompt": f"job {i}", "num_inference_steps": STEPS})
            if r.status_code != 202:
                refused = r
                break
            accepted.append(r.json()["id"])
        assert refused is not None and refused.status_code == 507, refused and refused.text
        assert "disk is full" in refused.json()["detail"] and "not queued" in refused.json()["detail"]
        # reads keep working
        assert client.get(f"/jobs/{done}").json()["status"] == "done"
        assert client.get(image_url).status_code == 200
        assert client.get("/jobs").status_code == 200
        assert client.get("/health").status_code == 200
        assert 'sdlab_jobs_rejected_total{reason="disk_full"} 1.0' in client.get("/metrics").text
        # space again: new jobs are accepted and every accepted job completes
        with server.store._lock:
            server.store._conn.execute("PRAGMA max_page_count = 1073741823")
        r = client.post("/generate", json={"prompt": "after", "num_inference_steps": STEPS})
        assert r.status_code == 202
        bodies = wait_until(client, [*accepted, r.json()["id"]])
        assert all(body["status"] == "done" for body in bodies.values())


# ---------------------------------------------------------------------------- item 8: paging bounds


def test_paging_beyond_sqlite_integers_is_a_422_naming_the_field(serve):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        for field in ("offset", "limit"):
            r = client.get("/jobs", params={field: 2**63})
            assert r.status_code == 422, (field, r.text)
            assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()
        assert client.get("/jobs", params={"offset": 10**9}).json()["jobs"] == []


# ---------------------------------------------------------------------------- item 10: damaged PNGs


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_result_png_is_refused_with_410_not_served(serve, damage):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        job_id = client.post("/generate", json={"prompt": "x", "seed": 3, "num_inference_steps": STEPS}).json()["id"]
        url = wait_until(client, [job_id])[job_id]["images"][0]
        good = client.get(url)
        assert good.status_code == 200 and good.headers["content-type"] == "image/png"
        path = server.store.job_dir(job_id) / "0.png"
        data = bytearray(path.read_bytes())
        if damage == "flipped":
            data[len(data) // 2] ^= 0xFF  # one byte inside the image data, same length
        else:
            del data[len(data) // 2 :]
        path.write_bytes(bytes(data))
        r = client.get(url)
        assert r.status_code == 410, r.status_code
        assert "damaged" in r.json()["detail"] and "[3]" in r.json()["detail"]
        assert not r.content.startswith(b"\x89PNG")


# ---------------------------------------------------------------------------- item 11: sizes the model cannot run


@pytest.mark.parametrize(
    "body, field",
    [
        ({"width": 8, "height": 8, "guidance_scale": 0.0}, "width"),
        ({"height": 16}, "height"),
        ({"width": 56}, "width"),
    ],
)
def test_sizes_below_the_familys_minimum_are_refused_at_submission(serve, body, field):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        r = client.post("/generate", json={"prompt": "x", "num_inference_steps": STEPS, **body})
        assert r.status_code == 422, r.text
        (detail,) = r.json()["detail"]
        assert detail["loc"] == ["body", field] and "at least 64" in detail["msg"] and "sd1" in detail["msg"]
        assert server.store.counts()["queued"] == 0


# ---------------------------------------------------------------------------- item 13: Host names


def raw_get(url: str, path: str, host: str | None, headers: dict | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    conn.putrequest("GET", path, skip_host=True)
    if host is not None:
        conn.putheader("Host", host)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


def test_without_a_token_only_loopback_host_names_are_answered(serve):
    server = serve(allowed_hosts=("gpu-box.lan",))
    port = urlsplit(server.url).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", f"gpu-box.lan:{port}"):
        assert raw_get(server.url, "/jobs", host)[0] == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"192.168.1.5:{port}"):
        status, body = raw_get(server.url, "/jobs", host)
        assert status == 421, host
        assert "--allowed-hosts" in json.loads(body)["detail"]
    assert raw_get(server.url, "/health", f"evil.example:{port}")[0] == 200  # probes need no name

    other = serve(token="s3cret-token")  # with a token, the token is what guards the server
    port = urlsplit(other.url).port
    assert raw_get(other.url, "/jobs", f"gpu-box.example:{port}", {"Authorization": "Bearer s3cret-token"})[0] == 200
    assert raw_get(other.url, "/jobs", f"gpu-box.example:{port}")[0] == 401


def test_allowed_hosts_flag_reaches_the_app():
    from sdlab.cli import build_parser

    args = build_parser().parse_args(["serve", "--allowed-hosts", "a.lan,b.lan"])
    assert args.allowed_hosts == "a.lan,b.lan"


# ---------------------------------------------------------------------------- item 14: batching by default


def test_compatible_jobs_share_one_pipeline_call_by_default(serve):
    """The defaults batch up to 8 compatible jobs; a batch that is still filling waits for more
    (here a long `batch_wait`, so that a busy machine cannot make the test flaky: a full batch runs at once)."""
    import inspect

    from sdlab.cli import build_parser
    from sdlab.server import create_app

    args = build_parser().parse_args(["serve"])
    signature = inspect.signature(create_app).parameters
    assert args.batch_size == signature["batch_size"].default == 8
    assert args.batch_wait == signature["batch_wait"].default == 0.05

    server = serve(batch_wait=10.0)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        ids = [
            client.post("/generate", json={"prompt": f"job {i}", "seed": i, "num_inference_steps": STEPS}).json()["id"]
            for i in range(8)
        ]
        bodies = wait_until(client, ids)
    assert all(body["status"] == "done" for body in bodies.values())
    runs = {server.store.get(i).run_token for i in ids}
    assert len(runs) == 1, "the eight compatible jobs ran in more than one pipeline call"


def test_a_filling_batch_waits_only_while_fewer_compatible_jobs_are_queued(tmp_path):
    from sdlab.request import GenerationRequest
    from sdlab.server.store import JobStore

    store = JobStore(tmp_path / "jobs.db", tmp_path / "results")
    assert store.filling_batch(3) is None  # nothing queued: nothing to wait for

    def submit(key):
        request = GenerationRequest(
            prompt=("x",),
            negative_prompt=(None,),
            seed=(1,),
            guidance_scale=(5.0,),
            width=64,
            height=64,
            num_inference_steps=2,
        )
        return store.submit(request, {"prompt": "x"}, batch_key=key, max_queue=10)[0]

    first = submit("a")
    assert store.filling_batch(3) == first.created_at
    submit("b")  # not compatible: does not fill the batch of the oldest job
    submit("a")
    assert store.filling_batch(3) == first.created_at
    submit("a")
    assert store.filling_batch(3) is None  # a full batch is ready
    assert store.filling_batch(1) is None
    store.close()
