"""Fan-out of a large embedding backlog: the uncached chunks are split into shards, one per
worker process (`python -m resources.embed_worker`), each loading the encoder once with its
share of the cores; the `embeddings` asset (the one KB writer) merges every complete part the
workers write into the DuckDB embedding cache, one commit per part, while they run.

Shards are made of the very slices the in-process path encodes (the same texts in the same
encode calls, so the same batches and padding), dealt round-robin so every worker gets short
and long texts alike. Files live under `$KB_HOME/embed_shards/run-<id>/shard-<i>/`; a part is
read only once its JSON exists (renamed into place after its vectors), so nothing is merged
half. A failed worker: the parts already written (by it and the others) are merged, then the
step fails naming the shard and the worker's last output lines; a re-run embeds only what is
still uncached. A folder left by a killed run is removed by the next run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kb_core import progress, settings
from kb_core.clock import utc_now
from resources import persistence
from resources.embed_worker import DONE_FILE, INPUT_FILE, part_files
from resources.embedder import Embedder, model_cache_root
from resources.store import KBStore

SHARDS_DIR = "embed_shards"
LOG_FILE = "output.log"
LAST_LINES = 15  # of a failed worker's output, in the error
POLL_S = 0.2

Slice = tuple[int, int]  # [start, end) into the sorted backlog


class EmbedFanoutError(RuntimeError):
    """A worker failed; the finished parts are merged, the rest stays uncached."""


def shards_root(store: KBStore) -> Path:
    """`$KB_HOME/embed_shards`: beside the DuckDB file the shards are merged into."""
    return Path(store.db_path).resolve().parent / SHARDS_DIR


def clean_leftovers(store: KBStore, log=None) -> int:
    """Remove shard folders a killed or failed run left (the caller holds the writer lock, so
    no other run is using them; a straggling worker of a dead run stops on its own once its
    parent is gone). Their complete parts are not merged: the run that made them may have
    used another model, and what is missing is simply embedded again."""
    root = shards_root(store)
    if not root.is_dir():
        return 0
    n = 0
    for d in root.iterdir():
        shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
        n += 1
    if n and log:
        log.info(f"removed {n} leftover embedding shard folder(s) under {root}")
    return n


def fanout_workers(n_todo: int) -> int:
    """How many worker processes embed a backlog of `n_todo` texts: KB_EMBED_WORKERS, but 1
    (in-process, no process started) below KB_EMBED_FANOUT_MIN texts."""
    workers = int(settings.get("KB_EMBED_WORKERS"))
    if workers <= 1 or n_todo < int(settings.get("KB_EMBED_FANOUT_MIN")):
        return 1
    return workers


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Shard:
    index: int
    folder: Path
    slices: list[Slice]
    parts: list[list[str]] = field(default_factory=list)  # expected text hashes per part
    proc: subprocess.Popen | None = None
    merged: set = field(default_factory=set)  # part numbers merged

    @property
    def n_texts(self) -> int:
        return sum(b - a for a, b in self.slices)

    def last_lines(self) -> str:
        try:
            with open(self.folder / LOG_FILE, encoding="utf-8", errors="replace") as f:
                lines = deque(f, maxlen=LAST_LINES)
        except OSError:
            return "(no output)"
        return "".join(lines).rstrip() or "(no output)"


def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    # The code this process runs, importable from anywhere (after any sitecustomize folder).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), repo) if p)
    # The parent's model cache: the worker loads the export made or found here.
    env.update(KB_MODEL_CACHE=str(model_cache_root()))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def start_worker(folder: Path, env: dict) -> subprocess.Popen:
    """`python -m resources.embed_worker <folder>`, its stdout and stderr in the folder."""
    with open(folder / LOG_FILE, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "resources.embed_worker", str(folder)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=folder)


def _write_spec(shard: Shard, todo: list[tuple[str, str]], spec: dict,
                commit_every: int) -> None:
    texts, hashes, parts, cur, cur_n = [], [], [], [], 0
    for a, b in shard.slices:
        if cur and cur_n + (b - a) > commit_every:
            parts.append(cur)
            cur, cur_n = [], 0
        cur.append([len(texts), len(texts) + b - a])
        cur_n += b - a
        hashes += [h for h, _ in todo[a:b]]
        texts += [t for _, t in todo[a:b]]
    if cur:
        parts.append(cur)
    shard.parts = [[h for a, b in part for h in hashes[a:b]] for part in parts]
    shard.folder.mkdir(parents=True)
    tmp = shard.folder / f".{INPUT_FILE}.tmp"
    tmp.write_text(json.dumps({**spec, "worker": shard.index, "texts": texts,
                               "text_hashes": hashes, "parts": parts}), encoding="utf-8")
    tmp.rename(shard.folder / INPUT_FILE)


def _merge_ready(store: KBStore, shards: list[Shard], model_id: str, dim_seen: list) -> int:
    """Merge every complete part not merged yet, one commit each; return vectors merged."""
    n = 0
    for shard in shards:
        for k in range(len(shard.parts)):
            if k in shard.merged:
                continue
            npy, meta_file = part_files(shard.folder, k)
            if not meta_file.is_file():
                continue
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            vecs = np.load(npy, allow_pickle=False)
            if (meta["model_id"] != model_id or meta["text_hashes"] != shard.parts[k]
                    or vecs.dtype != np.float32 or vecs.shape[0] != len(shard.parts[k])):
                raise EmbedFanoutError(f"{meta_file}: not the part this run asked shard "
                                       f"{shard.index} for (model {meta['model_id']}, "
                                       f"{vecs.shape[0]} rows)")
            dim_seen.append(int(vecs.shape[1]))
            df = pd.DataFrame({"model_id": model_id, "text_hash": meta["text_hashes"],
                               "vector": [v.tobytes() for v in vecs], "created_at": utc_now()})
            with store.connect() as con:
                persistence.cache_embeddings(con, df)
            shard.merged.add(k)
            npy.unlink()
            meta_file.unlink()
            n += len(df)
    return n


def embed_in_workers(store: KBStore, embedder: Embedder, todo: list[tuple[str, str]],
                     batches: list[list[Slice]], workers: int, log=None) -> dict:
    """Embed `todo` ((text_hash, text), sorted as the in-process path sorts it) in `workers`
    processes; `batches` are the in-process commit batches, as slices. Returns the metadata
    fields of the fan-out; raises EmbedFanoutError after merging what finished."""
    model_id = embedder.model_id
    backend = embedder.active_backend  # loads (exports, the first time) the encoder here, once
    commit_every = int(settings.get("KB_EMBED_COMMIT_EVERY"))
    units = [s for batch in batches for s in batch]
    n = min(workers, len(units))
    threads = max(1, cores() // n)
    folder = shards_root(store) / f"run-{uuid.uuid4().hex[:12]}"
    shards = [Shard(i, folder / f"shard-{i}", units[i::n]) for i in range(n)]
    spec = {"parent_pid": os.getpid(), "model_id": model_id, "threads": threads,
            "embedder": {"model_path": str(Path(embedder.model_path).resolve())
                         if embedder.model_path else "",  # workers run in their shard folder
                         "batch_size": embedder.batch_size, "backend": backend}}
    if log:
        log.info(f"embedding {len(todo)} chunks in {n} worker processes x {threads} "
                 f"thread(s), {backend}; shards in {folder}")
    t0 = time.perf_counter()
    merged, dims = 0, []
    try:
        env = _worker_env(threads)
        for shard in shards:
            _write_spec(shard, todo, spec, commit_every)
            shard.proc = start_worker(shard.folder, env)
        while True:
            running = [s for s in shards if s.proc.poll() is None]
            got = _merge_ready(store, shards, model_id, dims)
            if got:
                merged += got
                progress.report("embedding", merged, len(todo), "chunks")
                if log:
                    log.info(f"embedded {merged}/{len(todo)} chunks "
                             f"({merged / max(time.perf_counter() - t0, 1e-9):.0f}/s, "
                             f"{n} workers)")
            if not running:
                break
            time.sleep(POLL_S)
        merged += _merge_ready(store, shards, model_id, dims)  # written just before exiting
    finally:
        for s in shards:  # only after an error in this process: stop what it started
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
    wall_s = time.perf_counter() - t0

    failed, who, done = [], [], []
    for s in shards:
        done_file = s.folder / DONE_FILE
        if s.proc.returncode == 0 and done_file.is_file() and len(s.merged) == len(s.parts):
            done.append(json.loads(done_file.read_text(encoding="utf-8")))
            continue
        failed.append(
            f"embedding worker {s.index} of {n} (pid {s.proc.pid}, shard {s.folder}: "
            f"{s.n_texts} texts in {len(s.parts)} parts, {len(s.merged)} finished) exited with "
            f"code {s.proc.returncode}; its last output lines:\n{s.last_lines()}")
        who.append(f"worker {s.index} ({s.folder}, exit code {s.proc.returncode})")
    if failed:
        # The last line says it all: `kb build` prints a failed step's last line.
        raise EmbedFanoutError(
            "\n".join(failed) + f"\nembedding fan-out failed: {', '.join(who)}; {merged} of "
            f"{len(todo)} vectors (the finished parts of every shard) were merged into the "
            f"embedding cache; {len(todo) - merged} are still uncached: re-run to embed only "
            "those (the shard folder is removed by the next run)")
    shutil.rmtree(folder, ignore_errors=True)
    done.sort(key=lambda d: d["worker"])
    return {
        "dim": dims[0] if dims else None, "chunks_embedded": merged,
        "embed_workers": n, "embed_worker_threads": threads,
        "embed_worker_pids": [d["pid"] for d in done],
        "embed_worker_texts": [d["texts"] for d in done],
        "embed_worker_texts_per_s": [round(d["texts"] / d["encode_s"], 1) if d["encode_s"]
                                     else None for d in done],
        "embed_worker_load_s": [d["load_s"] for d in done],
        "encode_s": round(wall_s, 3),
        "texts_per_s": round(merged / wall_s, 1) if wall_s else None,
    }
