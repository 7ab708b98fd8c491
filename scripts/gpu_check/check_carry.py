"""Checks a folder of carried wheels: every requirement of every wheel (for the target Python, on Linux
x86-64) is met by another wheel in the folder or is one of the packages the GPU machine is known to have.

    python3 scripts/gpu_check/check_carry.py DIR [--python-version 3.12]

Uses pip's vendored `packaging`, so it needs nothing but pip. Exits 1 and names what is missing.
"""

from __future__ import annotations

import argparse
import email.parser
import pathlib
import re
import sys
import zipfile

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.version import Version

# What the GPU machine has (issue 14) and what those packages themselves require.
PREINSTALLED = {
    "torch", "triton", "numpy", "pytest", "pytest-timeout", "ninja", "pybind11", "setuptools", "safetensors",
    "pillow", "tqdm", "matplotlib",
    "filelock", "fsspec", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe",
    "packaging", "pyparsing", "cycler", "kiwisolver", "fonttools", "contourpy", "python-dateutil", "six",
    "pluggy", "iniconfig", "pygments",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args(argv)
    environment = {
        "python_version": args.python_version, "python_full_version": f"{args.python_version}.0",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
        "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "extra": "",
    }
    wheels = sorted(pathlib.Path(args.folder).glob("*.whl"))
    carried, requirements = {}, []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
        carried[normalize(metadata["Name"])] = Version(metadata["Version"])
        requirements += [(metadata["Name"], Requirement(r)) for r in metadata.get_all("Requires-Dist") or []]
    problems, assumed = [], set()
    for owner, requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = normalize(requirement.name)
        if name in carried:
            if requirement.specifier and carried[name] not in requirement.specifier:
                problems.append(f"{owner} needs {requirement}, carried {name} {carried[name]}")
        elif name in PREINSTALLED:
            assumed.add(f"{name}{requirement.specifier}" if requirement.specifier else name)
        else:
            problems.append(f"{owner} needs {requirement}: neither carried nor on the GPU machine")
    print(f"check_carry: {len(wheels)} wheels for Python {args.python_version}; taken from the machine: "
          f"{', '.join(sorted(assumed)) or 'nothing'}")
    for problem in problems:
        print(f"  MISSING: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
