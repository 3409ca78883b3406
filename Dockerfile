# syntax=docker/dockerfile:1
# The pva-worker image for Kubernetes GPU nodes (charts/pva-worker deploys it):
#   ort     - ONNX Runtime GPU 1.31 libraries from the onnxruntime-gpu wheel, laid out by scripts/setup-ort.sh
#   build   - the worker, `cargo build --release --features cuda --locked` (the CUDA execution provider)
#   runtime - CUDA 13 + cuDNN 9 runtime libraries, the two above, a non-root user (uid/gid 10001)
# Build: `docker build -t pva-worker:0.1.0 .` (needs PyPI and crates.io). What was and was not verified
# without a Docker engine is in docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${PYTHON_IMAGE} AS ort
WORKDIR /src
COPY scripts/setup-ort.sh scripts/setup-ort.sh
# Leaves .ort/onnxruntime/capi/libonnxruntime.so.1.31.1 and the CUDA provider libraries next to it.
RUN scripts/setup-ort.sh gpu

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY config config
COPY src src
# NOTE: `ort` loads libonnxruntime at run time (load-dynamic), so the build needs no ONNX Runtime or CUDA;
# the binary is copied out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --features cuda --locked \
    && install -D -m 0755 target/release/pva-worker /out/pva-worker

FROM ${RUNTIME_IMAGE} AS runtime
# ca-certificates: S3 and RabbitMQ over TLS verify against the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pva \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pva
WORKDIR /opt/pva-worker
COPY --from=ort /src/.ort /opt/pva-worker/.ort
COPY --from=build /out/pva-worker /usr/local/bin/pva-worker
# The embedded defaults, for reference; the chart mounts its worker.toml under /etc/pva-worker.
COPY config/default.toml /opt/pva-worker/config/default.toml
# The face detector and landmark graphs (1.4 MB, Apache-2.0, shared by every model): the embedded
# default engine.face_model_dir (models/faces) resolves against this WORKDIR.
COPY models/faces/manifest.json models/faces/detector.onnx models/faces/landmarks.onnx models/faces/LICENSE /opt/pva-worker/models/faces/
LABEL org.opencontainers.image.title="pva-worker" \
      org.opencontainers.image.description="PVA personalized face inpainting worker (ONNX Runtime 1.31, CUDA 13, cuDNN 9)" \
      org.opencontainers.image.licenses="Apache-2.0"
# The embedded default engine.ort_library (.ort/onnxruntime/capi/...) resolves against this WORKDIR.
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/pva-worker"]
CMD ["serve"]
