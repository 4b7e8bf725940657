"""One worker process of an embedding fan-out (kb_assets/embed_fanout.py starts them):

    python -m resources.embed_worker <shard folder>

reads `<shard folder>/input.json` (its texts, their cache keys, the embedder's settings and
its slices grouped into parts), loads the encoder once and writes each part as
`part-<k>.npy` (float32 vectors, one row per text) + `part-<k>.json` (the texts' hashes, the
model id, this pid), each written to a temporary name and renamed: the JSON last, so a part
whose JSON exists is complete. At the end `done.json` records the worker's timings.

The worker never opens the DuckDB file: the one KB writer (the `embeddings` asset) merges the
parts. It stops by itself when the process that started it is gone (checked between slices),
so a killed build leaves no orphan encoding for nobody."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from kb_core.hooks import fault_point

INPUT_FILE = "input.json"
DONE_FILE = "done.json"


def part_files(folder: Path, k: int) -> tuple[Path, Path]:
    return folder / f"part-{k:05d}.npy", folder / f"part-{k:05d}.json"


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(folder: Path) -> dict:
    t_start = time.perf_counter()
    spec = json.loads((folder / INPUT_FILE).read_text(encoding="utf-8"))
    parent = spec.get("parent_pid")
    threads = int(spec["threads"])

    from resources.embedder import Embedder

    cfg = spec["embedder"]
    if cfg["backend"] == "torch":
        import torch

        torch.set_num_threads(threads)
    # KB_MODEL_CACHE is the parent's model cache (it set the variable): the ONNX export the
    # parent made or found is loaded, never made again.
    embedder = Embedder(model_path=cfg["model_path"], batch_size=cfg["batch_size"],
                        backend=cfg["backend"], threads=threads)
    embedder.model()
    if embedder.active_backend != cfg["backend"] or embedder.model_id != spec["model_id"]:
        raise RuntimeError(f"worker encoder {embedder.active_backend}/{embedder.model_id} is not "
                           f"the parent's {cfg['backend']}/{spec['model_id']}")
    load_s = time.perf_counter() - t_start

    texts, hashes = spec["texts"], spec["text_hashes"]
    encode_s = 0.0
    for k, part in enumerate(spec["parts"]):
        vecs, keys = [], []
        for a, b in part:  # the slices the in-process path would encode: same batches
            if parent and os.getppid() != parent:
                raise SystemExit(f"parent process {parent} is gone: stopping")
            t0 = time.perf_counter()
            vecs.append(embedder.encode(texts[a:b]))
            encode_s += time.perf_counter() - t0
            keys += hashes[a:b]
        matrix = np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32)
        npy, meta = part_files(folder, k)
        _write_atomic(npy, lambda f: np.save(f, matrix, allow_pickle=False))
        _write_atomic(meta, lambda f: f.write(json.dumps({
            "worker": spec["worker"], "pid": os.getpid(), "model_id": spec["model_id"],
            "text_hashes": keys, "dim": int(matrix.shape[1])}).encode()))
        fault_point("embedding:worker_part_written")
    summary = {"worker": spec["worker"], "pid": os.getpid(), "threads": threads,
               "texts": len(texts), "parts": len(spec["parts"]), "load_s": round(load_s, 3),
               "encode_s": round(encode_s, 3),
               "total_s": round(time.perf_counter() - t_start, 3)}
    _write_atomic(folder / DONE_FILE, lambda f: f.write(json.dumps(summary).encode()))
    return summary


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m resources.embed_worker <shard folder>", file=sys.stderr)
        return 2
    summary = run(Path(argv[0]))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
