"""What the launchers check before starting a server: that `scripts/bootstrap` installed it.

This module owns the one rule every launcher follows: it never installs anything. A missing
program or package raises `NotInstalled`, whose message names what is missing and
`scripts/bootstrap`, the one place that installs system packages. It also knows where bootstrap
unpacks the servers whose Debian packages cannot be installed beside Dovecot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


class NotInstalled(RuntimeError):
    """A program the launcher needs is missing: `scripts/bootstrap` installs it."""


def require(paths: Iterable[Path | str], what: str) -> None:
    """Raise `NotInstalled` unless every path exists (a bare name: is found on PATH)."""
    missing = [
        str(p) for p in paths if not (Path(p).exists() if "/" in str(p) else shutil.which(p))
    ]
    if missing:
        raise NotInstalled(f"{what}: {', '.join(missing)} missing; run scripts/bootstrap")


def _found(program: str) -> bool:
    return Path(program).exists() if "/" in program else shutil.which(program) is not None


def cache_dir() -> Path:
    """Where `scripts/bootstrap` unpacks server packages that cannot be installed side by side
    (cyrus-imapd and courier-imap conflict with dovecot-imapd). As root the servers drop to
    other users, who must be able to run the binaries: not under ~root."""
    if os.geteuid() == 0:
        return Path("/var/cache/popbridge-tests")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "popbridge-tests"


def unpacked(package: str, version: str | None = None) -> Path:
    """The root of `package`'s files as `scripts/bootstrap` unpacked them: of `version`
    (Debian's version string) when given, else the newest there."""
    if version is not None:
        matches = [cache_dir() / f"{package}-{version.replace(':', '_')}"]
    else:
        matches = sorted(cache_dir().glob(f"{package}-*"))
    found = [path for path in matches if (path / "usr").is_dir()]
    if not found:
        wanted = f"{package} {version}" if version else package
        raise NotInstalled(f"{wanted} is not unpacked in {cache_dir()}; run scripts/bootstrap")
    return found[-1]
