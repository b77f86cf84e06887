"""Numba's on-disk cache, made to follow every kernel source of the package.

Numba caches a compiled ``@njit(cache=True)`` function in an index stamped with its own source
file (``numba.core.caching``: the locator's ``get_source_stamp``), and reuses it while that stamp
matches. But a compiled function contains every jitted function it calls, from other files too:
after an edit of ``activations.phi`` the cached ``engines.propagate.run_networks`` still runs the
old ``phi``.

Here the stamp of every cached function defined in the package is instead one hash of all the
package's kernel sources (:func:`kernel_files`: the ``.py`` files under ``simulate/`` that define
jitted functions). Editing any of them invalidates the whole package's cache, and nothing stale can
run. Jitted code can only call jitted code (or Numba's own, covered by Numba's version check), so
this set holds every file a cached kernel can depend on, provided kernels read no module constants
from non-kernel files.

Mechanism: :func:`install` puts, in front of Numba's locator classes, a subclass of each of them
that claims the package's functions and returns :data:`STAMP` as their source stamp (cache paths are
unchanged). Numba picks a function's locator when it is decorated, so :func:`install` must run
before the first ``@njit(cache=True)`` of the package is executed: importing this module does it,
and ``simulate/__init__.py`` imports it first. (Setting ``NUMBA_CACHE_LOCATOR_CLASSES`` overrides
the locator list, and with it this protection.)
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from numba.core import caching

PACKAGE = Path(__file__).resolve().parent
"""The ``simulate`` package directory."""

_IMPORTS_NUMBA = re.compile(r"^\s*(?:from|import)\s+numba\b", re.MULTILINE)
_JIT = re.compile(
    r"@\s*(?:numba\.)?(?:njit|jit|vectorize|guvectorize|cfunc|stencil)\b|"
    r"\b(?:njit|jit|vectorize|guvectorize|cfunc|stencil)\s*\("
)
"""With an import of numba: a decorator or call of Numba's compilers, so the file defines jitted
functions (a superset is harmless: it only invalidates the cache more often)."""


def _defines_kernels(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return bool(_IMPORTS_NUMBA.search(text) and _JIT.search(text))


def kernel_files() -> list[Path]:
    """The package's ``.py`` files that define jitted functions, sorted."""
    return sorted(p for p in PACKAGE.rglob("*.py") if _defines_kernels(p))


def source_stamp(files: list[Path]) -> str:
    """SHA-256 over the paths (relative to the package) and contents of ``files``, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def package_stamp() -> str:
    """:func:`source_stamp` of :func:`kernel_files`."""
    return source_stamp(kernel_files())


STAMP = package_stamp()
"""The source stamp of every cached kernel of the package, computed once at import. A sweep store
records it per cell, as the version of the numerics that computed the cell
(:func:`simulate.schema.numerics_version`)."""


class _PackageStamped:
    """Locator mixin: claim functions defined in the package, stamp them with :data:`STAMP`."""

    @classmethod
    def from_function(cls, py_func, py_file):
        path = Path(py_file).resolve()
        if not path.is_relative_to(PACKAGE):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return STAMP


def _impl_class():
    """Numba's cache implementation class (``CacheImpl``; ``_CacheImpl`` before numba 0.61)."""
    return getattr(caching, "CacheImpl", None) or caching._CacheImpl


def install() -> None:
    """Put the package-stamped locators in front of Numba's (once)."""
    locators = _impl_class()._locator_classes
    if any(issubclass(cls, _PackageStamped) for cls in locators):
        return
    stamped = [
        type(f"Package{cls.__name__.lstrip('_')}", (_PackageStamped, cls), {}) for cls in locators
    ]
    locators[:0] = stamped


install()
