"""The bottom layer: atomic files, checkpoints, artifact records, jax.distributed, sharding, XLA
flags and host memory. Knows nothing of data, models, methods or runs (docs/ARCHITECTURE.md)."""
