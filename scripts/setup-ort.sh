#!/usr/bin/env bash
# Lays out ONNX Runtime 1.31 for the worker under .ort/ (gitignored), from the PyPI wheel:
#   scripts/setup-ort.sh          CPU build   (onnxruntime)
#   scripts/setup-ort.sh gpu      CUDA build  (onnxruntime-gpu; CUDA 13 / cuDNN 9 libraries separately)
# The worker's default engine.ort_library points at the file this leaves behind. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-cpu}"
version="1.31.1"
case "$flavour" in
  cpu) package="onnxruntime" ;;
  gpu) package="onnxruntime-gpu" ;;
  *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
lib=".ort/onnxruntime/capi/libonnxruntime.so.${version}"
stamp=".ort/.installed-${package}-${version}"
if [ -f "$lib" ] && [ -f "$stamp" ]; then
  echo "ONNX Runtime ${version} (${package}) already in .ort/"
  exit 0
fi
python=$(command -v python3 || command -v python)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "${package}==${version}"
rm -rf .ort && mkdir -p .ort
"$python" - "$tmp"/*.whl .ort <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("onnxruntime/capi/libonnxruntime"):
            z.extract(name, dest)
PY
test -f "$lib" || { echo "setup-ort: $lib missing after unpacking the wheel" >&2; exit 1; }
touch "$stamp"
echo "ONNX Runtime ${version} (${package}) installed: $lib"
