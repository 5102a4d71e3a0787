"""Assertions on how an ``mxfs`` command failed, as a user sees it."""

from __future__ import annotations


def assert_one_error(returncode: int, stderr: str, *words: str, command: str | None = None) -> str:
    """Exit status 2, no traceback and exactly one ``error:`` line holding every word (and
    starting ``mxfs COMMAND: error: `` when ``command`` is given); returns that line."""
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    if command is not None:
        assert lines[0].startswith(f"mxfs {command}: error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
