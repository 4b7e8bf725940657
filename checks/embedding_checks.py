"""Gates on embeddings: every active chunk has a vector of the model's dimension, and the
vectors new since the published version are finite, unit length and non-zero. The centroid
drift of the new vectors vs the published version is reported as a warning."""


import numpy as np
import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckSpec, multi_asset_check

from kb_core.writer_lock import KB_WRITER_POOL
from resources.embedder import Embedder
from resources.store import KBStore

from . import state
from .gx_suites import Expect, validate
from .metrics import centroid_reference, cosine, vector_frame
from .outcome import CheckDef, CheckOutcome, guarded, record
from resources.quality_config import QualityThresholds

ASSET = "embeddings"
DIMENSION = CheckDef(ASSET, "embeddings_dimension", True,
                     "Every active chunk has a cached vector, and every vector new since the "
                     "published version has the embedding model's dimension.")
FINITE = CheckDef(ASSET, "embeddings_finite", True, "No NaN or infinite value in new vectors.")
UNIT = CheckDef(ASSET, "embeddings_unit_norm", True,
                "New vectors have unit L2 norm within unit_norm_tolerance.")
NONZERO = CheckDef(ASSET, "embeddings_nonzero", True, "No new vector is all zeros.")
CENTROID = CheckDef(ASSET, "embeddings_centroid_drift", False,
                    "Cosine between the new vectors' centroid and the published version's "
                    "centroid (of a uniform sample of at most 20,000 of its vectors) is at "
                    "least min_centroid_cosine (warning).")
CHECKS = [DIMENSION, FINITE, UNIT, NONZERO, CENTROID]


def evaluate(total: int, missing: int, missing_rows: pd.DataFrame, stats: pd.DataFrame,
             matrix: np.ndarray, model_dim: int, model_id: str, base_vectors: np.ndarray | None,
             q: QualityThresholds, base_label: str) -> list[CheckOutcome]:
    """`total`/`missing`/`missing_rows`: state.embedding_coverage(); `stats`/`matrix`:
    metrics.vector_frame() of the new vectors; `base_vectors`: the baseline's vectors."""
    rows = max(1, q.offending_rows)
    scope = {"model": model_id, "model_dim": model_dim, "active_chunks": total,
             "new_vectors": len(stats), "baseline": base_label}
    tol = q.unit_norm_tolerance
    parts = {
        DIMENSION: (Expect("in_set", "dim", {"value_set": [model_dim]}, "vector dimension = "
                           "model's"), f"are not {model_dim}-d"),
        FINITE: (Expect("between", "nonfinite", {"min_value": 0, "max_value": 0},
                        "no NaN/inf component"), "contain NaN or infinite values"),
        UNIT: (Expect("between", "norm", {"min_value": 1 - tol, "max_value": 1 + tol},
                      "unit L2 norm"), f"have a norm outside 1 ± {tol:g}"),
        NONZERO: (Expect("between", "max_abs", {"min_value": 1e-12}, "not all zeros"),
                  "are all zeros"),
    }
    # One GX validation of the new vectors' stats for the four checks.
    suite = validate("embeddings", stats, [e for e, _ in parts.values()], ["chunk_id", "doc_id"],
                     rows) if len(stats) else None
    out = []
    for i, (check, (expect, what)) in enumerate(parts.items()):
        own = suite.part(i, i + 1) if suite else None
        ok = own.success if own else True
        if own and not ok:
            desc = f"{own.outcomes[0].unexpected_count} of {len(stats)} new vectors {what}"
        elif own:
            desc = f"all {len(stats)} new vectors pass ({expect.describe_expected()})"
        else:
            desc = f"no vector is new since {base_label}: nothing to check"
        values, extra_rows = dict(scope), []
        if check is DIMENSION:
            values["missing"] = missing
            if missing:
                ok = False
                desc = (f"{missing} of {total} active chunks have no cached {model_id} vector"
                        + ("" if own is None or own.success else "; " + desc))
                extra_rows = [dict(r, dim="missing") for r in missing_rows.head(rows).to_dict("records")]
            elif ok and own:
                desc = f"all {total} active chunks have a vector; {len(stats)} new ones are {model_dim}-d"
        if check is UNIT and len(stats):
            norms = stats["norm"].dropna()
            values.update(norm_min=round(float(norms.min()), 6) if len(norms) else 0.0,
                          norm_max=round(float(norms.max()), 6) if len(norms) else 0.0)
        out.append(CheckOutcome(check, ok, desc, values, own, extra_rows))

    if stats.empty:
        out.append(CheckOutcome(CENTROID, True, f"no vector is new since {base_label}: nothing "
                                "to compare", dict(scope)))
        return out
    values = dict(scope, min_centroid_cosine=q.min_centroid_cosine)
    if base_vectors is None or len(matrix) == 0:
        why = (f"nothing to compare: {base_label} has no vectors" if base_vectors is None
               else "no finite new vector")
        out.append(CheckOutcome(CENTROID, True, why, values))
    elif base_vectors.shape[1] != matrix.shape[1]:
        out.append(CheckOutcome(CENTROID, True, f"not comparable: {base_label} vectors are "
                                f"{base_vectors.shape[1]}-d, new ones {matrix.shape[1]}-d", values))
    else:
        cos = cosine(matrix.mean(axis=0), base_vectors.mean(axis=0))
        ref = centroid_reference(base_vectors, len(matrix))
        limit = min(q.min_centroid_cosine, ref)
        values.update(centroid_cosine=round(cos, 4), same_size_sample_p5=round(ref, 4),
                      warn_below=round(limit, 4))
        passed = bool(cos >= limit)
        out.append(CheckOutcome(
            CENTROID, passed, f"cosine(centroid of {len(matrix)} new vectors, {base_label} "
            f"centroid) = {cos:.3f}; warn below {limit:.3f} (the lower of min_centroid_cosine "
            f"and the 5th percentile of same-size samples of {base_label}, {ref:.3f})", values))
    return out


def collect(store: KBStore, embedder: Embedder, q: QualityThresholds) -> list[CheckOutcome]:
    model_id = embedder.model_id
    model_dim = state.declared_model_dim(embedder.resolved_path) or embedder.dim
    with store.connect() as con:
        base = state.baseline(con)
        total, missing, missing_rows = state.embedding_coverage(con, model_id)
        ids, blobs = state.new_vectors(con, base, model_id)
    stats, matrix = vector_frame(ids, blobs)
    base_vectors = None
    if base.exists and base.path and base.embedding_model == model_id:
        base_vectors = state.version_vectors(base.path)
    return evaluate(total, missing, missing_rows, stats, matrix, model_dim, model_id,
                    base_vectors, q, base.label())


@multi_asset_check(
    pool=KB_WRITER_POOL,
    specs=[AssetCheckSpec(c.name, asset=c.asset, blocking=c.blocking, description=c.description)
           for c in CHECKS],
    name="embeddings_quality",
    description="Great Expectations gates on vector dimension, finiteness, unit norm and "
                "zero vectors; centroid drift vs the published KB (warning).",
)
def embeddings_quality(context: AssetCheckExecutionContext, store: KBStore, embedder: Embedder,
                       quality: QualityThresholds):
    outcomes = guarded(CHECKS, lambda: collect(store, embedder, quality), context.log)
    record(store, context.run.run_id, outcomes, log=context.log)
    for o in outcomes:
        yield o.to_result()
