"""The git provenance of a cell: a run of edited code says so (``+dirty``)."""
import subprocess

from ttt.eval.cell import git_sha


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_sha_marks_edited_tracked_files(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "new.txt").write_text("untracked files are not code that ran\n")
    assert git_sha(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == head + "+dirty"


def test_git_sha_outside_a_checkout_is_none(tmp_path):
    assert git_sha(tmp_path) is None
