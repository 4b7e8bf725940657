"""`kb ask`: retrieve from the production KB, then answer from the retrieved passages only
and print the sources. The answer comes from the production kb-assistant (local base + LoRA
adapter, or an OpenAI model) when a fine-tune passed its gate (it beat both its base model
and the extractive answer), otherwise from the retrieval-only extractive answer (the
best-matching sentences of the top passage, cited; a refusal when none matches). Nothing
relevant retrieved -> say so; no model is asked to guess. A citation of a passage that was
not in the context is removed from a model's answer, never shown as a source."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from kb_core.models import ASSISTANT_MODEL as ASSISTANT
from kb_core.paths import Paths


def register(sub) -> None:
    p = sub.add_parser("ask", help="answer a question from the production KB with the assistant")
    p.add_argument("question")
    p.add_argument("-k", "--k", dest="k", type=int, default=2,
                   help="passages given to the model (default 2, as in its training prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length cap in tokens (default: the LLM setting, 96)")
    p.add_argument("--contender", choices=["auto", "fine-tuned", "base", "extractive"],
                   default="auto", help="who answers (default auto: the production fine-tune "
                   "when one passed its gate, else the extractive answer)")
    p.add_argument("--json", action="store_true", help="print a JSON object: answer, "
                   "contender, citations, sources, KB and assistant versions")
    p.set_defaults(func=cmd_ask)


def resolve_assistant(paths: Paths, llm, resources: dict, contender: str = "auto"):
    """(contender, AssistantRef or None, system prompt, note, assistant version or None).
    auto: the production kb-assistant when one was promoted (its gate passed, or an operator
    forced it), else the extractive answer; "base" forces the configured base model."""
    from kb_core.errors import CLIError
    from resources.llm import AssistantRef
    from resources.registry import RegistryError, registered_versions

    store, registry = resources["store"], resources["registry"]
    system = resources["ft_config"].system_prompt
    if contender == "extractive":
        return "extractive", None, system, "extractive answer (as asked)", None
    if contender == "base":
        base = llm.base_ref()
        return "base", base, system, f"base model {base.model} (as asked)", None
    try:
        version = registry.get_alias(ASSISTANT, "production")
    except RegistryError as exc:
        version, why = None, f"registry unavailable ({exc})"
    else:
        why = "no fine-tuned assistant has passed its gate"
    if version is None:
        if contender == "fine-tuned":
            raise CLIError(f"{why}: there is no production kb-assistant to answer")
        return ("extractive", None, system, f"{why}: extractive answer (best-matching "
                "sentences of the top passage, no generation)", None)
    row = next((v for v in registered_versions(store, ASSISTANT) if v["version"] == version), None)
    if row is None:
        raise CLIError(f"production kb-assistant version {version} is not in the DuckDB mirror")
    tags = row["tags"]
    adapter = resources["ft_config"].adapter_path(tags)
    card = Path(adapter).parent / "assistant.json"
    if card.is_file():  # answer in the same house style the model was trained on
        system = json.loads(card.read_text("utf-8")).get("system_prompt", system)
    if tags.get("provider") == "openai":
        ref = AssistantRef("openai", tags["model_ref"], None, f"OpenAI {tags['model_ref']}")
    else:
        if not Path(adapter).is_dir():
            raise CLIError(f"adapter folder {adapter} of kb-assistant version "
                           f"{version} is missing")
        ref = AssistantRef("local", tags["base_model"], adapter,
                           f"{tags['base_model']} + LoRA adapter")
    return "fine-tuned", ref, system, f"kb-assistant version {version} (production)", version


def cmd_ask(args) -> int:
    from kb_core.errors import CLIError, UsageError
    from dagster_project.cli.search import open_searcher
    from dataclasses import replace

    from kb_assets.ft_answer import extractive_answer, is_refusal, sanitize_citations
    from kb_core.ft_data import chat_messages, focus_passage, user_prompt
    from kb_assets.retrieval import context_block
    from resources import default_resources
    from resources.llm import LLMError

    question = args.question.strip()
    if not question:
        raise UsageError("the question is empty")
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    from kb_assets.untrusted import ask_policy, for_prompt

    try:
        policy = ask_policy()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    paths = Paths.from_env()
    searcher, source = open_searcher(paths)
    found = searcher.search(question, k=args.k)
    hits = for_prompt(found, policy)  # untrusted passages: marked (default) or left out
    kb = searcher.version.number
    if not hits:
        msg = (f"Nothing in the knowledge base (version {kb}, {source}) is relevant to this "
               "question, so there is no grounded answer. Try other words or add documents."
               if not found else
               f"Only untrusted passages (possible prompt injection) matched in KB version {kb}, "
               "and KB_ASK_UNTRUSTED=omit leaves them out: no grounded answer.")
        print(json.dumps({"answer": None, "reason": msg, "contender": None, "refused": True,
                          "citations": [], "kb_version": kb, "assistant_version": None,
                          "sources": []}, ensure_ascii=False) if args.json else msg)
        return 0
    try:
        resources = default_resources(paths)
    except ValueError as exc:  # a bad KB_FT_* setting
        raise CLIError(str(exc)) from None
    llm, cfg = resources["llm"], resources["ft_config"]
    contender, ref, system, note, assistant_version = resolve_assistant(
        paths, llm, resources, getattr(args, "contender", "auto"))
    # Each passage in the training prompts' shape: cleaned, from the best-matching sentence.
    shown = [replace(h, text=focus_passage(h.text, question, cfg.max_context_tokens) or h.text)
             for h in hits]
    if contender == "extractive":
        # Never quote a passage that looks like prompt injection as the answer.
        ex = extractive_answer(question, [(h.doc_id, h.text) for h in shown if not h.untrusted],
                               cfg.max_answer_tokens, searcher.embedder.encode,
                               cfg.extractive_min_score)
        raw = ex.answer
    else:
        messages = chat_messages(system, user_prompt(question, context_block(shown)))
        try:
            raw = llm.chat([messages], ref, args.max_new_tokens)[0].strip()
        except LLMError as exc:
            raise CLIError(str(exc)) from None
    answer, cited, dropped = sanitize_citations(raw, [h.doc_id for h in shown])
    refused = is_refusal(answer)
    by_doc = {h.doc_id: h for h in shown}
    citations = [{"rank": by_doc[d].rank, "doc_id": d, "source": by_doc[d].source,
                  "chunk_id": by_doc[d].chunk_id} for d in cited]
    sources = [{"rank": h.rank, "doc_id": h.doc_id, "source": h.source, "score": h.score,
                "untrusted": h.untrusted} for h in hits]
    if args.json:
        print(json.dumps({"answer": answer, "contender": contender, "refused": refused,
                          "citations": citations, "dropped_citations": dropped,
                          "model": note, "kb_version": kb,
                          "assistant_version": assistant_version, "sources": sources},
                         ensure_ascii=False, indent=2))
        return 0
    print(f"KB version {kb} ({source}); {note}\n")
    print(textwrap.fill(answer or "(the model returned an empty answer)", 100))
    if dropped:
        print(f"\n(removed a citation of a passage that was not in the context: "
              f"{', '.join(dropped)})")
    print("\nSources:")
    for s in sources:
        mark = " (cited)" if s["doc_id"] in cited else ""
        print(f"  [{s['rank']}] {s['doc_id']}  ({s['source']}, score {s['score']:.4f}){mark}"
              + ("  UNTRUSTED (marked in the prompt)" if s["untrusted"] else ""))
    if len(hits) < len(found):
        print(f"  ({len(found) - len(hits)} untrusted passage(s) left out: KB_ASK_UNTRUSTED=omit)")
    return 0
