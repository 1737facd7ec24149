"""Writing an export folder so that readers see no export or a finished one.

The folder is built as `.<name>.<pid>-<id>.partial` beside the final one (manifest last,
every file fsynced) and renamed into place only when complete, so a crash or a full disk
never leaves a folder with an export.json that is not a finished export; the partial folder
is removed on failure (and, after a kill, by the next export into the same parent).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from ftops import atomic
from ftops.export.results import ExportError
from ftops.names import MANIFEST_FILE

PARTIAL = ".partial"       # suffix of an export folder being written
LOW_SPACE_BYTES = 1 << 20  # a failure with less free space than this is taken for a full disk


@contextmanager
def staged(out_dir: Path):
    """A fresh folder beside `out_dir` to write the export into, renamed to `out_dir` when the
    block completes; on any failure it is removed, and a full disk becomes an ExportError that
    names the folder."""
    parent = out_dir.parent
    work = parent / f".{out_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(parent)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise ExportError(f"{out_dir} exists and is not empty, but holds no finished export ({MANIFEST_FILE}). "
                              "Choose a new folder, or delete that one first.")
        work.mkdir()
        yield work
        sync_tree(work)
        os.rename(work, out_dir)  # replaces an empty out_dir; readers see no export or a finished one
    except BaseException as exc:
        full = disk_full(exc, parent)
        shutil.rmtree(work, ignore_errors=True)
        if full:
            free = shutil.disk_usage(parent).free if parent.exists() else 0
            raise ExportError(
                f"No space left on the device holding {parent} while exporting to {out_dir} ({free / 2**20:.1f} MiB "
                f"free once the partial export was removed). Nothing was left that looks like an export; free space "
                f"there (e.g. old export folders no route serves) or export to another folder. "
                f"({str(exc).strip()[:200]})") from exc
        raise


def remove_abandoned(parent: Path) -> list[Path]:
    """Partial export folders whose writer is gone (killed mid-export); the ones removed."""
    import psutil

    removed = []
    for folder in parent.glob(f".*{PARTIAL}"):
        pid = folder.name.removesuffix(PARTIAL).rsplit(".", 1)[-1].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def sync_tree(folder: Path) -> None:
    """fsync every file and folder, so the rename publishes bytes that are on disk."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC / EDQUOT in the chain, a library's text for it (torch and onnx raise RuntimeError),
    or a failure that left almost no space on the folder's device."""
    if atomic.disk_full(exc):
        return True
    if isinstance(exc, (KeyboardInterrupt, ExportError)):
        return False
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False
