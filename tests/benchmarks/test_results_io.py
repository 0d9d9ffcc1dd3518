"""What every benchmark records about its run (benchmarks/results_io.py): the commit (named by INGOT_COMMIT on a
GPU machine whose copy of .git is stale, else git's), and the JSON + markdown pair."""
from __future__ import annotations

import json
import subprocess

from benchmarks.results_io import COMMIT_ENV, ROOT, command_line, commit, write_result


def test_the_commit_is_the_one_named_in_the_environment(monkeypatch):
    monkeypatch.setenv(COMMIT_ENV, "0123abcd" * 5)
    assert commit() == "0123abcd" * 5


def test_without_the_variable_the_commit_is_gits_head(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert len(head) == 40 and commit() == head


def test_an_empty_variable_counts_as_unset(monkeypatch):
    monkeypatch.setenv(COMMIT_ENV, " ")
    assert commit() != " " and commit()


def test_the_record_and_its_note_land_side_by_side(tmp_path, capsys):
    record = {"commit": "abc", "results": [{"mode": "plain", "tok_s": 1.5}]}
    path = write_result(tmp_path / "new" / "folder", "bench_cpu", record, "# Bench\n\n| plain | 1.5 |\n")
    assert path == tmp_path / "new" / "folder" / "bench_cpu.json"
    assert json.loads(path.read_text()) == record
    assert (path.parent / "bench_cpu.md").read_text() == "# Bench\n\n| plain | 1.5 |\n"
    assert "| plain | 1.5 |" in capsys.readouterr().out


def test_the_command_line_reproduces_the_run_with_quoting():
    assert command_line("benchmarks.x", ["--label", "two words"]) == "python -m benchmarks.x --label 'two words'"
