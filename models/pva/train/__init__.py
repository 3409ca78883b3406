"""Training-side Python for PVA (docs and recorded results: models/train/README.md).

- `python -m pva.train {data,run,export,import}`  the trainer's command line (`cli`), training loop
  (`trainer`) and stage definitions (`stages`); the dataset reader and masks (`data`)
- `pva.train.synthetic`  the deterministic synthetic-face generator
- `python -m pva.train.benchmark`  the synthetic-face benchmark
- `python -m pva.train.probe`  what a trained VAE's latents carry
- `pva.train.recover`  weights recovered from an exported model directory (`import`)
- `python -m pva.train.make_example`  the README example's synthetic person
"""
