"""Team services on loopback for the scale-out tests: an S3-compatible object store (moto's
standalone server) and an MLflow tracking server, each a real process in its own session,
stopped (and checked stopped) when the block ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.serve_thread import free_port

BIN = Path(sys.executable).parent
S3_BUCKET = "kb-team"
# moto accepts any credentials; boto3 (in the MLflow server) needs some to sign requests.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def wait_http(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500 and listens(proc, url):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def listens(proc: subprocess.Popen, url: str) -> bool:
    """Whether the answer came from this server: a process of its tree listens on the URL's
    port (not another test's server that won a race for the same port)."""
    import psutil

    port = int(url.split(":")[2].split("/")[0])
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in tree:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in p.net_connections(kind="tcp")):
                return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING",
                                                                      "MLFLOW_REGISTRY"))}
    return subprocess.Popen(cmd, env={**clean, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})},
                            cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@dataclass
class ObjectStore:
    endpoint: str
    bucket: str
    proc: subprocess.Popen

    @property
    def env(self) -> dict:
        """What a process needs to reach the bucket (boto3 and MLflow read these)."""
        return {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint,
                            aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def object_store(tmp: Path, bucket: str = S3_BUCKET):
    """moto's S3 server on 127.0.0.1 with one empty bucket."""
    port = free_port()
    log = tmp / "moto.log"
    proc = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log)
    store = ObjectStore(f"http://127.0.0.1:{port}", bucket, proc)
    try:
        wait_http(proc, f"{store.endpoint}/moto-api/", log)
        store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        stop(proc)


@contextmanager
def mlflow_server(tmp: Path, backend_uri: str, artifacts_destination: str | None = None,
                  env: dict | None = None):
    """`mlflow server` on 127.0.0.1. With an artifacts destination (s3://...), the server
    proxies artifacts (`mlflow-artifacts:/`): clients need no object-store credentials."""
    port = free_port()
    log = tmp / f"mlflow-{port}.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    proc = start(cmd, log, env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{url}/health", log)
        yield url
    finally:
        stop(proc)
