"""An Embedder that counts the KB passages it encodes, so a test can prove that only uncached
chunks were embedded. Dagster may re-instantiate resources: the count is module-level."""

from __future__ import annotations

from resources.embedder import Embedder

ENCODED_TEXTS: dict[str, int] = {}


class CountingEmbedder(Embedder):
    def encode(self, texts: list[str]):
        if texts:
            ENCODED_TEXTS[self.model_id] = ENCODED_TEXTS.get(self.model_id, 0) + len(texts)
        return super().encode(texts)
