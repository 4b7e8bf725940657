"""Chunking throughput: documents per second through `chunk_document` (normalise,
PII masking, chunking) in the embedder's tokens and in the old Unicode unit, on 300 scifact
abstracts + 100 Traditional Chinese FAQ entries, and the worst case of 5 MB runs without
spaces. Prints a table; run with .venv/bin/python benchmarks/bench_chunking.py."""

from __future__ import annotations

import base64
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import DATASETS, machine  # noqa: E402
from kb_core.chunking import UNICODE, ChunkerConfig  # noqa: E402
from kb_assets.chunks import chunk_document  # noqa: E402
from kb_assets.parsing import parse_file  # noqa: E402
from resources.embedder import Embedder  # noqa: E402


def corpus() -> list[dict]:
    def first(name: str, n: int) -> list[dict]:
        with open(DATASETS / name / "corpus.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in itertools.islice(f, n)]
    return first("scifact", 300) + first("tipo_faq_zh_tw", 100)


def main() -> None:
    print(machine())
    docs = corpus()
    model = Embedder().tokenizer()
    for name, tok in (("unicode", UNICODE), ("model", model)):
        cfg = ChunkerConfig(tokenizer=tok.name)
        best, n = float("inf"), 0
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(len(chunk_document(str(i), d.get("title", ""), d["text"], cfg, tok).rows)
                    for i, d in enumerate(docs))
            best = min(best, time.perf_counter() - t0)
        print(f"{name:8s} {len(docs)} docs -> {n} chunks in {best:.3f} s: "
              f"{len(docs) / best:.0f} docs/s")
    cfg = ChunkerConfig(tokenizer=model.name)
    runs = {"letters": "A" * 5_000_000,
            "base64": base64.b64encode(bytes(range(256)) * 14_649).decode()[:5_000_000],
            "digit-space": "0 " * 2_500_000, "cjk": "員工享有特休假" * 714_286}
    for name, text in runs.items():
        t0 = time.perf_counter()
        [doc] = parse_file("x.md", text.encode()).docs
        t1 = time.perf_counter()
        rows = chunk_document("x.md", doc.title, doc.text, cfg, model).rows
        t2 = time.perf_counter()
        print(f"5 MB {name:12s} parse {t1 - t0:.2f} s, mask+chunk {t2 - t1:.2f} s, "
              f"{len(rows)} chunks")


if __name__ == "__main__":
    main()
