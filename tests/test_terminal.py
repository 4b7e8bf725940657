"""What users see in the terminal (issue 15): `kb --version`, the same flag names on every
command, KB_HOME discovery and errors that name it, the step lines and progress of
`kb build`, and a README that documents every KB_* variable the code reads. The JSON
shapes of commands that need a built KB are in test_terminal_json.py."""

import io
import json
import re
from pathlib import Path

import pytest

from dagster_project.cli import build_parser, main
from dagster_project.cli.build_terminal import ProgressRenderer, StepState, step_line
from kb_core import progress
from kb_core.home import MARKER, describe, find_home

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_PACKAGES = ["dagster_project", "kb_assets", "kb_core", "resources", "checks", "sensors"]
# Set only by the crash-safety tests (the module moves to tests/): not a user setting.
TEST_ONLY = {"KB_FAULT_POINT", "KB_FAULT_MARKER"}


def env_names_read_by_code() -> set[str]:
    """Every KB_* name written as a string literal in production code (how the code reads
    the environment: os.environ.get("KB_X"), _env(env, "KB_X", ...), X_ENV = "KB_X")."""
    from kb_core import settings

    names, python_names = set(), set()
    for package in PRODUCTION_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            names |= set(re.findall(r"""["'](KB_[A-Z0-9_]+)["'{]""", text))
            # Python names such as KB_ASSETS (listed in __all__) are not variables.
            python_names |= set(re.findall(r"^(KB_[A-Z0-9_]+)\s*[:=]", text, re.M))
    return (names - python_names - TEST_ONLY) | set(settings.BY_NAME)


def test_every_kb_variable_read_by_the_code_is_documented_in_the_readme():
    names = env_names_read_by_code()
    assert {"KB_HOME", "KB_FT_THREADS", "KB_FT_MAX_SEQ_LEN"} <= names  # the scan works
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}" not in readme)
    assert not missing, f"KB_* variables read by the code but not documented in README.md: {missing}"


def test_readme_documents_the_code_defaults_of_the_ft_settings(kb_paths):
    from resources.ft_config import ft_resources

    res = ft_resources(kb_paths, {})
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    row = next(x for x in readme.splitlines() if "`KB_FT_MAX_SEQ_LEN`" in x and x.startswith("|"))
    assert str(res["finetuner"].max_seq_len) in row
    assert "`KB_FT_THREADS`" in readme


def test_kb_version_prints_package_version_and_kb_home(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kbh"))
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert re.match(r"kb-platform \d+\.\d+", out), out
    assert f"KB_HOME={tmp_path / 'kbh'} (from the KB_HOME environment variable)" in out


@pytest.mark.parametrize("argv", [
    ["search", "q", "-k", "4"], ["search", "q", "--k", "4"],
    ["ask", "q", "-k", "4"], ["ask", "q", "--k", "4"],
    ["eval", "-k", "4"], ["eval", "--k", "4"],
])
def test_k_is_spelled_both_ways_everywhere(argv):
    assert build_parser().parse_args(argv).k == 4


@pytest.mark.parametrize("argv", [
    ["search", "q", "--kb-version", "3"], ["search", "q", "--version", "3"],
    ["eval", "--kb-version", "3"], ["eval", "--version", "3"],
    ["golden", "suggest", "--kb-version", "3"], ["golden", "suggest", "--version", "3"],
])
def test_kb_version_flag_and_its_old_spelling(argv):
    assert build_parser().parse_args(argv).kb_version == 3


@pytest.mark.parametrize("argv", [
    ["init"], ["build"], ["finetune"], ["search", "q"], ["ask", "q"], ["eval"], ["versions"],
    ["promote", "1"], ["rollback"], ["golden", "suggest"], ["serve"],
    ["audit", "version", "1"], ["audit", "at", "now"], ["audit", "diff", "1", "2"],
    ["audit", "doc", "x"],
])
def test_every_command_accepts_json(argv):
    args = build_parser().parse_args([*argv, "--json"])
    assert getattr(args, "json", None) is True or getattr(args, "format", None) == "json"


def test_audit_json_is_format_json():
    p = build_parser()
    assert p.parse_args(["audit", "version", "2", "--json"]).format == "json"
    assert p.parse_args(["audit", "version", "2", "--format", "json"]).format == "json"
    assert p.parse_args(["audit", "version", "2"]).format == "md"


# --- KB_HOME discovery -------------------------------------------------------------------

def test_kb_home_from_the_environment_first(tmp_path):
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / MARKER).write_text("")
    home, how = find_home({"KB_HOME": str(tmp_path / "elsewhere")}, tmp_path / "proj")
    assert home == (tmp_path / "elsewhere").resolve() and "environment" in how


def test_kb_home_found_upward_by_marker_or_database(tmp_path):
    proj = tmp_path / "proj"
    deep = proj / "docs" / "notes"
    deep.mkdir(parents=True)
    (proj / "data").mkdir()
    assert find_home({}, deep)[0] == (deep / "data").resolve()  # nothing yet: ./data
    (proj / "data" / "kb.duckdb").write_bytes(b"")  # a KB built before the marker existed
    home, how = find_home({}, deep)
    assert home == proj / "data" and how == f"found upward from {deep}"
    inside = proj / "data" / "inbox" / "hr"
    inside.mkdir(parents=True)
    assert find_home({}, inside)[0] == proj / "data"  # from inside the KB home itself
    other = tmp_path / "other-kb"
    other.mkdir()
    (other / MARKER).write_text("")
    assert find_home({}, other)[0] == other


def test_kb_init_marks_the_home_and_a_command_below_it_finds_it(tmp_path, monkeypatch, capsys):
    for var in ("KB_HOME", "KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    assert main(["init"]) == 0
    assert (proj / "data" / MARKER).is_file()
    sub = proj / "reports" / "2026"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    capsys.readouterr()
    assert main(["search", "annual leave"]) == 2
    err = capsys.readouterr().err
    # The error names the KB_HOME it used and how it was found (not ./data of `sub`).
    assert f"KB_HOME={proj / 'data'} (found upward from {sub})" in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("argv", [["search", "q"], ["eval"], ["golden", "suggest"],
                                  ["audit", "version", "1"], ["promote", "3"], ["rollback"],
                                  ["serve"]])
def test_errors_that_depend_on_kb_home_name_it(argv, kb_paths, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"KB_HOME={kb_paths.home} (from the KB_HOME environment variable)" in err, err
    assert len(err.splitlines()) == 1


def test_usage_errors_do_not_name_kb_home(kb_paths, capsys):
    assert main(["search", "   "]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kb search: the query is empty"


def test_describe_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("KB_HOME", str(tmp_path))
    assert describe() == f"KB_HOME={tmp_path} (from the KB_HOME environment variable)"


def test_kb_init_json(kb_paths, capsys):
    assert main(["init", "--samples", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"kb_home", "kb_home_found", "inbox", "dagster_home", "samples_copied",
                        "golden_copied"}
    assert out["kb_home"] == str(kb_paths.home) and out["samples_copied"] > 20
    assert Path(out["golden_copied"]).is_file()


# --- step lines and progress ---------------------------------------------------------------

def test_step_line_says_outcome_duration_and_checks():
    st = StepState(passed=4, warned=["embeddings_centroid_drift"])
    line = step_line("embeddings_quality", "warn", 0.42, st)
    assert line.split()[:3] == ["warn", "embeddings_quality", "0.4s"]
    assert "checks: 4 passed, 1 warning (embeddings_centroid_drift)" in line
    failed = step_line("raw_docs_quality", "FAILED", 1.0, StepState(passed=5,
                                                                    failed=["raw_docs_kb_shrink"]))
    assert "1 FAILED (raw_docs_kb_shrink)" in failed
    assert step_line("kb_release", "skipped", None, StepState()).split()[:2] == ["skipped",
                                                                                 "kb_release"]


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_progress_is_rate_limited_and_quiet_for_short_tasks():
    out, clock = io.StringIO(), FakeClock()
    r = ProgressRenderer(out, tty=False, every_s=30, clock=clock)
    for i in range(1, 1001):  # a 10 s task reporting 1000 times: nothing printed
        clock.t = i / 100
        r("embedding", i, 1000, "chunks")
    assert out.getvalue() == ""
    for i in range(1, 3001):  # a 300 s task: a line every 30 s at most, then the last one
        clock.t = 100 + i / 10
        r("training", i, 3000, "steps")
    lines = out.getvalue().splitlines()
    assert 9 <= len(lines) <= 11, lines
    assert lines[-1].split()[1:3] == ["training:", "3000/3000"]


def test_progress_reporter_is_installed_only_while_shown():
    from dagster_project.cli.build_terminal import progress_shown

    seen = []
    progress.report("x", 1, 2)  # no reporter: nothing, no error
    previous = progress.set_reporter(lambda *a: seen.append(a))
    try:
        progress.report("x", 1, 2, "u")
        with progress_shown(io.StringIO()) as renderer:
            assert progress._reporter is renderer
        assert seen == [("x", 1, 2, "u")]
    finally:
        progress.set_reporter(previous)


def test_embedding_reports_progress_per_slice_with_the_same_vectors():
    import numpy as np

    from kb_assets.embed import PROGRESS_EVERY, encode_slices
    from resources.embedder import Embedder

    texts = [f"policy number {i} about parking" for i in range(PROGRESS_EVERY + 2)]
    embedder, seen = Embedder(), []
    previous = progress.set_reporter(lambda *a: seen.append(a))
    try:
        vecs = encode_slices(embedder, texts, 1000, 5000)
    finally:
        progress.set_reporter(previous)
    assert seen == [("embedding", 1000 + PROGRESS_EVERY, 5000, "chunks"),
                    ("embedding", 1000 + len(texts), 5000, "chunks")]
    assert np.allclose(vecs, embedder.encode(texts), atol=1e-5)


def test_step_printer_collects_step_warnings_and_prints_the_header_once():
    import logging

    from dagster_project.cli.build_terminal import StepPrinter

    out = io.StringIO()
    printer = StepPrinter(out, header="kb build (kb): run r1 of kb_job")
    rec = logging.makeLogRecord({"msg": "formatted", "levelno": logging.WARNING,
                                 "dagster_meta": {"step_key": "raw_docs", "dagster_event": None,
                                                  "orig_message": "3 files quarantined"}})
    printer.log_record(rec)
    info = logging.makeLogRecord({"msg": "x", "levelno": logging.INFO,
                                  "dagster_meta": {"step_key": "raw_docs", "dagster_event": None,
                                                   "orig_message": "chatter"}})
    printer.log_record(info)
    assert printer.warnings == ["raw_docs: 3 files quarantined"]
    assert out.getvalue() == ""  # nothing before the first event


def test_tty_progress_draws_a_bar_and_closes_it_when_done():
    out = io.StringIO()
    r = ProgressRenderer(out, tty=True)
    for i in range(0, 101, 10):
        r("embedding", i, 100, "chunks")
    assert "embedding:" in out.getvalue() and "chunks/s" in out.getvalue()
    assert r.bars == {} and out.getvalue().endswith("\r")  # closed and cleared at 100%
