"""Gates on cleaned_chunks: unique ids, no empty chunk, lengths within the chunker's bounds,
no drift of the chunking against the published KB version, no PII left after masking.

cleaned_chunks rewrites its DuckDB rows before these checks run; that is fine because search
reads immutable version directories: a blocked run publishes nothing and the previous
version keeps serving."""


from dataclasses import replace

import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckSpec, multi_asset_check

from kb_core.writer_lock import KB_WRITER_POOL
from resources.config import KBConfig
from resources.embedder import Embedder
from resources.store import KBStore

from . import state
from .gx_suites import Expect, validate
from .metrics import DriftReport, chunk_drift, pii_frame
from .outcome import CheckDef, CheckOutcome, guarded, record
from resources.quality_config import QualityThresholds

ASSET = "cleaned_chunks"
UNIQUE = CheckDef(ASSET, "chunks_unique_ids", True,
                  "chunk_id is unique, and so is (doc_key, ordinal).")
NOT_EMPTY = CheckDef(ASSET, "chunks_not_empty", True, "No chunk is empty or token-less.")
BOUNDS = CheckDef(ASSET, "chunks_token_bounds", True,
                  "Every chunk has between min_chunk_tokens and the chunk size (or "
                  "max_chunk_tokens) tokens, and every new chunk, re-tokenized by the "
                  "embedder's own tokenizer, fits in what the model reads (no truncation).")
DRIFT = CheckDef(ASSET, "chunking_drift", True,
                 "Mean/median chunk length and chunks per document move at most max_chunk_drift "
                 "vs the published version (on documents whose content is unchanged).")
PII = CheckDef(ASSET, "chunks_pii_free", True,
               "No email, phone, card or national-ID pattern is left in new chunks after masking.")
SHIFT = CheckDef(ASSET, "chunk_distribution_shift", False,
                 "Chunk length and chunks per document over ALL documents vs the published "
                 "version (warning: new content may legitimately differ).")
CHECKS = [UNIQUE, NOT_EMPTY, BOUNDS, DRIFT, PII, SHIFT]
DRIFT_METRICS = ("mean_tokens", "median_tokens", "chunks_per_doc")


def evaluate(chunks: pd.DataFrame, members: pd.DataFrame, new_texts: pd.DataFrame,
             q: QualityThresholds, chunk_size: int, mask_pii: bool,
             base_label: str, chunker_versions: list[str] | None = None,
             tokenizer=None, base_tokenizer: str | None = None,
             unit: str | None = None) -> list[CheckOutcome]:
    """`chunks`: state.candidate_chunks(); `members`: state.baseline_members();
    `new_texts`: state.new_chunk_texts(); `tokenizer`: the embedder's (token_units), whose
    count of each new chunk's text must fit the model; `base_tokenizer`: the token unit of
    the baseline version's chunker, `unit` the current one's (token counts in two different
    units are not compared)."""
    rows = max(1, q.offending_rows)
    ids = ["chunk_id", "doc_id"]
    scope = {"active_chunks": len(chunks), "baseline": base_label}
    out = []
    if chunks.empty:
        msg = "no active chunks (the inbox holds no valid documents): nothing to check"
        out += [CheckOutcome(c, True, msg, dict(scope)) for c in (UNIQUE, NOT_EMPTY, BOUNDS)]
    else:
        hi = q.chunk_token_max(chunk_size)
        limit = getattr(tokenizer, "max_tokens", None)
        frame = chunks[["chunk_id", "doc_id", "ordinal", "n_tokens", "text_chars"]].assign(
            repeated_position=chunks.duplicated(["doc_key", "ordinal"], keep=False),
            model_tokens=model_token_counts(chunks, new_texts, tokenizer))
        # One GX validation for the three checks (each validation hashes the whole frame).
        suite = validate("chunks", frame, [
            Expect("unique", "chunk_id", label="chunk id unique"),
            Expect("in_set", "repeated_position", {"value_set": [False]},
                   "one chunk per (document, position)"),
            Expect("between", "text_chars", {"min_value": 1}, "chunk has text"),
            Expect("between", "n_tokens", {"min_value": 1}, "chunk has a token"),
            Expect("between", "n_tokens", {"min_value": q.min_chunk_tokens, "max_value": hi},
                   "tokens per chunk"),
            Expect("between", "model_tokens", {"max_value": limit or 10**9},
                   "embedder tokens per chunk (recounted)")], ids + ["ordinal", "n_tokens"], rows)
        unique, not_empty, bounds = (suite.part(0, 2), suite.part(2, 4), suite.part(4, 6))
        out.append(CheckOutcome(UNIQUE, unique.success, _line(
            unique, f"all {len(chunks)} chunk ids are unique", "duplicated"), dict(scope), unique))
        out.append(CheckOutcome(NOT_EMPTY, not_empty.success, _line(
            not_empty, f"none of the {len(chunks)} chunks is empty", "empty"), dict(scope),
            not_empty))
        out.append(CheckOutcome(BOUNDS, bounds.success, _line(
            bounds, f"all {len(chunks)} chunks have {q.min_chunk_tokens}..{hi} tokens",
            f"outside {q.min_chunk_tokens}..{hi} tokens"),
            dict(scope, min_tokens=int(chunks["n_tokens"].min()),
                 max_tokens=int(chunks["n_tokens"].max()), bound_max=hi,
                 token_unit=getattr(tokenizer, "name", "chunker's own"),
                 model_max_tokens=limit if limit is not None else "n/a",
                 new_chunks_recounted=len(new_texts) if tokenizer is not None else 0,
                 max_recounted_tokens=int(frame["model_tokens"].max())), bounds))

    now_unit = unit or getattr(tokenizer, "name", None)
    unit_change = (base_tokenizer, now_unit) if (
        base_tokenizer and now_unit and base_tokenizer != now_unit) else None
    drift = _drift(DRIFT, chunk_drift(chunks, members, max(1, q.drift_min_docs)), chunks,
                   q, base_label, rows, unit_change=unit_change)
    if chunker_versions:
        drift.values["chunker_versions_now"] = ", ".join(chunker_versions)[:300]
    out.append(drift)
    out.append(_drift(SHIFT, chunk_drift(chunks, members, None), chunks, q, base_label, rows,
                      use_gx=False, unit_change=unit_change))
    out.append(_pii(new_texts, q, mask_pii, base_label, rows))
    return out


def model_token_counts(chunks: pd.DataFrame, new_texts: pd.DataFrame, tokenizer) -> list[int]:
    """Per chunk: the embedder's count of its text for chunks new since the baseline (one
    batched fast-tokenizer call), the stored count for the others (published ones were
    checked when they were new). Without a tokenizer: the stored count."""
    counts = dict(zip(chunks["chunk_id"].tolist(), chunks["n_tokens"].tolist()))
    if tokenizer is not None and not new_texts.empty:
        texts = [t or "" for t in new_texts["text"].tolist()]
        counts.update(zip(new_texts["chunk_id"].tolist(), tokenizer.count(texts)))
    return [int(counts[c]) for c in chunks["chunk_id"].tolist()]


def _line(suite, ok: str, what: str) -> str:
    if suite.success:
        return ok
    f = suite.failed[0]
    return (f"{f.unexpected_count} of {f.element_count} chunks {what} "
            f"(expected {f.expect.describe_expected()})")


def _drift(check: CheckDef, report: DriftReport, chunks: pd.DataFrame, q: QualityThresholds,
           base_label: str, rows: int, use_gx: bool = True,
           unit_change: tuple[str, str] | None = None) -> CheckOutcome:
    values = {"baseline": base_label, "population": report.population,
              "max_chunk_drift": q.max_chunk_drift}
    note = ""
    if unit_change:
        # Token counts in two different units say nothing about each other: only chunks per
        # document is compared (a tokenizer upgrade re-chunks every document once).
        values["token_unit_changed"] = f"{unit_change[0]} -> {unit_change[1]}"
        note = (f"; token unit changed ({unit_change[0]} -> {unit_change[1]}): chunk lengths "
                "not compared, chunks per document only")
        report = replace(report, changes={k: v for k, v in report.changes.items()
                                          if k == "chunks_per_doc"})
    for m in DRIFT_METRICS:
        values[f"previous_{m}"] = round(getattr(report.old, m), 3)
        values[f"current_{m}"] = round(getattr(report.new, m), 3)
    if not report.changes:
        if base_label.startswith("no published"):
            why = "no published version to compare against"
        elif report.doc_keys is not None:
            why = (f"too few documents unchanged since {base_label} to judge chunking drift "
                   f"({len(report.doc_keys)} < drift_min_docs={q.drift_min_docs}); "
                   f"see chunk_distribution_shift")
        else:
            why = f"nothing to compare (active chunks: {report.new.chunks}, "
            why += f"{base_label}: {report.old.chunks})"
        return CheckOutcome(check, True, why, values)
    for m, change in report.changes.items():
        values[f"change_{m}"] = round(change, 4) if change != float("inf") else "inf"
    metric, worst = report.worst()
    summary = (f"{metric} moved {worst:.0%} vs {base_label} "
               f"({getattr(report.old, metric):.1f} -> {getattr(report.new, metric):.1f}; "
               f"max {q.max_chunk_drift:.0%}) on {report.population}{note}")
    if not use_gx:  # the soft signal: plain numbers are enough
        return CheckOutcome(check, worst <= q.max_chunk_drift, summary, values)
    # GX judges the current distribution against the window the baseline allows.
    pop = chunks if report.doc_keys is None else chunks[chunks["doc_key"].isin(report.doc_keys)]
    lo, hi = 1 - q.max_chunk_drift, 1 + q.max_chunk_drift
    per_doc = pop.groupby("doc_key", as_index=False).size().rename(columns={"size": "n_chunks"})
    old = report.old
    suite_tokens = validate(f"{check.name}_tokens", pop, [] if unit_change else [
        Expect("mean_between", "n_tokens", {"min_value": old.mean_tokens * lo,
                                            "max_value": old.mean_tokens * hi}, "mean chunk length"),
        Expect("median_between", "n_tokens", {"min_value": old.median_tokens * lo,
                                              "max_value": old.median_tokens * hi},
               "median chunk length")], ["chunk_id"], rows)
    suite_docs = validate(f"{check.name}_docs", per_doc, [Expect(
        "mean_between", "n_chunks", {"min_value": old.chunks_per_doc * lo,
                                     "max_value": old.chunks_per_doc * hi}, "chunks per document")],
        ["doc_key"], rows)
    suite_tokens.outcomes += suite_docs.outcomes
    suite_tokens.seconds += suite_docs.seconds
    if suite_tokens.success:
        return CheckOutcome(check, True, summary, values, suite_tokens)
    if check.blocking and q.accept_drift:
        values["accepted"] = True
        return CheckOutcome(check, True, summary + "; ACCEPTED (accept_drift / KB_ACCEPT_DRIFT=1)",
                            values, suite_tokens)
    hint = ("; revert the chunker settings, or re-run with KB_ACCEPT_DRIFT=1 to accept the change"
            if check.blocking else "")
    return CheckOutcome(check, False, summary + hint, values, suite_tokens)


def _pii(new_texts: pd.DataFrame, q: QualityThresholds, mask_pii: bool, base_label: str,
         rows: int) -> CheckOutcome:
    values = {"chunks_scanned": len(new_texts), "scope": f"chunks new since {base_label}",
              "masking_enabled": mask_pii}
    if new_texts.empty:
        return CheckOutcome(PII, True, f"no new chunk text since {base_label}: nothing to scan",
                            values)
    frame = pii_frame(new_texts)
    suite = validate("chunks_pii", frame, [Expect(
        "between", "pii_count", {"min_value": 0, "max_value": 0}, "no PII pattern left")],
        ["chunk_id", "doc_id", "pii_kinds", "example"], rows)
    hits = frame[frame["pii_count"] > 0]
    values.update(chunks_with_pii=len(hits), pii_matches=int(frame["pii_count"].sum()))
    if hits.empty:
        return CheckOutcome(PII, True, f"no PII pattern in {len(frame)} new chunks", values, suite)
    kinds = sorted({k for ks in hits["pii_kinds"] for k in ks.split(",")})
    msg = (f"{len(hits)} of {len(frame)} new chunks still contain PII ({', '.join(kinds)})"
           + ("" if mask_pii else "; kb_config.mask_pii is off"))
    if q.allow_pii:
        return CheckOutcome(PII, True, msg + "; allowed by allow_pii", values, suite)
    return CheckOutcome(PII, False, msg, values, suite)


def collect(store: KBStore, q: QualityThresholds, cfg: KBConfig,
            embedder: Embedder) -> list[CheckOutcome]:
    with store.connect() as con:
        base = state.baseline(con)
        chunks = state.candidate_chunks(con)
        members = state.baseline_members(con, base)
        new_texts = state.new_chunk_texts(con, base)
        versions = state.chunker_versions(con)
    base_unit = (base.chunker or {}).get("tokenizer") if base.exists else None
    unit = cfg.chunker(cfg.chunk_tokenizer(embedder)).tokenizer
    return evaluate(chunks, members, new_texts, q, cfg.chunk_size, cfg.mask_pii, base.label(),
                    versions, embedder.tokenizer(), base_unit, unit)


@multi_asset_check(
    pool=KB_WRITER_POOL,
    specs=[AssetCheckSpec(c.name, asset=c.asset, blocking=c.blocking, description=c.description)
           for c in CHECKS],
    name="cleaned_chunks_quality",
    description="Great Expectations gates on chunk ids, emptiness, length bounds, chunking "
                "drift vs the published KB, and PII left after masking.",
)
def cleaned_chunks_quality(context: AssetCheckExecutionContext, store: KBStore,
                           quality: QualityThresholds, kb_config: KBConfig, embedder: Embedder):
    outcomes = guarded(CHECKS, lambda: collect(store, quality, kb_config, embedder), context.log)
    record(store, context.run.run_id, outcomes, log=context.log)
    for o in outcomes:
        yield o.to_result()
