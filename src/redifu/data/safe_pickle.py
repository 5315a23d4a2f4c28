"""Loading feature pickles without running the code a pickle may carry.

The published ERC feature files (SDT, MMGCN, DialogueRNN, COSMIC) are Python pickles. A plain
``pickle.load`` calls whatever callable the file names, so a tampered download could run
arbitrary commands. :func:`load_pickle_safely` uses an unpickler whose ``find_class`` admits
only what these files actually hold: builtin containers and scalars, and the handful of numpy
functions that rebuild arrays, dtypes and numpy scalars. Anything else is refused with
:class:`UnsafePickleError` before it can be called.

Python-2 pickles (the older DialogueRNN/MMGCN files) are read with ``encoding='latin1'``, the
decoding numpy documents for its own Python-2 array payloads.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import pickle
import struct
import warnings
from typing import Any, Callable

from redifu.data.dialogue import DataError

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "load_pickle_safely", "ALLOWED_GLOBALS"]


class UnsafePickleError(DataError):
    """A pickle names a global outside the allow-list; nothing it names has been called."""


# Encodings a pickle may name when Python 3 writes ``bytes`` at protocol <= 2 as
# ``_codecs.encode(text, 'latin1')``; any other codec name is refused.
_LATIN1_NAMES = frozenset({"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"})


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only performs the latin-1 encoding pickles use."""
    if not isinstance(text, str) or not isinstance(encoding, str) or encoding.lower() not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors="strict")


def _numpy_attribute(submodule: str, name: str) -> Callable[..., Any]:
    """``numpy._core.<submodule>.<name>`` on numpy 2, ``numpy.core.<submodule>.<name>`` on numpy 1."""
    for package in ("numpy._core", "numpy.core"):
        try:
            with warnings.catch_warnings():
                # numpy 2 keeps ``numpy.core`` as a deprecated alias; no need to warn users about
                # the module path an old file happens to name.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = importlib.import_module(f"{package}.{submodule}")
                return getattr(module, name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _numpy_toplevel(name: str) -> Callable[..., Any]:
    import numpy

    return getattr(numpy, name)


_BUILTINS: dict[str, Any] = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "str": str,
    "bytes": bytes,
    "bytearray": bytearray,
    "int": int,
    "float": float,
    "bool": bool,
    "complex": complex,
}

# (module, name) -> resolver. Resolvers run lazily so that importing redifu does not import
# numpy internals. Both numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) spellings are
# listed because the files on disk were written by either.
_RESOLVERS: dict[tuple[str, str], Callable[[], Any]] = {
    **{("builtins", name): (lambda obj=obj: obj) for name, obj in _BUILTINS.items()},
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("collections", "defaultdict"): lambda: collections.defaultdict,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy", "ndarray"): lambda: _numpy_toplevel("ndarray"),
    ("numpy", "dtype"): lambda: _numpy_toplevel("dtype"),
}
for _package in ("numpy.core", "numpy._core"):
    _RESOLVERS[(f"{_package}.multiarray", "_reconstruct")] = lambda: _numpy_attribute("multiarray", "_reconstruct")
    _RESOLVERS[(f"{_package}.multiarray", "scalar")] = lambda: _numpy_attribute("multiarray", "scalar")
    # Arrays pickled at protocol 5 are rebuilt from an in-band buffer by ``_frombuffer``.
    _RESOLVERS[(f"{_package}.numeric", "_frombuffer")] = lambda: _numpy_attribute("numeric", "_frombuffer")
del _package

ALLOWED_GLOBALS: frozenset[str] = frozenset(f"{module}.{name}" for module, name in _RESOLVERS)
"""Every ``module.name`` a feature pickle may reference (after Python-2 module renames)."""

# Python 2 spelled some modules differently; ``find_class`` receives the raw names.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        resolver = _RESOLVERS.get((module, name))
        if resolver is None:
            raise UnsafePickleError(
                f"{self._source}: refused to load '{module}.{name}': "
                "only plain containers and numpy arrays are allowed"
            )
        return resolver()

    def persistent_load(self, pid: Any) -> Any:
        # torch checkpoints and other framework files use persistent ids; feature pickles never do.
        raise UnsafePickleError(
            f"{self._source}: refused a persistent id: only plain containers and numpy arrays are allowed"
        )


def load_pickle_safely(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` admitting only builtin containers, scalars and numpy arrays.

    Args:
        path: The pickle file.

    Returns:
        The unpickled object.

    Raises:
        UnsafePickleError: The file references any other global (a function, class or module).
        DataError: The file is missing, unreadable, truncated or not a pickle.
    """
    source = os.fspath(path)
    try:
        handle = open(source, "rb")
    except OSError as error:
        raise DataError(f"{source}: cannot open file ({error.strerror or error})") from None
    with handle:
        try:
            return _RestrictedUnpickler(handle, source=source).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, ImportError, struct.error, MemoryError, RecursionError, OverflowError) as error:
            detail = " ".join(str(error).split()) or "no detail"
            raise DataError(
                f"{source}: not a readable pickle (truncated or corrupt?): {type(error).__name__}: {detail}"
            ) from None
