"""Files that are either the old content or the new, never half of one.

Every state file ftops writes (routing, server and service state, manifests, records)
goes through here: a temp file with a unique name in the same folder (two writers never
share one), flushed to disk, then renamed over the target. A full disk or a kill in
between leaves the old file and, at worst, a stray `.<name>.*.tmp` that is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: mkstemp's files are 0600, a plain open() follows the umask
DEFAULT_MODE = 0o666 & ~_UMASK


def write_bytes(path: Path | str, data: bytes, mode: int | None = None) -> Path:
    """Replace `path` with `data` atomically; `mode` (e.g. 0o600; default: what open() would
    give) is set before the rename, so the content is never readable with looser permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, DEFAULT_MODE if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path | str, text: str, mode: int | None = None) -> Path:
    return write_bytes(path, text.encode("utf-8"), mode)


def disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the exception chain, or a library's text for it (SQLite,
    torch and onnx raise their own errors with the words in them)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(seen).lower() for t in ("no space left", "disk is full", "disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
