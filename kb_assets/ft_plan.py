"""Splitting, leakage guard, replay and the incremental plan of a fine-tuning dataset, and
the line validation the blocking check runs on the written files. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace

from kb_core.ft_data import DatasetSettings, Example, _unit_hash, shingles, with_distractors

# -- split and leakage --------------------------------------------------------------------
def eval_groups(groups: list[str], s: DatasetSettings) -> set[str]:
    """Groups held out for evaluation: a stable hash threshold (adding documents does not
    move existing groups), at least one group whenever there are two or more."""
    groups = sorted(set(groups))
    held = {g for g in groups if _unit_hash(s.seed, g) < s.eval_fraction}
    if not held and len(groups) >= 2 and s.eval_fraction > 0:
        held = {min(groups, key=lambda g: _unit_hash(s.seed, g))}
    if len(held) == len(groups):  # never hold out everything
        held.discard(max(held, key=lambda g: _unit_hash(s.seed, g)))
    return held


def find_leaks(eval_questions: list[str], train_questions: list[str],
               threshold: float) -> list[tuple[int, str, float]]:
    """(eval index, training question, Jaccard) for each eval question whose uni+bigram
    set is at least `threshold` similar to some training question (or identical)."""
    index: dict[str, list[int]] = {}
    train_sets = [shingles(q) for q in train_questions]
    for i, sh in enumerate(train_sets):
        for g in sh:
            index.setdefault(g, []).append(i)
    leaks = []
    for e, q in enumerate(eval_questions):
        es = shingles(q)
        overlap = Counter(i for g in es for i in index.get(g, ()))
        best, best_i = 0.0, -1
        for i, inter in overlap.items():
            jac = inter / (len(es) + len(train_sets[i]) - inter)
            if jac > best:
                best, best_i = jac, i
        if best_i >= 0 and (best >= threshold or q.strip() == train_questions[best_i].strip()):
            leaks.append((e, train_questions[best_i], round(best, 3)))
    return leaks


def assign_splits(examples: list[Example], s: DatasetSettings) -> tuple[list[Example], list[Example], list]:
    """(train, eval, dropped leaks). Whole groups go to eval; an eval example that is a
    near-duplicate of any training question is dropped rather than kept."""
    held = eval_groups([x.group for x in examples], s)
    train = [x for x in examples if x.group not in held]
    ev = [replace(x, split="eval") for x in examples if x.group in held]
    leaks = find_leaks([x.question for x in ev], [x.question for x in train],
                       s.near_duplicate_threshold)
    bad = {i for i, _, _ in leaks}
    return train, [x for i, x in enumerate(ev) if i not in bad], leaks


# -- incremental plan ---------------------------------------------------------------------
@dataclass
class DatasetPlan:
    mode: str                   # "full" (train on the whole pool) or "incremental"
    reason: str
    content_sha256: str
    pool: list[Example]         # every current training example
    eval: list[Example]
    train: list[Example]        # what this version's fine-tune trains on
    fresh: list[Example]
    replay: list[Example]
    removed_ids: list[str]
    removed_docs: list[str]
    leaks_dropped: list = field(default_factory=list)


def content_sha256(pool: list[Example], ev: list[Example], s: DatasetSettings) -> str:
    h = hashlib.sha256(f"{s.version}\n".encode())
    for tag, xs in (("train", pool), ("eval", ev)):
        for eid in sorted(x.example_id for x in xs):
            h.update(f"{tag}:{eid}\n".encode())
    return h.hexdigest()


def select_replay(old: list[Example], share: float, salt: str) -> list[Example]:
    """A deterministic `share` of the older examples; the salt (the new content hash)
    rotates which ones, so successive fine-tunes revisit different old examples."""
    k = min(len(old), math.ceil(share * len(old))) if share > 0 else 0
    return sorted(old, key=lambda x: _unit_hash(salt, x.example_id))[:k]


def plan_dataset(examples: list[Example], s: DatasetSettings, prev_ids: set[str] | None,
                 prev_doc_keys: set[str] | None, prev_settings: str | None) -> DatasetPlan:
    """What the next dataset version holds. Additions and edits are trained incrementally
    (fresh examples + replay); a removed or newly excluded document forces a full rebuild,
    since a continued fine-tune would keep what it learned from it."""
    pool, ev, leaks = assign_splits(examples, s)
    pool = with_distractors(pool, pool, s.distractors)
    ev = with_distractors(ev, pool + ev, s.distractors)
    return plan_split(pool, ev, leaks, s, prev_ids, prev_doc_keys, prev_settings)


def plan_questions(train: list[Example], ev: list[Example], s: DatasetSettings,
                   prev_ids: set[str] | None, prev_doc_keys: set[str] | None,
                   prev_settings: str | None) -> DatasetPlan:
    """The plan for examples already split by document family and carrying their retrieved
    contexts (ft_questions): only the near-duplicate guard is applied (an eval question
    close to a training question is dropped, with every eval example of that question)."""
    leaks = find_leaks([x.question for x in ev], [x.question for x in train],
                       s.near_duplicate_threshold)
    bad = {ev[i].question for i, _, _ in leaks}
    return plan_split(train, [x for x in ev if x.question not in bad], leaks, s, prev_ids,
                      prev_doc_keys, prev_settings)


def plan_split(pool: list[Example], ev: list[Example], leaks: list, s: DatasetSettings,
               prev_ids: set[str] | None, prev_doc_keys: set[str] | None,
               prev_settings: str | None) -> DatasetPlan:
    digest = content_sha256(pool, ev, s)
    pool_ids = {x.example_id for x in pool}
    docs_now = {x.doc_key for x in pool}
    removed_ids = sorted((prev_ids or set()) - pool_ids)
    removed_docs = sorted((prev_doc_keys or set()) - docs_now)
    if prev_ids is None:
        mode, reason = "full", "first dataset version"
    elif prev_settings != s.version:
        mode, reason = "full", "dataset settings changed"
    elif removed_docs:
        mode, reason = "full", f"{len(removed_docs)} document(s) removed or excluded"
    else:
        mode, reason = "incremental", "new or changed documents only"
    if mode == "full":
        fresh, replay = list(pool), []
    else:
        fresh = [x for x in pool if x.example_id not in prev_ids]
        replay = select_replay([x for x in pool if x.example_id in prev_ids], s.replay_share, digest)
    return DatasetPlan(mode, reason, digest, pool, ev, fresh + replay, fresh, replay,
                       removed_ids, removed_docs, leaks)


# -- validation (used by the blocking check before any training) ---------------------------
ROLES = ("system", "user", "assistant")
MAX_CHARS = {"system": 2000, "user": 6000, "assistant": 2000}


def validate_line(raw: str) -> list[str]:
    """Problems with one JSONL line ("field: what is wrong"); empty when it is valid."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [f"not JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return ["messages: missing or not a list"]
    msgs = obj["messages"]
    roles = tuple(m.get("role") if isinstance(m, dict) else None for m in msgs)
    if roles != ROLES:
        return [f"messages: roles are {list(roles)}, expected {list(ROLES)}"]
    problems = []
    for i, m in enumerate(msgs):
        c = m.get("content")
        if not isinstance(c, str) or not c.strip():
            problems.append(f"messages[{i}].content ({m['role']}): empty or not text")
        elif len(c) > MAX_CHARS[m["role"]]:
            problems.append(f"messages[{i}].content ({m['role']}): {len(c)} characters "
                            f"> {MAX_CHARS[m['role']]}")
    return problems


def question_of(raw: str) -> str:
    """The question part of a line's user message (for the leakage check on files)."""
    user = json.loads(raw)["messages"][1]["content"]
    return user.rsplit("Question:", 1)[-1].strip()
