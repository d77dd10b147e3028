"""ddjax: dataset distillation in JAX/Flax. See README.md and ../shared/DESIGN.md."""
__version__ = '0.1.0'
