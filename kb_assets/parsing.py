"""Turn one inbox file's bytes into documents, or into quarantine problems naming the file,
line and field. Pure: bytes in, records out; the caller does all I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .budget import BudgetExceeded, Deadline, budget_for
from kb_core.html_extract import HTMLTooDeep, html_to_text
from .injection import injection_flags
from kb_core.text import CJK_CHAR, content_hash, normalise

SUPPORTED_EXTENSIONS = (".jsonl", ".md", ".txt", ".html", ".htm")


@dataclass(frozen=True)
class ParsedDoc:
    doc_key: str      # unique, stable identity: path (+ #id or #L<line> for JSONL)
    doc_id: str       # what users and golden sets call it: the JSONL id, else the path
    source_path: str  # inbox-relative, forward slashes
    line: int | None
    title: str
    text: str         # extracted text (HTML stripped), not yet cleaned for chunking
    content_hash: str
    metadata: dict = field(default_factory=dict)
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    source_path: str
    line: int | None
    reason: str

    def describe(self) -> str:
        where = self.source_path + (f":{self.line}" if self.line else "")
        return f"{where}: {self.reason}"


@dataclass
class ParseResult:
    docs: list[ParsedDoc] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _decode(rel: str, data: bytes) -> tuple[str | None, Problem | None]:
    if b"\x00" in data[:8192]:
        return None, Problem(rel, None, "binary file (NUL bytes), not text")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        hint = ""
        try:
            guess = data.decode("big5")
            if len(CJK_CHAR.findall(guess)) > len(guess) * 0.2:
                hint = "; it decodes as Big5 (Traditional Chinese): re-save it as UTF-8"
        except UnicodeDecodeError:
            pass
        return None, Problem(
            rel, None,
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}){hint}")


def _doc(rel: str, key: str, doc_id: str, line: int | None, title: str, text: str,
         metadata: dict) -> ParsedDoc:
    return ParsedDoc(key, doc_id, rel, line, title, text, content_hash(text), metadata,
                     injection_flags(title + "\n" + text))


def _parse_jsonl(rel: str, text: str, result: ParseResult, budget_s: float | None) -> None:
    seen_ids: dict[str, int] = {}
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:  # each line is its own document, with its own budget
            _parse_jsonl_line(rel, lineno, raw, seen_ids, result,
                              Deadline(budget_for(len(raw), budget_s)))
        except BudgetExceeded as exc:
            result.problems.append(Problem(rel, lineno, str(exc)))


def _parse_jsonl_line(rel: str, lineno: int, raw: str, seen_ids: dict[str, int],
                      result: ParseResult, deadline: Deadline) -> None:
    def bad(reason: str) -> None:
        result.problems.append(Problem(rel, lineno, reason))

    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        bad(f"malformed JSON: {exc.msg} (column {exc.colno})")
        return
    except ValueError as exc:  # found by fuzzing: a 4,301-digit number crashed the batch
        bad(f"malformed JSON: {exc}")
        return
    except RecursionError:  # [[[[...]]]] thousands deep
        bad("malformed JSON: nested too deeply")
        return
    if not isinstance(obj, dict):
        bad(f"expected a JSON object, got {type(obj).__name__}")
        return
    body = obj.get("text")
    if body is None:
        bad("field 'text' is missing")
        return
    if not isinstance(body, str):
        bad(f"field 'text' must be a string, got {type(body).__name__}")
        return
    if not normalise(body):
        bad("field 'text' is empty or whitespace only")
        return
    # `_id` is the BEIR corpus convention: such a corpus.jsonl dropped as-is keeps its ids.
    raw_id = obj.get("id", obj.get("_id"))
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))
                               or not str(raw_id).strip()):
        bad(f"field 'id' must be a non-empty string or integer, got {raw_id!r}")
        return
    title = obj.get("title", "")
    if not isinstance(title, str):
        bad(f"field 'title' must be a string, got {type(title).__name__}")
        return
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        bad(f"field 'metadata' must be an object, got {type(metadata).__name__}")
        return
    if raw_id is None:
        key, doc_id = f"{rel}#L{lineno}", f"{rel}#L{lineno}"
    else:
        doc_id = str(raw_id).strip()
        if doc_id in seen_ids:
            bad(f"duplicate id {doc_id!r} (first used on line {seen_ids[doc_id]})")
            return
        seen_ids[doc_id] = lineno
        key = f"{rel}#{doc_id}"
    deadline.check("json")
    doc = _doc(rel, key, doc_id, lineno, normalise(title), body, metadata)
    deadline.check("injection scan")
    result.docs.append(doc)


def parse_file(rel: str, data: bytes, budget_s: float | None = None,
               deadline: Deadline | None = None) -> ParseResult:
    """Parse one file; `rel` is its inbox-relative path with forward slashes. A document that
    takes longer than `budget_s` seconds per MB (per JSONL line) becomes a Problem."""
    result = ParseResult()
    try:
        _parse_file(rel, data, budget_s, deadline or Deadline(budget_for(len(data), budget_s)),
                    result)
    except BudgetExceeded as exc:
        result.docs.clear()
        result.problems.append(Problem(rel, None, str(exc)))
    return result


def _parse_file(rel: str, data: bytes, budget_s: float | None, deadline: Deadline,
                result: ParseResult) -> ParseResult:
    suffix = PurePosixPath(rel).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        result.problems.append(Problem(
            rel, None, f"unsupported extension '{suffix or '(none)'}'; "
                       f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"))
        return result
    text, problem = _decode(rel, data)
    if problem:
        result.problems.append(problem)
        return result
    assert text is not None
    deadline.check("decode")
    if suffix == ".jsonl":
        _parse_jsonl(rel, text, result, budget_s)
        if not result.docs and not result.problems:  # found by fuzzing: was silently nothing
            result.problems.append(Problem(rel, None, "file is empty or whitespace only"))
        return result
    title = ""
    if suffix in (".html", ".htm"):
        try:
            title, text = html_to_text(text)
        except HTMLTooDeep as exc:
            result.problems.append(Problem(rel, None, str(exc)))
            return result
        deadline.check("html")
    if not normalise(text):
        result.problems.append(Problem(rel, None, "file is empty or whitespace only"))
        return result
    if not title:
        title = _first_heading(text) or PurePosixPath(rel).stem
    deadline.check("normalise")
    doc = _doc(rel, rel, rel, None, title, text, {})
    deadline.check("injection scan")
    result.docs.append(doc)
    return result


def _first_heading(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return normalise(line.lstrip("#").strip())[:200]
    return ""
