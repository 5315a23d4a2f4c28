"""One file-writing policy: atomic writes that get the permissions the user's umask gives."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from redifu.files import (
    atomic_directory,
    atomic_file,
    file_sha256,
    recover_directory,
    umask,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

# umask -> (file mode, directory mode), as `open` and `mkdir` would give them.
UMASKS = {0o022: (0o644, 0o755), 0o027: (0o640, 0o750)}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=sorted(UMASKS), ids=lambda m: f"umask{m:03o}")
def user_umask(request):
    previous = os.umask(request.param)
    try:
        yield UMASKS[request.param]
    finally:
        os.umask(previous)


def test_umask_is_read_without_changing_it():
    previous = os.umask(0o027)
    try:
        assert umask() == 0o027
        assert umask() == 0o027
    finally:
        os.umask(previous)


def test_written_files_get_the_umask_permissions(tmp_path, user_umask):
    file_mode, directory_mode = user_umask
    write_text_atomic(tmp_path / "new" / "a.txt", "text")
    write_bytes_atomic(tmp_path / "b.bin", b"\0\1")
    write_json_atomic(tmp_path / "c.json", {"k": [1, 2]})
    with atomic_file(tmp_path / "d.txt") as stream:
        stream.write("d")
    assert {name: mode(tmp_path / name) for name in ("new/a.txt", "b.bin", "c.json", "d.txt")} == dict.fromkeys(
        ("new/a.txt", "b.bin", "c.json", "d.txt"), file_mode)
    assert mode(tmp_path / "new") == directory_mode
    assert (tmp_path / "c.json").read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'


def test_an_existing_file_is_replaced_with_the_umask_permissions(tmp_path, user_umask):
    path = tmp_path / "a.txt"
    path.write_text("old")
    path.chmod(0o600)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == user_umask[0]


def test_staged_directories_get_the_umask_permissions(tmp_path, user_umask):
    file_mode, directory_mode = user_umask
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "x.txt").write_text("x")
        write_text_atomic(staging / "y.txt", "y")
    out = tmp_path / "out"
    assert (mode(out), mode(out / "sub")) == (directory_mode, directory_mode)
    assert (mode(out / "sub" / "x.txt"), mode(out / "y.txt")) == (file_mode, file_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(path) as stream:
            stream.write("half of the new")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(tmp_path / "a.bin", "wb") as stream:
            stream.write(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_file(tmp_path / "a.txt", "a"):
            pass


def test_a_failed_directory_keeps_the_old_directory_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(out) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_complete_directory_replaces_the_old_one(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "old.txt").write_text("old")
    with atomic_directory(out) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _interrupted_swap(tmp_path: Path) -> Path:
    """The state a kill between atomic_directory's two renames leaves: only the old version,
    under its hidden backup name."""
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "old.txt").write_text("old")
    os.replace(out, tmp_path / ".out.old")
    return out


def test_recover_directory_restores_an_interrupted_swap(tmp_path):
    out = _interrupted_swap(tmp_path)
    assert recover_directory(out) == out
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    recover_directory(out)  # nothing to do the second time
    assert (out / "old.txt").read_text() == "old"


def test_recover_directory_leaves_a_complete_directory_alone(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "current.txt").write_text("current")
    stale = tmp_path / ".out.old"
    stale.mkdir()
    recover_directory(out)
    assert sorted(p.name for p in out.iterdir()) == ["current.txt"]
    assert recover_directory(tmp_path / "never-written") == tmp_path / "never-written"
    assert not (tmp_path / "never-written").exists()


def test_a_failed_directory_after_an_interrupted_swap_keeps_the_old_version(tmp_path):
    out = _interrupted_swap(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_directory(out):
            raise RuntimeError("boom")
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_file_sha256_reads_the_whole_file(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several 1 MiB chunks and a tail
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert file_sha256(path) != hashlib.sha256(data).hexdigest()


def test_checkpoints_get_the_umask_permissions(tmp_path, tiny_config, user_umask):
    from redifu.checkpoint import load_checkpoint, save_checkpoint
    from redifu.model import ReDiFu

    file_mode, directory_mode = user_umask
    directory = save_checkpoint(tmp_path / "checkpoint", ReDiFu(tiny_config), [f"c{i}" for i in range(6)])
    assert mode(directory) == directory_mode
    files = sorted(directory.iterdir())
    assert files and {p.name: mode(p) for p in files} == {p.name: file_mode for p in files}
    assert list(load_checkpoint(directory).classes) == [f"c{i}" for i in range(6)]


def test_feature_caches_get_the_umask_permissions(tmp_path, user_umask):
    from redifu.features.info import write_cache_npz

    path = tmp_path / "cache" / "ab" / "key.npz"
    assert write_cache_npz(path, what="test", features=np.arange(3, dtype=np.float32))
    assert mode(path) == user_umask[0] and mode(path.parent) == user_umask[1]
    with np.load(path) as stored:
        assert stored["features"].tolist() == [0.0, 1.0, 2.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.npz"]


def test_an_unwritable_cache_is_a_warning_not_an_error(tmp_path, caplog):
    from redifu.features.info import write_cache_npz

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert write_cache_npz(blocker / "key.npz", what="test", features=np.zeros(2)) is False
    assert "test cache: cannot write" in caplog.text


def test_plots_get_the_umask_permissions(tmp_path, user_umask):
    from redifu.training.report import plot_confusion_matrix, plot_curves

    plot_confusion_matrix(np.array([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "confusion_matrix.png")
    history = [{"epoch": e, "train/loss": 1.0 / (e + 1), "dev/loss": 1.0, "dev/weighted_f1": 50.0 + e}
               for e in range(3)]
    plot_curves(history, 2, tmp_path / "curves.png")
    for name in ("confusion_matrix.png", "curves.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mode(path) == user_umask[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion_matrix.png", "curves.png"]
