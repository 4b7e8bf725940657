"""A loaded KB version plus the embedder: what `kb search`, `kb eval` and `kb serve` query."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss

from kb_core.paths import Paths
from resources.embedder import Embedder
from resources.vector_index import KBVersion, VersionStore

from .retrieval import Hit, RetrievalConfig, hybrid_search
from .untrusted import mark_untrusted

# One thread per query: with two, a single FAISS query was 3-4x slower on a busy 2-core box.
faiss.omp_set_num_threads(1)


@dataclass
class Searcher:
    version: KBVersion
    embedder: Embedder
    config: RetrievalConfig = field(default_factory=RetrievalConfig)

    @classmethod
    def open(cls, paths: Paths, number: int, embedder: Embedder | None = None) -> "Searcher":
        version = VersionStore(root=str(paths.versions)).load(number)
        embedder = embedder or Embedder()
        if version.info.get("embedding_model") != embedder.model_id:
            raise FileNotFoundError(
                f"KB version {number} was built with {version.info.get('embedding_model')}, "
                f"but the configured embedder is {embedder.model_id}")
        return cls(version, embedder)

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        return mark_untrusted(hybrid_search(self.version, query,
                                            self.embedder.encode_query(query), k, self.config,
                                            mode))

    def search_batch(self, queries: list[str], k: int = 10, mode: str = "hybrid") -> list[list[Hit]]:
        """Embed all queries in one batch (evaluation of 1,000 questions = one model load)."""
        vecs = self.embedder.encode(queries)
        return [mark_untrusted(hybrid_search(self.version, q, v, k, self.config, mode))
                for q, v in zip(queries, vecs)]
