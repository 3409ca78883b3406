"""The PyTorch / Python sides of the speed benchmarks (nothing here passes or fails on a timing).

- `pva.bench.edit`  the Python reference edit timed per stage (`pva-bench edit` runs it with `--serve`)
- `pva.bench.tune`  PyTorch ms/step of the adapter tuning step (`bench_tune` runs it)
- `pva.bench.tune_full`  the 40-step tuning at full size on one GPU (scripts/gpu/tune_full.sh)
- `pva.bench.gpu_check`  the one-shot GPU check's figures: UNet step fp32/fp16/fused, PyTorch eager,
  the whole edit (scripts/gpu/check.sh; `--cpu` there runs it on the tiny model)
"""
