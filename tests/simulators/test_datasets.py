"""Locating data as a user gets it: $SHADOWSCALE_DATA, the bundle, the download cache (loopback HTTP only)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from shadowscale.simulators import catalog as catalog_mod
from shadowscale.simulators import datasets
from shadowscale.simulators.datasets import DataUnavailable, Remote, locate
from shadowscale.simulators.traces import load_trace

REPO_DATA = Path(__file__).resolve().parents[2] / "data"
REL = "profiles/gpulet-reimpl/inference.csv"


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("H", (_Handler,), {"files": {}, "hits": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def wheel_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bundle holding only what the wheel ships (licensed folders), an empty cache, no $SHADOWSCALE_DATA."""
    bundle = tmp_path / "bundle"
    for folder in datasets.BUNDLED:
        (bundle / folder).parent.mkdir(parents=True, exist_ok=True)
        (bundle / folder).symlink_to(REPO_DATA / folder, target_is_directory=True)
    monkeypatch.setattr(datasets, "bundled_root", lambda: bundle)
    monkeypatch.delenv(datasets.DATA_ENV_VAR, raising=False)
    monkeypatch.setenv(datasets.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setenv(datasets.OFFLINE_ENV_VAR, "1")
    catalog_mod._load_catalog.cache_clear()
    yield bundle
    catalog_mod._load_catalog.cache_clear()


def test_bundle_lists_only_licensed_folders() -> None:
    """The wheel's data: never a folder whose README states no license (gpulet, infadapter) or research-only."""
    assert not any(
        f.startswith(("profiles/gpulet-reimpl", "profiles/infadapter", "traces/alibaba")) for f in datasets.BUNDLED
    )
    assert not any(k.startswith(datasets.BUNDLED) for k in datasets.REMOTE)  # one source per file


def test_remote_checksums_match_the_repository_copies() -> None:
    """The pinned SHA-256s are those of the byte-identical copies under data/ (catches a mistyped digest)."""
    for rel, remote in datasets.REMOTE.items():
        assert hashlib.sha256((REPO_DATA / rel).read_bytes()).hexdigest() == remote.sha256, rel
        assert remote.url.startswith("https://raw.githubusercontent.com/") and remote.url.endswith(Path(rel).name)


def test_user_csv_needs_no_unlicensed_data(wheel_like: Path, tmp_path: Path) -> None:
    """A user's own CSV simulates with only the wheel's data; the functions trace (gpulet CNNs) needs the download
    and says so. Mutation caught: reading gpulet's inference.csv in load_catalog (as before) fails the first load."""
    csv = tmp_path / "mine.csv"
    csv.write_text("timestamp,model,service_ms\n0,a,20\n1,b,30\n2,a,25\n")
    w = load_trace(str(csv))
    assert [s.model for s in w.services] == ["a", "b"]
    assert all(s.profile.name.startswith("llm-bench/") for s in w.services)
    with pytest.raises(DataUnavailable, match=r"gpulet-reimpl/inference\.csv: not bundled .*SHADOWSCALE_OFFLINE"):
        load_trace("azure-functions-2019", hours=0.1)
    assert load_trace("mooncake", hours=0.1).n_requests > 0  # bundled LLM trace


def test_env_data_dir_is_the_only_place_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "traces" / "x").mkdir(parents=True)
    (tmp_path / "traces" / "x" / "f.csv").write_text("a\n")
    monkeypatch.setenv(datasets.DATA_ENV_VAR, str(tmp_path))
    assert locate("traces/x/f.csv") == tmp_path / "traces" / "x" / "f.csv"
    with pytest.raises(DataUnavailable, match=r"not found in .* \(set by \$SHADOWSCALE_DATA\).*unset"):
        locate("traces/mooncake/conversation_trace.jsonl")


def test_fetch_on_first_use_then_cached(
    wheel_like: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: tuple[str, type[_Handler]]
) -> None:
    """Downloaded once (loopback server), checked against the pinned SHA-256, then read from the cache. The
    other gpulet files right-sizing reads (interference, memory) are served from loopback too: no test ever
    reaches the real upstream address."""
    url, handler = server
    body = (REPO_DATA / REL).read_bytes()
    handler.files["/inference.csv"] = body
    monkeypatch.setitem(datasets.REMOTE, REL, Remote(f"{url}/inference.csv", hashlib.sha256(body).hexdigest(), "test"))
    for name in ("interference.csv", "mem_util.csv"):
        rel = f"profiles/gpulet-reimpl/{name}"
        data = (REPO_DATA / rel).read_bytes()
        handler.files[f"/{name}"] = data
        monkeypatch.setitem(datasets.REMOTE, rel, Remote(f"{url}/{name}", hashlib.sha256(data).hexdigest(), "test"))
    monkeypatch.delenv(datasets.OFFLINE_ENV_VAR)
    path = locate(REL)
    assert path == tmp_path / "cache" / REL and path.read_bytes() == body
    assert locate(REL) == path and handler.hits == ["/inference.csv"]  # second call: no download
    w = load_trace("azure-functions-2019", hours=0.05)
    assert w.services[0].profile.name.startswith("gpulet/")


def test_fetch_rejects_a_wrong_checksum_and_keeps_nothing(
    wheel_like: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: tuple[str, type[_Handler]]
) -> None:
    """Mutation caught: dropping the digest comparison stores the tampered file and this test fails."""
    url, handler = server
    handler.files["/inference.csv"] = b"tampered\n"
    monkeypatch.setitem(datasets.REMOTE, REL, Remote(f"{url}/inference.csv", "0" * 64, "test"))
    monkeypatch.delenv(datasets.OFFLINE_ENV_VAR)
    with pytest.raises(DataUnavailable, match=r"sha256 [0-9a-f]{64}, expected 0{64}.*nothing was kept"):
        locate(REL)
    assert not (tmp_path / "cache" / REL).exists()
    assert not any((tmp_path / "cache").rglob("*.part"))


def test_fetch_failure_names_url_and_the_ways_out(
    wheel_like: Path, monkeypatch: pytest.MonkeyPatch, server: tuple[str, type[_Handler]]
) -> None:
    url, _ = server
    monkeypatch.setitem(datasets.REMOTE, REL, Remote(f"{url}/missing.csv", "0" * 64, "test"))
    monkeypatch.delenv(datasets.OFFLINE_ENV_VAR)
    with pytest.raises(DataUnavailable, match=r"cannot download .*/missing\.csv: .*set \$SHADOWSCALE_DATA"):
        locate(REL)


def test_unknown_file_is_not_downloadable(wheel_like: Path) -> None:
    with pytest.raises(DataUnavailable, match=r"not bundled .* and not downloadable"):
        locate("traces/nope/x.csv")
