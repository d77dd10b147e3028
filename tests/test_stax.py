"""ddjax.kernels.stax: infinite-width NNGP / NTK kernels against independent references.

References used here, none of them taken from the implementation under test:
  * closed forms (arc-cosine kernel of Cho & Saul, the erf kernel of Williams) in numpy float64,
    themselves checked against 2-D quadrature of the Gaussian expectations (Gauss-Hermite for
    erf; Gauss-Legendre over the region where both ReLU arguments are positive, since a product
    Gauss-Hermite rule straddles the ReLU kinks and converges slowly);
  * a brute-force numpy float64 propagation of the FULL spatial covariance (every pair of
    positions, arrays (n, n, H, W, H, W)), derived from first principles: a convolution averages
    K over the same filter tap applied to both positions of a pair, a pooling averages K over the
    pairs of positions of the two windows, Flatten averages the diagonal, GlobalAvgPool averages
    everything;
  * Monte-Carlo estimates from wide finite flax networks in the NTK parameterization.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from numpy.polynomial.hermite_e import hermegauss

from ddjax.kernels import stax

# ------------------------------------------------------------------------------------------------
# Independent float64 numpy references
# ------------------------------------------------------------------------------------------------


def _arccos_relu(k11, k22, k12):
  """E[relu(u) relu(v)], (u, v) ~ N(0, [[k11, k12], [k12, k22]]) and the derivative factor.

  Returns (nngp, dot) with dot = E[relu'(u) relu'(v)] = (pi - theta) / (2 pi).
  """
  norm = np.sqrt(k11 * k22)
  theta = np.arccos(np.clip(k12 / norm, -1.0, 1.0))
  nngp = norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
  return nngp, (np.pi - theta) / (2 * np.pi)


def _erf_kernel(k11, k22, k12, a=1.0, b=1.0, c=0.0):
  """E[g(u) g(v)] and E[g'(u) g'(v)] for g(x) = a erf(b x) + c (Williams 1997)."""
  b2 = b * b
  prod = (1 + 2 * b2 * k11) * (1 + 2 * b2 * k22)
  nngp = a * a * 2 / np.pi * np.arcsin(2 * b2 * k12 / np.sqrt(prod)) + c * c
  dot = a * a * b2 * 4 / np.pi / np.sqrt(prod - 4 * b2 * b2 * k12 ** 2)
  return nngp, dot


def _gauss_hermite_2d(f, g, k11, k22, k12, nodes=80):
  """E[f(u) g(v)] for (u, v) ~ N(0, Sigma) by a product Gauss-Hermite rule in whitened coords."""
  z, w = hermegauss(nodes)
  w = w / np.sqrt(2 * np.pi)                       # probabilists' weights: sum to 1
  l11 = np.sqrt(k11)
  l21 = k12 / l11
  l22 = np.sqrt(max(k22 - l21 ** 2, 0.0))
  z1, z2 = z[:, None], z[None, :]
  u = l11 * z1 + 0 * z2
  v = l21 * z1 + l22 * z2
  return float(np.sum(w[:, None] * w[None, :] * f(u) * g(v)))


def _positive_region_quadrature(f, g, k11, k22, k12, nodes=80, r=12.0):
  """E[f(u) g(v)] for f, g that vanish on negative arguments (relu, step), (u, v) ~ N(0, Sigma).

  u = l11 z1, v = l21 z1 + l22 z2 with z ~ N(0, I) (Cholesky). The integrand is smooth on the
  region u > 0, v > 0, i.e. z1 > 0, z2 > -l21 z1 / l22, which a tensor Gauss-Legendre rule
  (inner interval depending on z1) covers up to |z| < r: spectrally accurate, unlike a product
  Gauss-Hermite rule over the whole plane, which straddles the kinks.
  """
  x, w = np.polynomial.legendre.leggauss(nodes)
  phi = lambda z: np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
  l11 = np.sqrt(k11)
  l21 = k12 / l11
  l22 = np.sqrt(k22 - l21 ** 2)
  z1 = (x + 1) / 2 * r
  w1 = w * r / 2 * phi(z1)
  lo = np.clip(-l21 * z1 / l22, -r, r)[:, None]
  z2 = lo + (x[None, :] + 1) / 2 * (r - lo)
  w2 = w[None, :] * (r - lo) / 2 * phi(z2)
  u = l11 * z1[:, None] + 0 * z2
  v = l21 * z1[:, None] + l22 * z2
  return float(np.sum(w1[:, None] * w2 * f(u) * g(v)))


def _window_index(size, f, s, padding):
  """(out, f) input index of each filter tap; `size` marks a padded (zero) position.

  lax's rule: VALID out = (size - f) // s + 1; SAME out = ceil(size / s), total padding
  max((out - 1) s + f - size, 0), of which floor(total / 2) before the first position.
  """
  if padding == 'VALID':
    out, lo = (size - f) // s + 1, 0
  else:
    out = -(-size // s)
    lo = max((out - 1) * s + f - size, 0) // 2
  idx = np.arange(out)[:, None] * s - lo + np.arange(f)[None, :]
  return np.where((idx >= 0) & (idx < size), idx, size)


def _conv_cov(k, ih, iw):
  """Average of K over the same filter tap on both positions of each pair (zero padding)."""
  kp = np.pad(k, [(0, 0), (0, 0), (0, 1), (0, 1), (0, 1), (0, 1)])   # index `size` reads 0
  oh, ow = ih.shape[0], iw.shape[0]
  out = np.zeros(k.shape[:2] + (oh, ow, oh, ow))
  for a in range(ih.shape[1]):
    for b in range(iw.shape[1]):
      h, w = ih[:, a], iw[:, b]
      out += kp[:, :, h[:, None, None, None], w[None, :, None, None],
                h[None, None, :, None], w[None, None, None, :]]
  return out / (ih.shape[1] * iw.shape[1])


def _pool_matrix(size, f, s, padding):
  """(out, size) averaging matrix of a pool (padded zeros count: divide by the window size)."""
  idx = _window_index(size, f, s, padding)
  a = np.zeros((idx.shape[0], size + 1))
  for o in range(idx.shape[0]):
    for t in range(f):
      a[o, idx[o, t]] += 1.0 / f
  return a[:, :size]


def _nonlin(k, t, fn):
  """Apply a pointwise nonlinearity's dual to the full covariance (and NTK)."""
  if k.ndim == 2:
    d = np.diag(k)
    k11, k22 = d[:, None], d[None, :]
  else:
    d = np.einsum('iiabab->iab', k)
    k11, k22 = d[:, None, :, :, None, None], d[None, :, None, None, :, :]
  nngp, dot = fn(k11, k22, k)
  return nngp, t * dot


def reference_kernels(spec, x1, x2):
  """Brute-force float64 NNGP and NTK of the architecture `spec` between x1 and x2.

  The inputs are stacked, and the covariance of every pair of inputs at every pair of positions
  is carried: K[i, j, h1, w1, h2, w2]. Returns (nngp, ntk), each (n1, n2).
  """
  x = np.concatenate([x1, x2]).astype(np.float64)
  n1 = len(x1)
  if x.ndim == 4:
    k = np.einsum('iabc,jdec->ijabde', x, x) / x.shape[-1]
  else:
    k = x @ x.T / x.shape[-1]
  t = np.zeros_like(k)
  for kind, *args in spec:
    if kind == 'conv':
      (fh, fw), strides, padding, w_std, b_std = args
      sh, sw = strides or (1, 1)
      ih = _window_index(k.shape[2], fh, sh, padding)
      iw = _window_index(k.shape[3], fw, sw, padding)
      k = w_std ** 2 * _conv_cov(k, ih, iw) + (b_std or 0.0) ** 2
      t = k + w_std ** 2 * _conv_cov(t, ih, iw)
    elif kind == 'dense':
      w_std, b_std = args
      k = w_std ** 2 * k + (b_std or 0.0) ** 2
      t = k + w_std ** 2 * t
    elif kind == 'relu':
      k, t = _nonlin(k, t, _arccos_relu)
    elif kind == 'erf':
      a, b, c = args
      k, t = _nonlin(k, t, lambda k11, k22, k12: _erf_kernel(k11, k22, k12, a, b, c))
    elif kind == 'pool':
      (fh, fw), strides, padding = args
      sh, sw = strides or (fh, fw)
      ah = _pool_matrix(k.shape[2], fh, sh, padding)
      aw = _pool_matrix(k.shape[3], fw, sw, padding)
      pool = lambda m: np.einsum('ijabcd,pa,qb,rc,sd->ijpqrs', m, ah, aw, ah, aw, optimize=True)
      k, t = pool(k), pool(t)
    elif kind == 'flatten':
      hw = k.shape[2] * k.shape[3]
      k, t = (np.einsum('ijabab->ij', m) / hw for m in (k, t))
    elif kind == 'gap':
      k, t = k.mean(axis=(2, 3, 4, 5)), t.mean(axis=(2, 3, 4, 5))
    else:
      raise ValueError(kind)
  return k[:n1, n1:], t[:n1, n1:]


def build(spec, width=16, out=1):
  """The ddjax stax network of a spec (the widths do not enter the kernel; the last layer of the
  spec, a Dense, gets `out` outputs)."""
  layers = []
  for i, (kind, *args) in enumerate(spec):
    if kind == 'conv':
      filt, strides, padding, w_std, b_std = args
      layers.append(stax.Conv(width, filt, strides=strides, padding=padding, W_std=w_std,
                              b_std=b_std))
    elif kind == 'dense':
      layers.append(stax.Dense(out if i == len(spec) - 1 else width, W_std=args[0],
                               b_std=args[1]))
    elif kind == 'relu':
      layers.append(stax.Relu())
    elif kind == 'erf':
      layers.append(stax.Erf(*args))
    elif kind == 'pool':
      layers.append(stax.AvgPool(args[0], strides=args[1], padding=args[2]))
    elif kind == 'flatten':
      layers.append(stax.Flatten())
    elif kind == 'gap':
      layers.append(stax.GlobalAvgPool())
  return stax.serial(*layers)


def _rel(a, b):
  """Relative Frobenius error of a with respect to b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def jit_kernel(spec):
  """build(spec)'s kernel_fn under jax.jit (compiling once is much cheaper than op-by-op);
  one compiled function per architecture, shared by the tests."""
  return _jit_kernel(tuple(tuple(layer) for layer in spec))


@functools.lru_cache(maxsize=None)
def _jit_kernel(spec):
  return jax.jit(build(spec)[2], static_argnames=('get', 'block_bytes'))


def assert_kernel_close(got, ref, rtol, diag_rtol=3e-4):
  """Entry-wise comparison; the entries of an input with itself get diag_rtol.

  For identical inputs theta = 0 at matching positions, where arccos(k12 / sqrt(k11 k22)) turns
  float32 rounding of its argument (~1e-7) into theta ~ sqrt(2e-7) ~ 5e-4: the ReLU NTK factor
  (pi - theta) / (2 pi) then carries ~1e-4 relative error in a float32 implementation.
  """
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape
  diag = np.eye(*ref.shape, dtype=bool)
  atol = 1e-6 * np.abs(ref).max()
  np.testing.assert_allclose(got[~diag], ref[~diag], rtol=rtol, atol=atol)
  np.testing.assert_allclose(got[diag], ref[diag], rtol=diag_rtol, atol=atol)


def _images(seed, n, h, w, c=2):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# 1-2. Closed forms of one-hidden-layer networks, and the closed forms against quadrature
# ------------------------------------------------------------------------------------------------
COVARIANCES = [(1.0, 1.0, 0.3), (2.0, 0.5, -0.6), (0.7, 1.3, 0.9), (1.5, 1.5, 1.4),
               (0.4, 2.5, -0.95)]


@pytest.mark.parametrize('k11,k22,k12', COVARIANCES)
def test_arccos_closed_form_matches_quadrature(k11, k22, k12):
  relu = lambda u: np.maximum(u, 0.0)
  step = lambda u: (u > 0).astype(np.float64)
  nngp, dot = _arccos_relu(k11, k22, k12)
  np.testing.assert_allclose(_positive_region_quadrature(relu, relu, k11, k22, k12), nngp,
                             rtol=1e-10)
  np.testing.assert_allclose(_positive_region_quadrature(step, step, k11, k22, k12), dot,
                             rtol=1e-10)
  # Plain product Gauss-Hermite straddles the kinks and converges slowly; it still agrees to a
  # few percent where the correlation is not strongly negative.
  if k12 > -0.5 * np.sqrt(k11 * k22):
    np.testing.assert_allclose(_gauss_hermite_2d(relu, relu, k11, k22, k12, 120), nngp,
                               rtol=2e-2)
  # Limits: k12 = sqrt(k11 k22) gives k/2 (E relu(u)^2); k12 = 0 gives sqrt(k11 k22) / (2 pi).
  np.testing.assert_allclose(_arccos_relu(k11, k11, k11)[0], k11 / 2, rtol=1e-12)
  np.testing.assert_allclose(_arccos_relu(k11, k22, 0.0)[0], np.sqrt(k11 * k22) / (2 * np.pi),
                             rtol=1e-12)


@pytest.mark.parametrize('k11,k22,k12', COVARIANCES)
def test_erf_closed_form_matches_gauss_hermite(k11, k22, k12):
  from scipy.special import erf
  derf = lambda u: 2 / np.sqrt(np.pi) * np.exp(-u * u)
  nngp, dot = _erf_kernel(k11, k22, k12)
  np.testing.assert_allclose(_gauss_hermite_2d(erf, erf, k11, k22, k12), nngp, rtol=1e-6,
                             atol=1e-8)
  np.testing.assert_allclose(_gauss_hermite_2d(derf, derf, k11, k22, k12), dot, rtol=1e-6)
  # a erf(b x) + c.
  a, b, c = 0.7, 1.6, 0.3
  g = lambda u: a * erf(b * u) + c
  dg = lambda u: a * b * derf(b * u)
  nngp, dot = _erf_kernel(k11, k22, k12, a, b, c)
  np.testing.assert_allclose(_gauss_hermite_2d(g, g, k11, k22, k12), nngp, rtol=1e-5)
  np.testing.assert_allclose(_gauss_hermite_2d(dg, dg, k11, k22, k12, 120), dot, rtol=1e-4)


def test_one_hidden_layer_relu_is_the_arccos_kernel():
  w, b = 1.5, 0.2
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 7)) * rng.uniform(0.5, 2.0, size=(5, 1))
  x = x.astype(np.float32)
  kernel_fn = stax.serial(stax.Dense(512, W_std=w, b_std=b), stax.Relu(),
                          stax.Dense(1, W_std=w, b_std=b))[2]
  got = kernel_fn(x, None)

  xd = x.astype(np.float64)
  k = w ** 2 * xd @ xd.T / xd.shape[1] + b ** 2              # first-layer NNGP (= its NTK)
  d = np.diag(k)
  k11, k22 = d[:, None], d[None, :]
  theta = np.arccos(np.clip(k / np.sqrt(k11 * k22), -1, 1))
  nngp = w ** 2 / (2 * np.pi) * np.sqrt(k11 * k22) * (np.sin(theta)
                                                     + (np.pi - theta) * np.cos(theta)) + b ** 2
  # NTK: Theta_1 = k; after the ReLU Theta = k (pi - theta) / (2 pi); readout adds its NNGP.
  ntk = nngp + w ** 2 * k * (np.pi - theta) / (2 * np.pi)
  assert_kernel_close(got.nngp, nngp, rtol=1e-5, diag_rtol=1e-5)
  assert_kernel_close(got.ntk, ntk, rtol=1e-5)
  # Off-diagonal entries are not trivially equal to the diagonal ones (a real test of theta).
  assert np.ptp(theta[~np.eye(5, dtype=bool)]) > 0.5
  # The same numbers from the generic reference (it shares no code with the formula above).
  ref_nngp, ref_ntk = reference_kernels([('dense', w, b), ('relu',), ('dense', w, b)], x, x)
  np.testing.assert_allclose(ref_nngp, nngp, rtol=1e-12)
  np.testing.assert_allclose(ref_ntk, ntk, rtol=1e-12)


def _inputs_with_covariances(covs, d=6):
  """Dense inputs x with x_i . x_j / d equal to the given 2x2 covariances (pairs 2i, 2i+1)."""
  xs = []
  for k11, k22, k12 in covs:
    chol = np.linalg.cholesky(np.array([[k11, k12], [k12, k22]]))
    e = np.eye(d)[:2] * np.sqrt(d)                     # orthogonal rows with e . e / d = 1
    xs.extend(chol @ e)
  return np.array(xs, np.float32)


def test_one_hidden_layer_relu_matches_quadrature():
  """The network's NNGP (W_std = 1, no bias) is E[relu(u) relu(v)] computed by quadrature."""
  covs = COVARIANCES
  x = _inputs_with_covariances(covs)
  kernel_fn = stax.serial(stax.Dense(64), stax.Relu(), stax.Dense(1))[2]
  got = kernel_fn(x, None)
  relu = lambda u: np.maximum(u, 0.0)
  step = lambda u: (u > 0).astype(np.float64)
  for i, (k11, k22, k12) in enumerate(covs):
    e_rr = _positive_region_quadrature(relu, relu, k11, k22, k12)
    e_ss = _positive_region_quadrature(step, step, k11, k22, k12)
    np.testing.assert_allclose(got.nngp[2 * i, 2 * i + 1], e_rr, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.ntk[2 * i, 2 * i + 1], e_rr + k12 * e_ss, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(got.nngp[2 * i, 2 * i], k11 / 2, rtol=1e-5)


def test_one_hidden_layer_erf_matches_quadrature():
  from scipy.special import erf
  covs = COVARIANCES
  x = _inputs_with_covariances(covs)
  for a, b, c in [(1.0, 1.0, 0.0), (0.7, 1.6, 0.3)]:
    kernel_fn = stax.serial(stax.Dense(64), stax.Erf(a, b, c), stax.Dense(1))[2]
    got = kernel_fn(x, None)
    g = lambda u: a * erf(b * u) + c
    dg = lambda u: a * b * 2 / np.sqrt(np.pi) * np.exp(-(b * u) ** 2)
    for i, (k11, k22, k12) in enumerate(covs):
      e_gg = _gauss_hermite_2d(g, g, k11, k22, k12, 120)
      e_dd = _gauss_hermite_2d(dg, dg, k11, k22, k12, 120)
      np.testing.assert_allclose(got.nngp[2 * i, 2 * i + 1], e_gg, rtol=1e-5, atol=1e-6)
      # NTK of Dense-Erf-Dense: k_out + W^2 * k_in * E[g' g'] with k_in the first NNGP.
      np.testing.assert_allclose(got.ntk[2 * i, 2 * i + 1], e_gg + k12 * e_dd, rtol=1e-5,
                                 atol=1e-6)


# ------------------------------------------------------------------------------------------------
# 3. Brute-force full-covariance reference for convolutional architectures
# ------------------------------------------------------------------------------------------------
CONV = ('conv', (3, 3), None, 'SAME', 1.4, 0.1)
POOL = ('pool', (2, 2), None, 'VALID')
READOUT = ('dense', 1.2, 0.05)
ERF = ('erf', 1.0, 1.0, 0.0)

# GlobalAvgPool needs every offset of the covariance; the image sizes of those architectures are
# kept small because the band arrays of a full covariance are slow to compile.
ARCHITECTURES = {
    # (a) two SAME convolutions, Flatten readout.
    'conv_relu_x2_flatten': ((8, 8), [CONV, ('relu',), CONV, ('relu',), ('flatten',), READOUT]),
    # (b) ConvNet-2 with average pooling (the pools widen the band: 3 offsets at the input).
    'convnet2_avgpool_flatten': ((8, 8), [CONV, ('relu',), POOL, CONV, ('relu',), POOL,
                                          ('flatten',), READOUT]),
    # (c) GlobalAvgPool after the pools: 5x5 -> 2x2 (the VALID pool drops the last row and
    # column) -> GAP over 2x2 pairs, which needs offsets up to 3 of 4 at the input.
    'convnet2_avgpool_gap': ((5, 5), [CONV, ('relu',), POOL, CONV, ('relu',), ('gap',),
                                      READOUT]),
    # (d) strided VALID convolution, SAME pool on an odd size (7 -> 3 -> 2, padded high).
    'valid_strided_conv_same_pool': ((7, 7), [('conv', (3, 3), (2, 2), 'VALID', 1.3, 0.2),
                                              ('relu',), ('pool', (2, 2), None, 'SAME'),
                                              ('flatten',), READOUT]),
    # (d1) strided SAME convolution (7 -> 4, padded low and high), overlapping SAME pool with a
    # stride (4 -> 2), a VALID 2x2 convolution down to 1x1, no biases in the convolutions.
    'same_strided_conv_overlapping_pool': (
        (7, 7), [('conv', (3, 3), (2, 2), 'SAME', 1.5, None), ('relu',),
                 ('pool', (3, 3), (2, 2), 'SAME'), ('conv', (2, 2), None, 'VALID', 1.2, None),
                 ('relu',), ('flatten',), READOUT]),
    # (d2) non-square image, non-square even filters (asymmetric SAME padding), unequal pool
    # strides, Flatten readout.
    'nonsquare_even_filters': ((7, 6), [('conv', (3, 2), None, 'SAME', 1.3, 0.3), ('relu',),
                                        ('pool', (2, 2), (1, 2), 'SAME'),
                                        ('conv', (2, 3), (2, 1), 'SAME', 1.1, 0.2), ('relu',),
                                        ('flatten',), READOUT]),
    # (d3) the same idea with a GAP readout (every offset) on a small image: 5x4 -> 5x4 ->
    # 5x2 -> 4x1.
    'nonsquare_gap': ((5, 4), [('conv', (3, 2), None, 'SAME', 1.3, 0.3), ('relu',),
                               ('pool', (2, 2), (1, 2), 'SAME'),
                               ('conv', (2, 2), None, 'VALID', 1.1, 0.2), ('relu',), ('gap',),
                               READOUT]),
    # (d4) a biased convolution feeding a padded pool and GAP directly (no nonlinearity in
    # between to clean up offsets that fall outside the image): 3x3 -> 3x3 -> 2x2 -> GAP.
    'linear_conv_pool_gap': ((3, 3), [CONV, ('relu',), ('conv', (3, 3), None, 'SAME', 1.2, 0.5),
                                      ('pool', (2, 2), None, 'SAME'), ('gap',), READOUT]),
    # (d5) an FC network on images: Flatten first (kernel_fn takes the one-matmul path).
    'flatten_first_fc': ((5, 4), [('flatten',), ('dense', 1.3, 0.2), ('relu',),
                                  ('dense', 1.1, 0.1), ('relu',), READOUT]),
    # (e) Erf instead of Relu in (a).
    'conv_erf_x2_flatten': ((8, 8), [CONV, ERF, CONV, ERF, ('flatten',), READOUT]),
    # (e1) a erf(b x) + c with pooling and a GAP readout.
    'conv_affine_erf_pool_gap': ((4, 4), [CONV, ('erf', 0.8, 1.3, 0.1), POOL, CONV,
                                          ('erf', 0.8, 1.3, 0.1), ('gap',), READOUT]),
}


@pytest.mark.parametrize('name', list(ARCHITECTURES))
def test_conv_kernels_match_full_covariance_reference(name):
  (h, w), spec = ARCHITECTURES[name]
  x1 = _images(1, 3, h, w)
  x2 = _images(2, 2, h, w)
  x2[1] = x1[1]                        # one identical pair: theta = 0 at matching positions
  ref_nngp, ref_ntk = reference_kernels(spec, x1, x2)
  got = jit_kernel(spec)(x1, x2)
  assert got.nngp.shape == got.ntk.shape == (3, 2)
  assert_kernel_close(got.nngp, ref_nngp, rtol=1e-4)
  assert_kernel_close(got.ntk, ref_ntk, rtol=1e-4)


def test_full_covariance_reference_sanity():
  """The reference itself, on cases with an elementary answer."""
  rng = np.random.default_rng(3)
  # A 1x1 image through 1x1 convolutions is the dense network.
  x1, x2 = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
  dense = [('dense', 1.3, 0.2), ('relu',), ('dense', 1.1, 0.1)]
  conv = [('conv', (1, 1), None, 'VALID', 1.3, 0.2), ('relu',), ('flatten',), ('dense', 1.1, 0.1)]
  np.testing.assert_allclose(reference_kernels(dense, x1, x2),
                             reference_kernels(conv, x1[:, None, None], x2[:, None, None]),
                             rtol=1e-12)
  # Linear 1x1 conv + GAP: W^2 (mean_p x1_p) . (mean_q x2_q) / C + b^2.
  x1, x2 = rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(2, 4, 4, 2))
  nngp, ntk = reference_kernels([('conv', (1, 1), None, 'VALID', 1.5, 0.3), ('gap',)], x1, x2)
  m1, m2 = x1.mean((1, 2)), x2.mean((1, 2))
  np.testing.assert_allclose(nngp, 1.5 ** 2 * m1 @ m2.T / 2 + 0.3 ** 2, rtol=1e-12)
  np.testing.assert_allclose(ntk, nngp, rtol=1e-12)            # one layer: NTK = NNGP
  # 2x2 pooling then Flatten: the kernel of the pooled inputs.
  nngp, _ = reference_kernels([('pool', (2, 2), None, 'VALID'), ('flatten',)], x1, x2)
  p1 = x1.reshape(3, 2, 2, 2, 2, 2).mean((2, 4)).reshape(3, -1)
  p2 = x2.reshape(2, 2, 2, 2, 2, 2).mean((2, 4)).reshape(2, -1)
  np.testing.assert_allclose(nngp, p1 @ p2.T / p1.shape[1], rtol=1e-12)
  # A linear 3x3 SAME convolution then Flatten: the kernel of the explicit zero-padded patches.
  nngp, _ = reference_kernels([('conv', (3, 3), None, 'SAME', 1.0, None), ('flatten',)], x1, x2)
  pad = lambda x: np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
  patches = lambda x: np.stack([pad(x)[:, i:i + 4, j:j + 4] for i in range(3) for j in range(3)],
                               axis=-1).reshape(len(x), 16, -1)
  q1, q2 = patches(x1), patches(x2)
  np.testing.assert_allclose(nngp, np.einsum('apc,bpc->ab', q1, q2) / (16 * 18), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# 4. Monte-Carlo: wide finite networks approach the infinite-width kernels
# ------------------------------------------------------------------------------------------------
W_STD, B_STD = 1.4, 0.1


class _NTKConv(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.param('kernel', nn.initializers.normal(1.0), (3, 3, c, self.features))
    b = self.param('bias', nn.initializers.normal(1.0), (self.features,))
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return W_STD / np.sqrt(9 * c) * y + B_STD * b


class _NTKDense(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    k = self.param('kernel', nn.initializers.normal(1.0), (x.shape[-1], self.features))
    b = self.param('bias', nn.initializers.normal(1.0), (self.features,))
    return W_STD / np.sqrt(x.shape[-1]) * x @ k + B_STD * b


class _ConvNet(nn.Module):
  """Conv-Relu-AvgPool-Conv-Relu-Flatten-Dense(out), NTK parameterization."""
  width: int
  out: int

  @nn.compact
  def __call__(self, x, features_only=False):
    x = nn.relu(_NTKConv(self.width)(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(_NTKConv(self.width)(x))
    x = x.reshape(x.shape[0], -1)
    return x if features_only else _NTKDense(self.out)(x)


MC_SPEC = [('conv', (3, 3), None, 'SAME', W_STD, B_STD), ('relu',), POOL,
           ('conv', (3, 3), None, 'SAME', W_STD, B_STD), ('relu',), ('flatten',),
           ('dense', W_STD, B_STD)]


def _empirical_kernels(width, x, n1, seeds):
  """Seed-averaged empirical NNGP and NTK of the flax network between x[:n1] and x[n1:].

  NNGP: E over the readout of f(x1) . f(x2) / out_dim, i.e. W^2 phi(x1) . phi(x2) / fan_in + b^2
  with phi the penultimate features (exactly the readout average, without its sampling noise).
  NTK: sum over all parameters of J(x1) J(x2)^T for a scalar readout.
  """
  model = _ConvNet(width, 1)

  @jax.jit
  def kernels(key):
    params = model.init(key, x)
    phi = model.apply(params, x, features_only=True)
    nngp = W_STD ** 2 * phi[:n1] @ phi[n1:].T / phi.shape[1] + B_STD ** 2
    flat, unravel = ravel_pytree(params)
    jac = jax.jacrev(lambda p: model.apply(unravel(p), x)[:, 0])(flat)
    return nngp, jac[:n1] @ jac[n1:].T

  out = [kernels(jax.random.PRNGKey(seed)) for seed in range(seeds)]
  return tuple(np.mean([np.asarray(o[i]) for o in out], axis=0) for i in range(2))


def test_wide_flax_convnet_approaches_the_infinite_kernels():
  x1, x2 = _images(10, 3, 8, 8), _images(11, 3, 8, 8)
  x = jnp.asarray(np.concatenate([x1, x2]))
  exact = jit_kernel(MC_SPEC)(x1, x2)
  ref = reference_kernels(MC_SPEC, x1, x2)
  np.testing.assert_allclose(exact.nngp, ref[0], rtol=1e-4)
  np.testing.assert_allclose(exact.ntk, ref[1], rtol=1e-4)
  errors = {}
  for width in (16, 512):
    nngp, ntk = _empirical_kernels(width, x, 3, seeds=6)
    errors[width] = (_rel(nngp, exact.nngp), _rel(ntk, exact.ntk))
  narrow, wide = errors[16], errors[512]
  print('relative Frobenius errors (nngp, ntk) by width:', errors)
  assert wide[0] < 0.1 and wide[1] < 0.08, errors
  assert wide[0] < narrow[0] and wide[1] < narrow[1] / 2, errors


def test_stax_apply_fn_is_the_finite_network_of_kernel_fn():
  """ddjax's own init_fn/apply_fn at large width reproduce kernel_fn (shapes and statistics)."""
  x1, x2 = _images(20, 3, 8, 8), _images(21, 3, 8, 8)
  x = jnp.asarray(np.concatenate([x1, x2]))
  init_fn, apply_fn, _ = build(MC_SPEC, width=512, out=1)
  _, feat_apply, _ = build(MC_SPEC[:-1], width=512)

  @jax.jit
  def kernels(key):
    out_shape, params = init_fn(key, x.shape)
    assert tuple(out_shape)[1:] == (1,)
    # Same parameters without the readout (params: one entry per layer, as in neural-tangents).
    phi = feat_apply(params[:-1], x)
    assert phi.shape == (6, 4 * 4 * 512)
    nngp = W_STD ** 2 * phi[:3] @ phi[3:].T / phi.shape[1] + B_STD ** 2
    flat, unravel = ravel_pytree(params)
    jac = jax.jacrev(lambda p: apply_fn(unravel(p), x)[:, 0])(flat)
    return nngp, jac[:3] @ jac[3:].T

  out = [kernels(jax.random.PRNGKey(seed)) for seed in range(3)]
  nngp, ntk = (np.mean([np.asarray(o[i]) for o in out], axis=0) for i in range(2))
  exact = jit_kernel(MC_SPEC)(x1, x2)
  assert _rel(nngp, exact.nngp) < 0.05
  assert _rel(ntk, exact.ntk) < 0.08


# ------------------------------------------------------------------------------------------------
# 5. kernel_fn conventions, jit and gradients
# ------------------------------------------------------------------------------------------------
SMALL_SPEC = [CONV, ('relu',), POOL, CONV, ('relu',), ('flatten',), READOUT]


def test_kernel_fn_conventions():
  spec = [CONV, ('relu',), ('flatten',), READOUT]
  kernel_fn = build(spec)[2]                            # eager (un-jitted) calls
  x1, x2 = _images(30, 3, 5, 5), _images(31, 2, 5, 5)
  both = kernel_fn(x1, x2)
  assert both._fields == ('nngp', 'ntk')
  ref = reference_kernels(spec, x1, x2)
  np.testing.assert_allclose(both.nngp, ref[0], rtol=1e-4)
  np.testing.assert_allclose(both.ntk, ref[1], rtol=1e-4)
  assert not np.allclose(both.ntk, both.nngp, rtol=1e-2)  # the two kernels differ
  # get as a string returns the bare array; a tuple returns a namedtuple in that order.
  nngp, ntk = kernel_fn(x1, x2, 'nngp'), kernel_fn(x1, x2, get='ntk')
  assert isinstance(nngp, jax.Array) and nngp.shape == ntk.shape == (3, 2)
  np.testing.assert_allclose(nngp, both.nngp, rtol=1e-6)
  np.testing.assert_allclose(ntk, both.ntk, rtol=1e-6)
  pair = kernel_fn(x1, x2, ('ntk', 'nngp'))
  assert isinstance(pair, tuple) and pair._fields == ('ntk', 'nngp')
  np.testing.assert_allclose(pair[0], both.ntk, rtol=1e-6)
  np.testing.assert_allclose(pair[1], both.nngp, rtol=1e-6)
  np.testing.assert_allclose(pair.nngp, both.nngp, rtol=1e-6)
  only = kernel_fn(x1, x2, ('nngp',))
  assert only._fields == ('nngp',)
  np.testing.assert_allclose(only[0], both.nngp, rtol=1e-6)
  # x2=None is x1 twice; the result is symmetric with the variances on the diagonal.
  same = kernel_fn(x1, None)
  twice = kernel_fn(x1, x1)
  assert same.nngp.shape == (3, 3)
  np.testing.assert_allclose(same.nngp, twice.nngp, rtol=1e-6)
  np.testing.assert_allclose(same.ntk, twice.ntk, rtol=1e-6)
  np.testing.assert_allclose(same.nngp, same.nngp.T, rtol=1e-6)
  ref11 = reference_kernels(spec, x1, x1)
  assert_kernel_close(same.nngp, ref11[0], rtol=1e-4)
  assert_kernel_close(same.ntk, ref11[1], rtol=1e-4)
  # Swapping x1 and x2 transposes.
  np.testing.assert_allclose(kernel_fn(x2, x1, 'ntk'), both.ntk.T, rtol=1e-5)
  # jit with a static `get` gives the same numbers.
  jitted = jax.jit(kernel_fn, static_argnames='get')
  np.testing.assert_allclose(jitted(x1, x2, get='ntk'), both.ntk, rtol=1e-5)
  np.testing.assert_allclose(jitted(x1, x2, get=('nngp', 'ntk')).nngp, both.nngp, rtol=1e-5)
  # A spatial output has no (n1, n2) kernel.
  with pytest.raises(ValueError):
    stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu())[2](x1, x2)
  with pytest.raises(ValueError):
    kernel_fn(x1, x2, 'cov')


def test_dense_kernel_fn_jit_and_x2_none():
  spec = [('dense', 1.3, 0.2), ERF, ('dense', 0.9, 0.3), ('relu',), ('dense', 1.0, None)]
  kernel_fn = build(spec)[2]
  x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
  ref = reference_kernels(spec, x, x)
  got = jax.jit(kernel_fn, static_argnames='get')(x, None)
  assert_kernel_close(got.nngp, ref[0], rtol=1e-5, diag_rtol=1e-5)
  assert_kernel_close(got.ntk, ref[1], rtol=1e-5)


def _central_difference(f, x, idx, eps):
  e = np.zeros_like(x)
  e[idx] = eps
  return (float(f(x + e)) - float(f(x - e))) / (2 * eps)


@pytest.mark.parametrize('act', ['erf', 'relu'])
def test_ntk_gradient_matches_finite_differences(act):
  nl = ERF if act == 'erf' else ('relu',)
  spec = [('conv', (3, 3), None, 'SAME', 1.3, 0.2), nl, POOL,
          ('conv', (3, 3), None, 'SAME', 1.3, 0.2), nl, ('flatten',), READOUT]
  kernel_fn = build(spec)[2]
  x1, x2 = _images(40, 3, 6, 6), _images(41, 2, 6, 6)
  f = jax.jit(lambda a, b: kernel_fn(a, b, 'ntk').sum())
  g1, g2 = (np.asarray(g) for g in jax.jit(jax.grad(f, argnums=(0, 1)))(x1, x2))
  assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))
  scale = max(np.abs(g1).max(), np.abs(g2).max())
  assert scale > 0
  rng = np.random.default_rng(5)
  for which, x, g in ((1, x2, g2), (0, x1, g1)):
    fx = (lambda v: f(x1, v)) if which else (lambda v: f(v, x2))
    ref = ((lambda v: reference_kernels(spec, x1, v)[1].sum()) if which else
           (lambda v: reference_kernels(spec, v, x2)[1].sum()))
    x64 = x.astype(np.float64)
    for _ in range(4):
      idx = tuple(int(rng.integers(0, s)) for s in x.shape)
      # float32 central differences of kernel_fn itself, and float64 ones of the reference.
      np.testing.assert_allclose(g[idx], _central_difference(fx, x, idx, 1e-2), rtol=3e-2,
                                 atol=3e-3 * scale)
      np.testing.assert_allclose(g[idx], _central_difference(ref, x64, idx, 1e-4), rtol=2e-3,
                                 atol=1e-4 * scale)
    # A directional derivative uses every coordinate at once.
    v = rng.normal(size=x.shape)
    fd = (ref(x64 + 1e-4 * v) - ref(x64 - 1e-4 * v)) / 2e-4
    np.testing.assert_allclose(np.sum(g * v), fd, rtol=2e-3)
    fd = (float(fx(x + 1e-2 * v)) - float(fx(x - 1e-2 * v))) / 2e-2
    np.testing.assert_allclose(np.sum(g * v), fd, rtol=2e-2)


def test_relu_self_kernel_gradient_is_finite_and_correct():
  """d/dx of K(x, x): theta = 0 on the diagonal (arccos and sqrt at their cusp)."""
  w, b, w_out = 1.5, 0.2, 1.3
  kernel_fn = stax.serial(stax.Dense(8, W_std=w, b_std=b), stax.Relu(),
                          stax.Dense(1, W_std=w_out))[2]
  x = np.random.default_rng(6).normal(size=(4, 5)).astype(np.float32)
  # K(x, x) = w_out^2 (w^2 |x|^2 / d + b^2) / 2, so d trace / dx = w_out^2 w^2 x / d; the NTK
  # diagonal is K + w_out^2 k_in / 2 = 2 K, so its gradient is twice as large.
  expected = w_out ** 2 * w ** 2 * x / x.shape[1]
  for get, factor in (('nngp', 1.0), ('ntk', 2.0)):
    g = jax.grad(lambda a: jnp.trace(kernel_fn(a, None, get)))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g))), get
    np.testing.assert_allclose(g, factor * expected, rtol=1e-4, atol=1e-6)
    # Also through kernel_fn(x, x) (the cross path sees identical inputs).
    g = jax.grad(lambda a: jnp.trace(kernel_fn(a, a, get)))(jnp.asarray(x))
    np.testing.assert_allclose(g, factor * expected, rtol=1e-4, atol=1e-6)

  # Conv nets: theta = 0 at every (p, p) of an image with itself; the trace is still smooth.
  # float32 finite differences of kernel_fn are too noisy here (the theta ~ 5e-4 rounding of
  # identical positions, see assert_kernel_close), so the derivative is checked against float64
  # central differences of the reference.
  spec = [CONV, ('relu',), CONV, ('relu',), ('flatten',), READOUT]
  conv_fn = build(spec)[2]
  xi = _images(7, 2, 5, 5)
  traces = lambda a: jnp.stack([jnp.trace(k) for k in conv_fn(a, None)])    # (nngp, ntk)
  grads = np.asarray(jax.jit(jax.jacrev(traces))(xi))
  v = np.random.default_rng(8).normal(size=xi.shape)
  x64 = xi.astype(np.float64)
  # The NTK factor (pi - theta) / (2 pi) has d/dcos = 1 / (2 pi sin theta): at theta ~ 0 it would
  # amplify float32 rounding of d cos (zero in exact arithmetic along x1 = x2) ~1000x; stax treats
  # |cos| within 3e-7 of 1 as 1 (zero derivative), which this test pins down at 2e-3 under jit.
  for get, i, rtol in (('nngp', 0, 2e-3), ('ntk', 1, 2e-3)):
    g = grads[i]
    assert np.all(np.isfinite(g)), get
    ref = lambda a: np.trace(reference_kernels(spec, a, a)[i])
    fd = (ref(x64 + 1e-4 * v) - ref(x64 - 1e-4 * v)) / 2e-4
    np.testing.assert_allclose(np.sum(g * v), fd, rtol=rtol)


# ------------------------------------------------------------------------------------------------
# 6. Blocked (memory-bounded) evaluation
# ------------------------------------------------------------------------------------------------
BLOCK_SPECS = {
    'flatten': ((8, 8), [CONV, ('relu',), POOL, CONV, ('relu',), POOL, ('flatten',), READOUT]),
    'gap': ((4, 4), [CONV, ('relu',), POOL, CONV, ('relu',), ('gap',), READOUT]),
}


@pytest.mark.parametrize('readout', list(BLOCK_SPECS))
def test_blocked_evaluation_matches_single_block(readout):
  (h, w), spec = BLOCK_SPECS[readout]
  kernel_fn = jit_kernel(spec)
  x1, x2 = _images(50, 7, h, w), _images(51, 5, h, w)
  whole = kernel_fn(x1, x2, block_bytes=2 ** 40)
  ref = reference_kernels(spec, x1, x2)
  np.testing.assert_allclose(whole.nngp, ref[0], rtol=1e-4)
  np.testing.assert_allclose(whole.ntk, ref[1], rtol=1e-4)
  # Small blocks: several blocks of rows, 7 and 5 not multiples of the block size (with the
  # banded layout of ddjax 2**17 bytes means blocks of 3 x 1 pairs for `flatten` and 4 x 3 for
  # `gap`, so the last blocks are padded).
  blocked = kernel_fn(x1, x2, block_bytes=2 ** 17)
  np.testing.assert_allclose(blocked.nngp, whole.nngp, rtol=1e-5)
  np.testing.assert_allclose(blocked.ntk, whole.ntk, rtol=1e-5)
  if readout == 'gap':
    # x2=None, blocked.
    assert_kernel_close(kernel_fn(x1, None, 'ntk', block_bytes=2 ** 17),
                        reference_kernels(spec, x1, x1)[1], rtol=1e-4)


def test_blocked_evaluation_gradient_is_correct():
  """Reverse mode through the blocks (2**13 bytes: 2 x 2 pairs per block here, padded),
  against float64 central differences of the reference along a random direction."""
  kernel_fn = build(SMALL_SPEC)[2]
  x1, x2 = _images(60, 5, 4, 4), _images(61, 3, 4, 4)
  g = jax.jit(jax.grad(lambda a: kernel_fn(a, x2, 'ntk', block_bytes=2 ** 13).sum()))(x1)
  v = np.random.default_rng(9).normal(size=x1.shape)
  ref = lambda a: reference_kernels(SMALL_SPEC, a, x2)[1].sum()
  x64 = x1.astype(np.float64)
  fd = (ref(x64 + 1e-4 * v) - ref(x64 - 1e-4 * v)) / 2e-4
  np.testing.assert_allclose(np.sum(np.asarray(g) * v), fd, rtol=2e-3)
