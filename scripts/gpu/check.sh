#!/usr/bin/env bash
# The one-shot GPU check of issue 18: ONNX Runtime's CUDA provider running the full-size (sd2,
# random-weight) edit graphs in fp32, fp16 and fp16 with fused attention, against PyTorch fp16 eager,
# printed as ONE JSON (python -m pva.bench.gpu_check, whose doc says what each figure is).
#
#   scripts/gpu/check.sh --cpu [--worker BIN] [--work DIR]   the same measurement on the tiny model with
#                                                            ONNX Runtime's CPU provider (CI runs it:
#                                                            tests/pipeline.rs)
#   scripts/gpu/check.sh stage                               HERE: build and pack what the GPU machine lacks
#   scripts/gpu/check.sh receive                             THERE: keep one carried part in /tmp/pva-gpu
#   scripts/gpu/check.sh run [--priority 2] [--tune]         THERE: unpack the parts, run, JSON to $OUT
#
# The GPU machine (shared/docs/SERVICES.md, /work/.library/device/README.md) has python3 3.12 with CUDA
# torch 2.11 (cu130), onnx, onnxscript, CPU onnxruntime 1.30, CUDA 13 and cuDNN 9; no Rust, no network;
# at most 64 MiB of working tree travels per call, warm for 30 s after a call, 10 min per call, 15 min
# of device time per session. So `stage` packs, once, here:
#   - target/release/pva-worker built with `--features cuda`, stripped;
#   - from the onnxruntime-gpu 1.31.1 wheel: libonnxruntime.so.1.31.1 (the worker needs API 31; the
#     GPU build's, not .ort's CPU one), libonnxruntime_providers_cuda.so (checked with readelf: it
#     needs libcublasLt.so.13, libcublas.so.13, libcudart.so.13, libcurand.so.10) and
#     libonnxruntime_providers_shared.so;
#   - the wheels the exporter needs there and the machine lacks (diffusers, open_clip_torch, ftfy,
#     wcwidth: scripts/gpu/python-env.sh);
# into one tar.xz split into parts under .gpu-stage/ (ignored), each small enough to travel beside the
# tree with models/demo and models/tiny removed. Then the sequence of device calls, back to back (the
# machine stays warm only 30 s between calls; files outside $OUT stay on a warm machine):
#
#   rm -rf models/demo models/tiny            # here, before the first call (38 MB of the 64 MiB)
#   run(command="scripts/gpu/check.sh receive", carry=[".gpu-stage/part-00"], timeout_s=120)
#   run(command="scripts/gpu/check.sh receive", carry=[".gpu-stage/part-01"], timeout_s=120)
#   ... one call per part (`stage` prints the exact list) ...
#   run(command="scripts/gpu/check.sh run", carry=[".gpu-stage/part-NN"], timeout_s=540)
#                                             # the last part travels with the run itself
#   git checkout -- models                    # here, afterwards
#
# `receive` prints the parts the machine holds: if a call finds fewer than it should, the machine was
# replaced (a fresh one starts bare) and the parts must be sent again. A `run` stopped by its timeout
# can be called again at once: it reuses the model directories the first one exported
# (/tmp/pva-gpu/work) and only measures. `run` (priority 1) exports the
# sd2 edit graphs (random weights), measures and writes $OUT/check.json and the logs; with
# `--priority 2` (the next call, or the next GPU session): batch 2 and 4, guidance 7.5, CUDA graphs,
# torch.compile and, with --tune, 40 tuning steps. Copy the JSON into docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
stage_dir=.gpu-stage
there=/tmp/pva-gpu
ort_version=1.31.1

case "${1:-}" in
--cpu)
  shift
  worker=target/debug/pva-worker
  work=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --worker) worker="$2"; shift 2 ;;
      --work) work="$2"; shift 2 ;;
      *) echo "check.sh --cpu: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  if [ -z "$work" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
  fi
  py=${PYTHON:-.venv/bin/python}
  # A few steps: the figures are the JSON's shape, not speed (CI's 2 cores).
  exec "$py" -m pva.bench.gpu_check --size tiny --device cpu --worker "$worker" --fp32-from models/tiny \
    --work "$work" --steps 4 --short-steps 2 --torch-steps 3
  ;;

stage)
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF "/$stage_dir/" "$exclude" 2>/dev/null || echo "/$stage_dir/" >> "$exclude"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  mkdir -p "$build/pack/lib" "$build/pack/whl"
  echo "== pva-worker (release, --features cuda)"
  cargo build --release --locked --features cuda --bin pva-worker
  strip -o "$build/pack/pva-worker" target/release/pva-worker
  echo "== onnxruntime-gpu $ort_version: the CUDA provider"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$build/gpu-wheel" onnxruntime-gpu==$ort_version
  (cd "$build/pack/lib" && unzip -q -j "$build"/gpu-wheel/onnxruntime_gpu-*.whl \
    "onnxruntime/capi/libonnxruntime.so.$ort_version" 'onnxruntime/capi/libonnxruntime_providers_cuda.so' \
    'onnxruntime/capi/libonnxruntime_providers_shared.so')
  needed=$(readelf -d "$build/pack/lib/libonnxruntime_providers_cuda.so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
  echo "$needed" | sed 's/^/  needs /'
  for lib in libcublasLt.so.13 libcublas.so.13 libcudart.so.13; do
    echo "$needed" | grep -qxF "$lib" || { echo "the CUDA provider does not need $lib: not CUDA 13" >&2; exit 1; }
  done
  echo "== wheels the exporter needs there"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d "$build/pack/whl" diffusers==0.42.1 open_clip_torch==3.3.0 \
    ftfy==6.3.1 wcwidth
  echo "== packing (xz -9e; a few minutes)"
  tar -C "$build/pack" -cf - . | xz -9e -T2 > "$build/payload.tar.xz"
  # Each part travels beside the tree (tracked files, models/demo and models/tiny removed) under 64 MiB.
  tree=$(git ls-files -z | grep -zv '^models/\(demo\|tiny\)/' | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')
  part=$(( (64 * 1024 * 1024 - tree) * 9 / 10 ))
  rm -rf "$stage_dir"
  mkdir -p "$stage_dir"
  split -b "$part" -d -a 2 "$build/payload.tar.xz" "$build/payload.part-"
  for f in "$build"/payload.part-*; do
    n=${f##*-}
    mkdir -p "$stage_dir/part-$n"
    mv "$f" "$stage_dir/part-$n/"
  done
  (cd "$stage_dir" && sha256sum part-*/payload.part-* > SHA256SUMS && cp SHA256SUMS part-*/)
  ls -l "$stage_dir"/part-*/payload.part-* | awk '{printf "  %s %d MiB\n", $NF, $5 / 1048576}'
  echo "tree without models/demo, models/tiny: $((tree / 1048576)) MiB; part size $((part / 1048576)) MiB"
  echo
  echo "Device calls, back to back (after: rm -rf models/demo models/tiny):"
  parts=("$stage_dir"/part-*)
  for ((i = 0; i < ${#parts[@]} - 1; i++)); do
    echo "  run(command=\"scripts/gpu/check.sh receive\", carry=[\"${parts[$i]}\"], timeout_s=120)"
  done
  echo "  run(command=\"scripts/gpu/check.sh run\", carry=[\"${parts[-1]}\"], timeout_s=540)"
  echo "then: git checkout -- models"
  ;;

receive)
  mkdir -p "$there/parts"
  echo "machine: $(hostname), parts already here: $(ls "$there/parts" | grep -c part || true)"
  cp "$stage_dir"/part-*/payload.part-* "$stage_dir"/part-*/SHA256SUMS "$there/parts/"
  (cd "$there/parts" && ls -l)
  ;;

run)
  shift
  mkdir -p "$there/parts"
  cp "$stage_dir"/part-*/payload.part-* "$stage_dir"/part-*/SHA256SUMS "$there/parts/" 2>/dev/null || true
  out=${OUT:-$there/out}
  mkdir -p "$out"
  exec > >(tee "$out/check.log") 2>&1
  (cd "$there/parts" && sed 's|part-[0-9]*/||' SHA256SUMS | sha256sum -c --quiet) \
    || { echo "parts missing or damaged (a fresh machine? send them again):"; ls -l "$there/parts"; exit 3; }
  if [ ! -x "$there/root/pva-worker" ]; then
    mkdir -p "$there/root"
    cat "$there"/parts/payload.part-* | xz -d | tar -x -C "$there/root"
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$there/site" "$there"/root/whl/*.whl
  export PYTHONPATH=$PWD/models:$there/site${PYTHONPATH:+:$PYTHONPATH}
  # The CUDA 13 and cuDNN 9 libraries of the machine's torch (its nvidia-* packages).
  nvidia=$(python3 -c 'import os, nvidia; print(os.path.dirname(list(nvidia.__path__)[0]) + "/nvidia")')
  libs=$(find "$nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
  export LD_LIBRARY_PATH=$there/root/lib:$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  ldd "$there/root/lib/libonnxruntime_providers_cuda.so" | grep -E 'not found|cublas|cudnn|cudart' || true
  export PYTHONUNBUFFERED=1
  timeout 500 python3 -m pva.bench.gpu_check --size sd2 --device cuda --worker "$there/root/pva-worker" \
    --ort-library "$there/root/lib/libonnxruntime.so.$ort_version" --work "$there/work" "$@" | tee "$out/check.json"
  # $OUT returns at most 8 files: the worker runs' logs as one archive.
  (cd "$there/work" && tar -czf "$out/logs.tar.gz" ./*.log) || true
  ;;

*)
  sed -n '2,40p' "$0" >&2
  exit 2
  ;;
esac
