"""Render audit reports (dicts from `dagster_project.audit.report`) as JSON or as markdown sections
ready to paste into a postmortem. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import datetime

from kb_core.markdown import ROWS, fmt_time, short, table  # noqa: F401  (re-exported)
from kb_core.models import ASSISTANT_MODEL, KB_MODEL


def to_json(report: dict) -> str:
    def default(o):
        if isinstance(o, datetime):
            return o.isoformat() + "Z"  # stored times are naive UTC
        return str(o)

    return json.dumps(report, default=default, ensure_ascii=False, indent=2, sort_keys=False)


def code(v) -> str:
    return f"`{v}`" if v not in (None, "") else "—"


def window_text(w: dict) -> str:
    end = fmt_time(w["until"]) if w["until"] else "still"
    by = f" (by {w['set_by']}{', forced' if w['forced'] else ''})" if w.get("set_by") else ""
    return f"{fmt_time(w['from'])} → {end}{by}"


def windows_text(ws: list[dict]) -> str:
    return "; ".join(window_text(w) for w in ws) if ws else "never"


def runs_section(runs: dict) -> list[str]:
    if not runs:
        return []
    rows = []
    for rid, f in sorted(runs.items()):
        if not f.get("found"):
            rows.append((code(rid), "—", f.get("error") or "not in the Dagster instance",
                         None, None, None, None))
            continue
        checks = f.get("checks") or []
        failed = [f"{c['asset']}:{c['check']}" for c in checks if not c["passed"]]
        rows.append((code(rid), f["job"], f["status"], f["start"], f["end"],
                     ", ".join(f["assets_materialized"]) or None,
                     f"{len(checks) - len(failed)}/{len(checks)} passed"
                     + (f" (failed: {', '.join(failed)})" if failed else "") if checks else None))
    return ["", "### Dagster runs (from the event log)", "",
            table(rows, ["run", "job", "status", "started", "ended", "materialized", "checks"])]


# ---------------------------------------------------------------------------- at
def md_at(r: dict, note: str = "", runs: dict | None = None) -> str:
    t = r["time"]
    out = [f"## What was live at {fmt_time(t)}", ""]
    if note:
        out += [f"_Time: {note}._", ""]
    rows = []
    for m in r["models"].values():
        set_by = m.get("set_by") or {}
        until = fmt_time(m["until"]) if m.get("until") else ("still" if m["version"] else None)
        if m.get("ended_by") and m.get("until"):
            e = m["ended_by"]
            until += f" (→ v{e['to_version']} by {e['actor']}: {e['reason'] or 'no reason'})"
        rows.append((m["model"], f"v{m['version']}" if m["version"] is not None else "none",
                     m["basis"] or f"never held `{r['alias']}` before this time",
                     m.get("since"), until, set_by.get("actor"),
                     set_by.get("forced") if set_by else None, set_by.get("reason"),
                     code(m.get("built_by_run")) if m.get("built_by_run") else None))
    out.append(table(rows, ["model", "version", "basis", f"held `{r['alias']}` since", "until",
                            "moved there by", "forced", "reason", "built by Dagster run"]))
    kb = r["models"].get(KB_MODEL) or {}
    if kb.get("kb_version"):
        v = kb["kb_version"]
        reg = kb.get("registry") or {}
        out += ["", f"### KB v{v['version']}", "",
                f"- Built {fmt_time(v['created_at'])} by Dagster run {code(v['run_id'])} "
                f"at code version {code(v['code_version'])}",
                f"- Chunker {code((v.get('chunker') or {}).get('version'))}; embedding model "
                f"{code(v['embedding_model'])}",
                f"- {v['n_docs']} documents, {v['n_chunks']} chunks"]
        if reg:
            out.append(f"- MLflow: model `kb` version {reg.get('mlflow_version')} "
                       f"(MLflow run {code(reg.get('run_id'))}, registered by Dagster run "
                       f"{code((reg.get('tags') or {}).get('dagster_run_id'))}, status "
                       f"{reg.get('status')})")
        out.append(f"- Details: `kb audit version {v['version']}`")
    asst = r["models"].get(ASSISTANT_MODEL) or {}
    if asst.get("version") is not None:
        reg = asst.get("registry") or {}
        ds = asst.get("ft_dataset") or {}
        out += ["", f"### kb-assistant v{asst['version']}", "",
                f"- Built by Dagster run {code(asst.get('built_by_run'))} (MLflow run "
                f"{code(asst.get('mlflow_run_id'))}, MLflow version {reg.get('mlflow_version')})",
                f"- Trained on FT dataset "
                f"{'v' + str(ds['dataset_version']) if ds else '—'} from KB "
                f"{'v' + str(asst['kb_version']) if asst.get('kb_version') else '—'}"
                + (f", continuing from kb-assistant v{asst['parent_version']}"
                   if asst.get("parent_version") else "")]
    if r.get("timeline"):
        out += ["", "### Alias moves around this time", "",
                table([(m["event_at"], m["model"], m["from_version"], m["to_version"],
                        m["actor"], m["forced"], m["reason"]) for m in r["timeline"]],
                      ["time", "model", "from", "to", "by", "forced", "reason"])]
    out += runs_section(runs or {})
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- diff
def md_diff(d: dict, heading: str = "##") -> str:
    a, b = d["a"], d["b"]
    out = [f"{heading} Changes from KB v{a} to v{b}", ""]
    changed = [s for s in d["settings"] if s["changed"]]
    if changed:
        out.append("**Settings changed:** " + ", ".join(
            f"{s['setting']} {s['before']} → {s['after']}" for s in changed))
    else:
        out.append("**Settings:** unchanged.")
    c = d["documents"]
    out += ["", f"**Documents:** {c['added']} added, {c['changed']} changed, {c['removed']} "
                f"removed, {c['rechunked']} re-chunked (same content, new chunks), "
                f"{c['unchanged']} unchanged. Chunks shared by both versions: "
                f"{d['chunks_shared']}.", ""]
    listed = [x for x in d["document_changes"] if x["change"] != "rechunked"]
    out.append(table([(x["change"], x["doc_id"], x["source_path"], short(x["hash_before"]),
                       short(x["hash_after"]), x["chunks_before"], x["chunks_after"])
                      for x in listed],
                     ["change", "doc_id", "source", "content hash before", "after",
                      "chunks before", "after"]))
    out += ["", f"{heading}# Source files", "",
            table([(x["change"], x["path"], short(x["sha256_before"], 16),
                    short(x["sha256_after"], 16), x["docs_before"], x["docs_after"])
                   for x in d["sources"]],
                  ["change", "path", "sha256 before", "sha256 after", "docs before", "after"])]
    sa, sb = d["chunk_stats"][str(a)], d["chunk_stats"][str(b)]
    keys = ["chunks", "docs", "tokens", "mean", "median", "p10", "p90", "min", "max"]
    out += ["", f"{heading}# Chunk lengths (tokens per chunk)", "",
            table([(f"v{a}", *[sa.get(k) for k in keys]), (f"v{b}", *[sb.get(k) for k in keys])],
                  ["version", *keys])]
    if d["eval_metrics"]:
        out += ["", f"{heading}# Retrieval evaluation", "",
                table([(m["metric"], m["before"], m["after"], m["delta"])
                       for m in d["eval_metrics"]], ["metric", f"v{a}", f"v{b}", "delta"])]
    out += ["", f"{heading}# Settings", "",
            table([(s["setting"], s["before"], s["after"], "**changed**" if s["changed"] else "")
                   for s in d["settings"]], ["setting", f"v{a}", f"v{b}", ""])]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- version
def md_version(r: dict, runs: dict | None = None) -> str:
    n = r["version"]
    reg = r.get("registry") or {}
    ch = r["chunker"] or {}
    c = r["counts"]
    out = [f"## KB version {n}", "",
           table([
               ("created", fmt_time(r["created_at"])),
               ("built by Dagster run", code(r["run_id"])),
               ("code version", code(r["code_version"])),
               ("chunker", f"size={ch.get('size')} overlap={ch.get('overlap')} "
                           f"mask_pii={ch.get('mask_pii')} tokenizer={ch.get('tokenizer')} "
                           f"normaliser={ch.get('normaliser')}"),
               ("chunker version", code(ch.get("version"))),
               ("embedding model", f"{code(r['embedding_model'])} (dim {r['dim']})"),
               ("lexical index", r.get("lexical")),
               ("documents / chunks / source files",
                f"{c['documents']} / {c['chunks']} / {c['source_files']}"),
               ("fingerprint", code(short(r["fingerprint"], 16))),
               ("index sha256", code(short(r["hashes"]["index_sha256"], 16))),
               ("files", f"on disk at {code(r.get('path'))}" if r.get("files_on_disk", True)
                else "removed by retention (lineage kept; cannot be served or rolled back to)"),
               ("MLflow", f"model `kb` version {reg.get('mlflow_version')}, run "
                          f"{code(reg.get('run_id'))}, status {reg.get('status')}"
                if reg else "not registered"),
               ("held production", windows_text(r["production_windows"])),
               ("previous version", f"v{r['previous_version']}"
                if r["previous_version"] is not None else "none (first version)"),
           ], ["field", "value"])]
    failed = c["checks_failed"]
    out += ["", f"### Checks ({len(r['checks'])}, {failed} failed, "
                f"{c['checks_overridden']} passed by override)", ""]
    attention = [f"{x['asset']}:{x['check_name']} "
                 + ("FAILED" if not x["passed"] else "passed by override")
                 + (" (blocking)" if x["blocking"] else "")
                 for x in r["checks"] if not x["passed"] or x["overridden"]]
    if attention:
        out += ["**Needs attention:** " + "; ".join(attention), ""]
    out += [table([(x["event_at"], x["asset"], x["check_name"],
                    ("**FAILED**" if not x["passed"] else
                     "passed (**override**)" if x["overridden"] else "passed"),
                    x["severity"], x["blocking"], x["description"]) for x in r["checks"]],
                  ["time", "asset", "check", "result", "severity", "blocking", "description"])]
    out += ["", "### Evaluation", ""]
    if r["evals"]:
        for e in r["evals"]:
            details = e.get("details") or {}
            vs = details.get("production_version")
            out += [f"At {fmt_time(e['created_at'])} (run {code(e['run_id'])}): "
                    f"{'passed' if e['passed'] else '**FAILED**'}"
                    + (f", compared with production v{vs}" if vs is not None else ""), "",
                    table(sorted((e["metrics"] or {}).items()), ["metric", "value"]), ""]
            gate = [g for g in details.get("gate") or [] if isinstance(g, dict)]
            if gate:
                out += [table([(g.get("name"), "pass" if g.get("passed") else "**FAIL**",
                                g.get("value"), g.get("threshold")) for g in gate],
                              ["gate", "result", "value", "threshold"]), ""]
    else:
        out.append("_no evaluation recorded_")
    out += ["", f"### Source files ({len(r['sources'])})", "",
            table([(s["path"], code(s["sha256"]), s["n_docs"]) for s in r["sources"]],
                  ["path", "sha256", "docs"])]
    out += ["", f"### Quarantined when this version was built ({len(r['quarantine'])})", "",
            table([(q["source_path"], q["line"], q["reason"], q["event_at"], q["this_run"])
                   for q in r["quarantine"]],
                  ["file", "line", "reason", "quarantined at", "by this run"])]
    if r["ft_datasets"]:
        out += ["", "### Fine-tuning datasets built from this version", "",
                table([(f"v{f['dataset_version']}", f["created_at"], f["n_train"], f["n_eval"],
                        code(f["run_id"])) for f in r["ft_datasets"]],
                      ["dataset", "created", "train", "eval", "Dagster run"])]
    out += [""]
    if r["diff"]:
        out.append(md_diff(r["diff"], heading="###"))
    else:
        out.append("_First version: nothing to compare with._\n")
    return "\n".join(out) + "\n".join(runs_section(runs or {})) + ("\n" if runs else "")


# ---------------------------------------------------------------------------- doc
def md_doc(r: dict, runs: dict | None = None) -> str:
    s = r["summary"]
    in_prod = ", ".join(f"v{v}" for v in s.get("models_in_production", []))
    out = [f"## Document audit: `{r['query']}`", "",
           f"- Matched {len(r['documents'])} document(s) by doc_id, doc_key or source path",
           f"- KB versions that contained it: "
           f"{', '.join('v' + str(v) for v in s['kb_versions']) or 'none'}",
           f"- Of those, ever in production: "
           f"{', '.join('v' + str(v) for v in s['ever_in_production']) or 'none'}",
           f"- Fine-tuning datasets: {', '.join('v' + str(v) for v in s['ft_datasets']) or 'none'}",
           f"- Models that saw it: {', '.join(s['models']) or 'none'}"
           + (f" (in production: kb-assistant {in_prod})" if in_prod else ""), "",
           "### Documents", "",
           table([(d["doc_id"], code(d["doc_key"]), d["source_path"]) for d in r["documents"]],
                 ["doc_id", "doc_key", "source file"]),
           "", "### Content history (ingest events)", "",
           table([(e["event_at"], e["event"], e["doc_id"], short(e["content_hash"]),
                   short(e["file_sha256"], 16), code(e["run_id"])) for e in r["events"]],
                 ["time", "event", "doc_id", "content hash", "file sha256", "Dagster run"]),
           "", "### KB versions containing it", "",
           table([(f"v{k['version']}", k["created_at"], k["doc_id"], short(k["content_hash"]),
                   short(k["file_sha256"], 16), k["chunks"], windows_text(k["production_windows"]),
                   code(k["run_id"])) for k in r["kb_versions"]],
                 ["KB version", "created", "doc_id", "content hash", "file sha256", "chunks",
                  "in production", "built by run"])]
    out += ["", "### Fine-tuning datasets containing it", "",
            table([(f"v{f['dataset_version']}", f["created_at"], f["doc_key"], f["lines"],
                    f["splits"], short(f["content_hash"]),
                    f"v{f['kb_version']}" if f["kb_version"] is not None else None,
                    code(f["run_id"])) for f in r["ft_datasets"]],
                  ["dataset", "created", "doc_key", "lines", "splits", "content hash",
                   "from KB", "Dagster run"]),
            "", "### Fine-tuned models that saw it", "",
            table([(m["model"], f"v{m['version']}", m["exposure"], m["mlflow_version"],
                    f"v{m['ft_dataset_version']}" if m["ft_dataset_version"] else None,
                    windows_text(m["production_windows"]), code(m["run_id"]))
                   for m in r["models"]],
                  ["model", "version", "how it saw the document", "MLflow version", "dataset",
                   "in production", "Dagster run"])]
    out += runs_section(runs or {})
    return "\n".join(out) + "\n"
