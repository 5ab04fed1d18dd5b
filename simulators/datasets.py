"""Where the simulator's traces and profiles come from: bundled, downloaded once, or a folder you name.

Every data file has a path relative to a data folder (``traces/mooncake/conversation_trace.jsonl``). It is found:

1. under ``$SHADOWSCALE_DATA`` when that variable is set (and only there);
2. else in the installed package (``shadowscale/data``, read with :mod:`importlib.resources`): the traces and
   profiles whose licenses allow redistribution ship in the wheel (see :data:`BUNDLED`);
3. else in the download cache (``$SHADOWSCALE_CACHE``, default ``~/.cache/shadowscale``), where a file whose
   source states no license (or only research use) is downloaded on first use from its pinned upstream commit and
   kept only when its SHA-256 matches the one recorded here (:data:`REMOTE`).

A file that none of these provides raises :class:`DataUnavailable`, whose message says which of the three was
tried and how to fix it. ``SHADOWSCALE_OFFLINE=1`` turns the download off.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shadowscale.errors import ShadowscaleError

DATA_ENV_VAR = "SHADOWSCALE_DATA"
CACHE_ENV_VAR = "SHADOWSCALE_CACHE"
OFFLINE_ENV_VAR = "SHADOWSCALE_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0

BUNDLED: tuple[str, ...] = (
    "traces/azure-functions-2019",  # CC-BY 4.0 (data), MIT (sampling repository)
    "traces/azure-llm-2023",  # CC-BY 4.0
    "traces/mooncake",  # Apache-2.0
    "profiles/llm-inference-bench",  # BSD 3-Clause
    "profiles/splitwise-perf-model",  # MIT
)
"""Data folders shipped in the wheel (their licenses allow redistribution; each keeps its README/LICENSE)."""


@dataclass(frozen=True, slots=True)
class Remote:
    """A file fetched on first use: its upstream URL at a pinned commit and the SHA-256 of its bytes."""

    url: str
    sha256: str
    license: str


_GPULET = "https://raw.githubusercontent.com/0909wlgur/Gpulet/8015c3d3f3281aa890cf41a855512f9da899af6d/data/"
_INFADAPTER = (
    "https://raw.githubusercontent.com/reconfigurable-ml-pipeline/InfAdapter/"
    "398b18f0e932985afb9af0847a3453a4b27345c4/auto_tuner/adapter/"
)
_INFADAPTER_JAN = (
    "https://raw.githubusercontent.com/reconfigurable-ml-pipeline/InfAdapter/"
    "ab5241c0f59a434d60a9e069f4d2d6d1ee44822a/auto_tuner/adapter/"
)
_ALIBABA = (
    "https://raw.githubusercontent.com/alibaba/clusterdata/"
    "7a6c496e4f4b6ce6150be8f881cb051bf2abff42/cluster-trace-gpu-v2023/csv/"
)
_NO_LICENSE = "none stated by the source: for your own evaluation only"
_RESEARCH = "research or study use with attribution (Weng et al., USENIX ATC '23)"


def _remotes(base: str, license: str, folder: str, files: dict[str, str]) -> dict[str, Remote]:
    return {f"{folder}/{name}": Remote(base + name, sha, license) for name, sha in files.items()}


REMOTE: dict[str, Remote] = {
    **_remotes(
        _GPULET,
        _NO_LICENSE,
        "profiles/gpulet-reimpl",
        {
            "inference.csv": "65d8277d130e4ce0873b337bf03cdb6f6d746c2f835b1d858f5efc715e273653",
            "interference.csv": "5c8c5d7fdd7dc49a6d776954607ab611ff1d9a87512a199327c86c0ccbc945cc",
            "mem_util.csv": "ddf052cac73754837453acdbae7105e6a12a36299a82d70e735a2c207ad62edb",
        },
    ),
    **_remotes(
        _INFADAPTER,
        _NO_LICENSE,
        "profiles/infadapter",
        {"capacity_result_Feb_21.csv": "a901495e8cd9eb8073fa75411353aa4ae168d9d36db6ea878f0f2a5a520e386e"},
    ),
    **_remotes(
        _INFADAPTER_JAN,
        _NO_LICENSE,
        "profiles/infadapter",
        {"capacity_result_Jan_11.csv": "2c276bd0a5e1b289809ed51cba69cd9020e981b753b2233e8f532a03d9ba96c4"},
    ),
    **_remotes(
        _ALIBABA,
        _RESEARCH,
        "traces/alibaba-gpu-v2023",
        {
            "openb_node_list_all_node.csv": "5a85c2af79c66a1efff8bbcbda430400aae56d8431370d738480967e1a9c6b15",
            "openb_node_list_gpu_node.csv": "2beca64b4d3dfa342036a34b56a495c6cef9225db836c81f541282cb1df320b5",
            "openb_pod_list_cpu0.csv": "1bc3fd9ee5c1468ccd018f624d9222746e08d59f963f66b925804734271c0eaa",
            "openb_pod_list_cpu037.csv": "8ed554026d041b15ff21ddc104d9a21dbd9a93c496262fa23ef7b5be27e220dc",
            "openb_pod_list_cpu050.csv": "747f43247bffc2b0bb081d7f61f0705ca8d390dafc0b647e642c92f3baf3ba1e",
            "openb_pod_list_cpu072.csv": "f8a2b031461b54d7b9f06d55473c2371eb3357b78a255c646bdca5e0833a8a2f",
            "openb_pod_list_cpu100.csv": "bec1c33fbdde61fd463877534ec79b393aec73e1cbb22d55fab9f166ac480982",
            "openb_pod_list_cpu200.csv": "b7e9d8a1a601da84d6e0b4110b19ef5001be5e4796d33e7b82f166ba95161f87",
            "openb_pod_list_cpu235.csv": "87bebd4d012faa8305ce1fd82737f51cf03361aac28b75d42e34aa656d7f4ee0",
            "openb_pod_list_cpu250.csv": "134c21ff96d57533df8a37b67632972884fec9396e77cd0898ddc370cc8e607d",
            "openb_pod_list_cpu300.csv": "76528825f40ee662cb098b3b6e683c1efd9f87a0c8af7e628df1f32c639636d1",
            "openb_pod_list_default.csv": "1ee7ed79c27a3b0861cda8ddba86a004c6aba904caafa329a76ae93ca63834a8",
            "openb_pod_list_gpushare100.csv": "12dbc07d6a49bf8641e2275a2ff5bf7be74b5df7d148d531e135b140b95f9a3d",
            "openb_pod_list_gpushare20.csv": "9be2d0efb52e242c32e23dd184cc5fcc1983478c6c9c02cbb6b4b62925c0ffcd",
            "openb_pod_list_gpushare40.csv": "d83ce79a4eb6987524bedbb0c65e41aed3a36bf6c1b78b86234c3687a07e1d40",
            "openb_pod_list_gpushare60.csv": "d31809628128a1f24491086eda4af3e23882b9213d3ef57a56ee2d1af69492fe",
            "openb_pod_list_gpushare80.csv": "88b6649369ced40d0fde287d2498ea61ff4b05fccba8bdc95daf6042f2f8431e",
            "openb_pod_list_gpuspec05.csv": "8f1c0ef7e4e511e982bd2818898ba22ee6d273bf5fce124b7ace285b5928cf4e",
            "openb_pod_list_gpuspec10.csv": "2dc7e4cb9480484f08539720b433a9ec9ab5d76b396f3f7557c53a2ff78a7611",
            "openb_pod_list_gpuspec20.csv": "6b9b89ab8913c1c074e994e98f548cf1a872fc5f76f2442ca8cd514a478b00a9",
            "openb_pod_list_gpuspec25.csv": "9d030679a2ccd7e27a7ec9ff15baff34480d22a0012515691fc187e3f35ee68c",
            "openb_pod_list_gpuspec33.csv": "eca4f746db1e5b25864ad021b55ece3943e101a3ebd4574d09dcb95c46117652",
            "openb_pod_list_multigpu20.csv": "d9ec6f6c74fb980cc0b81239470c6353fceea077ea9abd610003b604c7cc2b01",
            "openb_pod_list_multigpu30.csv": "a5e479c6444b1d83eef848159cf00c3cfa13441b2d1e2c113c391b91f1cc5b11",
            "openb_pod_list_multigpu40.csv": "32c9e8731ca07ef96108aa65f2a289bb9aacb47f642ed9e3789f99b242df60eb",
            "openb_pod_list_multigpu50.csv": "206f2f5959db30ecb7c44e7f13197c8ec50b7a35558ad3777cc3662ef0fe5373",
        },
    ),
}
"""Files not shipped in the wheel, by relative path: fetched on first use into the cache."""


class DataUnavailable(ShadowscaleError, FileNotFoundError):
    """A data file is in none of the places looked in; the message says which were tried and what to do."""


def env_data_dir() -> Path | None:
    """``$SHADOWSCALE_DATA`` as a path, or None when unset or empty."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else None


def bundled_root() -> Path:
    """The data folder inside the installed package (in a checkout: the repository's ``data/``)."""
    return Path(str(resources.files("shadowscale") / "data"))


def cache_root() -> Path:
    """``$SHADOWSCALE_CACHE``, else ``$XDG_CACHE_HOME/shadowscale``, else ``~/.cache/shadowscale``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "shadowscale"


def default_root() -> Path:
    """The folder relative paths resolve against when nothing else is said: ``$SHADOWSCALE_DATA`` or the bundle."""
    return env_data_dir() or bundled_root()


def locate(rel: str | Path, data_dir: Path | None = None) -> Path:
    """The local path of data file ``rel`` (downloading it into the cache on first use if needed).

    With ``data_dir`` the answer is ``data_dir / rel`` as is (the caller reports a missing file with its path).
    """
    rel = Path(rel).as_posix()
    if data_dir is not None:
        return data_dir / rel
    env = env_data_dir()
    if env is not None:
        path = env / rel
        if not path.is_file():
            raise DataUnavailable(
                f"{rel}: not found in {env} (set by ${DATA_ENV_VAR}); put the file there, or unset "
                f"${DATA_ENV_VAR} to use the copy bundled with shadowscale"
                + (" or downloaded on first use" if rel in REMOTE else "")
            )
        return path
    bundled = bundled_root() / rel
    if bundled.is_file():
        return bundled
    remote = REMOTE.get(rel)
    if remote is None:
        raise DataUnavailable(
            f"{rel}: not bundled with this installation of shadowscale (looked in {bundled_root()}) and not "
            f"downloadable; set ${DATA_ENV_VAR} to a folder that holds it"
        )
    cached = cache_root() / rel
    if cached.is_file():
        return cached
    if os.environ.get(OFFLINE_ENV_VAR, "") not in ("", "0"):
        raise DataUnavailable(
            f"{rel}: not bundled (its license: {remote.license}) and not downloaded yet, and "
            f"${OFFLINE_ENV_VAR} forbids downloading it from {remote.url}; download it to {cached} yourself "
            f"(sha256 {remote.sha256}), or set ${DATA_ENV_VAR} to a folder that holds {rel}"
        )
    fetch(remote, cached)
    return cached


def fetch(remote: Remote, dest: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``remote`` to ``dest`` atomically, keeping it only when its SHA-256 matches."""
    print(f"shadowscale: downloading {remote.url} ({remote.license}) to {dest}", file=sys.stderr)
    how = (
        f"download it to {dest} yourself (sha256 {remote.sha256}), or set ${DATA_ENV_VAR} to a folder that holds "
        f"{dest.relative_to(cache_root()) if dest.is_relative_to(cache_root()) else dest.name}"
    )
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout_s) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataUnavailable(f"cannot download {remote.url}: {reason}; {how}") from None
    digest = hashlib.sha256(body).hexdigest()
    if digest != remote.sha256:
        raise DataUnavailable(
            f"{remote.url}: downloaded {len(body):,} bytes with sha256 {digest}, expected {remote.sha256} "
            f"(the file changed or the download was tampered with); nothing was kept; {how}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
