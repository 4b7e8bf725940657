"""Fine-tuning examples and held-out evaluation items from the KB's evaluation questions.

The questions are the KB's evaluation set (`eval_set.load_eval_questions`: the curated golden
set where one exists, else the platform's synthetic set). A question belongs to the training
side when all its relevant documents are in training document families (ft_plan.eval_groups
over split_group), to the held-out side when all are held out; mixed ones are dropped.
Every question gets the context `kb ask` would show (hybrid retrieval on the KB version, each
passage focused on the question); the target is the part of the relevant passage that
answers it, cited. A share of questions is also paired with retrieved context from OTHER
document families (seeded), whose target is a refusal. Training contexts only ever carry
training-side text."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ft_answer import answer_facts, best_sentences, cite, refusal_text, sentence_scores
from kb_core.ft_data import (DatasetSettings, Example, SourceDoc, _unit_hash, build_examples,
                      chat_messages, clean_for_export, eligible, example_key, focus_passage,
                      split_group, split_sections, user_prompt)
from .ft_plan import eval_groups

from .eval_set import EvalQuestion, load_eval_questions, synthetic_questions
from .golden import GoldenError


# -- the questions ------------------------------------------------------------------------
def section_questions(docs: list[SourceDoc], s: DatasetSettings,
                      questions_fn=None) -> list[EvalQuestion]:
    """Platform-made questions per document section (templates, or `questions_fn`), answered
    by the section's first sentences: more than the one known-item question per document
    of the synthetic evaluation set, which alone is too few examples for a small KB."""
    out = []
    for d in docs:
        for x in build_examples(d, s, questions_fn):
            body = x.messages[2]["content"]
            out.append(EvalQuestion(f"sec-{x.paraphrase_of}-{len(out)}", x.question,
                                    {d.doc_id: 1.0}, "synthetic",
                                    body.rsplit(" (Source:", 1)[0], None))
    return out


def kb_questions(store, docs: list[SourceDoc], golden_path: str | None, s: DatasetSettings,
                 questions_fn=None, version=None) -> tuple[str, list[EvalQuestion]]:
    """(kind, questions) of this KB whose relevant documents are all in it: the curated
    golden set when there is one (eval_set.load_eval_questions); else the synthetic set (as
    stored by the eval_set asset, or made now from `version` when it has not run) plus
    section questions."""
    try:
        kind, qs = load_eval_questions(store, golden_path or None)
    except GoldenError as exc:
        raise ValueError(f"the curated golden set cannot be read: {exc}") from None
    except Exception:  # noqa: BLE001 - e.g. no eval_questions table yet: made below
        kind, qs = "synthetic", []
    usable = [d for d in docs if eligible(d, s)]
    if kind != "curated":
        if not qs and version is not None:
            qs = [EvalQuestion(q.qid, q.question, {q.doc_id: 1.0}, "synthetic", q.answer,
                               q.source_chunk_id) for q in synthetic_questions(version)]
        kind, qs = "synthetic", list(qs) + section_questions(usable, s, questions_fn)
    ids = {d.doc_id for d in usable}
    return kind, [q for q in qs if q.relevant and all(d in ids for d in q.relevant)]


# -- examples and items -------------------------------------------------------------------
@dataclass
class Built:
    kind: str
    train: list[Example]
    eval: list[Example]
    n_questions: int
    n_train_questions: int
    n_eval_questions: int
    n_mixed_dropped: int
    n_refusals_train: int
    n_refusals_eval: int
    n_retrieval_misses: int   # held-out questions whose context lacks the relevant document
    stats: dict = field(default_factory=dict)


def _primary(q: EvalQuestion) -> str:
    return max(sorted(q.relevant), key=lambda d: q.relevant[d])


def _cap(qs: list[EvalQuestion], per_doc: int, seed: str) -> list[EvalQuestion]:
    """At most `per_doc` questions per primary document, chosen by a stable hash."""
    out, seen = [], {}
    for q in sorted(qs, key=lambda q: _unit_hash(seed, q.qid)):
        d = _primary(q)
        if seen.get(d, 0) < per_doc:
            seen[d] = seen.get(d, 0) + 1
            out.append(q)
    return sorted(out, key=lambda q: q.qid)


def build_question_examples(docs: list[SourceDoc], questions: list[EvalQuestion], kind: str,
                            searcher, s: DatasetSettings, embed_fn=None) -> Built:
    """Training examples (answerable + refusals) and held-out evaluation examples whose
    `meta` holds what ft_eval needs (context passages, reference, key facts)."""
    embed_fn = cached_embedder(embed_fn) if embed_fn is not None else None
    usable = [d for d in docs if eligible(d, s)]
    by_id = {d.doc_id: d for d in usable}
    group = {d.doc_id: split_group(d.doc_id) for d in usable}
    held = eval_groups(list(group.values()), s)
    train_q, eval_q, mixed = [], [], 0
    for q in questions:
        if not all(d in by_id for d in q.relevant):
            continue
        sides = {group[d] in held for d in q.relevant}
        if sides == {False}:
            train_q.append(q)
        elif sides == {True}:
            eval_q.append(q)
        else:
            mixed += 1
    train_q = _cap(train_q, s.max_questions_per_doc, s.seed)
    eval_q = _cap(eval_q, s.max_questions_per_doc, s.seed + "-eval")
    n_ctx = max(1, s.context_passages)
    allq = train_q + eval_q
    hits_all = searcher.search_batch([clean_for_export(q.question) for q in allq],
                                     k=max(10, 4 * n_ctx)) if allq else []
    manifest = searcher.version.manifest
    chunks_of: dict[str, list[tuple[int, str]]] = {}
    for cid, did, text in zip(manifest["chunk_id"], manifest["doc_id"], manifest["text"]):
        if did in by_id:
            chunks_of.setdefault(str(did), []).append((int(cid), str(text)))
    train_docs = sorted(d for d in chunks_of if group[d] not in held)
    all_docs = sorted(chunks_of)

    def shown(question, doc_id, chunk_id, text):
        return {"doc_id": doc_id, "chunk_id": chunk_id,
                "text": focus_passage(text, question, s.max_context_tokens) or
                clean_for_export(text)}

    def gold_chunk(question, doc_id, hint=None):
        cands = chunks_of.get(doc_id, [])
        if not cands:
            return None
        sc = sentence_scores(question, [t for _, t in cands], embed_fn)
        if hint:
            hs = sentence_scores(hint, [t for _, t in cands], embed_fn)
            sc = [0.4 * a + 0.6 * b for a, b in zip(sc, hs)]
        return cands[max(range(len(cands)), key=lambda i: (sc[i], -i))]

    def others(question, hits, qgroups, allowed, salt):
        """Context passages of other families: retrieved first, then seeded picks."""
        out = [shown(question, h.doc_id, h.chunk_id, h.text) for h in hits
               if h.doc_id in allowed and group[h.doc_id] not in qgroups]
        pool = [d for d in sorted(allowed) if group[d] not in qgroups
                and d not in {p["doc_id"] for p in out}]
        pool.sort(key=lambda d: _unit_hash(salt, d))
        for d in pool:
            if len(out) >= n_ctx:
                break
            cid, text = chunks_of[d][int(_unit_hash(salt, d, "c") * len(chunks_of[d]))]
            out.append(shown(question, d, cid, text))
        return _dedupe_docs(out)[:n_ctx]

    def render(ctx):
        return "\n\n".join(f"[{i}] (source: {p['doc_id']})\n{p['text']}"
                           for i, p in enumerate(ctx, start=1))

    def example(q, question, ctx, target, split, tag, meta=None):
        doc = by_id[_primary(q)]
        msgs = tuple(chat_messages(clean_for_export(s.system_prompt),
                                   user_prompt(question, render(ctx)), target))
        return Example(example_key(doc.doc_key, msgs), doc.doc_key, doc.doc_id,
                       doc.content_hash, group[doc.doc_id], f"{q.qid}#{tag}", question, msgs,
                       split=split, passage=ctx[0]["text"] if ctx else "", meta=meta)

    def answer_target(q, question, passage):
        hint = clean_for_export(q.answer) if q.answer else None
        picked, _ = best_sentences(question, passage["text"], s.max_answer_tokens, embed_fn,
                                   hint)
        return cite(picked[0], passage["doc_id"]) if picked else None

    train, ev = [], []
    n_ref_t = n_ref_e = misses = 0
    ref_every = s.refusal_share / max(1e-9, 1 - s.refusal_share)  # refusals per answerable
    train_ids = {q.qid for q in train_q}
    # Held out: exactly a share of the questions (at least one) also get a context without
    # their answer, so even a small KB measures refusals. Training: a stable hash threshold.
    k_eval = max(1, round(len(eval_q) * ref_every)) if eval_q else 0
    eval_refuse = {q.qid for q in sorted(eval_q, key=lambda q: _unit_hash(s.seed, "refuse",
                                                                           q.qid))[:k_eval]}
    for q, hits in zip(allq, hits_all):
        is_train = q.qid in train_ids
        question = clean_for_export(q.question)
        allowed = set(train_docs) if is_train else set(all_docs)
        hits = [h for h in hits if h.doc_id in allowed]
        rel = set(q.relevant)
        qgroups = {group[d] for d in rel}
        ctx = _dedupe_docs([shown(question, h.doc_id, h.chunk_id, h.text) for h in hits])[:n_ctx]
        refuse_too = (_unit_hash(s.seed, "refuse", q.qid) < ref_every if is_train
                      else q.qid in eval_refuse)
        if is_train:
            # The relevant document's passage that holds the answer, where retrieval put
            # that document (first when retrieval missed it): the target is always in context.
            best = gold_chunk(question, _primary(q), clean_for_export(q.answer or "") or None)
            if best is None:
                continue
            gold = shown(question, _primary(q), *best)
            at = next((i for i, p in enumerate(ctx) if p["doc_id"] in rel), None)
            rest = [p for p in ctx if p["doc_id"] not in rel]
            at = 0 if at is None else min(at, n_ctx - 1)
            ctx = (rest[:at] + [gold] + rest[at:])[:n_ctx]
            target = answer_target(q, question, gold)
            if target:
                train.append(example(q, question, ctx, target, "train", "a"))
            if refuse_too:
                octx = others(question, hits, qgroups, allowed, q.qid)
                if octx:
                    train.append(example(q, question, octx, refusal_text(question), "train",
                                         "r"))
                    n_ref_t += 1
            continue
        # held out: exactly what `kb ask` would show; answerable only if it shows the answer
        if not ctx:
            continue  # a zero-hit: `kb ask` says "nothing relevant" without any model
        reference = clean_for_export(q.answer) if q.answer else None
        gold = next((p for p in ctx if p["doc_id"] in rel), None)
        if reference is None:
            src = gold or (lambda b: b and shown(question, _primary(q), *b))(
                gold_chunk(question, _primary(q)))
            if not src:
                continue
            picked, _ = best_sentences(question, src["text"], s.max_answer_tokens, embed_fn)
            reference = picked[0] if picked else src["text"]
        facts = answer_facts(reference)
        items = [("a", ctx, gold is not None)]
        if refuse_too:
            octx = others(question, hits, qgroups, allowed, q.qid)
            if octx:
                items.append(("r", octx, False))
        for tag, c, answerable in items:
            if tag == "a" and not answerable:
                misses += 1
            if tag == "r":
                n_ref_e += 1
            target = (answer_target(q, question, gold) if answerable else None) \
                or (refusal_text(question) if not answerable else cite(reference, _primary(q)))
            meta = {"qid": q.qid, "kind": q.kind, "question": question, "answerable": answerable,
                    "case": {"a": "retrieved" if answerable else "retrieval missed the answer",
                             "r": "context from other documents"}[tag],
                    "relevant": sorted(rel), "reference": reference, "facts": facts,
                    "passages": c}
            ev.append(example(q, question, c, target, "eval", tag, meta))
    return Built(kind, train, ev, len(questions), len(train_q), len(eval_q), mixed, n_ref_t,
                 n_ref_e, misses)


def cached_embedder(embed_fn, max_items: int = 200_000):
    """texts -> vectors, encoding each distinct text once (questions, passages and their
    sentences are scored several times while examples are built)."""
    import numpy as np

    cache: dict[str, np.ndarray] = {}

    def fn(texts: list[str]):
        missing = list(dict.fromkeys(x for x in texts if x not in cache))
        if missing:
            if len(cache) + len(missing) > max_items:
                cache.clear()
            for x, v in zip(missing, embed_fn(missing)):
                cache[x] = v
        return np.stack([cache[x] for x in texts])
    return fn


def _dedupe_docs(ps: list[dict]) -> list[dict]:
    """One passage per document in a context (citations name documents)."""
    seen, out = set(), []
    for p in ps:
        if p["doc_id"] not in seen:
            seen.add(p["doc_id"])
            out.append(p)
    return out


__all__ = ["EvalQuestion", "kb_questions", "build_question_examples", "section_questions",
           "split_sections"]
