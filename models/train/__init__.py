"""Training-side Python for PVA (issue 8): the synthetic-face generator, and later the trainer."""
