"""The knowledge-base assets this area exports to the root Definitions."""

from .chunks import cleaned_chunks
from .embed import embeddings
from .index import faiss_index
from .ingest import raw_docs
from .release import RELEASE_ASSETS
from .ft_release import FT_ASSETS

KB_ASSETS = [raw_docs, cleaned_chunks, embeddings, faiss_index, *RELEASE_ASSETS, *FT_ASSETS]
