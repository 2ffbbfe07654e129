"""Files replaced atomically: written to a temporary file beside the target, fsynced, renamed.

A reader sees the old file or the complete new one, never a half-written one (a kill or a full
disk leaves only a hidden ``.<name>.*.tmp`` behind, removed on errors we see). The temporary file
is created with ``os.open(..., 0o666)``, so the kernel applies the user's umask exactly as for a
file opened with ``open(path, "w")`` (``tempfile.mkstemp`` would force mode 0600, leaving files a
colleague on a shared cluster cannot read).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


def _create_temp(path: str) -> tuple[int, str]:
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name
            continue


def _fsync_dir(directory: str) -> None:
    """Make a rename durable; some filesystems refuse fsync on directories (ignored)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8",
                before_replace: Optional[Callable[[], None]] = None) -> Iterator[IO]:
    """``with atomic_open(p, "w") as f: f.write(...)``; ``mode`` is ``"w"`` or ``"wb"``.

    On success the data is fsynced and renamed over ``path`` (then the directory is fsynced);
    ``before_replace`` runs once the new data is safely on disk, just before the rename (e.g. to
    keep the old file under another name). On any exception the temporary file is removed and
    ``path`` is left as it was. An ``OSError`` (e.g. a full disk) is re-raised with the same errno
    and a message naming ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and path not in str(exc):
            raise OSError(exc.errno, f"{exc.strerror or exc} (writing {path}; left unchanged)") from exc
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_torch_save(obj: object, path: PathLike) -> None:
    """``torch.save`` that never leaves a truncated weight file under ``path``."""
    import torch

    with atomic_open(Path(path), "wb") as fh:
        torch.save(obj, fh)
