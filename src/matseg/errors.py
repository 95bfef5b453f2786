"""Errors written for people: one line naming where, what was expected, what was found, a hint."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any


class UserError(Exception):
    """The root of every error matseg raises on purpose, for a person to read: the CLI (and a
    notebook) shows its :meth:`line` alone, without a traceback."""

    def line(self) -> str:
        return str(self)


class MatsegError(UserError):
    """An error about a named file, field or object: where, what was expected, what was found."""

    def __init__(self, where: str, expected: str, found: str, hint: str = "") -> None:
        self.where = where
        self.expected = expected
        self.found = found
        self.hint = hint
        super().__init__(self.line())

    def detail(self) -> str:
        """The message without its location: ``expected X, found Y; hint``."""
        text = f"expected {self.expected}, found {self.found}"
        return f"{text}; {self.hint}" if self.hint else text

    def line(self) -> str:
        """The one-line message: ``where: expected X, found Y; hint``."""
        return f"{self.where}: {self.detail()}"


class InputError(UserError, ValueError):
    """Bad arguments to a numerical function (shapes, ranges, names), its message already one
    line that says what was expected and found; the CLI prints it without a traceback.

    A ValueError, so code that validates with the standard exception keeps working.
    """


class DataError(MatsegError):
    """A data file (image, mask, annotation, manifest) cannot be used as it is."""


class SpecError(MatsegError):
    """A field of a dataset spec (or other JSON the user wrote) is wrong."""


def not_a_file(path: Path) -> str:
    """What stands at a path where a file was expected: a folder, or nothing."""
    return "a folder, not a file" if Path(path).is_dir() else "no such file"


def read_json(
    path: Path, what: str, error: type[MatsegError] = DataError, hint: str = "check the path"
) -> Any:
    """A JSON file's content; a missing, undecodable or malformed file is one ``error`` line."""
    if not path.is_file():
        raise error(str(path), what, not_a_file(path), hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(str(path), "valid JSON", f"a syntax error ({exc})", "fix the JSON") from None


class DownloadError(MatsegError):
    """A catalog download failed or a downloaded file does not match its checksum."""


class TrainingError(MatsegError):
    """Training went wrong in a way a result must never hide (a loss that is not finite)."""


class ModelError(MatsegError):
    """A model cannot be built as asked, or requested weights cannot be found or loaded."""


_OS_REMEDIES = {
    errno.ENOSPC: "free space on that disk, or write elsewhere (--out)",
    errno.EDQUOT: "free space within your quota, or write elsewhere (--out)",
    errno.EACCES: "choose a folder you may write to (--out), or change its permissions",
    errno.EPERM: "choose a folder you may write to (--out), or change its permissions",
    errno.EROFS: "the filesystem is read-only: write elsewhere (--out)",
    errno.EEXIST: "a file is in the way: remove it or choose another path",
    errno.ENOTDIR: "a file stands where a folder is needed: remove it or choose another path",
    errno.EISDIR: "a folder stands where a file is needed: name a file",
    errno.ENOENT: "check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_error_line(exc: OSError) -> str:
    """An operating-system error (disk full, read-only, permission, a file in the way) as one
    line for people: where, what happened, what to do. Nothing is half-written: every file
    matseg writes goes through a temporary file and a rename."""
    where = exc.filename if exc.filename is not None else "a file or folder"
    if getattr(exc, "filename2", None):
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc) or type(exc).__name__
    remedy = _OS_REMEDIES.get(exc.errno or -1, "check the path and its permissions")
    return f"{where}: {what.lower()}; {remedy}"
