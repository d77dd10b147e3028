"""Kernels: KRR solve/predict (infinite-width and random-feature kernels come with the kernel issue)."""
from ddjax.kernels.krr import (krr_predict, krr_predict_from_features, krr_solve, linear_kernel,
                               ridge)
