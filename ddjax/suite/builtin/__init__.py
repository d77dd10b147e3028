"""The built-in axes of the evaluation suite, each registered by its own module."""
from ddjax.suite.builtin import (accuracy, adversarial, continual, cross_arch,  # noqa: F401
                                 privacy, robust_scores)
