"""The knowledge-base quality gates, one multi-asset check per asset: each runs as one step
after its asset, evaluates several checks on the same data, and blocks every downstream
asset when a blocking (ERROR) check fails."""

from .chunk_checks import cleaned_chunks_quality
from .embedding_checks import embeddings_quality
from .index_checks import faiss_index_quality
from .raw_docs_checks import raw_docs_quality

KB_CHECKS = [raw_docs_quality, cleaned_chunks_quality, embeddings_quality, faiss_index_quality]
