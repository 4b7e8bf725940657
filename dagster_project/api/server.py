"""The HTTP search API (`kb serve`): FastAPI over the serving KB version, following the
`production` alias without a restart.

A watcher thread polls the serving pointer ($KB_HOME/serving.json, rewritten by every
production move) twice a second (a stat call). When it names another version, the watcher
loads it in the background and swaps one reference; a request reads that reference once, so
requests in flight finish on the version they started with. The previous version stays
loaded, so a rollback is a reference swap. Queries are embedded by one encoder thread that
takes every query waiting at that moment as one batch: the tokenizer is not safe under
concurrent calls, and a batch of 20 short queries costs far less than 20 single encodes.
With KB_VERSIONS_URL the watcher first pulls the version the shared pointer names (every 2 s),
so replicas on other machines need nothing of the writer's but that storage.
Nothing here imports MLflow or opens DuckDB."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
import time
from collections import OrderedDict
from dataclasses import dataclass

from kb_core.serving import pointer_path, resolve
from kb_core.paths import Paths

log = logging.getLogger("kb.serve")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MAX_BATCH = 64


@dataclass(frozen=True)
class Loaded:
    version: int
    source: str
    searcher: object
    loaded_at: float


class Metrics:
    """Prometheus counters and a latency histogram, by hand (one lock, no dependency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.errors = 0
        self.zero_hits = 0
        self.swaps = 0
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.lat_sum = 0.0
        self.lat_count = 0

    def request(self, path: str, code: int) -> None:
        with self._lock:
            self.requests[(path, code)] = self.requests.get((path, code), 0) + 1
            if code >= 500:
                self.errors += 1

    def search(self, seconds: float, zero_hit: bool) -> None:
        with self._lock:
            self.lat_sum += seconds
            self.lat_count += 1
            self.zero_hits += int(zero_hit)
            for i, le in enumerate(LATENCY_BUCKETS):
                if seconds <= le:
                    self.buckets[i] += 1

    def render(self, version: int | None) -> str:
        with self._lock:
            out = ["# HELP kb_serve_requests_total HTTP requests by path and status code.",
                   "# TYPE kb_serve_requests_total counter"]
            out += [f'kb_serve_requests_total{{path="{p}",code="{c}"}} {n}'
                    for (p, c), n in sorted(self.requests.items())]
            out += ["# HELP kb_serve_errors_total Requests that failed with a server error.",
                    "# TYPE kb_serve_errors_total counter", f"kb_serve_errors_total {self.errors}",
                    "# HELP kb_serve_zero_hits_total Searches that found no relevant passage.",
                    "# TYPE kb_serve_zero_hits_total counter",
                    f"kb_serve_zero_hits_total {self.zero_hits}",
                    "# HELP kb_serve_search_latency_seconds Search latency (embed + retrieve).",
                    "# TYPE kb_serve_search_latency_seconds histogram"]
            out += [f'kb_serve_search_latency_seconds_bucket{{le="{le}"}} {n}'
                    for le, n in zip(LATENCY_BUCKETS, self.buckets)]
            out += [f'kb_serve_search_latency_seconds_bucket{{le="+Inf"}} {self.lat_count}',
                    f"kb_serve_search_latency_seconds_sum {self.lat_sum:.6f}",
                    f"kb_serve_search_latency_seconds_count {self.lat_count}",
                    "# HELP kb_serve_kb_version The KB version serving queries.",
                    "# TYPE kb_serve_kb_version gauge",
                    f"kb_serve_kb_version {version if version is not None else -1}",
                    "# HELP kb_serve_version_swaps_total Times a new KB version was swapped in.",
                    "# TYPE kb_serve_version_swaps_total counter",
                    f"kb_serve_version_swaps_total {self.swaps}"]
        return "\n".join(out) + "\n"


class ServingState:
    """The current searcher, and the watcher that follows the serving pointer."""

    def __init__(self, paths: Paths, poll_s: float = 0.5, keep_loaded: int = 2) -> None:
        from resources.embedder import Embedder

        self.paths = paths
        self.poll_s = poll_s
        self.keep_loaded = keep_loaded
        # One encoder thread, ONNX Runtime or torch (start() sets torch's): see start().
        self.embedder = Embedder(threads=1)
        self.current: Loaded | None = None
        self.metrics = Metrics()
        self.last_error: str | None = None
        self._cache: OrderedDict[int, object] = OrderedDict()
        self._queries: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple | None = None
        self._failed: tuple = (None, 0.0)
        # KB_VERSIONS_URL: a replica pulls what the shared pointer names into its own KB_HOME
        # (resources/remote_versions.py), then follows its local pointer as always.
        from resources.remote_versions import from_settings

        self.remote = from_settings()
        self.remote_poll_s = max(poll_s, 2.0)
        self.remote_error: str | None = None
        self._next_pull = 0.0

    def _load(self, number: int):
        from kb_assets.searcher import Searcher

        if number in self._cache:
            self._cache.move_to_end(number)
            return self._cache[number]
        searcher = Searcher.open(self.paths, number, embedder=self.embedder)
        self._cache[number] = searcher
        while len(self._cache) > self.keep_loaded:
            self._cache.popitem(last=False)
        return searcher

    def refresh(self) -> bool:
        """Follow the pointer once; True when a new version was swapped in."""
        p = pointer_path(self.paths)
        try:
            st = p.stat()
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = (None, tuple(self._version_dirs()))  # nothing promoted: follow latest
        if seen == self._seen and self.current is not None:
            return False
        if seen == self._failed[0] and time.monotonic() < self._failed[1] + 10:
            return False  # a version that would not load: retry every 10 s, not every poll
        serving = resolve(self.paths)
        if serving.version is None:
            self._seen = seen
            return False
        if self.current and self.current.version == serving.version:
            self._seen = seen
            if self.current.source != serving.source:
                self.current = Loaded(serving.version, serving.source, self.current.searcher,
                                      self.current.loaded_at)
            return False
        try:
            searcher = self._load(serving.version)
        except Exception as exc:  # keep serving the old version; retry on the next poll
            self.last_error = f"cannot load KB version {serving.version}: {exc}"
            self._failed = (seen, time.monotonic())
            log.error(self.last_error)
            return False
        # First-query costs are paid before the swap: the segments' files into the page
        # cache (memory-mapped indexes would otherwise fault in per query), then one query.
        from resources.segments import read_into_page_cache

        t0 = time.perf_counter()
        try:
            warmed = read_into_page_cache(searcher.version.path, searcher.version.info)
        except OSError as exc:  # best effort: the loaded version serves either way
            log.warning(f"KB version {serving.version}: page cache not warmed: {exc}")
            warmed = 0
        warm_s = time.perf_counter() - t0
        self._search(searcher, "warm up", 1)
        self.current = Loaded(serving.version, serving.source, searcher, time.time())
        self._seen, self.last_error = seen, None
        self.metrics.swaps += 1
        log.warning(f"now serving KB version {serving.version} ({serving.source}; "
                    f"{warmed / 2**20:.1f} MB of segments read into the page cache in "
                    f"{warm_s:.1f} s)")
        return True

    def pull(self) -> None:
        """Follow the shared storage once every remote_poll_s; when it is unreachable, keep
        serving what is loaded (the error is on /healthz and /version)."""
        if self.remote is None or time.monotonic() < self._next_pull:
            return
        self._next_pull = time.monotonic() + self.remote_poll_s
        try:
            self.remote.sync_down(self.paths.home)
        except Exception as exc:  # RemoteStoreError, a full disk: never stop serving
            if str(exc) != self.remote_error:
                log.error(f"shared storage: {exc}; still serving what is loaded")
            self.remote_error = str(exc)
            return
        if self.remote_error:
            log.warning(f"shared storage {self.remote.url} reachable again")
        self.remote_error = None

    def _version_dirs(self) -> list[int]:
        from resources.vector_index import VersionStore

        return VersionStore(root=str(self.paths.versions)).numbers()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.pull()
                self.refresh()
            except Exception as exc:  # never let the watcher die
                log.exception(f"watcher: {exc}")

    def _encode_loop(self) -> None:
        while True:
            item = self._queries.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queries.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queries.put(None)
                    break
                batch.append(nxt)
            try:
                vecs = self.embedder.encode([q for q, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), vec in zip(batch, vecs):
                fut.set_result(vec)

    def encode(self, q: str):
        fut: Future = Future()
        self._queries.put((q, fut))
        return fut.result(timeout=60)

    def start(self) -> None:
        if self.embedder.active_backend == "torch":  # ONNX has its own thread setting
            import torch  # 2-4 s: only when torch encodes

            # One torch thread: with two, on a busy 2-core machine a short query's encode
            # burnt ~15x the CPU (OpenMP spinning); batching recovers the throughput instead.
            torch.set_num_threads(1)
        self.embedder.model()  # load the embedder before the first request
        threading.Thread(target=self._encode_loop, name="kb-encoder", daemon=True).start()
        self.pull()
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="kb-pointer-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queries.put(None)

    def _search(self, searcher, q: str, k: int):
        from kb_assets.retrieval import hybrid_search

        from kb_assets.untrusted import mark_untrusted

        return mark_untrusted(hybrid_search(searcher.version, q, self.encode(q), k,
                                            searcher.config))

    def search(self, q: str, k: int):
        loaded = self.current  # one read: a swap mid-request does not affect this request
        if loaded is None:
            return None, []
        return loaded, self._search(loaded.searcher, q, k)


def create_app(paths: Paths | None = None, poll_s: float = 0.5):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Query, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    paths = paths or Paths.from_env()
    state = ServingState(paths, poll_s=poll_s)

    @asynccontextmanager
    async def lifespan(app):
        state.start()
        yield
        state.stop()

    app = FastAPI(title="kb search API", lifespan=lifespan)
    app.state.serving = state

    @app.middleware("http")
    async def count(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:
            state.metrics.request(request.url.path, 500)
            log.exception("request failed")
            return JSONResponse({"error": "internal error"}, status_code=500)
        state.metrics.request(request.url.path, response.status_code)
        return response

    @app.get("/search")
    def search(q: str = Query(..., min_length=1, max_length=2000),
               k: int = Query(5, ge=1, le=50)):
        if not q.strip():
            return JSONResponse({"error": "the query is empty"}, status_code=422)
        t0 = time.perf_counter()
        loaded, hits = state.search(q, k)
        if loaded is None:
            return JSONResponse({"error": "no KB version to serve: run `kb build`"},
                                status_code=503)
        took = time.perf_counter() - t0
        state.metrics.search(took, not hits)
        return {"version": loaded.version, "source": loaded.source, "query": q,
                "zero_hit": not hits, "took_ms": round(took * 1000, 2),
                "hits": [{"rank": h.rank, "score": h.score, "doc_id": h.doc_id,
                          "source": h.source, "title": h.title, "text": h.text,
                          "untrusted": h.untrusted}
                         for h in hits]}

    @app.get("/healthz")
    def healthz():
        cur = state.current
        if cur is None:
            return JSONResponse({"status": "no KB version loaded", "error": state.last_error},
                                status_code=503)
        return {"status": "ok", "version": cur.version, "error": state.last_error,
                "remote_error": state.remote_error}

    @app.get("/version")
    def version():
        cur = state.current
        return {"version": cur.version if cur else None, "source": cur.source if cur else None,
                "loaded_at": cur.loaded_at if cur else None,
                "wanted": resolve(paths).version, "error": state.last_error,
                "remote": state.remote.url if state.remote else None,
                "remote_error": state.remote_error}

    @app.get("/metrics")
    def metrics():
        cur = state.current
        return PlainTextResponse(state.metrics.render(cur.version if cur else None),
                                 media_type="text/plain; version=0.0.4")

    return app

