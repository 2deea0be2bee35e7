"""Checks of a run's inputs that need neither torch nor ArviZ: the seed, the numbers of
mixture components, the out-dir. The command line runs them before importing anything heavy;
:func:`~comparisons.compare.compare` runs them before any work."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from zoo.errors import ZooInputError

#: Seeds run from 0 to SEED_LIMIT - 1. NumPy's global seed takes values below 2**32, and runs
#: offset the seed (chain c of NUTS uses seed + c, start i of a fit seed + i, SVI seed + 1):
#: 2**31 leaves room for any offset.
SEED_LIMIT = 2**31


def check_seed(seed: object) -> int:
    """The seed as an int, or a one-line error if it is not a whole number in [0, 2**31)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ZooInputError(
            f"the seed must be a whole number from 0 to {SEED_LIMIT - 1}; got {seed!r}"
        )
    return int(seed)


def parse_ks(text: str) -> list[int]:
    """``"3"`` or ``"1,2,3"`` (or ``"1-5"``) as a list of whole numbers >= 1."""
    ks: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                ks.extend(range(lo, hi + 1))
            else:
                ks.append(int(part))
        except ValueError:
            raise ZooInputError(
                f"--num-components takes whole numbers, as 3 or 1,2,3 or 1-5; got '{text}'"
            ) from None
    if not ks or any(k < 1 for k in ks):
        raise ZooInputError(
            f"--num-components needs whole numbers >= 1, as 3 or 1,2,3; got '{text}'"
        )
    return ks


def check_writable(out_dir: Path, flag: str = "--out-dir") -> None:
    """Fail in one line, before any work, if the files of a run cannot be written to ``out_dir``.

    The check does what writing will do, and undoes it: it creates the missing folders, a
    folder beside ``out_dir`` (where the files are staged) and a file inside ``out_dir``, then
    removes all it created. Permissions alone (``os.access``) miss read-only file systems and
    folders such as /proc that refuse new entries whatever the mode.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ZooInputError(f"{flag} '{out_dir}' is a file; give a folder path")
    created: list[Path] = []
    try:
        missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        staging = tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.probe-")
        os.rmdir(staging)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".zoo-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ZooInputError(
            f"cannot write to {flag} '{out_dir}' ({reason}); choose a folder you can write"
        ) from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
