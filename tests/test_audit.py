"""The CI vulnerability audit (.ci/audit.py) judges pip-audit's report: it fails on what is not acknowledged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

VULNERABLE = {
    "dependencies": [
        {"name": "requests", "version": "2.19.0", "vulns": [{"id": "PYSEC-2018-28", "aliases": ["CVE-2018-18074"],
                                                             "fix_versions": ["2.20.0"]}]},
        {"name": "msgspec", "version": "0.19.0", "vulns": []},
    ]
}  # fmt: skip


def judge(tmp_path: Path, report: object, acknowledged: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "ack.toml").write_text(acknowledged)
    return subprocess.run(
        [sys.executable, str(REPO / ".ci" / "audit.py"), "--report", str(tmp_path / "report.json"),
         "--acknowledged", str(tmp_path / "ack.toml")],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_audit_fails_on_a_vulnerable_pin_and_names_the_fix(tmp_path: Path) -> None:
    result = judge(tmp_path, VULNERABLE)
    assert result.returncode == 1, result.stdout
    assert "VULNERABLE requests==2.19.0: PYSEC-2018-28 (fixed in: 2.20.0)" in result.stdout


def test_audit_passes_a_vulnerability_acknowledged_by_alias_with_a_reason(tmp_path: Path) -> None:
    ack = '[[acknowledged]]\nid = "CVE-2018-18074"\npackage = "requests"\nreason = "never sends credentials"\n'
    result = judge(tmp_path, VULNERABLE, ack)
    assert result.returncode == 0, result.stdout
    assert "acknowledged CVE-2018-18074 (requests: never sends credentials)" in result.stdout


def test_audit_refuses_an_acknowledgement_without_a_reason(tmp_path: Path) -> None:
    result = judge(tmp_path, VULNERABLE, '[[acknowledged]]\nid = "PYSEC-2018-28"\npackage = "requests"\n')
    assert result.returncode != 0
    assert "needs an id, a package and a reason" in result.stderr


def test_an_audit_that_checked_nothing_is_reported_not_passed_silently(tmp_path: Path) -> None:
    unchecked = {"dependencies": [{"name": "msgspec", "skip_reason": "Dependency not found on PyPI"}]}
    lenient = judge(tmp_path, unchecked)
    assert lenient.returncode == 0
    assert "AUDIT INCOMPLETE: 1 pins could not be checked" in lenient.stdout
    assert judge(tmp_path, unchecked, AUDIT_REQUIRED="1").returncode == 1
