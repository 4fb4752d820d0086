"""Build kvstore's compiled modules (Cython): the proxy's request path and the cluster's slot function.

Everything else is in pyproject.toml. ``pip install .`` (or ``-e .``) runs this; it needs a C
compiler and the Python headers (Debian: ``apt-get install gcc python3-dev``; ``make up`` and
``make test`` install them when missing).
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MISSING = ("kvstore has compiled modules and cannot build them: {what}. On Debian or Ubuntu: "
           "sudo apt-get install gcc python3-dev (make up / make test do it for you)")


class BuildExt(build_ext):
    """build_ext that says plainly what is missing instead of a compiler's traceback."""

    def build_extensions(self) -> None:
        compiler = getattr(self.compiler, "compiler_so", None) or []
        if compiler and shutil.which(compiler[0]) is None:
            raise SystemExit(MISSING.format(what=f"no C compiler ({compiler[0]!r} not found)"))
        include = sysconfig.get_paths()["include"]
        if not (Path(include) / "Python.h").exists():
            raise SystemExit(MISSING.format(what=f"no Python headers ({include}/Python.h not found)"))
        super().build_extensions()


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        raise SystemExit("kvstore's build needs Cython>=3.0; pip installs it for the build unless "
                         "--no-build-isolation is given (then: pip install 'Cython>=3.0')") from None

    modules = [
        Extension("kvstore_cluster.keyslot", ["kvstore_cluster/keyslot.pyx"]),
        Extension("kvstore_proxy.datapath", ["kvstore_proxy/datapath.pyx"]),
    ]
    return cythonize(modules, compiler_directives={"language_level": "3"}, include_path=["."])


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
