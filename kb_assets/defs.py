"""The knowledge-base assets this area exports to the root Definitions, with their operator
pages (code versions, owners, tags, freshness, table schemas: kb_assets/asset_pages.py)."""

from .asset_pages import inbox_asset, with_freshness, with_pages
from .chunks import cleaned_chunks
from .embed import embeddings
from .index import faiss_index
from .ingest import raw_docs
from .release import RELEASE_ASSETS
from .ft_release import FT_ASSETS

KB_ASSETS = with_pages([raw_docs, cleaned_chunks, embeddings, faiss_index, *RELEASE_ASSETS,
                        *FT_ASSETS])
INBOX_ASSET = inbox_asset()  # external: the folder raw_docs reads

__all__ = ["KB_ASSETS", "INBOX_ASSET", "inbox_asset", "with_freshness"]
