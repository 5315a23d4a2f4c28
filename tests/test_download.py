"""Fetching the official files: checksums, atomic writes, offline message, local sources.

Every server here is a local ``http.server`` on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from redifu.data.dialogue import DataError
from redifu.data import registry
from redifu.data.download import fetch_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OFFICIAL = {name: registry.get(name).files for name in registry.names() if registry.get(name).files}
MELD_DIR = DATA / "meld"
EMORYNLP_DIR = DATA / "emorynlp"

needs_meld = pytest.mark.skipif(
    not all((MELD_DIR / f).is_file() for f in OFFICIAL["meld"]),
    reason=f"official MELD CSVs not found in {MELD_DIR}",
)
needs_emorynlp = pytest.mark.skipif(
    not all((EMORYNLP_DIR / f).is_file() for f in OFFICIAL["emorynlp"]),
    reason=f"official EmoryNLP CSVs not found in {EMORYNLP_DIR}",
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1 at a free port from a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_official_table_is_well_formed():
    assert set(OFFICIAL) == {"meld", "emorynlp", "iemocap"}
    homes = {"meld": "declare-lab/MELD/master/data/", "emorynlp": "declare-lab/MELD/master/data/",
             "iemocap": "declare-lab/conv-emotion/master/COSMIC/feature-extraction/iemocap/"}
    for name, files in OFFICIAL.items():
        assert len(files) == (1 if name == "iemocap" else 3)
        for filename, remote in files.items():
            assert remote.url.startswith(f"https://raw.githubusercontent.com/{homes[name]}")
            assert remote.url.endswith("/" + filename)
            assert len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0


@needs_meld
@needs_emorynlp
def test_pinned_checksums_match_the_shared_copies():
    for name, directory in (("meld", MELD_DIR), ("emorynlp", EMORYNLP_DIR)):
        for filename, remote in OFFICIAL[name].items():
            assert sha256(directory / filename) == remote.sha256, filename


@needs_meld
def test_fetch_through_base_url(tmp_path):
    target = tmp_path / "out" / "meld"
    with serve(MELD_DIR) as url:
        assert fetch_dataset("meld", target, base_url=url, timeout=10) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(OFFICIAL["meld"])
    for filename, remote in OFFICIAL["meld"].items():
        assert sha256(target / filename) == remote.sha256
    # Present and verified: no request is made (the server is gone, so one would fail).
    assert fetch_dataset("meld", target, base_url=f"http://127.0.0.1:{closed_port()}", timeout=2) == target


@needs_meld
def test_corrupted_download_is_rejected_and_leaves_nothing(tmp_path):
    served = tmp_path / "served"
    shutil.copytree(MELD_DIR, served)
    broken = served / "dev_sent_emo.csv"
    broken.write_bytes(broken.read_bytes().replace(b"neutral", b"Neutral", 1))
    target = tmp_path / "target"
    with serve(served) as url, pytest.raises(DataError) as error:
        fetch_dataset("meld", target, base_url=url, timeout=10)
    message = str(error.value)
    assert "\n" not in message
    assert "dev_sent_emo.csv" in message and "checksum mismatch" in message
    assert OFFICIAL["meld"]["dev_sent_emo.csv"].sha256 in message and sha256(broken) in message
    assert not target.exists() or list(target.iterdir()) == []


@needs_meld
def test_corrupted_download_keeps_an_existing_target_intact(tmp_path):
    served = tmp_path / "served"
    shutil.copytree(MELD_DIR, served)
    (served / "test_sent_emo.csv").write_bytes(b"not the file")
    target = tmp_path / "target"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with serve(served) as url, pytest.raises(DataError, match="checksum mismatch"):
        fetch_dataset("meld", target, base_url=url, timeout=10)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]  # no partial dataset, no temp files


def test_closed_port_gives_the_offline_message(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    target = tmp_path / "target"
    with pytest.raises(DataError) as error:
        fetch_dataset("emorynlp", target, base_url=url, timeout=2)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download {url}/")
    assert message.endswith("; pass --source DIR with local copies")
    assert not target.exists()


def test_http_error_gives_the_offline_message(tmp_path):
    with serve(tmp_path) as url, pytest.raises(DataError) as error:  # an empty directory: 404
        fetch_dataset("meld", tmp_path / "target", base_url=url, timeout=5)
    assert "HTTP 404" in str(error.value) and "pass --source DIR" in str(error.value)


@needs_emorynlp
def test_source_directory_is_copied_and_verified(tmp_path, caplog):
    target = tmp_path / "emorynlp"
    with caplog.at_level(logging.WARNING, logger="redifu.data.download"):
        assert fetch_dataset("emorynlp", target, source=EMORYNLP_DIR) == target
    assert not caplog.records
    for filename, remote in OFFICIAL["emorynlp"].items():
        assert sha256(target / filename) == remote.sha256
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


@needs_meld
def test_source_with_an_older_copy_only_warns(tmp_path, caplog):
    source = tmp_path / "old"
    shutil.copytree(MELD_DIR, source)
    old = source / "train_sent_emo.csv"
    old.write_bytes(old.read_bytes().replace("\u2019".encode(), "\u00c2\u0092".encode()))
    with caplog.at_level(logging.WARNING, logger="redifu.data.download"):
        fetch_dataset("meld", source, source=source)  # in place: only checked
    assert [r for r in caplog.records if "train_sent_emo.csv" in r.getMessage()]
    assert "checksum differs" in caplog.text


def test_source_missing_file_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="missing file"):
        fetch_dataset("meld", tmp_path / "t", source=tmp_path)
    with pytest.raises(ValueError, match="name: dataset 'no-files' lists no official files"), \
            registry.registered(registry.DatasetEntry(name="no-files", title="No files", classes=("a", "b"))):
        fetch_dataset("no-files", tmp_path / "t")
    with pytest.raises(ValueError, match="name: dataset: unknown dataset 'nope'"):
        fetch_dataset("nope", tmp_path / "t")
    with pytest.raises(ValueError, match="base_url"):
        fetch_dataset("meld", tmp_path / "t", base_url="file:///etc")
