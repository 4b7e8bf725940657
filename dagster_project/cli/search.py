"""`kb search`: hybrid retrieval over the serving (production) KB version."""

from __future__ import annotations

import json
import textwrap

from dagster_project.cli import kb_version_flag
from kb_core.home import describe
from kb_core.paths import Paths
from kb_core.serving import resolve


def register(sub) -> None:
    p = sub.add_parser("search", help="search the production knowledge base")
    p.add_argument("query")
    p.add_argument("-k", "--k", dest="k", type=int, default=3,
                   help="number of passages (default 3)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object, the same as the HTTP API's /search (see README)")
    kb_version_flag(p, "search this KB version instead of production")
    p.set_defaults(func=cmd_search)


def open_searcher(paths: Paths, version: int | None = None):
    from kb_core.errors import CLIError
    from kb_assets.searcher import Searcher

    serving = resolve(paths)
    number = version if version is not None else serving.version
    if number is None:
        raise CLIError(f"no KB version under {paths.versions}: run `kb build` first "
                       f"({describe(paths.home)})")
    source = "requested" if version is not None else serving.source
    try:
        return Searcher.open(paths, number), source
    except FileNotFoundError as exc:
        raise CLIError(f"{exc} ({describe(paths.home)})") from None


def search_json(version: int, source: str, query: str, hits) -> dict:
    """The shape of the HTTP API's /search (dagster_project/serve.py) without its took_ms (a
    one-off command's time is mostly loading the model), so a script can use either:
    {version, source, query, zero_hit, hits: [{rank, score, doc_id, source, title, text,
    untrusted}]}."""
    return {"version": version, "source": source, "query": query, "zero_hit": not hits,
            "hits": [{"rank": h.rank, "score": h.score, "doc_id": h.doc_id, "source": h.source,
                      "title": h.title, "text": h.text, "untrusted": h.untrusted} for h in hits]}


def cmd_search(args) -> int:
    from kb_core.errors import UsageError
    from kb_assets.retrieval import context_block

    if not args.query.strip():
        raise UsageError("the query is empty")
    if args.k < 1:
        raise UsageError("-k must be at least 1")
    import torch

    torch.set_num_threads(1)  # one short query: a second thread only adds contention
    paths = Paths.from_env()
    searcher, source = open_searcher(paths, args.kb_version)
    hits = searcher.search(args.query, k=args.k)
    if args.json:
        print(json.dumps(search_json(searcher.version.number, source, args.query, hits),
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
