"""A real PostgreSQL server for the test run: initdb into a temporary folder, listen on
127.0.0.1 on a free port, stop at the end of the run (and by itself if the run dies)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `make test` (it installs it)")
    return Path(found[-1]).parent


class PostgresServer:
    def __init__(self, *, durable: bool = False) -> None:
        """`durable=False` (tests) turns fsync and synchronous commit off for speed;
        benchmarks pass True to measure PostgreSQL with its normal durability."""
        self.durable = durable
        self.bindir = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.datadir = self.root / "data"
        self.user = "postgres"
        self._as_root = os.geteuid() == 0
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def _cmd(self, *args: str) -> list[str]:
        # PostgreSQL refuses to run as root: drop to the postgres user the package creates.
        return ["runuser", "-u", "postgres", "--", *args] if self._as_root else list(args)

    def start(self) -> PostgresServer:
        if self._as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )
        return self._launch()

    def _launch(self) -> PostgresServer:
        self.process = subprocess.Popen(
            self._cmd(
                str(self.bindir / "postgres"),
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                *self._options(),
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._watch_parent()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return self
            if self.process.poll() is not None:
                raise RuntimeError("PostgreSQL exited during start-up")
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready in 30 s")

    def _options(self) -> list[str]:
        options = ["-c", "max_connections=300"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            options += ["-c", "full_page_writes=off"]
        return options

    def _watch_parent(self) -> None:
        """Stop the server by itself if the test run dies without calling stop()."""
        assert self.process is not None
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null && kill -0 {self.process.pid} 2>/dev/null;"
            f" do sleep 1; done; kill -INT $(head -1 {self.datadir}/postmaster.pid) 2>/dev/null;"
            f" sleep 5; rm -rf {self.root}"
        )
        # Kept (and reaped in stop()): an unreaped Popen is a ResourceWarning, an error here.
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def pause(self) -> None:
        """Shut the server down (its connections are cut) and keep its data for `resume()`."""
        self._shutdown()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None

    def resume(self) -> PostgresServer:
        """Start a paused server again on the same port and data."""
        return self._launch()

    def stop(self) -> None:
        self._shutdown()
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def _shutdown(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # runuser does not forward signals: ask the server itself to shut down fast.
            subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "20",
                ),
                capture_output=True,
            )
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
