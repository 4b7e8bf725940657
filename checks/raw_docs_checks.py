"""Gates on raw_docs: is the batch (documents not yet in the published KB, plus the
quarantine rows raised since) whole, unique and sane before anything is chunked?"""


import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckSpec, multi_asset_check

from kb_core.writer_lock import KB_WRITER_POOL
from resources.store import KBStore

from . import state
from .gx_suites import Expect, validate
from .metrics import is_empty_text_reason, ratio, ratio_gate
from .outcome import CheckDef, CheckOutcome, guarded, record
from resources.quality_config import QualityThresholds

ASSET = "raw_docs"
REQUIRED = CheckDef(ASSET, "raw_docs_required_fields", True,
                    "Every document of the batch has doc_id, doc_key, source path, content hash "
                    "and text.")
NON_EMPTY = CheckDef(ASSET, "raw_docs_non_empty_text", True,
                     "Share of batch records with text (quarantined empty/missing-text records "
                     "count against it) is at least min_non_empty_text_ratio.")
DUPLICATES = CheckDef(ASSET, "raw_docs_duplicate_content", False,
                      "Batch documents whose content duplicates another active document are "
                      "indexed once and listed (warning above max_duplicate_ratio).")
QUARANTINE = CheckDef(ASSET, "raw_docs_quarantine_ratio", True,
                      "Share of batch records that were quarantined is at most "
                      "max_quarantine_ratio (a broken feed, not a few bad files).")
SHRINK = CheckDef(ASSET, "raw_docs_kb_shrink", True,
                  "The KB keeps at least 1 - max_shrink_ratio of the published version's "
                  "documents (a truncated export would lose most of them), unless accepted.")
LENGTH = CheckDef(ASSET, "raw_docs_length_bounds", False,
                  "Document lengths lie within [min_doc_chars, max_doc_chars] (warning).")
CHECKS = [REQUIRED, NON_EMPTY, DUPLICATES, QUARANTINE, SHRINK, LENGTH]
REQUIRED_FIELDS = ["doc_id", "doc_key", "source_path", "content_hash", "text"]


def _where_docs(docs: pd.DataFrame) -> pd.Series:
    """file:line for JSONL documents, the file alone otherwise."""
    line = docs["line"].astype("Int64").astype("string")
    return (docs["source_path"] + (":" + line).fillna("")).astype(object)


def _where(row) -> str:
    line = row.get("line")
    return f"{row['source_path']}:{int(line)}" if line is not None and not pd.isna(line) else row["source_path"]


def shrink_outcome(published: int, lost: pd.DataFrame, active_docs: int, q: QualityThresholds,
                   base_label: str) -> CheckOutcome:
    n_lost = int(lost["lost"].sum()) if len(lost) else 0
    share = ratio(n_lost, published)
    values = {"published_documents": published, "documents_lost": n_lost,
              "active_documents": active_docs, "shrink_ratio": round(share, 4),
              "threshold": q.max_shrink_ratio, "accepted": q.accept_shrink}
    rows = [{"source_path": r["source_path"], "documents_lost": int(r["lost"]),
             "e.g.": r["example_doc"]} for r in lost.head(q.offending_rows).to_dict("records")]
    if published == 0:
        return CheckOutcome(SHRINK, True, f"no published version to compare against", values)
    found = f"{n_lost} of the {published} documents of {base_label} are gone ({share:.0%})"
    if share <= q.max_shrink_ratio or n_lost < q.min_offending_records:
        return CheckOutcome(SHRINK, True, f"{found} (max {q.max_shrink_ratio:.0%})", values)
    if q.accept_shrink:
        return CheckOutcome(SHRINK, True, f"{found}: accepted (KB_ACCEPT_SHRINK=1)", values, rows=rows)
    top = ", ".join(f"{r['source_path']} (-{r['documents_lost']})" for r in rows[:3])
    return CheckOutcome(SHRINK, False, (
        f"{found}, max {q.max_shrink_ratio:.0%}: most lost from {top}. A truncated or partial "
        "export? Restore the files; if the removal is intended, run once with "
        "KB_ACCEPT_SHRINK=1 kb build"), values, rows=rows)


def evaluate(docs: pd.DataFrame, quarantine: pd.DataFrame, q: QualityThresholds,
             base_label: str, active_docs: int, published: int = 0,
             lost: pd.DataFrame | None = None) -> list[CheckOutcome]:
    """Judge one batch. `docs`: state.batch_docs(); `quarantine`: state.batch_quarantine();
    `published`, `lost`: state.lost_documents()."""
    n_docs, n_quar = len(docs), len(quarantine)
    n_records = n_docs + n_quar
    scope = {"batch_documents": n_docs, "batch_quarantined": n_quar, "batch_records": n_records,
             "active_documents": active_docs, "baseline": base_label}
    lost = lost if lost is not None else pd.DataFrame({"source_path": [], "lost": [],
                                                       "example_doc": []})
    shrink = shrink_outcome(published, lost, active_docs, q, base_label)
    if n_records == 0:
        msg = (f"the inbox holds no valid documents (0 active): an empty KB, nothing to check"
               if active_docs == 0 else
               f"no new or changed documents since {base_label}: nothing to check")
        return [shrink if c is SHRINK else CheckOutcome(c, True, msg, dict(scope))
                for c in CHECKS]
    rows = max(1, q.offending_rows)
    out = []

    # Required fields: strict, every document. Ratio-free: a missing id or hash is a bug.
    suite = validate("raw_docs_required", docs, [
        Expect("not_null", f, label=f"{f} present") for f in REQUIRED_FIELDS],
        ["doc_id", "source_path"], rows)
    bad = suite.failed
    out.append(CheckOutcome(
        REQUIRED, suite.success,
        f"all {n_docs} batch documents have {', '.join(REQUIRED_FIELDS)}" if suite.success else
        f"{bad[0].unexpected_count} of {n_docs} batch documents lack '{bad[0].expect.column}'",
        dict(scope), suite))

    # Every record of the batch: its documents and its quarantined items. A quarantined
    # item counts as "without text" when that is why it was quarantined.
    records = pd.concat([
        pd.DataFrame({"where": _where_docs(docs), "reason": None, "text": docs["text"],
                      "quarantined": False}),
        pd.DataFrame({"where": [_where(r) for r in quarantine.to_dict("records")],
                      "reason": quarantine["reason"],
                      "text": [None if is_empty_text_reason(r) else "(quarantined)"
                               for r in quarantine["reason"]],
                      "quarantined": True}),
    ], ignore_index=True)
    records["quarantined"] = records["quarantined"].astype(bool)
    suite = validate("raw_docs_records", records, [
        Expect("not_null", "text", {"mostly": q.min_non_empty_text_ratio}, "record has text"),
        Expect("in_set", "quarantined", {"value_set": [False], "mostly": 1 - q.max_quarantine_ratio},
               "record not quarantined")], ["where", "reason"], rows)
    text_suite, quarantine_suite = suite.part(0, 1), suite.part(1, 2)

    n_empty = int(records["text"].isna().sum())
    verdict = ratio_gate(n_empty, n_records, q.min_non_empty_text_ratio, upper=False,
                         min_records=q.min_batch_records, min_offending=q.min_offending_records)
    share = 1 - ratio(n_empty, n_records)
    empty_where = ", ".join(records.loc[records["text"].isna(), "where"].head(3).astype(str))
    out.append(CheckOutcome(
        NON_EMPTY, verdict != "fail", _ratio_line(
            verdict, f"{share:.1%} of {n_records} batch records have text",
            f"min {q.min_non_empty_text_ratio:.0%}", f"{n_empty} without text", q)
        + (f" (e.g. {empty_where}). Did the export lose its text column? Fix the source, or "
           "lower KB_QUALITY_MIN_NON_EMPTY_TEXT_RATIO for one run" if verdict == "fail" else ""),
        dict(scope, non_empty_ratio=round(share, 4), records_without_text=n_empty,
             threshold=q.min_non_empty_text_ratio, verdict=verdict), text_suite))

    # Duplicate content.
    n_dup = int(docs["is_duplicate"].sum())
    verdict = ratio_gate(n_dup, n_docs, q.max_duplicate_ratio, upper=True,
                         min_records=q.min_batch_records, min_offending=q.min_offending_records)
    frame = docs[["doc_id", "duplicate_of", "is_duplicate"]].copy()
    frame["is_duplicate"] = frame["is_duplicate"].astype(bool)
    suite = validate("raw_docs_duplicates", frame, [Expect(
        "in_set", "is_duplicate", {"value_set": [False], "mostly": 1 - q.max_duplicate_ratio},
        "content not already in the KB")], ["doc_id", "duplicate_of"], rows)
    dup_line = (f"{n_dup} of {n_docs} batch documents ({ratio(n_dup, n_docs):.1%}) duplicate "
                f"another document's content: each content is indexed once, every id stays "
                f"resolvable" if n_dup else f"no batch document duplicates another's content")
    out.append(CheckOutcome(
        DUPLICATES, verdict != "fail",
        dup_line + ("" if verdict != "fail" else
                    f" (above {q.max_duplicate_ratio:.0%}: a re-export or a copy loop? "
                    "remove the copies from the inbox if they are unintended)"),
        dict(scope, duplicate_ratio=round(ratio(n_dup, n_docs), 4), duplicates=n_dup,
             threshold=q.max_duplicate_ratio, verdict=verdict), suite))

    # Quarantine share of the batch.
    verdict = ratio_gate(n_quar, n_records, q.max_quarantine_ratio, upper=True,
                         min_records=q.min_batch_records, min_offending=q.min_offending_records)
    reasons = (quarantine["reason"].str.replace(r"\(.*", "", regex=True).value_counts()
               if n_quar else None)
    top = "; top reason: " + str(reasons.index[0]).strip() if reasons is not None else ""
    out.append(CheckOutcome(
        QUARANTINE, verdict != "fail", _ratio_line(
            verdict, f"{ratio(n_quar, n_records):.1%} of {n_records} batch records "
            f"were quarantined", f"max {q.max_quarantine_ratio:.0%}", f"{n_quar} quarantined", q)
        + (top + ". Is the export broken? Fix the files listed in the quarantine (kb audit "
           "doc PATH shows why), or raise KB_QUALITY_MAX_QUARANTINE_RATIO for one run"
           if verdict == "fail" else ""),
        dict(scope, quarantine_ratio=round(ratio(n_quar, n_records), 4), quarantined=n_quar,
             threshold=q.max_quarantine_ratio, verdict=verdict), quarantine_suite))

    out.append(shrink)

    # Document length (warning).
    suite = validate("raw_docs_length", docs[["doc_id", "n_chars"]], [Expect(
        "between", "n_chars", {"min_value": q.min_doc_chars, "max_value": q.max_doc_chars},
        "document length in characters")], ["doc_id"], rows)
    n_out = suite.outcomes[0].unexpected_count or 0
    out.append(CheckOutcome(
        LENGTH, suite.success,
        f"all {n_docs} batch documents are {q.min_doc_chars}..{q.max_doc_chars} characters long"
        if suite.success else f"{n_out} of {n_docs} batch documents are outside "
        f"{q.min_doc_chars}..{q.max_doc_chars} characters",
        dict(scope, min_chars=int(docs["n_chars"].min()) if n_docs else 0,
             max_chars=int(docs["n_chars"].max()) if n_docs else 0), suite))
    return out


def _ratio_line(verdict: str, found: str, limit: str, count: str, q: QualityThresholds) -> str:
    if verdict == "small_batch":
        return (f"{found} ({limit}); tolerated: batch smaller than "
                f"min_batch_records={q.min_batch_records}")
    if verdict == "few_offenders":
        return (f"{found} ({limit}); tolerated: fewer than "
                f"min_offending_records={q.min_offending_records}")
    if verdict == "pass":
        return f"{found} ({limit})"
    return f"{found}, {limit}: {count}"


def collect(store: KBStore, q: QualityThresholds) -> list[CheckOutcome]:
    with store.connect() as con:
        base = state.baseline(con)
        docs = state.batch_docs(con, base)
        quarantine = state.batch_quarantine(con, base)
        active = state.counts(con)["active_docs"]
        published, lost = state.lost_documents(con, base)
    return evaluate(docs, quarantine, q, base.label(), active, published, lost)


@multi_asset_check(
    pool=KB_WRITER_POOL,
    specs=[AssetCheckSpec(c.name, asset=c.asset, blocking=c.blocking, description=c.description)
           for c in CHECKS],
    name="raw_docs_quality",
    description="Great Expectations gates on the batch of new/changed documents vs the "
                "published KB.",
)
def raw_docs_quality(context: AssetCheckExecutionContext, store: KBStore,
                     quality: QualityThresholds):
    outcomes = guarded(CHECKS, lambda: collect(store, quality), context.log)
    record(store, context.run.run_id, outcomes, log=context.log)
    for o in outcomes:
        yield o.to_result()
