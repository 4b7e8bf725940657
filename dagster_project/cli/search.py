"""`kb search`: hybrid retrieval over the serving (production) KB version."""

from __future__ import annotations

import json
import textwrap

from kb_core.serving import resolve
from kb_core.paths import Paths


def register(sub) -> None:
    p = sub.add_parser("search", help="search the production knowledge base")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=3, help="number of passages (default 3)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--version", type=int, default=None, help="search this KB version instead")
    p.set_defaults(func=cmd_search)


def open_searcher(paths: Paths, version: int | None = None):
    from kb_core.errors import CLIError
    from kb_assets.searcher import Searcher

    serving = resolve(paths)
    number = version if version is not None else serving.version
    if number is None:
        raise CLIError(f"no KB version under {paths.versions}: run `kb build` first")
    source = "requested" if version is not None else serving.source
    try:
        return Searcher.open(paths, number), source
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None


def cmd_search(args) -> int:
    from kb_core.errors import CLIError
    from kb_assets.retrieval import context_block

    if not args.query.strip():
        raise CLIError("the query is empty")
    if args.k < 1:
        raise CLIError("-k must be at least 1")
    import torch

    torch.set_num_threads(1)  # one short query: a second thread only adds contention
    paths = Paths.from_env()
    searcher, source = open_searcher(paths, args.version)
    hits = searcher.search(args.query, k=args.k)
    if args.json:
        print(json.dumps([{"rank": h.rank, "score": h.score, "doc_id": h.doc_id,
                           "source": h.source, "text": h.text, "untrusted": h.untrusted}
                          for h in hits],
                         ensure_ascii=False, indent=2))
        return 0
    print(f"KB version {searcher.version.number} ({source})")
    if not hits:
        print(f"No passage is relevant enough to: {args.query!r} (zero-hit)")
        return 0
    for h in hits:
        print(f"\n#{h.rank}  score={h.score:.4f}  doc={h.doc_id}  source={h.source}"
              + ("  [UNTRUSTED: looks like prompt injection]" if h.untrusted else ""))
        print(textwrap.indent(textwrap.fill(h.text.replace("\n", " "), 100), "    "))
    print("\n--- Context for LLM ---")
    print(context_block(hits))
    return 0
