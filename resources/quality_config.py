"""Every data-quality threshold in one place, as a Dagster resource (key `quality`).

Override any field for one `kb build` with an environment variable KB_QUALITY_<FIELD>
(e.g. `KB_QUALITY_MAX_CHUNK_DRIFT=0.4`), or accept an intended chunking change with
`KB_ACCEPT_DRIFT=1`: the drift check then passes once, and the next run compares against
the version that run publishes."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

from kb_core import settings
from kb_core.settings import SettingError

ENV_PREFIX = settings.QUALITY_PREFIX
ACCEPT_DRIFT_ENV = "KB_ACCEPT_DRIFT"
ACCEPT_SHRINK_ENV = "KB_ACCEPT_SHRINK"
_SHORT_ENV = {"accept_drift": ACCEPT_DRIFT_ENV, "accept_shrink": ACCEPT_SHRINK_ENV}


class QualityThresholds(ConfigurableResource):
    """Thresholds of the data-quality gates; each field says why it has its default."""

    # --- raw_docs: the batch = documents not in the published KB + their quarantine rows
    min_batch_records: int = Field(
        20, description="Ratios of smaller batches are reported, not enforced: one bad file "
                        "among five is noise, not a broken export.")
    min_offending_records: int = Field(
        5, description="A ratio gate blocks only when at least this many records offend: a "
                       "few bad files are quarantined and never keep good documents out.")
    min_non_empty_text_ratio: float = Field(
        0.5, description="Most of a batch without text means the export lost a column (a "
                         "broken feed), not that some documents are short or bad.")
    max_duplicate_ratio: float = Field(
        0.02, description="Copies are indexed once and listed (warning only): real FAQ, "
                          "policy and wiki collections always hold some.")
    max_quarantine_ratio: float = Field(
        0.5, description="Quarantine absorbs bad files; most of a batch unreadable means the "
                         "source itself is broken.")
    max_shrink_ratio: float = Field(
        0.5, description="Losing more than half of the published KB's documents in one run "
                         "looks like a truncated export, not an edit: blocked unless accepted "
                         "(KB_ACCEPT_SHRINK=1).")
    accept_shrink: bool = Field(
        False, description="Set (KB_ACCEPT_SHRINK=1) for one run to accept an intended large "
                           "removal.")
    min_doc_chars: int = Field(
        20, description="A document shorter than a sentence is usually a stub or a parsing "
                        "leftover (warning only).")
    max_doc_chars: int = Field(
        5_000_000, description="Beyond ~5 MB of text a 'document' is usually a dump or a log "
                               "(warning only).")
    # --- cleaned_chunks
    min_chunk_tokens: int = Field(
        1, description="A chunk with no token cannot be retrieved; short tails are normal.")
    max_chunk_tokens: int = Field(
        0, description="0 means the configured chunk_size: a longer chunk means the chunker "
                       "is broken.")
    max_chunk_drift: float = Field(
        0.25, description="Mean/median chunk length or chunks per document moving more than "
                          "25% vs the published version means the chunker changed; recall "
                          "follows chunk length.")
    drift_min_docs: int = Field(
        3, description="Drift is measured on documents whose content is unchanged since the "
                       "published version (new content is not a chunker change); with fewer, "
                       "it is not judged (the all-documents shift still warns).")
    accept_drift: bool = Field(
        False, description="Set (KB_ACCEPT_DRIFT=1) for one run to accept an intended "
                           "chunking change; the next run compares against the new version.")
    allow_pii: bool = Field(
        False, description="PII left after masking is a compliance incident; allow only for a "
                           "KB that is meant to hold personal data.")
    # --- embeddings
    unit_norm_tolerance: float = Field(
        1e-3, description="The index uses inner product as cosine: vectors must be unit "
                          "length; float32 rounding stays well below 1e-3.")
    min_centroid_cosine: float = Field(
        0.80, description="A new batch whose mean vector points elsewhere (other language, "
                          "other domain, broken text) is worth a look (warning only; small "
                          "batches are judged against same-size samples of the KB).")
    # --- faiss_index
    smoke_query_k: int = Field(
        5, description="Hits requested by the smoke query against the published version.")
    # --- reporting
    offending_rows: int = Field(
        5, description="Offending rows shown per failed expectation: enough to see the "
                       "pattern, short enough for the UI.")

    def chunk_token_max(self, chunk_size: int) -> int:
        return self.max_chunk_tokens or chunk_size

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "QualityThresholds":
        """Defaults, overridden by KB_QUALITY_<FIELD> and KB_ACCEPT_DRIFT variables."""
        env = os.environ if environ is None else environ
        values: dict = {}
        for name, info in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if name in _SHORT_ENV and raw is None:
                raw = env.get(_SHORT_ENV[name])
            if raw is not None and raw.strip():
                var = _SHORT_ENV.get(name, ENV_PREFIX + name.upper())
                try:
                    values[name] = settings.parse(var, raw, info.annotation, minimum=0)
                except SettingError as exc:
                    raise ThresholdError(str(exc)) from None
        return cls(**values)

    @classmethod
    def documentation(cls) -> list[tuple[str, object, str]]:
        """(name, default, why) for the README table."""
        return [(n, f.default, f.description or "") for n, f in cls.model_fields.items()]


class ThresholdError(SettingError):
    """A bad KB_QUALITY_* / KB_ACCEPT_DRIFT value: `kb` prints it as one line (exit 2)."""
