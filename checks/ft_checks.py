"""Blocking checks of the fine-tune chain: the dataset's files are well-formed chat examples
without raw PII or eval leakage before any training starts; a fine-tune that does not beat
its base model and the extractive baseline is never promoted."""


import json

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity,
                     MetadataValue, asset_check)

from kb_assets.evals import eval_for_run
from kb_assets.finetune import ft_dataset, latest_dataset
from kb_assets.ft_answer import ContenderSummary, three_way_gate
from kb_assets.ft_plan import find_leaks, question_of, validate_line
from kb_assets.ft_release import ft_eval
from kb_assets.report import md_table
from kb_core.models import ASSISTANT
from kb_core.text import find_pii
from kb_core.writer_lock import KB_WRITER_POOL
from resources import persistence
from resources.ft_config import FTConfig
from resources.registry import Registry, RegistryError
from resources.registry_pages import tag_validation
from resources.store import KBStore


def check_dataset_files(folder, expected: dict[str, int], min_examples: int,
                        threshold: float) -> tuple[list[tuple[str, str]], dict]:
    """(problems as (where, what), counts). `expected` = split -> line count in DuckDB."""
    problems, questions, counts = [], {}, {}
    for split, n_expected in sorted(expected.items()):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            problems.append((path.name, "file missing"))
            continue
        lines = [ln for ln in path.read_text("utf-8").splitlines() if ln.strip()]
        counts[split] = len(lines)
        if len(lines) != n_expected:
            problems.append((path.name, f"{len(lines)} lines, DuckDB lineage records {n_expected}"))
        qs = []
        for no, raw in enumerate(lines, start=1):
            bad = validate_line(raw)
            problems.extend((f"{path.name}:{no}", p) for p in bad)
            if bad:
                continue
            for i, m in enumerate(json.loads(raw)["messages"]):
                pii = find_pii(m["content"])
                if pii:
                    problems.append((f"{path.name}:{no}", f"messages[{i}].content: unmasked PII "
                                                          f"{sorted(pii)}"))
            qs.append(question_of(raw))
        questions[split] = qs
    pool = counts.get("full", counts.get("train", 0))
    if pool < min_examples:
        problems.append(("train", f"{pool} training examples < minimum {min_examples}"))
    train_qs = questions.get("full") or questions.get("train") or []
    for e, q, sim in find_leaks(questions.get("eval", []), train_qs, threshold):
        problems.append((f"eval.jsonl:{e + 1}", f"held-out question leaks into training "
                                                f"(similarity {sim}): {q[:80]}"))
    return problems, counts


@asset_check(asset=ft_dataset, blocking=True,
             pool=KB_WRITER_POOL,
             description="Every line is a valid system/user/assistant example within length "
                         "limits, PII-masked, no eval question (or near-duplicate) in training.")
def ft_dataset_valid(context: AssetCheckExecutionContext, store: KBStore,
                     ft_config: FTConfig) -> AssetCheckResult:
    with store.connect(read_only=True) as con:
        ds = latest_dataset(con)
        if ds is None:
            return AssetCheckResult(passed=False, description="no dataset version exists")
        expected = dict(con.execute(
            "SELECT split, count(*) FROM ft_dataset_lines WHERE dataset_version = ? "
            "GROUP BY split", [ds["dataset_version"]]).fetchall())
    s = ft_config.dataset_settings()
    problems, counts = check_dataset_files(ft_config.dataset_dir(ds["dataset_version"]), expected,
                                           s.min_examples, s.near_duplicate_threshold)
    desc = (f"dataset version {ds['dataset_version']}: "
            + (f"{len(problems)} problem(s), first: {problems[0][0]}: {problems[0][1]}"
               if problems else f"{sum(counts.values())} lines valid"))
    record(store, context.run.run_id, "ft_dataset", "ft_dataset_valid", not problems, desc)
    md = {"dataset_version": ds["dataset_version"], "lines": MetadataValue.json(counts),
          "problems": len(problems)}
    if problems:
        md["problem_list"] = MetadataValue.md(md_table(problems[:25], ["where", "problem"]))
    return AssetCheckResult(passed=not problems, description=desc, metadata=md,
                            severity=AssetCheckSeverity.ERROR)


def contender(metrics: dict, name: str, prefix: str) -> ContenderSummary:
    """A contender's summary as ft_eval stored it (metrics `<prefix><field>`)."""
    fields = [f for f in ContenderSummary.__dataclass_fields__ if f != "name"]
    return ContenderSummary(name, **{f: metrics[prefix + f] for f in fields})


def ft_verdict(metrics: dict, margin: float) -> tuple[bool, str]:
    """The gate on a stored three-way evaluation: the fine-tune beats both others by margin."""
    return three_way_gate(contender(metrics, "fine-tuned", "ft_"),
                          [contender(metrics, "base", "base_"),
                           contender(metrics, "extractive", "extractive_")], margin)


@asset_check(asset=ft_eval, name=ASSISTANT.gate_check, blocking=True,
             pool=KB_WRITER_POOL,
             description="The fine-tune beats both its base model and the retrieval-only "
                         "extractive answer (same questions, same contexts) by the configured "
                         "margin; otherwise it is not promoted and `kb ask` stays extractive.")
def ft_beats_base(context: AssetCheckExecutionContext, store: KBStore, ft_config: FTConfig,
                  registry: Registry) -> AssetCheckResult:
    run_id = context.run.run_id
    ev = eval_for_run(store, ASSISTANT, run_id)
    if ev is None:
        return AssetCheckResult(passed=True, metadata={"evaluated": False},
                                description="no new fine-tune evaluated in this run")
    m = ev["metrics"]
    passed, reason = ft_verdict(m, ft_config.gate_margin)
    desc = f"kb-assistant version {ev['version']}: {reason}"
    record(store, run_id, ASSISTANT.eval_asset, ASSISTANT.gate_check, passed, desc)
    registry.set_status(store, ASSISTANT.name, ev["version"], "passed" if passed else "rejected")
    try:  # the MLflow page says it too; the verdict stands without it
        tag_validation(registry, store, ASSISTANT.name, ev["version"], passed)
    except RegistryError as exc:
        context.log.warning(f"validation_status not tagged in MLflow: {exc}")
    return AssetCheckResult(
        passed=passed, severity=AssetCheckSeverity.ERROR, description=desc,
        metadata={"assistant_version": ev["version"], "evaluated": True,
                  "ft_score": m["ft_score_mean"], "base_score": m["base_score_mean"],
                  "extractive_score": m.get("extractive_score_mean", 0.0),
                  "delta": m["score_delta"]})


def record(store: KBStore, run_id: str, asset: str, name: str, passed: bool, desc: str) -> None:
    """The audit trail of every check result, beside the other checks' rows."""
    with store.transaction() as con:
        persistence.record_check_result(con, run_id=run_id, asset=asset, check_name=name,
                                        passed=passed, description=desc[:500])


FT_CHECKS = [ft_dataset_valid, ft_beats_base]
