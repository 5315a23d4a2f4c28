"""Fetching the official transcript files, with pinned SHA-256 checksums.

The CSVs come from the MELD repository (declare-lab/MELD on GitHub), which also distributes
EmoryNLP's; IEMOCAP's transcripts are COSMIC's ``iemocap.pkl`` (declare-lab/conv-emotion). Downloads go to a temporary file inside the target directory and are renamed
into place only after every file of the dataset has been fetched and verified, so an
interrupted or corrupted download never leaves a partial dataset behind.

The files and their pinned checksums are each dataset's ``files`` in :mod:`redifu.data.registry`.

Offline machines pass ``source=DIR`` with local copies instead; those are checked against the
same checksums, but a mismatch is only logged because older copies (with mojibake that
:mod:`redifu.data.csv_corpora` repairs) are still in wide use.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Mapping

from redifu.data.registry import DatasetEntry, RemoteFile, get
from redifu.errors import DataError
from redifu.files import atomic_file, file_sha256

logger = logging.getLogger(__name__)

__all__ = ["RemoteFile", "fetch_dataset", "fetch_files"]

_CHUNK = 1 << 16


def fetch_dataset(
    dataset: str | DatasetEntry,
    target: str | Path,
    *,
    source: str | Path | None = None,
    base_url: str | None = None,
    timeout: float = 30,
) -> Path:
    """Put the official files of ``dataset`` (a registry name or entry) into ``target``.

    See :func:`fetch_files`; the files and their checksums are the entry's ``files``.

    Raises:
        ValueError: the dataset is unknown or has no official files (the message names it).
    """
    try:
        entry = dataset if isinstance(dataset, DatasetEntry) else get(dataset)
    except DataError as error:
        raise ValueError(f"name: {error}") from None
    if not entry.files:
        raise ValueError(f"name: dataset {entry.name!r} lists no official files to fetch")
    return fetch_files(entry.files, target, source=source, base_url=base_url, timeout=timeout, label=entry.name)


def fetch_files(
    files: Mapping[str, RemoteFile],
    target: str | Path,
    *,
    source: str | Path | None = None,
    base_url: str | None = None,
    timeout: float = 30,
    label: str = "dataset",
) -> Path:
    """Put ``files`` (file name to :class:`RemoteFile`) into ``target`` and return ``target``.

    Files already in ``target`` with the right checksum are kept as they are. Downloads are
    staged beside their destination and renamed into place only once every file has been
    fetched and verified: an interrupted or corrupted download leaves ``target`` as it was.

    Args:
        files: What to fetch, with the pinned SHA-256 of each file.
        target: Directory to fill (created if needed).
        source: Directory with local copies to use instead of downloading. Copies whose
            checksum differs from the pinned one are still used, with a warning.
            ``source`` may be ``target`` itself (the files are then only checked).
        base_url: Replaces the directory part of every official URL (``<base_url>/<file>``);
            for mirrors and tests.
        timeout: Seconds to wait for the server on each request.
        label: The dataset's name, for log messages.

    Raises:
        DataError: a download failed (the message says how to use ``source`` instead), a
            downloaded file does not match its checksum, or ``source`` lacks a file.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    target = Path(target)
    if source is not None:
        return _from_source(files, Path(source), target)
    if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")

    needed = {f: remote for f, remote in files.items() if not _is_verified(target / f, remote.sha256)}
    if not needed:
        logger.info("%s: all %d files present and verified in %s", label, len(files), target)
        return target
    created = not target.exists()
    try:
        # every file stays staged until all are verified; leaving the stack renames them in
        # (or, on an error, removes them all)
        with ExitStack() as staged:
            for filename, remote in needed.items():
                url = remote.url if base_url is None else f"{base_url.rstrip('/')}/{filename}"
                stream = staged.enter_context(atomic_file(target / filename, "wb"))
                _download(url, filename, remote.sha256, stream, timeout)
    finally:
        if created and target.exists() and not any(target.iterdir()):
            target.rmdir()
    logger.info("%s: downloaded %d file(s) into %s", label, len(needed), target)
    return target


def _download(url: str, filename: str, expected: str, stream, timeout: float) -> None:
    """Stream ``url`` into ``stream``; raise :class:`DataError` unless its checksum matches."""
    digest = hashlib.sha256()  # of the bytes as they arrive, not a file on disk
    logger.info("downloading %s", url)
    with _open_url(url, timeout) as response:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as error:  # reset, timeout, truncation
                raise DataError(_offline_message(url, str(error) or type(error).__name__)) from None
            if not chunk:
                break
            digest.update(chunk)
            stream.write(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        raise DataError(f"{filename}: checksum mismatch for {url}: expected sha256 {expected}, got {actual}")


def _open_url(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise DataError(_offline_message(url, f"HTTP {error.code} {error.reason}")) from None
    except urllib.error.URLError as error:
        raise DataError(_offline_message(url, str(error.reason))) from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # timeouts, bad URLs or replies
        raise DataError(_offline_message(url, str(error) or type(error).__name__)) from None


def _from_source(files: Mapping[str, RemoteFile], source: Path, target: Path) -> Path:
    if not source.is_dir():
        raise DataError(f"source {source}: not a directory")
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise DataError(f"source {source}: missing file {missing[0]!r} (needs {sorted(files)})")
    in_place = target.exists() and target.resolve() == source.resolve()
    target.mkdir(parents=True, exist_ok=True)
    for filename, remote in files.items():
        origin = source / filename
        actual = file_sha256(origin)
        if actual != remote.sha256:
            logger.warning(
                "%s: checksum differs from the official file (expected sha256 %s, got %s); "
                "using it anyway (older copies are common)", origin, remote.sha256, actual,
            )
        if in_place:
            continue
        destination = target / filename
        if destination.is_file() and file_sha256(destination) == actual:
            continue
        with atomic_file(destination, "wb") as stream, origin.open("rb") as reader:
            shutil.copyfileobj(reader, stream, _CHUNK)
    logger.info("using local copies from %s in %s", source, target)
    return target


def _is_verified(path: Path, expected: str) -> bool:
    return path.is_file() and file_sha256(path) == expected


def _offline_message(url: str, reason: str) -> str:
    reason = " ".join(reason.split())  # one line
    return f"cannot download {url}: {reason}; pass --source DIR with local copies"
