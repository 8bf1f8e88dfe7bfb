"""`reflex tauq encode|decode`, run as a separate process like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reflex.tauq import loads

from .conftest import REPO_ROOT, read_jsonl, strict_equal


def reflex_command() -> list[str]:
    # The console script when the package is installed (make install), else the module.
    script = Path(sys.executable).with_name("reflex")
    return [str(script)] if script.exists() else [sys.executable, "-m", "commands.cli"]


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*reflex_command(), "tauq", *args], input=stdin, capture_output=True, cwd=REPO_ROOT, timeout=60
    )


def test_encode_then_decode_round_trips() -> None:
    value = {"users": [{"id": 1, "name": "Ann"}, {"id": 2, "name": "Bo"}], "ratio": 1.0, "big": 2**70,
             "odd key": "日本語", "empty": {}}
    encoded = run("encode", stdin=json.dumps(value).encode())
    assert encoded.returncode == 0, encoded.stderr
    assert "!use User" in encoded.stdout.decode()
    assert strict_equal(loads(encoded.stdout.decode()), value)
    decoded = run("decode", stdin=encoded.stdout)
    assert decoded.returncode == 0, decoded.stderr
    assert strict_equal(json.loads(decoded.stdout), value)


def test_decode_reads_a_file_and_pretty_prints(tmp_path: Path) -> None:
    vector = read_jsonl("tauq_vectors.jsonl")[5]
    source = tmp_path / "doc.tauq"
    source.write_text(vector["tauq"], encoding="utf-8")
    decoded = run("decode", "--indent", "2", str(source))
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout.startswith(b"{\n  ")
    assert strict_equal(json.loads(decoded.stdout), vector["json"])


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("decode",), b"a [1 2", b"not Tauq: '[' is never closed (line 1, column 3)"),
        (("decode",), b'x "open', b"unterminated string"),
        (("decode",), b"\xff\xfe", b"utf-8"),
        (("encode",), b"{not json", b"not JSON"),
        (("encode",), b'{"a": NaN}', b"NaN is not a JSON value"),
        (("decode", "/nonexistent/file.tauq"), b"", b"No such file"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(args: tuple[str, ...], stdin: bytes, message: bytes) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_unknown_action_is_a_usage_error() -> None:
    result = run("compress")
    assert result.returncode == 2
    assert b"invalid choice" in result.stderr


def test_the_readme_table_script_runs_and_says_where_tauq_does_not_help() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "tauq_table.py")], capture_output=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for row in ("prose answer", "code answer", "JSON object answer", "20 uniform records"):
        assert f"| {row}" in out
    assert "Where Tauq does not help: prose and code" in out
    assert "byte-identical output 200/200" in out
