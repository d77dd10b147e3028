"""Kernels: KRR solve/predict (`krr`); infinite-width NNGP/NTK kernels (`stax`, built on `layers`
and `banded`) and the named kernel networks (`architectures`), imported from their modules."""
from ddjax.kernels.krr import (krr_predict, krr_predict_from_features, krr_solve, linear_kernel,
                               ridge)
