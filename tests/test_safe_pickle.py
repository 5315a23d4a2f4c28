"""The restricted unpickler: refuses code, keeps containers and numpy arrays intact."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from feature_fixtures import Py2StylePickler
from redifu.data.dialogue import DataError
from redifu.data.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, load_pickle_safely


class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsSubprocess:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def __reduce__(self):
        return (subprocess.check_call, (self.argv,))


def _global_call(module: str, name: str, argument: str = "1+1") -> bytes:
    """A protocol-2 pickle calling ``module.name(argument)``, as an attacker would hand-write it."""
    arg = argument.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + len(arg).to_bytes(4, "little") + arg + b"\x85R.")


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_one_line(error: Exception, *fragments: str) -> str:
    message = str(error)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize("payload_kind", ["os.system", "subprocess"])
def test_command_payload_is_refused_and_never_runs(tmp_path, payload_kind):
    marker = tmp_path / "marker"
    if payload_kind == "os.system":
        payload = pickle.dumps(_RunsShellCommand(f"touch {marker}"), protocol=2)
        refused = f"{os.system.__module__}.system"
    else:
        payload = pickle.dumps(_RunsSubprocess(["touch", str(marker)]), protocol=4)
        refused = "subprocess.check_call"
    path = _write(tmp_path, "evil.pkl", payload)

    with pytest.raises(UnsafePickleError) as excinfo:
        load_pickle_safely(path)

    assert not marker.exists()
    _assert_one_line(excinfo.value, str(path), f"refused to load '{refused}'",
                     "only plain containers and numpy arrays are allowed")
    # Control: the payload is live, so the refusal above is what kept the command from running.
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("__builtin__", "eval"),
     ("builtins", "__import__"), ("os", "system"), ("numpy", "load"), ("numpy.lib.npyio", "load"),
     ("copyreg", "_reconstructor"), ("torch._utils", "_rebuild_tensor_v2"), ("pickle", "loads")],
)
def test_non_allowlisted_globals_are_refused(tmp_path, module, name):
    path = _write(tmp_path, "global.pkl", _global_call(module, name))
    with pytest.raises(UnsafePickleError) as excinfo:
        load_pickle_safely(path)
    shown = "builtins" if module == "__builtin__" else module
    _assert_one_line(excinfo.value, str(path), f"'{shown}.{name}'")


def test_torch_objects_are_refused(tmp_path):
    path = tmp_path / "tensor.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"features": torch.zeros(2, 3)}, handle, protocol=4)
    with pytest.raises(UnsafePickleError) as excinfo:
        load_pickle_safely(path)
    _assert_one_line(excinfo.value, str(path), "refused to load 'torch.")


def test_persistent_ids_are_refused(tmp_path):
    class WithPersistentIds(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, str) and obj == "external" else None

    path = tmp_path / "persistent.pkl"
    with open(path, "wb") as handle:
        WithPersistentIds(handle, protocol=2).dump(["external"])
    with pytest.raises(UnsafePickleError) as excinfo:
        load_pickle_safely(path)
    _assert_one_line(excinfo.value, str(path), "persistent id")


def test_codecs_encode_only_for_latin1(tmp_path):
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00base64\x86R.")
    with pytest.raises(DataError) as excinfo:
        load_pickle_safely(path)
    _assert_one_line(excinfo.value, str(path), "base64")


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_arrays_and_nested_containers_round_trip(tmp_path, protocol):
    rng = np.random.default_rng(0)
    original = {
        "Ses01F_impro01": {
            "text": [row for row in rng.standard_normal((3, 8)).astype(np.float32)],
            "audio": rng.standard_normal((3, 5)),
            "labels": np.array([0, 5, 2], dtype=np.int64),
            "speakers": ["M", "F", "M"],
        },
        7: [[0, 1, 0], (1.5, True, None), {"nested": {"deeper": np.float32(2.5)}}],
        "ids": {"a", "b"},
        "frozen": frozenset({1, 2}),
        "raw": b"\x00\xff",
        "ordered": collections.OrderedDict(b=1, a=2),
        "default": collections.defaultdict(list, {"x": [1]}),
        "complex": 1 + 2j,
        "strided": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],
    }
    path = tmp_path / f"p{protocol}.pkl"
    with open(path, "wb") as handle:
        pickle.dump(original, handle, protocol=protocol)

    loaded = load_pickle_safely(path)

    dialogue = loaded["Ses01F_impro01"]
    assert all(row.dtype == np.float32 for row in dialogue["text"])
    np.testing.assert_array_equal(np.stack(dialogue["text"]), np.stack(original["Ses01F_impro01"]["text"]))
    assert dialogue["audio"].dtype == np.float64
    np.testing.assert_array_equal(dialogue["audio"], original["Ses01F_impro01"]["audio"])
    assert dialogue["labels"].dtype == np.int64
    np.testing.assert_array_equal(dialogue["labels"], [0, 5, 2])
    assert dialogue["speakers"] == ["M", "F", "M"]
    assert loaded[7][:2] == [[0, 1, 0], (1.5, True, None)]
    assert loaded[7][2]["nested"]["deeper"] == np.float32(2.5)
    assert loaded["ids"] == {"a", "b"} and loaded["frozen"] == frozenset({1, 2})
    assert loaded["raw"] == b"\x00\xff"
    assert list(loaded["ordered"].items()) == [("b", 1), ("a", 2)]
    assert loaded["default"]["x"] == [1] and loaded["default"].default_factory is list
    assert loaded["complex"] == 1 + 2j
    np.testing.assert_array_equal(loaded["strided"], original["strided"])


def test_python2_protocol2_pickle_with_latin1_bytes(tmp_path):
    # Written byte for byte as Python 2's cPickle.dump({'caf\xe9': set([1, 2])}, f, 2) does:
    # the key is a byte string (SHORT_BINSTRING) and set comes from __builtin__.
    data = (b"\x80\x02}q\x00U\x04caf\xe9q\x01c__builtin__\nset\nq\x02]q\x03(K\x01K\x02e"
            b"\x85q\x04Rq\x05s.")
    assert load_pickle_safely(_write(tmp_path, "py2.pkl", data)) == {"caf\xe9": {1, 2}}

    # Python-2 numpy arrays: numpy.core.multiarray._reconstruct with byte-string raw data.
    features = np.random.default_rng(1).standard_normal((4, 3))
    labels = np.array([3, 0, 1], dtype=np.int64)
    text = "d\xe9j\xe0 vu"
    payload = Py2StylePickler().dumps(({"Ses05M_script01_1": [features, labels]}, [text], {"M", "F"}))
    assert b"c__builtin__\nset" in payload and b"cnumpy.core.multiarray\n_reconstruct" in payload

    loaded = load_pickle_safely(_write(tmp_path, "py2_numpy.pkl", payload))

    arrays = loaded[0]["Ses05M_script01_1"]
    assert arrays[0].dtype == np.float64 and arrays[1].dtype == np.int64
    np.testing.assert_array_equal(arrays[0], features)
    np.testing.assert_array_equal(arrays[1], labels)
    assert loaded[1] == [text] and loaded[2] == {"M", "F"}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files_raise_data_error(tmp_path, damage):
    good = pickle.dumps({"a": np.zeros((4, 4), dtype=np.float32)}, protocol=4)
    data = {"truncated": good[: len(good) // 2], "garbage": b"not a pickle at all", "empty": b""}[damage]
    path = _write(tmp_path, f"{damage}.pkl", data)
    with pytest.raises(DataError) as excinfo:
        load_pickle_safely(path)
    assert not isinstance(excinfo.value, UnsafePickleError)
    _assert_one_line(excinfo.value, str(path), "not a readable pickle")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pkl"
    with pytest.raises(DataError) as excinfo:
        load_pickle_safely(path)
    _assert_one_line(excinfo.value, str(path), "cannot open")


def test_allow_list_holds_only_containers_and_numpy_rebuilders():
    for qualified in ALLOWED_GLOBALS:
        module = qualified.rsplit(".", 1)[0]
        assert module in {"builtins", "collections", "_codecs", "numpy", "numpy.core.multiarray",
                          "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric"}, qualified
    assert "builtins.eval" not in ALLOWED_GLOBALS and "builtins.getattr" not in ALLOWED_GLOBALS
