"""`kb golden suggest`: candidate evaluation questions made from the KB's own documents, for
a person to review, correct and keep as the KB's curated golden set."""

from __future__ import annotations

import json
from pathlib import Path

from dagster_project.cli import kb_version_flag
from kb_core.home import describe
from kb_core.paths import Paths
from kb_core.serving import resolve


def register(sub) -> None:
    p = sub.add_parser("golden", help="curated golden sets: suggest candidate questions")
    gsub = p.add_subparsers(dest="golden_command", required=True)
    s = gsub.add_parser("suggest", help="write candidate questions (with their document ids) "
                                        "for review")
    s.add_argument("-n", type=int, default=50, help="how many documents to ask about (default 50)")
    s.add_argument("--out", default=None,
                   help="output jsonl (default: $KB_HOME/golden-suggested.jsonl; move it into "
                        "$KB_HOME/golden/ once reviewed to make it the curated set)")
    kb_version_flag(s, "KB version (default: production)")
    s.add_argument("--json", action="store_true", help="print a JSON object (see README)")
    s.set_defaults(func=cmd_suggest)


def cmd_suggest(args) -> int:
    from kb_core.errors import CLIError, UsageError
    from kb_assets.eval_set import synthetic_questions
    from resources.vector_index import VersionStore

    if args.n < 1:
        raise UsageError("-n must be at least 1")
    paths = Paths.from_env().ensure()
    versions = VersionStore(root=str(paths.versions))
    number = args.kb_version if args.kb_version is not None else resolve(paths).version
    if number is None or number not in versions.numbers():
        raise CLIError(f"no KB version {'' if number is None else number} under "
                       f"{paths.versions}: run `kb build` first ({describe(paths.home)})")
    questions = synthetic_questions(versions.load(number), args.n)
    out = Path(args.out) if args.out else paths.home / "golden-suggested.jsonl"
    if out.resolve().parent == (paths.home / "golden").resolve():
        raise CLIError(f"{out} is inside $KB_HOME/golden/, which the gate reads as reviewed: "
                       "write suggestions elsewhere and move them in once reviewed")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps({"qid": q.qid, "question": q.question, "doc_id": q.doc_id,
                                "answer": q.answer, "source": "synthetic (review me)"},
                               ensure_ascii=False) + "\n")
    if args.json:
        print(json.dumps({"kb_version": number, "out": str(out), "n_questions": len(questions)},
                         indent=2))
        return 0
    print(f"wrote {len(questions)} candidate questions about KB version {number} to {out}")
    print("Review them (rewrite each question as a user would ask it, fix doc_id where another "
          f"document answers better), then move the file into {paths.home / 'golden'}/ : "
          "from the next build on, the gate scores every version on it with the absolute SLOs.")
    return 0
