"""A private Asterisk instance for the test session: its own config folder, free loopback ports, its own logs.

    binary, reason = find_asterisk()           # ASTERISK_BIN, else `asterisk` on PATH (>= 22), else a cached build
    instance = AsteriskInstance(binary, workdir)
    instance.start()                           # writes the config, boots, waits for `core waitfullybooted`
    instance.install_opendeep(files)           # the files `opendeep dialplan render` wrote, #included as an admin would
    instance.rx("dialplan show opendeep-outbound")
    instance.problems_since(mark)              # WARNING / ERROR lines logged since a mark
    instance.stop()

Every `ast*dir` lies inside `workdir`; modules.conf loads only what OpenDeep and the test callees use, and each of
those modules gets a config, so a healthy run logs no WARNING or ERROR at all.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_TARBALL = ROOT.parent / "shared" / "asterisk" / "asterisk-22.10.1.tar.gz"
SOUNDS = Path(os.environ.get("ASTERISK_SOUNDS_DIR", "/usr/share/asterisk/sounds"))
MIN_MAJOR = 22
_PROBLEM = re.compile(r"\] (WARNING|ERROR)\[")
TEST_AMI_USER, TEST_AMI_SECRET = "opendeep-test", "test-observer-secret"

MODULES = [
    "res_timing_timerfd", "pbx_config", "res_convert", "res_speech", "res_agi", "res_audiosocket", "chan_audiosocket",
    "app_dial", "app_stack", "app_audiosocket", "app_amd", "app_playback", "app_read", "app_echo",
    "app_milliwatt", "app_verbose", "app_senddtmf", "app_mixmonitor", "app_userevent", "app_exec",
    "app_record", "func_timeout", "func_channel", "func_strings", "func_logic", "func_callerid", "func_global",
    "func_cut", "bridge_simple", "bridge_builtin_features", "bridge_holding", "codec_ulaw", "codec_alaw",
    "codec_gsm", "codec_a_mu", "format_gsm", "format_wav", "format_pcm", "format_sln",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def asterisk_version(binary: str) -> str:
    done = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def _major(version: str) -> int:
    match = re.search(r"Asterisk (\d+)\.", version)
    return int(match.group(1)) if match else 0


def modules_dir_for(binary: str) -> Path:
    """Where the binary's modules are: ASTERISK_MODULES_DIR, else beside a prefix install, else Debian's."""
    if os.environ.get("ASTERISK_MODULES_DIR"):
        return Path(os.environ["ASTERISK_MODULES_DIR"])
    candidates = [Path(binary).resolve().parents[1] / "lib" / "asterisk" / "modules",
                  Path("/usr/lib/x86_64-linux-gnu/asterisk/modules"), Path("/usr/lib/asterisk/modules")]
    return next((path for path in candidates if path.is_dir()), candidates[0])


@functools.cache
def find_asterisk() -> tuple[str | None, str]:
    """(the asterisk binary, "") or (None, why there is none and how to get one)."""
    explicit = os.environ.get("ASTERISK_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            return None, f"ASTERISK_BIN={explicit} is not an executable file"
        if _major(asterisk_version(explicit)) < MIN_MAJOR:
            return None, f"ASTERISK_BIN={explicit} is {asterisk_version(explicit)!r}; the tests need Asterisk >= 22"
        return explicit, ""
    on_path = shutil.which("asterisk")
    if on_path and _major(asterisk_version(on_path)) >= MIN_MAJOR:
        return on_path, ""
    tarball = Path(os.environ.get("ASTERISK_TARBALL", DEFAULT_TARBALL))
    if not tarball.is_file():
        return None, (f"no Asterisk >= 22 (set ASTERISK_BIN or put asterisk on PATH) and no source tarball at "
                      f"{tarball} (set ASTERISK_TARBALL) to build one")
    done = subprocess.run([str(HERE / "build_asterisk.sh"), str(tarball)], capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"building Asterisk from {tarball} failed:\n{done.stderr[-3000:]}"
    prefix = Path(done.stdout.strip().splitlines()[-1])
    return str(prefix / "sbin" / "asterisk"), ""


class AsteriskInstance:
    """One private Asterisk. Ports are picked free on 127.0.0.1; `ami_port` is OpenDeep's AMI."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = Path(workdir)
        self.confdir = self.workdir / "etc"
        self.logdir = self.workdir / "log"
        self.recordings = self.workdir / "recordings"
        self.ami_port = free_port()
        self.process: subprocess.Popen | None = None

    # ------------------------------------------------------------------ config

    def _write(self, name: str, text: str) -> None:
        (self.confdir / name).write_text(text, encoding="utf-8")

    def write_config(self) -> None:
        for sub in ("etc", "log", "run", "spool", "lib", "data", "keys", "agi-bin", "recordings"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        sounds_link = self.workdir / "data" / "sounds"
        if not sounds_link.exists():
            sounds_link.symlink_to(SOUNDS)
        w = self.workdir
        self._write("asterisk.conf", f"""[directories]
astetcdir => {self.confdir}
astmoddir => {modules_dir_for(self.binary)}
astvarlibdir => {w / 'lib'}
astdbdir => {w / 'lib'}
astkeydir => {w / 'keys'}
astdatadir => {w / 'data'}
astagidir => {w / 'agi-bin'}
astspooldir => {w / 'spool'}
astrundir => {w / 'run'}
astlogdir => {self.logdir}
astsbindir => {Path(self.binary).parent}

[options]
documentation_language = en_US
transmit_silence = no
hideconnect = yes
""")
        self._write("logger.conf", """[general]
dateformat = %F %T.%3q

[logfiles]
; full: everything a failing test shows; problems: what fails a test.
full => notice,warning,error,verbose(3),dtmf
problems => warning,error
""")
        self._write("modules.conf", "[modules]\nautoload = no\n" + "".join(f"load => {m}.so\n" for m in MODULES))
        self._write("manager.conf", f"""[general]
enabled = yes
bindaddr = 127.0.0.1
port = {self.ami_port}
timestampevents = yes

; The tests' own observer (UserEvents from the test callees, channel listings).
[{TEST_AMI_USER}]
secret = {TEST_AMI_SECRET}
read = all
write = all

#include "manager_opendeep.conf"
""")
        self._write("manager_opendeep.conf", "; replaced by install_opendeep()\n")
        self._write("extensions_opendeep.conf", "; replaced by install_opendeep()\n")
        self._write("extensions.conf", (HERE / "extensions_test.conf").read_text(encoding="utf-8")
                    .replace("@RECORDINGS@", str(self.recordings)) + '\n#include "extensions_opendeep.conf"\n')
        for name in ("indications.conf", "amd.conf", "features.conf", "cdr.conf", "cel.conf", "ccss.conf",
                     "acl.conf", "udptl.conf", "stasis.conf", "musiconhold.conf", "agi.conf"):
            source = HERE / "conf" / name
            self._write(name, source.read_text(encoding="utf-8") if source.exists() else "")

    # ------------------------------------------------------------------ running

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        with open(self.logdir / "console.log", "ab") as console:
            self.process = subprocess.Popen([self.binary, "-C", str(self.confdir / "asterisk.conf"), "-f", "-n",
                                             "-g"], stdin=subprocess.DEVNULL, stdout=console,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Asterisk exited with {self.process.returncode} while booting:\n"
                                   f"{self.log_tail()}")
            done = self._rx_raw("core waitfullybooted", timeout=10)
            if done.returncode == 0 and "fully booted" in done.stdout.lower():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Asterisk did not boot within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self._rx_raw("core stop now", timeout=10)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        """kill -9: the machine loses Asterisk at once (tests of restarts)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _rx_raw(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run([self.binary, "-C", str(self.confdir / "asterisk.conf"), "-rx", command],
                              capture_output=True, text=True, timeout=timeout)

    def rx(self, command: str, timeout: float = 20) -> str:
        """Run one CLI command on this instance and return what it printed."""
        done = self._rx_raw(command, timeout)
        if done.returncode != 0:
            raise RuntimeError(f"asterisk -rx {command!r} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def install_opendeep(self, files: dict[str, str]) -> None:
        """Put the files `opendeep dialplan render` wrote where extensions.conf and manager.conf #include
        them, then reload both, as the dialplan README tells an admin to."""
        for name, text in files.items():
            self._write(name, text)
        self.rx("dialplan reload")
        self.rx("manager reload")

    # ------------------------------------------------------------------ logs

    def log_mark(self) -> int:
        path = self.logdir / "problems"
        return path.stat().st_size if path.exists() else 0

    def problems_since(self, mark: int) -> list[str]:
        """WARNING and ERROR lines logged since `mark` (log_mark())."""
        path = self.logdir / "problems"
        if not path.exists():
            return []
        with open(path, "rb") as handle:
            handle.seek(mark)
            text = handle.read().decode("utf-8", "replace")
        return [line for line in text.splitlines() if _PROBLEM.search(line)]

    def log_tail(self, lines: int = 80) -> str:
        path = self.logdir / "full"
        if not path.exists():
            path = self.logdir / "console.log"
        if not path.exists():
            return "(no Asterisk log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
