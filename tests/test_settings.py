"""The one table of KB_* variables and its parser; no side effects when the code is imported."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kb_core import settings
from kb_core.settings import SettingError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kb_core", "resources", "kb_assets", "checks", "sensors", "dagster_project")


@pytest.mark.parametrize("raw, kind, minimum, expected", [
    ("3", int, None, 3), (" 2.5 ", float, None, 2.5), ("on", bool, None, True),
    ("No", bool, None, False), ("0", int, 0, 0), ("x", str, None, "x"),
])
def test_parse_accepts(raw, kind, minimum, expected):
    assert settings.parse("KB_X", raw, kind, minimum) == expected


@pytest.mark.parametrize("raw, kind, minimum, choices, message", [
    ("many", int, None, (), "KB_X='many': expected an integer"),
    ("2.5", int, None, (), "KB_X='2.5': expected an integer"),
    ("high", float, None, (), "KB_X='high': expected a number"),
    ("-1", float, 0, (), "KB_X='-1': must be at least 0"),
    ("maybe", bool, None, (), "KB_X='maybe': expected 1/0"),
    ("azure", str, None, ("local", "openai"), "KB_X='azure': expected one of local, openai"),
])
def test_parse_rejects_naming_variable_and_value(raw, kind, minimum, choices, message):
    with pytest.raises(SettingError) as err:
        settings.parse("KB_X", raw, kind, minimum, choices)
    assert str(err.value).startswith(message)


def test_get_uses_the_table_default_when_unset_or_blank():
    assert settings.get("KB_SENSOR_INTERVAL_S", {}) == 30.0
    assert settings.get("KB_SENSOR_INTERVAL_S", {"KB_SENSOR_INTERVAL_S": "  "}) == 30.0
    assert settings.get("KB_SENSOR_INTERVAL_S", {"KB_SENSOR_INTERVAL_S": "5"}) == 5.0
    assert settings.get("KB_FT_PROVIDER", {"KB_FT_PROVIDER": "OpenAI"}) == "openai"
    with pytest.raises(KeyError):
        settings.get("KB_NOT_A_SETTING", {})


def _production_sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path, path.read_text(encoding="utf-8")


def test_production_code_reads_kb_variables_only_through_the_table():
    direct = re.compile(r"""(environ|getenv)\b[^\n]{0,20}["'](KB_[A-Z0-9_]+)""")
    found = [f"{p.relative_to(ROOT)}: {m.group(2)}" for p, text in _production_sources()
             for m in direct.finditer(text)]
    assert not found, "read KB_* with kb_core.settings.get instead:\n" + "\n".join(found)
    used = {m.group(1) for _, text in _production_sources()
            for m in re.finditer(r"""settings\.(?:get|enabled)\(\s*["'](KB_[A-Z0-9_]+)""", text)}
    assert used and used <= set(settings.BY_NAME), used - set(settings.BY_NAME)


def test_importing_the_code_has_no_side_effects(tmp_path):
    """Importing the definitions creates no folder, writes no file and sets no variable:
    `kb init`, `kb build` and `make ui` create what they need."""
    home = tmp_path / "never-created"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "DAGSTER_", "HF_"))}
    env.update(KB_HOME=str(home), PYTHONPATH=str(ROOT))
    code = ("import json, os; before = dict(os.environ); import dagster_project.definitions, "
            "dagster_project.cli, dagster_project.api.server, checks, sensors, kb_assets.defs; "
            "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not home.exists() and list(tmp_path.iterdir()) == []
    assert "DAGSTER_HOME" not in changed and "KB_HOME" not in changed, changed
