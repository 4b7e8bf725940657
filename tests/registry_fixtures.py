"""A small corpus and golden set for the registry/serve tests (independent of sample_data),
plus a deliberately damaged KB version."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

DOCS = {
    "policies/leave.md": "# Annual leave\nEvery full-time employee receives 25 days of paid "
                         "annual leave per year. Up to five unused leave days may be carried "
                         "over to the next year.",
    "policies/expenses.md": "# Expense claims\nSubmit expense claims with receipts within 30 "
                            "days. Meals while travelling are reimbursed up to 40 euros per day.",
    "policies/vpn.md": "# VPN access\nUse the corporate VPN client to connect to the internal "
                       "network from home. Multi-factor authentication is required for VPN "
                       "login.",
    "policies/laptop.md": "# Laptops\nNew staff receive a laptop on their first day. A broken "
                          "laptop is replaced by the IT service desk within two working days.",
    "policies/parking.md": "# Car parking\nThe office car park has 40 spaces, allocated "
                           "first come first served. Electric vehicle charging points are on "
                           "level minus one.",
    "policies/security.md": "# Reporting security incidents\nReport a lost badge, phishing "
                            "email or suspected breach to the security team within one hour.",
    "policies/training.md": "# Training budget\nEach employee has a yearly training budget of "
                            "1000 euros for courses, books and conference tickets.",
    "policies/sickness.md": "# Sick leave\nCall your manager before 9am on the first day of "
                            "sickness. A doctor's note is needed after seven days of absence.",
}
# Added for KB version 3: answers a question no earlier version can.
NEW_DOC = ("policies/bicycles.md",
           "# Bicycle storage\nA secure bicycle storage room with 60 racks and showers is in "
           "the basement; register your bike with reception to get a key card.")
NEW_QUESTION = "Where can I store my bicycle and shower?"

GOLDEN = [
    ("g1", "How many days of paid annual leave do I get per year?", "policies/leave.md"),
    ("g2", "Can unused leave days be carried over?", "policies/leave.md"),
    ("g3", "What is the deadline to submit an expense claim with receipts?", "policies/expenses.md"),
    ("g4", "How much are meals reimbursed per day when travelling?", "policies/expenses.md"),
    ("g5", "How do I connect to the internal network from home?", "policies/vpn.md"),
    ("g6", "Is multi-factor authentication required for VPN login?", "policies/vpn.md"),
    ("g7", "Who replaces a broken laptop?", "policies/laptop.md"),
    ("g8", "Where are the electric vehicle charging points in the car park?", "policies/parking.md"),
    ("g9", "How quickly must I report a phishing email to the security team?",
     "policies/security.md"),
    ("g10", "What is the yearly training budget for courses and conferences?",
     "policies/training.md"),
    ("g11", "When do I need a doctor's note for sick leave?", "policies/sickness.md"),
    ("g12", "Who do I call on the first day of sickness?", "policies/sickness.md"),
]


def write_corpus(inbox: Path) -> None:
    for rel, text in DOCS.items():
        p = inbox / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def write_golden(path: Path) -> Path:
    path.write_text("".join(json.dumps({"qid": q, "question": text, "doc_id": doc}) + "\n"
                            for q, text, doc in GOLDEN), encoding="utf-8")
    return path


def publish_damaged(versions_root: Path, source: int, number: int) -> Path:
    """A copy of version `source` whose FAISS vectors are random and whose BM25 rows are
    rotated onto the wrong chunks: every file is well-formed, retrieval is garbage. Its
    fingerprint is the source's, so the next faiss_index run adopts it (as it would a
    version whose publisher crashed) without publishing another."""
    from resources.vector_index import SOURCES_FILE, VersionStore, build_faiss_index

    store = VersionStore(root=str(versions_root))
    v = store.load(source)
    ids = v.manifest["chunk_id"].to_numpy()
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(len(ids), int(v.info["dim"]))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = v.manifest["text"].tolist()
    shift = max(1, len(texts) // 2)
    info = {k: val for k, val in v.info.items()
            if k not in ("version", "index_sha256", "manifest_sha256")}
    info.update(created_at=datetime.now(timezone.utc).replace(tzinfo=None).isoformat(),
                run_id="damaged-by-test", previous_version=source)
    sources = json.loads((v.path / SOURCES_FILE).read_text(encoding="utf-8"))
    return store.publish_whole(number, build_faiss_index(vectors, ids, int(v.info["dim"])),
                               v.manifest, info, sources,
                               lexical_texts=texts[shift:] + texts[:shift])


def publish_tiny(versions_root: Path, number: int) -> Path:
    """A real, servable-shaped KB version `number` of three chunks (random 8-d vectors): for
    registry tests that need a version's files to exist without building a KB."""
    import pandas as pd

    from resources.vector_index import VersionStore, build_faiss_index

    ids = np.arange(3, dtype=np.int64) + 100 * number
    vectors = np.random.default_rng(number).normal(size=(3, 8)).astype(np.float32)
    manifest = pd.DataFrame({"chunk_id": ids, "doc_id": [f"d{i}" for i in ids],
                             "text": [f"tiny chunk {i}" for i in ids]})
    return VersionStore(root=str(versions_root)).publish_whole(
        number, build_faiss_index(vectors, ids, 8), manifest, {"dim": 8}, [])


def open_registry(paths):
    """(paths, store, registry) on a KB_HOME's own DuckDB file and sqlite MLflow."""
    from resources.registry import Registry
    from resources.store import KBStore

    return paths, KBStore(db_path=str(paths.db)), Registry(
        tracking_uri=paths.mlflow_uri, artifact_root=str(paths.mlflow_artifacts),
        kb_home=str(paths.home))
