"""Fetching the official transcript CSVs, with pinned SHA-256 checksums.

The files come from the MELD repository (declare-lab/MELD on GitHub), which also distributes
EmoryNLP's CSVs. Downloads go to a temporary file inside the target directory and are renamed
into place only after every file of the dataset has been fetched and verified, so an
interrupted or corrupted download never leaves a partial dataset behind.

Offline machines pass ``source=DIR`` with local copies instead; those are checked against the
same checksums, but a mismatch is only logged because older copies (with mojibake that
:mod:`redifu.data.csv_corpora` repairs) are still in wide use.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from redifu.data.dialogue import DataError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 16
_FILE_MODE = 0o644  # NamedTemporaryFile creates 0o600; the data files are not secret


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where to get it and what its SHA-256 must be."""

    url: str
    sha256: str


_MELD_BASE = "https://raw.githubusercontent.com/declare-lab/MELD/master/data/MELD"
_EMORYNLP_BASE = "https://raw.githubusercontent.com/declare-lab/MELD/master/data/emorynlp"

OFFICIAL: dict[str, dict[str, RemoteFile]] = {
    "meld": {
        "train_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/train_sent_emo.csv",
            "d2fa2d6529cf03cac2989efec05c9b27d8fd2f4c8fc5974c7ae88aa537fa02db",
        ),
        "dev_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/dev_sent_emo.csv",
            "2e89c6f8aa182d6f62f8c6331aece905ac7273ca4999660bfb5213e1d0370c1c",
        ),
        "test_sent_emo.csv": RemoteFile(
            f"{_MELD_BASE}/test_sent_emo.csv",
            "8d37103938f7067600839fe29d5a114a6cd1bcdafb75bec101e06464c5006888",
        ),
    },
    "emorynlp": {
        "emorynlp_train_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_train_final.csv",
            "462c66c333783adb801836d12d1424f48489bef4fb8ddfec7fbb2f08ce8211d5",
        ),
        "emorynlp_dev_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_dev_final.csv",
            "20edc9d5917fe705b17b849f7f288e495d4132a60353a6247c3800445bdf8734",
        ),
        "emorynlp_test_final.csv": RemoteFile(
            f"{_EMORYNLP_BASE}/emorynlp_test_final.csv",
            "dbc4b5638acd12c92a5f48def829e04f1c765cddffb4eedbe34216312e0d2d78",
        ),
    },
}
"""Dataset name to file name to :class:`RemoteFile` (URL and pinned SHA-256)."""


def fetch_dataset(
    name: str,
    target: str | Path,
    *,
    source: str | Path | None = None,
    base_url: str | None = None,
    timeout: float = 30,
) -> Path:
    """Put the official CSVs of dataset ``name`` into ``target`` and return ``target``.

    Files already in ``target`` with the right checksum are kept as they are.

    Args:
        name: A key of :data:`OFFICIAL` (``"meld"`` or ``"emorynlp"``).
        target: Directory to fill (created if needed).
        source: Directory with local copies to use instead of downloading. Copies whose
            checksum differs from the pinned one are still used, with a warning.
            ``source`` may be ``target`` itself (the files are then only checked).
        base_url: Replaces the directory part of every official URL (``<base_url>/<file>``);
            for mirrors and tests.
        timeout: Seconds to wait for the server on each request.

    Raises:
        DataError: a download failed (the message says how to use ``source`` instead), a
            downloaded file does not match its checksum, or ``source`` lacks a file.
    """
    if name not in OFFICIAL:
        raise ValueError(f"name: unknown dataset {name!r}; known: {sorted(OFFICIAL)}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    target = Path(target)
    files = OFFICIAL[name]
    if source is not None:
        return _from_source(files, Path(source), target)
    if base_url is not None and not base_url.lower().startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")

    needed = {f: remote for f, remote in files.items() if not _is_verified(target / f, remote.sha256)}
    if not needed:
        logger.info("%s: all %d files present and verified in %s", name, len(files), target)
        return target
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for filename, remote in needed.items():
            url = remote.url if base_url is None else f"{base_url.rstrip('/')}/{filename}"
            staged[filename] = _download(url, filename, remote.sha256, target, timeout)
        for filename, temporary in staged.items():
            os.replace(temporary, target / filename)  # atomic within one directory
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        if created and not any(target.iterdir()):
            target.rmdir()
    logger.info("%s: downloaded %d file(s) into %s", name, len(needed), target)
    return target


def _download(url: str, filename: str, expected: str, target: Path, timeout: float) -> Path:
    """Stream ``url`` into a temporary file in ``target``; return it once its checksum matches."""
    handle = tempfile.NamedTemporaryFile(dir=target, prefix=f".{filename}.", suffix=".part", delete=False)
    temporary = Path(handle.name)
    digest = hashlib.sha256()
    try:
        with handle:
            os.chmod(temporary, _FILE_MODE)
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
                    handle.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise DataError(
                f"{filename}: checksum mismatch for {url}: expected sha256 {expected}, got {actual}"
            )
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _open_url(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise DataError(_offline_message(url, f"HTTP {error.code} {error.reason}")) from None
    except urllib.error.URLError as error:
        raise DataError(_offline_message(url, str(error.reason))) from None
    except (OSError, ValueError, http.client.HTTPException) as error:  # timeouts, bad URLs or replies
        raise DataError(_offline_message(url, str(error) or type(error).__name__)) from None


def _from_source(files: dict[str, RemoteFile], source: Path, target: Path) -> Path:
    if not source.is_dir():
        raise DataError(f"source {source}: not a directory")
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise DataError(f"source {source}: missing file {missing[0]!r} (needs {sorted(files)})")
    in_place = target.exists() and target.resolve() == source.resolve()
    target.mkdir(parents=True, exist_ok=True)
    for filename, remote in files.items():
        origin = source / filename
        actual = _sha256(origin)
        if actual != remote.sha256:
            logger.warning(
                "%s: checksum differs from the official file (expected sha256 %s, got %s); "
                "using it anyway (older copies are common)", origin, remote.sha256, actual,
            )
        if in_place:
            continue
        destination = target / filename
        if destination.is_file() and _sha256(destination) == actual:
            continue
        handle = tempfile.NamedTemporaryFile(dir=target, prefix=f".{filename}.", suffix=".part", delete=False)
        temporary = Path(handle.name)
        try:
            with handle, origin.open("rb") as reader:
                os.chmod(temporary, _FILE_MODE)
                shutil.copyfileobj(reader, handle, _CHUNK)
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)
    logger.info("using local copies from %s in %s", source, target)
    return target


def _is_verified(path: Path, expected: str) -> bool:
    return path.is_file() and _sha256(path) == expected


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as reader:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_message(url: str, reason: str) -> str:
    reason = " ".join(reason.split())  # one line
    return f"cannot download {url}: {reason}; pass --source DIR with local copies"
