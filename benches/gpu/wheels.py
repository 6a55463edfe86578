"""The carried wheels of the GPU run: what benches/gpu/pins.txt pins, checked, downloaded, installed.

    python benches/gpu/wheels.py check [--whl .whl] [--strict]   # the pins and the wheels agree
    python benches/gpu/wheels.py download --whl .whl             # HERE (prepare.sh): fetch/build them
    python benches/gpu/wheels.py stamp --whl .whl                # HERE (prepare.sh): the Rust sources' hash
    python benches/gpu/wheels.py install --whl .whl [--dry-run]  # THERE (run.sh): install what is missing

`check` parses the pins (exact `NAME==VERSION`, no duplicates, none of the image's protected
packages), finds exactly one wheel per pin in the wheel folder, and reads every carried wheel's
metadata: each requirement it has on a pinned package must be satisfied by the pin (so
pydantic-core is the exact version the pinned pydantic requires). Markers are evaluated for the
device: CPython 3.12 on x86-64 Linux. Without `--strict`, missing wheels are only listed (the CPU
rehearsal runs where prepare.sh may not have run).

`install` plans: pins already installed at that exact version are left alone; the rest is written
to a requirements file and installed with `pip install --no-index --find-links WHL -r REQS -c
PROTECTED`, where PROTECTED pins the installed torch, transformers, triton, accelerate & co to the
versions the image has (pip can then never replace them). If the resolver refuses, the refusal is
logged, each missing wheel is installed with --no-deps instead (so the benchmarks still run) and
the step reports FAILED. aesr1 itself is not pip-installed: its compiled core (`aesr1/_core*.so`)
is extracted from the carried abi3 wheel into python/aesr1/, and run.sh puts python/ first on
PYTHONPATH, so the tree's Python sources run (never a stale copy inside the wheel). The wheel's
Rust sources must match the tree's: prepare.sh stamps their hash next to the wheel and `install`
compares it. `--dry-run` (the rehearsal) does everything but pip and the extraction.

Standard library plus `packaging` (pip's vendored copy when it is not installed).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version
except ImportError:  # pragma: no cover - the image and the venv both have packaging
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PINS = Path(__file__).resolve().parent / "pins.txt"
STAMP = "aesr1-core.sha256"
#: installed in the image; pinned to the image's versions during the install, never pinned here
PROTECTED = ("torch", "torchvision", "torchaudio", "triton", "transformers", "accelerate", "numpy",
             "huggingface-hub", "tokenizers", "safetensors")  # fmt: skip
#: the device's interpreter, for requirement markers
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "extra": ""}  # fmt: skip
#: `pip download` flags for wheels the device can install (CPython 3.12, x86-64 manylinux)
DOWNLOAD_FLAGS = ["--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                  "--platform", "manylinux2014_x86_64"]  # fmt: skip


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Pin:
    name: str  # normalised
    version: str
    line: int
    tags: set[str] = field(default_factory=set)

    @property
    def candidate(self) -> bool:
        return "candidate" in self.tags

    @property
    def sdist(self) -> bool:
        return "sdist" in self.tags

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


def parse_pins(path: Path = PINS) -> tuple[list[Pin], list[str]]:
    """The pins of `path` and the problems found in it."""
    pins: list[Pin] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text, _, comment = raw.partition("#")
        text = text.strip()
        if not text:
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            problems.append(f"{path.name}:{number}: not a requirement: {text!r} ({error})")
            continue
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"{path.name}:{number}: {text!r} is not an exact NAME==VERSION pin")
            continue
        if requirement.marker is not None or requirement.extras:
            problems.append(f"{path.name}:{number}: {text!r}: no extras or markers in pins")
            continue
        name = normalise(requirement.name)
        if name in PROTECTED:
            problems.append(f"{path.name}:{number}: {name} is the image's own and must not be pinned")
        if name in seen:
            problems.append(f"{path.name}:{number}: {name} pinned twice (also line {seen[name]})")
            continue
        seen[name] = number
        tags = set(re.findall(r"\[(\w+)\]", comment))
        unknown = tags - {"candidate", "sdist"}
        if unknown:
            problems.append(f"{path.name}:{number}: unknown tags {sorted(unknown)}")
        pins.append(Pin(name, specs[0].version, number, tags))
    if not pins:
        problems.append(f"{path.name}: no pins")
    return pins, problems


@dataclass
class Wheel:
    path: Path
    name: str  # normalised
    version: str


def parse_wheel_name(path: Path) -> Wheel | None:
    parts = path.name[: -len(".whl")].split("-")
    if not path.name.endswith(".whl") or len(parts) not in (5, 6):
        return None
    return Wheel(path, normalise(parts[0]), parts[1])


def wheels_in(folder: Path) -> list[Wheel]:
    if not folder.is_dir():
        return []
    return [w for w in (parse_wheel_name(p) for p in sorted(folder.glob("*.whl"))) if w is not None]


def wheel_requirements(path: Path) -> list[Requirement]:
    """The Requires-Dist of a wheel that apply on the device (no extras)."""
    with zipfile.ZipFile(path) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(archive.read(member).decode("utf-8", errors="replace"))
    out = []
    for text in message.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(TARGET):
            out.append(requirement)
    return out


@dataclass
class Check:
    pins: list[Pin]
    wheels: dict[str, Wheel]  # pinned name -> its wheel
    aesr1: Wheel | None
    errors: list[str]
    missing: list[str]  # pins without a wheel
    notes: list[str]


def check(whl: Path, pins_path: Path = PINS) -> Check:
    pins, errors = parse_pins(pins_path)
    notes: list[str] = []
    by_name: dict[str, list[Wheel]] = {}
    for wheel in wheels_in(whl):
        by_name.setdefault(wheel.name, []).append(wheel)
    for name, found in by_name.items():
        if len(found) > 1:
            errors.append(f"{len(found)} wheels of {name} in {whl} ({', '.join(w.path.name for w in found)}): "
                          "keep one, or pip's resolver picks among them")  # fmt: skip
    aesr1 = (by_name.get("aesr1") or [None])[0]
    pinned = {pin.name: pin for pin in pins}
    wheels: dict[str, Wheel] = {}
    missing: list[str] = []
    for pin in pins:
        found = [w for w in by_name.get(pin.name, []) if Version(w.version) == Version(pin.version)]
        if found:
            wheels[pin.name] = found[0]
        else:
            others = ", ".join(w.version for w in by_name.get(pin.name, []))
            missing.append(f"{pin}" + (f" (found {others})" if others else ""))
    for name in sorted(set(by_name) - set(pinned) - {"aesr1"}):
        notes.append(f"{name}: carried but not pinned (pip may pick it as a dependency)")
    for carrier in [*wheels.values(), *([aesr1] if aesr1 else [])]:
        try:
            requirements = wheel_requirements(carrier.path)
        except (zipfile.BadZipFile, StopIteration, InvalidRequirement) as error:
            errors.append(f"{carrier.path.name}: unreadable metadata ({error})")
            continue
        for requirement in requirements:
            target = pinned.get(normalise(requirement.name))
            if target is None:
                continue
            if not requirement.specifier.contains(target.version, prereleases=True):
                errors.append(f"{carrier.name} {carrier.version} requires {requirement}, but pins.txt "
                              f"line {target.line} pins {target}")  # fmt: skip
    return Check(pins, wheels, aesr1, errors, missing, notes)


def rust_sources_hash(root: Path = ROOT) -> str:
    """sha256 over the Rust workspace's sources (paths and contents): what the aesr1 core is built from."""
    digest = hashlib.sha256()
    files = [root / "Cargo.toml", root / "Cargo.lock"]
    files += [
        p for p in (root / "rust").rglob("*") if p.is_file() and "target" not in p.relative_to(root).parts
    ]
    for path in sorted(files):
        if path.exists():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report(result: Check, strict: bool) -> int:
    print(f"pins: {len(result.pins)} in {PINS.relative_to(ROOT)} "
          f"({sum(p.candidate for p in result.pins)} candidates, {sum(p.sdist for p in result.pins)} built from sdist)")  # fmt: skip
    for note in result.notes:
        print(f"note: {note}")
    for item in result.missing:
        print(f"{'ERROR' if strict else 'not carried'}: no wheel for {item}")
    if result.aesr1 is None:
        print(f"{'ERROR' if strict else 'not carried'}: no aesr1 wheel (benches/gpu/prepare.sh builds it)")
    for error in result.errors:
        print(f"ERROR: {error}")
    failed = bool(result.errors) or (strict and (bool(result.missing) or result.aesr1 is None))
    print("check: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------
# Commands


def cmd_check(args) -> int:
    return report(check(args.whl), args.strict)


def cmd_download(args) -> int:
    pins, problems = parse_pins()
    if problems:
        print("\n".join(problems))
        return 1
    args.whl.mkdir(parents=True, exist_ok=True)
    wanted = {(pin.name, Version(pin.version)) for pin in pins}
    for wheel in wheels_in(args.whl):  # other versions would be candidates too: one version of each
        if wheel.name != "aesr1" and (wheel.name, Version(wheel.version)) not in wanted:
            print(f"removing {wheel.path.name}: not pinned")
            wheel.path.unlink()
    binary = [str(p) for p in pins if not p.sdist]
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "-d", str(args.whl), *DOWNLOAD_FLAGS, *binary], check=True)
    for pin in (p for p in pins if p.sdist):
        if any(w.name == pin.name and w.version == pin.version for w in wheels_in(args.whl)):
            continue
        # built against this venv's torch, without build isolation; its ops are compiled on first use there
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(args.whl), str(pin)],
                       check=True)  # fmt: skip
    return 0


def cmd_stamp(args) -> int:
    (args.whl / STAMP).write_text(rust_sources_hash() + "\n")
    print(f"{args.whl / STAMP}: {rust_sources_hash()}")
    return 0


def cmd_install(args) -> int:
    dry = args.dry_run
    result = check(args.whl)
    status = report(result, strict=not dry)
    problems = status != 0
    plan_install = []
    print("\nplan (installed in this Python: " + sys.version.split()[0] + "):")
    for pin in result.pins:
        have = installed_version(pin.name)
        if pin.candidate:
            print(f"  {pin}: candidate only (installed: {have or 'no'})")
        elif have is not None and Version(have) == Version(pin.version):
            print(f"  {pin}: already installed")
        else:
            plan_install.append(pin)
            print(f"  {pin}: install (installed: {have or 'no'})")
    protected = [(name, installed_version(name)) for name in PROTECTED]
    constraints = [f"{name}=={version}" for name, version in protected if version]
    print("  kept as the image has them: " + ", ".join(constraints))

    # aesr1's compiled core: extracted from the wheel, built from the tree's Rust sources
    core_target = ROOT / "python" / "aesr1"
    stamp = args.whl / STAMP
    if result.aesr1 is not None:
        if not stamp.exists():
            print(f"ERROR: {stamp} is missing: run benches/gpu/prepare.sh again")
            problems = True
        elif stamp.read_text().strip() != rust_sources_hash():
            print("ERROR: the aesr1 wheel was built from other Rust sources than this tree's: "
                  "run benches/gpu/prepare.sh again")  # fmt: skip
            problems = True
        else:
            print("aesr1 wheel: built from this tree's Rust sources")
    with tempfile.TemporaryDirectory(prefix="aesr1-wheels-") as scratch:
        reqs, cons = Path(scratch) / "requirements.txt", Path(scratch) / "constraints.txt"
        reqs.write_text("".join(f"{pin}\n" for pin in plan_install))
        cons.write_text("".join(f"{line}\n" for line in constraints))
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(args.whl),
                   "--no-cache-dir", "--no-compile", "--disable-pip-version-check", "-r", str(reqs), "-c", str(cons)]  # fmt: skip
        print("\n$ " + " ".join(command[2:]))
        print("  requirements: " + (", ".join(map(str, plan_install)) or "(none)"))
        if dry:
            print("dry run: nothing installed, no core extracted")
            return 1 if status else 0
        if plan_install:
            proc = subprocess.run(command, capture_output=True, text=True)
            print(proc.stdout[-6000:] + proc.stderr[-6000:])
            if proc.returncode != 0:
                problems = True
                print("FAILED: pip's resolver refused the pins (above); installing each wheel with --no-deps "
                      "instead so that the benchmarks run; fix pins.txt before citing the results")  # fmt: skip
                for pin in plan_install:
                    wheel = result.wheels.get(pin.name)
                    if wheel is None:
                        continue
                    one = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                          "--no-cache-dir", "--no-compile", str(wheel.path)],
                                         capture_output=True, text=True)  # fmt: skip
                    print(f"  --no-deps {wheel.path.name}: {'ok' if one.returncode == 0 else 'FAILED'}")
                    if one.returncode:
                        print(one.stderr[-2000:])
        if result.aesr1 is not None:
            with zipfile.ZipFile(result.aesr1.path) as archive:
                members = [n for n in archive.namelist() if re.fullmatch(r"aesr1/_core[^/]*\.(so|pyd)", n)]
                for member in members:
                    (core_target / Path(member).name).write_bytes(archive.read(member))
                    print(f"extracted {member} from {result.aesr1.path.name} into {core_target}")
            if not members:
                print(f"ERROR: no aesr1/_core*.so in {result.aesr1.path.name}")
                problems = True
        check_proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
        print("$ pip check\n" + check_proc.stdout[-4000:] + check_proc.stderr[-2000:])
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "download", "stamp", "install"):
        command = sub.add_parser(name)
        command.add_argument("--whl", type=Path, default=ROOT / ".whl")
        if name == "check":
            command.add_argument("--strict", action="store_true", help="missing wheels are errors")
        if name == "install":
            command.add_argument("--dry-run", action="store_true", help="plan and check only (the rehearsal)")
    args = parser.parse_args(argv)
    return {"check": cmd_check, "download": cmd_download, "stamp": cmd_stamp, "install": cmd_install}[
        args.command
    ](args)


if __name__ == "__main__":
    sys.exit(main())
