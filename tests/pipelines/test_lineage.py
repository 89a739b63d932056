"""Which code a run ran: the checkout's own git locally, what the submitter recorded under ``ray job submit``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipelines.tracking import COMMIT_ENV, DIRTY_ENV, provenance_tags, revision_env, source_revision

REPO = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_a_local_run_names_the_checkouts_commit_and_whether_it_is_dirty(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    expected = {"git.commit": git("rev-parse", "HEAD"), "git.dirty": "true" if git("status", "--porcelain") else "false"}
    assert source_revision() == expected
    assert {key: provenance_tags()[key] for key in expected} == expected


def test_a_tree_edited_after_its_commit_is_dirty_and_a_folder_without_git_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "a.txt").write_text("one\n")
    git("add", "a.txt", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one", cwd=repo)
    assert source_revision(repo) == {"git.commit": git("rev-parse", "HEAD", cwd=repo), "git.dirty": "false"}
    (repo / "a.txt").write_text("two\n")
    assert source_revision(repo)["git.dirty"] == "true"
    plain = tmp_path / "uploaded"  # what Ray unpacks for a job: the files, no .git
    plain.mkdir()
    assert source_revision(plain) == {"git.commit": "unknown", "git.dirty": "unknown"}


def test_a_submitted_job_names_what_the_submitter_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    recorded = revision_env(REPO)
    assert recorded[COMMIT_ENV] == git("rev-parse", "HEAD")
    for key, value in recorded.items():
        monkeypatch.setenv(key, value)
    assert source_revision(tmp_path) == {"git.commit": recorded[COMMIT_ENV], "git.dirty": recorded[DIRTY_ENV]}
