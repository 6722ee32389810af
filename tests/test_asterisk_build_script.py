"""tests/asterisk/build_asterisk.sh on bad input: no tarball, and a build that fails (here a source tree whose
configure stops as Asterisk's does without libjansson): a clear exit, the tail of the log, the Debian package."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "asterisk" / "build_asterisk.sh"

FAILING_CONFIGURE = """#!/bin/sh
echo "checking for jansson... no" >&2
echo "checking for jansson... no" > config.log
echo "configure: error: *** JSON support not found (the libjansson development package is missing)" >> config.log
exit 1
"""


def _run(tarball: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), str(tarball)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OPENDEEP_CACHE_DIR": str(cache)})


def test_no_tarball_exits_3_and_says_how_to_get_an_asterisk(tmp_path):
    done = _run(tmp_path / "missing.tar.gz", tmp_path / "cache")
    assert done.returncode == 3
    assert "no Asterisk source tarball" in done.stderr and "ASTERISK_BIN" in done.stderr


def test_a_failed_configure_prints_its_tail_and_the_package_it_lacks(tmp_path):
    tarball = tmp_path / "asterisk-0.0.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        data = FAILING_CONFIGURE.encode()
        info = tarfile.TarInfo("asterisk-0.0.0/configure")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    done = _run(tarball, tmp_path / "cache")
    assert done.returncode == 4, done.stderr
    assert "Asterisk build failed at: configure" in done.stderr
    assert "JSON support not found" in done.stderr           # the tail of config.log
    assert "most likely lacks: libjansson-dev" in done.stderr
    assert not list((tmp_path / "cache").glob("asterisk-0.0.0-*/.built"))   # nothing cached as built
