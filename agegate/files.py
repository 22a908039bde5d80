"""Writing a file so that a reader, or the next start after a power cut, sees either the old
content or the new, never half: write a temporary file beside it, flush it to disk, rename
it over the target, and flush the directory that holds the name.

Every part of agegate that replaces a file it reads back (bundles' manifests, the model
store's state, the customer zone, training's caches and checkpoints) writes through here.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(target: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; on leaving the block it replaces ``target``.

    For writers that want a file name (``np.savez``, ``keras.Model.save``). On an error the
    temporary file is removed and ``target`` is left as it was. ``mode``: the file's
    permissions (default: the temporary file's, 0600).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(target.parent)


def write_atomically(target: Path, data: bytes | str, mode: int | None = 0o644) -> None:
    """Replace ``target`` with ``data`` (str is written as UTF-8), all or nothing."""
    with replacing(target, mode) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _sync_dir(path: Path) -> None:
    """Flush a directory, so the rename itself survives a power cut (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
