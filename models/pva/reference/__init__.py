"""The Python reference on ONNX Runtime (the Rust pipeline's parity target) and what it generates.

- `pva.reference.edit`  the reference edit (`ReferencePipeline`, `EditRequest`); `python -m pva.reference.edit`
- `pva.reference.tune`  the reference per-identity adapter tuning; `python -m pva.reference.tune`
- `pva.reference.fixtures`  writes tests/fixtures/edit for the Rust parity tests
- `pva.reference.scheduler_vectors`  the diffusers scheduler vectors in src/pipeline/scheduler.rs
"""
