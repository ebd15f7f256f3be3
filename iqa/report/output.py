"""The report's output directory, written as a set: a reader sees the old reports or the new ones, never a mix.

``iqa report`` writes its files into a staging directory beside ``--out``
(:meth:`Staging.create`, called before anything is measured, so that an
unwritable ``--out`` is an error at once). :meth:`Staging.publish` then carries
every entry of ``--out`` that the report does not own (``baselines/``, other
tools' folders such as ``train/`` or ``mutation/``, anything else) into the
staging directory as hard links (copies where links are not possible), and
swaps the two directories: in one step with Linux's ``renameat2(RENAME_EXCHANGE)``,
else by two renames (between which ``--out`` is briefly absent, never mixed).
The report owns only what it writes: the index, the comparison figure and one
folder per variant it reports.

A file written into ``--out`` by another program between the carry-over and
the swap is not carried over; run ``iqa regress --update`` and ``iqa report``
one after the other, not at the same time, on the same directory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

#: Folders of an output directory that other tools write; a variant may not take their names.
RESERVED = ("baselines", "train", "mutation")


class OutputError(Exception):
    """``--out`` cannot hold the reports; the message says why."""


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Staging:
    """A staging directory beside ``out``, to be published as ``out`` in one swap."""

    def __init__(self, out: Path, path: Path) -> None:
        self.out = out
        self.path = path

    @classmethod
    def create(cls, out: str | os.PathLike[str]) -> Staging:
        """Check that ``out`` can be written and make the staging directory; :class:`OutputError` if not."""
        target = Path(out).resolve()
        if target.exists() and not target.is_dir():
            raise OutputError(f"--out {out}: {target} exists and is not a directory")
        existing = _first_existing(target.parent)
        if not existing.is_dir():
            raise OutputError(f"--out {out}: {existing} is not a directory")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
        except OSError as error:
            raise OutputError(f"--out {out}: cannot write beside {target}: {error}") from error
        if target.exists() and not os.access(target, os.W_OK | os.X_OK):
            shutil.rmtree(path, ignore_errors=True)
            raise OutputError(f"--out {out}: {target} is not writable")
        return cls(target, path)

    def publish(self, owned: set[str]) -> None:
        """Make the staging directory ``out``: carry over what ``owned`` (top-level names) does not cover,
        then swap (module docstring). The old set is removed afterwards."""
        if self.out.exists():
            for entry in sorted(self.out.iterdir()):
                if entry.name not in owned and not (self.path / entry.name).exists():
                    _carry(entry, self.path / entry.name)
            os.chmod(self.path, self.out.stat().st_mode & 0o7777)
            if _exchange(self.path, self.out):
                shutil.rmtree(self.path, ignore_errors=True)  # now the old set
                return
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            try:
                os.replace(self.out, old / self.out.name)
                try:
                    os.replace(self.path, self.out)
                except BaseException:
                    os.replace(old / self.out.name, self.out)  # put the old set back
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(self.path, 0o755)
            os.replace(self.path, self.out)

    def discard(self) -> None:
        """Remove the staging directory (after a failure, or the old set after a swap)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _carry(source: Path, target: Path) -> None:
    """Hard-link ``source`` (a file, a link or a whole folder) to ``target``; copy where linking fails."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        shutil.copytree(source, target, symlinks=True, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(source), str(target))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no such libc function (musl, old glibc)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):  # the file system cannot
        return False
    raise OSError(code, os.strerror(code), str(b))
