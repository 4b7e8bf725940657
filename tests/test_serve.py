"""`kb serve`: the HTTP API on loopback, following the serving pointer without a restart.
KB versions are published directly (real embedder, FAISS, BM25) to keep these tests quick;
the registry-driven path is covered in test_registry_e2e."""

import os
import signal
import subprocess
import sys
import time

import httpx
import pandas as pd
import pytest

from dagster_project.cli import main
from tests.serve_thread import ServerThread, free_port
from kb_core.serving import write_pointer
from resources.embedder import Embedder
from resources.vector_index import VersionStore, build_faiss_index
from tests.test_registry_e2e import Hammer, _wait_for_version

V1 = {"leave.md": "Every employee receives 25 days of paid annual leave per year.",
      "vpn.md": "Use the corporate VPN client to reach the internal network from home."}
V2 = {**V1, "bikes.md": "Bicycle storage with 60 racks and showers is in the basement."}


def publish(paths, number: int, docs: dict[str, str]) -> None:
    emb = Embedder()
    texts = list(docs.values())
    ids = list(range(1, len(texts) + 1))
    manifest = pd.DataFrame({
        "chunk_id": ids, "doc_key": list(docs), "doc_id": list(docs), "source_path": list(docs),
        "title": list(docs), "ordinal": 0, "text": texts, "n_tokens": 10, "text_hash": "h",
        "doc_content_hash": "c"})
    import numpy as np

    index = build_faiss_index(emb.encode(texts), np.array(ids), emb.dim)
    VersionStore(root=str(paths.versions)).publish_whole(
        number, index, manifest, {"embedding_model": emb.model_id, "dim": emb.dim}, [])


def top(url, q, k=3):
    r = httpx.get(f"{url}/search", params={"q": q, "k": k}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["version"], [h["doc_id"] for h in body["hits"]]


def test_search_health_version_metrics_and_bad_input(kb_paths):
    publish(kb_paths, 1, V1)
    with ServerThread(kb_paths) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "version": 1, "error": None,
                                                      "remote_error": None}
        v = httpx.get(f"{url}/version").json()
        assert v["version"] == 1 and v["source"] == "latest (nothing promoted yet)"
        body = httpx.get(f"{url}/search", params={"q": "how many days of annual leave?"}).json()
        assert body["version"] == 1 and body["zero_hit"] is False
        assert body["hits"][0]["doc_id"] == "leave.md"
        assert set(body["hits"][0]) == {"rank", "score", "doc_id", "source", "title", "text",
                                        "untrusted"}
        assert body["hits"][0]["untrusted"] is False
        zero = httpx.get(f"{url}/search", params={"q": "zzqx vvbn"}).json()
        assert zero["zero_hit"] is True and zero["hits"] == []
        for params in ({}, {"q": ""}, {"q": "   "}, {"q": "leave", "k": 0},
                       {"q": "leave", "k": 51}, {"q": "leave", "k": "many"}):
            assert httpx.get(f"{url}/search", params=params).status_code == 422, params
        text = httpx.get(f"{url}/metrics").text
    assert 'kb_serve_requests_total{path="/search",code="200"} 2' in text
    assert 'kb_serve_requests_total{path="/search",code="422"} 6' in text
    assert "kb_serve_zero_hits_total 1" in text and "kb_serve_errors_total 0" in text
    assert "kb_serve_search_latency_seconds_count 2" in text
    assert 'kb_serve_search_latency_seconds_bucket{le="+Inf"} 2' in text
    assert "kb_serve_kb_version 1" in text and "# TYPE kb_serve_search_latency_seconds histogram" in text


def test_follows_the_pointer_without_restart_or_failed_requests(kb_paths):
    publish(kb_paths, 1, V1)
    publish(kb_paths, 2, V2)
    write_pointer(kb_paths, 1)
    bikes = "where can I store my bicycle?"
    with ServerThread(kb_paths) as url:
        assert top(url, bikes)[0] == 1 and "bikes.md" not in top(url, bikes)[1]
        with Hammer(url, n=4) as hammer:
            write_pointer(kb_paths, 2)
            assert _wait_for_version(url, 2) < 5
            assert top(url, bikes)[1][0] == "bikes.md"
            write_pointer(kb_paths, 1)  # rollback: v1 is still loaded, a reference swap
            assert _wait_for_version(url, 1) < 5
            assert "bikes.md" not in top(url, bikes)[1]
        assert len(hammer.codes) > 10 and set(hammer.codes) == {200}
        # a pointer to a version that cannot load: keep serving, say why
        write_pointer(kb_paths, 9)
        time.sleep(2.5)
        v = httpx.get(f"{url}/version").json()
        assert v["version"] == 1 and v["wanted"] == 9 and "KB version 9" in v["error"]
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert "kb_serve_version_swaps_total 3" in httpx.get(f"{url}/metrics").text


def test_follows_the_latest_version_until_something_is_promoted(kb_paths):
    publish(kb_paths, 1, V1)
    with ServerThread(kb_paths) as url:
        assert top(url, "annual leave")[0] == 1
        publish(kb_paths, 2, V2)
        _wait_for_version(url, 2)
        assert httpx.get(f"{url}/version").json()["source"].startswith("latest")


def test_kb_serve_cli_errors(kb_paths, capsys):
    assert main(["serve"]) == 2
    assert "no KB version" in capsys.readouterr().err
    publish(kb_paths, 1, V1)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.slow
def test_kb_serve_process_binds_loopback_and_stops_on_sigterm(kb_paths):
    publish(kb_paths, 1, V1)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dagster_project.cli", "serve", "--port",
                             str(port)], env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.3)
        assert top(f"http://127.0.0.1:{port}", "annual leave days")[1][0] == "leave.md"
        conns = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                               text=True).stdout
        assert [line.split()[3] for line in conns.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
