"""Builds kvtier._kvtier with the repository's CMake build and puts it into the package.

Metadata lives in pyproject.toml. The build configures the whole kvtier tree (the directory
above this one, or $KVTIER_SOURCE_DIR) in release mode with only the Python module enabled and
builds just that target:

    cmake -S <repo> -B <build_temp> -DCMAKE_BUILD_TYPE=Release -DKVT_BUILD_PYTHON=ON
          -DKVT_BUILD_TESTS=OFF -DKVT_BUILD_BENCHMARKS=OFF -DPYTHON_EXECUTABLE=<this python>
    cmake --build <build_temp> --target _kvtier

Environment: KVTIER_SOURCE_DIR (the repository), KVTIER_CMAKE_ARGS (extra configure arguments,
space-separated), CMAKE_BUILD_PARALLEL_LEVEL (build jobs; default: all cores).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, target: str) -> None:
        super().__init__(name, sources=[])
        self.target = target


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            super().build_extension(ext)
            return
        source = Path(os.environ.get("KVTIER_SOURCE_DIR", HERE.parent)).resolve()
        if not (source / "CMakeLists.txt").is_file() or not (source / "include/kvtier/client.h").is_file():
            raise RuntimeError(
                f"kvtier sources not found at {source}: build from a checkout of the repository "
                "(pip install ./python) or set KVTIER_SOURCE_DIR"
            )
        if shutil.which("cmake") is None:
            raise RuntimeError("cmake not found: install Debian's cmake (scripts/setup.sh)")
        build = Path(self.build_temp).resolve() / "cmake"
        build.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            "-S", str(source),
            "-B", str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DKVT_BUILD_PYTHON=ON",
            "-DKVT_BUILD_TESTS=OFF",
            "-DKVT_BUILD_BENCHMARKS=OFF",
            f"-DPYTHON_EXECUTABLE={sys.executable}",
        ]
        if shutil.which("ninja") is not None and not (build / "CMakeCache.txt").exists():
            configure += ["-G", "Ninja"]
        configure += shlex.split(os.environ.get("KVTIER_CMAKE_ARGS", ""))
        if subprocess.run(configure).returncode != 0:
            # Some trees do not configure without their tests (a CMakeLists.txt that sets
            # properties of a test target unconditionally): configure them (without building
            # them) rather than fail. Needs GoogleTest's development package.
            print(
                "kvtier: configuring without tests failed; retrying with -DKVT_BUILD_TESTS=ON "
                "(only the _kvtier target is built)",
                file=sys.stderr,
            )
            subprocess.run(configure + ["-DKVT_BUILD_TESTS=ON"], check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(
            ["cmake", "--build", str(build), "--target", ext.target, "--parallel", jobs],
            check=True,
        )
        built = sorted((build / "python" / "kvtier").glob("_kvtier*.so"))
        if not built:
            raise RuntimeError(f"the build produced no _kvtier module under {build}/python/kvtier")
        destination = Path(self.get_ext_fullpath(ext.name))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built[-1], destination)


setup(
    ext_modules=[CMakeExtension("kvtier._kvtier", target="_kvtier")],
    cmdclass={"build_ext": CMakeBuild},
)
