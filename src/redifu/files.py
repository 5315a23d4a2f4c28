"""Writing files and directories atomically, and hashing them: the one place redifu does either.

Every file redifu writes goes through a temporary file in the destination's directory that is
renamed over the destination once complete, so a reader (or a killed run) sees the old file or
the new one, never a half-written one. Directories (checkpoints, datasets) are staged the same
way. Whatever is created gets the permissions the user's umask gives, like any file made with
``open``: ``0o666 & ~umask`` for files and ``0o777 & ~umask`` for directories (``tempfile``
alone would make them private, 0600 and 0700).

A leaf module: it imports nothing from redifu.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = [
    "atomic_directory",
    "atomic_file",
    "file_sha256",
    "recover_directory",
    "umask",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

_CHUNK = 1 << 20


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux), since
    setting and restoring it would briefly change it for every thread."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _backup_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_args: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    If the block raises (or the process dies), ``path`` is left as it was and the temporary
    file is removed (or, after a kill, left as a hidden ``.NAME.*.tmp`` that no reader opens).

    Args:
        path: The destination; its parent directories are created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **open_args: Passed to :func:`open` (``encoding``, ``newline``, ...).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, mode, **open_args) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as stream:
        stream.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (and a final newline) to ``path`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, sort_keys=False)
        stream.write("\n")


def recover_directory(path: str | Path) -> Path:
    """Put back the previous version of a directory whose replacement was interrupted.

    :func:`atomic_directory` swaps a complete new directory in with two renames (old version
    aside, new one in place). A kill between them leaves only the old version, under a hidden
    backup name; this renames it back. A no-op when ``path`` exists or there is no backup.
    """
    path = Path(path)
    backup = _backup_of(path)
    if not path.exists() and backup.is_dir():
        os.replace(backup, path)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Stage a directory: yield an empty staging directory beside ``path``; when the block ends
    without error, the staging directory replaces ``path`` (a complete directory or none).

    The directory, its subdirectories and its files get the umask's permissions, whatever
    wrote them. On error the staging directory is removed and ``path`` is left as it was. An
    interrupted swap is undone by :func:`recover_directory` (called here first, and by readers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield staging
        # Files too: some writers make them private (safetensors' save_file writes 0600).
        mode = umask()
        os.chmod(staging, 0o777 & ~mode)
        for root, directories, files in os.walk(staging):
            for name in directories:
                os.chmod(os.path.join(root, name), 0o777 & ~mode)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mode)
        backup = _backup_of(path)
        if path.exists():
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(staging, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
