"""Individual treatment effect (ITE) of real samples on the meta-gradient (BiLP Sec. 4.2, Eq. 6-7).

For an additive-separable meta-loss L(G, S) with G = sum_i g(x_i) (DC: per-sample gradients; DM:
per-sample embeddings / B) the ITE of real sample i is the change of the synthetic meta-gradient
when the sample is removed (Eq. 6):

    ITE_i = dL(G, S)/dS - dL(G - g_i, S)/dS                                        (exact)
          ~ d^2 L(G, S) / (dS dG) . g_i                                            (Eq. 7)

`ite_exact` recomputes grad_S L without each sample (vmapped leave-one-out; the reference).
`ite_first_order` linearises G -> grad_S L(G, S) once (`jax.linearize`: one forward pass plus the
linear map) and vmaps the linear map over the g_i: the JVP of grad_S L in the direction g_i. It is
exact when grad_S L is affine in G (L quadratic in G, e.g. DM's squared mean distance), and its
error is the Taylor remainder otherwise (DC's cosine distance). BiLP's criterion is
`ite_score = ||ITE_i||_2` over the flattened pytree.

`ite_sketch_scores` estimates the first-order scores without a synthetic-side pass per sample,
for meta-losses of the form L(G, S) = D(G, h(S)) (DC: h = the synthetic gradient; DM: the
synthetic mean embedding). With p_1..p_r ~ N(0, I) in S-space,

    p_k . ITE_i = (J_h p_k)^T (d^2 D / dh dG) g_i = g_i . w_k,   w_k = d/de grad_G D(G, h + e J_h p_k)

so r JVPs of h (on the few synthetic images) and r JVPs of grad_G D (on the distance alone) give
the r vectors w_k, and ||ITE_i||^2 ~ (1/r) sum_k (g_i . w_k)^2, an unbiased estimate (relative
spread sqrt(2 / r) per sample) from one (B, P) x (P, r) product. The vmapped first-order ITE
needs one VJP through the synthetic gradient per real sample instead, which in JAX costs about as
much as the leave-one-out (vmap shares the synthetic forward pass in both).

`per_sample_ite_scores` covers meta-losses that are already means of per-real-sample terms,
L(S) = (1/B) sum_i l_i(S) (the KRR family: FRePo, KIP, RFAD, whose per-sample losses
`per_sample(...).loss` ISA transforms). In the same sum convention the leave-one-out difference is
ITE_i = grad_S l_i(S) / B exactly, and the first-order approximation coincides with it (L is
linear in its per-sample terms): one VJP per real sample (`jax.vjp` once, then vmapped), or the
same random-projection sketch from r Jacobian-vector products of the loss vector (taken in reverse
mode, so custom_vjp layers need no JVP rule).

A distiller whose meta-loss has this form declares it (`additive_form`, e.g. `DC.class_separable`
and `DM.class_separable` build one class's `Separable` exactly as their `per_sample` computes that
class's meta-loss, same DSA key on the real and the synthetic side); `additive_ite_scores` returns
(K, B_c) scores for a class-grouped batch from it, jit-able. `rank_error` is BiLP's supp. 8 metric
comparing two rankings.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
MetaLoss = Callable[[PyTree, PyTree], Array]

METHODS = ('first_order', 'exact', 'sketch')


def _sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda u, v: u - v, a, b)


def _map(f: Callable, xs: PyTree, chunk_size: int | None) -> PyTree:
  """vmap over the leading axis, or lax.map in vmapped chunks of `chunk_size` (bounded memory)."""
  if chunk_size is None:
    return jax.vmap(f)(xs)
  return jax.lax.map(f, xs, batch_size=int(chunk_size))


def _sequenced(inputs: PyTree, previous: PyTree | None) -> PyTree:
  """`inputs`, made available only once `previous` is computed (an optimization barrier over
  both): unrolled classes run one after another instead of all at once."""
  if previous is None:
    return inputs
  return jax.lax.optimization_barrier((inputs, previous))[0]


class PerSampleFn(NamedTuple):
  """Per-sample statistics computed where they are used: g_i = fn(inputs_i), fn on one sample's
  inputs (no batch axis), inputs with a leading axis B. Every function here that takes per-sample
  statistics `g` accepts this in place of the stored (B, ...) pytree and computes each chunk's
  g_i inside its own chunk, so memory holds `chunk_size` of them, not B (DC's per-sample
  gradients: 317k parameters each, 3.2 GB for a 2560-image batch, stored several times over)."""
  fn: Callable[[PyTree], PyTree]
  inputs: PyTree

  def materialize(self) -> PyTree:
    """The stored (B, ...) statistics."""
    return jax.vmap(self.fn)(self.inputs)


def _map_samples(f: Callable, g: PyTree | PerSampleFn, chunk_size: int | None) -> PyTree:
  """f(g_i) for every sample (leading axis B of the result), g stored or a `PerSampleFn`."""
  if isinstance(g, PerSampleFn):
    return _map(lambda a: f(g.fn(a)), g.inputs, chunk_size)
  return _map(f, g, chunk_size)


def ite_exact(meta_loss: MetaLoss, G: PyTree, S: PyTree, g: PyTree,
              chunk_size: int | None = None) -> PyTree:
  """Leave-one-out ITE (BiLP Eq. 6): ITE_i = grad_S L(G, S) - grad_S L(G - g_i, S).

  Args:
    meta_loss: L(G, S) -> scalar, G and S arbitrary pytrees.
    G: the full real statistic, sum_i g_i (same structure as one g_i).
    S: the synthetic data (the differentiation variable).
    g: per-sample statistics, G's structure with a leading batch axis B, or a `PerSampleFn`.
    chunk_size: evaluate the B leave-one-out gradients in vmapped chunks of this size
      (`lax.map`); None vmaps all B at once.

  Returns a pytree shaped like S with a leading axis B.
  """
  grad_s = jax.grad(meta_loss, argnums=1)
  full = grad_s(G, S)
  loo = _map_samples(lambda gi: grad_s(_sub(G, gi), S), g, chunk_size)
  return jax.tree_util.tree_map(lambda f, l: f[None] - l, full, loo)


def ite_first_order(meta_loss: MetaLoss, G: PyTree, S: PyTree, g: PyTree,
                    chunk_size: int | None = None, return_meta_grad: bool = False):
  """First-order (Taylor) ITE (BiLP Eq. 7): ITE_i ~ d^2 L / (dS dG) . g_i, the JVP of
  G -> grad_S L(G, S) at G in the direction g_i.

  `jax.linearize` of G -> grad_S L(G, S) runs once; its linear map is vmapped over the g_i (in
  chunks of `chunk_size` when given). Arguments as in `ite_exact`. Returns the ITE pytree (S's
  structure, leading axis B), and with `return_meta_grad` the pair (grad_S L(G, S), ITE): the
  meta-gradient comes for free as the linearisation's primal output.
  """
  meta_grad, lin = jax.linearize(lambda G_: jax.grad(meta_loss, argnums=1)(G_, S), G)
  ite = _map_samples(lin, g, chunk_size)
  return (meta_grad, ite) if return_meta_grad else ite


def ite_score(ite: PyTree) -> Array:
  """BiLP's criterion ||ITE_i||_2 over every leaf of the ITE pytree: leading axis B -> (B,)."""
  leaves = jax.tree_util.tree_leaves(ite)
  sq = sum(jnp.sum(jnp.square(a.reshape(a.shape[0], -1)), axis=1) for a in leaves)
  return jnp.sqrt(sq)


def _tree_dot(gi: PyTree, w: PyTree) -> Array:
  """(r,) inner products of one sample's pytree gi with w (leading axis r)."""
  return sum(b.reshape(b.shape[0], -1) @ a.reshape(-1)
             for a, b in zip(jax.tree_util.tree_leaves(gi), jax.tree_util.tree_leaves(w)))


def gaussian_probes(key: Array, S: PyTree, dim: int) -> PyTree:
  """`dim` standard-normal directions in S-space: S's pytree with a leading axis of `dim`."""
  leaves, treedef = jax.tree_util.tree_flatten(S)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      jax.random.normal(k, (dim,) + jnp.shape(a), jnp.result_type(a))
      for k, a in zip(keys, leaves)])


def ite_sketch_scores(distance: Callable[[PyTree, PyTree], Array], features: Callable,
                      G: PyTree, S: PyTree, g: PyTree, key: Array, dim: int = 64,
                      chunk_size: int | None = None) -> Array:
  """Sketched first-order ITE scores (module docstring) for L(G, S) = distance(G, features(S)).

  Args:
    distance: D(G, h) -> scalar. features: h(S) -> pytree.
    G: the real statistic; S: the synthetic data; g: per-sample statistics (leading axis B), or a
      `PerSampleFn`.
    key: PRNG key of the r Gaussian directions in S-space. dim: r.
    chunk_size: samples projected at once (None: all B).

  Returns (B,) estimates of ||ITE_i||_2 (first-order), E[score_i^2] = ||ITE_i||^2.
  """
  probes = gaussian_probes(key, S, dim)
  h, h_jvp = jax.linearize(features, S)
  v = jax.vmap(h_jvp)(probes)                                     # J_h p_k, (r, ...)
  grad_g = lambda h_: jax.grad(distance, argnums=0)(G, h_)
  _, w_jvp = jax.linearize(grad_g, h)
  w = jax.vmap(w_jvp)(v)                                          # (r, G's shape)
  proj = _map_samples(lambda gi: _tree_dot(gi, w), g, chunk_size)  # (B, r)
  return jnp.sqrt(jnp.mean(jnp.square(proj), axis=1))


def per_sample_ite_scores(losses: Callable[[PyTree], Array], S: PyTree, method: str = 'exact',
                          key: Array | None = None, sketch_dim: int = 64,
                          chunk_size: int | None = None) -> Array:
  """||ITE_i||_2 for a meta-loss L(S) = mean_i l_i(S) of per-real-sample terms (module docstring).

  Args:
    losses: S -> (B,) the per-sample meta-losses l_i(S) (e.g. `FRePo.per_sample(...).loss` as a
      function of the synthetic images).
    S: the synthetic data (any pytree).
    method: 'exact' or 'first_order' (the same here: ||grad_S l_i|| / B from B vmapped VJPs of one
      `jax.vjp`), or 'sketch' (`sketch_dim` Jacobian-vector products along Gaussian probes drawn
      from `key`; E[score_i^2] = ||ITE_i||^2).
    chunk_size: VJPs evaluated at once (bounded memory; None: all B).

  Returns (B,) scores.
  """
  _check_method(method)
  if method == 'sketch' and key is None:
    raise ValueError("per_sample_ite_scores(method='sketch') needs a PRNG key.")
  l0, vjp = jax.vjp(losses, S)
  b = l0.shape[0]
  if method == 'sketch':
    probes = gaussian_probes(key, S, sketch_dim)
    # J p_k by reverse over reverse (u -> <J^T u, p_k> is linear; its gradient is J p_k): no
    # forward mode, so it also runs through custom_vjp layers (ddjax's ConvNet conv2d)
    vdot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                           jax.tree_util.tree_leaves(b)))
    jp = lambda p: jax.grad(lambda u: vdot(vjp(u)[0], p))(jnp.zeros_like(l0))
    proj = jax.vmap(jp)(probes)                                    # (r, B): p_k . grad l_i
    return jnp.sqrt(jnp.mean(jnp.square(proj), axis=0)) / b
  rows = _map(lambda e: vjp(e)[0], jnp.eye(b, dtype=l0.dtype), chunk_size)   # grad_S l_i
  return ite_score(rows) / b


def compute_ite(meta_loss: MetaLoss, G: PyTree, S: PyTree, g: PyTree,
                method: str = 'first_order', chunk_size: int | None = None) -> PyTree:
  """`ite_first_order` or `ite_exact` by name."""
  if method not in ('first_order', 'exact'):
    raise ValueError(f'unknown ITE method {method!r}; allowed: first_order, exact')
  fn = ite_first_order if method == 'first_order' else ite_exact
  return fn(meta_loss, G, S, g, chunk_size=chunk_size)


def ranks(scores) -> np.ndarray:
  """Ordinal ranks 1..N of (N,) scores, ascending (ties by index)."""
  s = np.asarray(scores)
  r = np.empty(len(s), np.int64)
  r[np.argsort(s, kind='stable')] = np.arange(1, len(s) + 1)
  return r


def rank_error(scores_a, scores_b) -> float:
  """BiLP's ranking discrepancy (supp. 8): sum_i |r_i - r'_i| / (N (N - 1)), r and r' the ranks
  1..N of the two score vectors; 0 for identical orderings, below 1 always (about 1/3 for
  independent random orderings, 1/2 for a reversal). BiLP reports 2.7% for first-order vs exact
  ITE on CIFAR-10 at IPC 10."""
  a, b = ranks(scores_a), ranks(scores_b)
  n = len(a)
  if n != len(b) or n < 2:
    raise ValueError(f'rank_error needs two score vectors of the same length >= 2, got {n}, '
                     f'{len(b)}.')
  return float(np.abs(a - b).sum() / (n * (n - 1)))


# -- additive-separable meta-losses -----------------------------------------------------------------
class ITEProblem(NamedTuple):
  """meta_loss(G, S) -> scalar, the real statistic G, the synthetic data S and the per-sample
  statistics g (leading axis B); `ite_first_order(*problem)` / `ite_exact(*problem)` apply."""
  meta_loss: MetaLoss
  G: PyTree
  S: PyTree
  g: PyTree


class Separable(NamedTuple):
  """A meta-loss L(G, S) = distance(G, features(S)) with its real statistic G = sum_i g_i and the
  per-sample g (leading axis B, or a `PerSampleFn` computing them chunk by chunk): what
  `ite_sketch_scores` needs; `problem` is the same as an `ITEProblem`."""
  distance: Callable[[PyTree, PyTree], Array]
  features: Callable[[PyTree], PyTree]
  G: PyTree
  S: PyTree
  g: PyTree

  @property
  def problem(self) -> ITEProblem:
    return ITEProblem(lambda G_, S_: self.distance(G_, self.features(S_)), self.G, self.S, self.g)


def stored_statistics(sep: Separable) -> Separable:
  """`sep` with its per-sample statistics stored, (B, ...), and G recomputed as their sum (the
  `Separable` contract: G = sum_i g_i): when a whole class is scored at once every g_i exists at
  the same time anyway, and G then costs a sum instead of its own pass over the batch (DC: a
  batch gradient, about a third of a first-order ITE's arithmetic and half a sketch's)."""
  if not isinstance(sep.g, PerSampleFn):
    return sep
  g = sep.g.materialize()
  return sep._replace(G=jax.tree_util.tree_map(lambda a: a.sum(axis=0), g), g=g)


def _class_scores(build: Callable, method: str, chunk_size: int | None,
                  sketch_dim: int) -> Callable:
  def one(*args):
    sep = build(*args)
    if chunk_size is None:
      sep = stored_statistics(sep)
    if method == 'sketch':
      return ite_sketch_scores(sep.distance, sep.features, sep.G, sep.S, sep.g,
                               jax.random.fold_in(args[-1], 1), sketch_dim, chunk_size)
    p = sep.problem
    return ite_score(compute_ite(p.meta_loss, p.G, p.S, p.g, method, chunk_size))
  return one


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f'unknown ITE method {method!r}; allowed: {", ".join(METHODS)}')


# The automatic chunk sizes (`bilp.ite_chunk = 0`), all in one place:
WHOLE_CLASS_PAIRS = 256   # additive forms: real x synthetic images of a class scored whole,
CHUNK_PAIRS = 320         # otherwise real x synthetic images per chunk (`auto_chunk`)
PER_SAMPLE_CHUNK = 32     # per-sample records: real samples' VJPs at once (`per_sample_ite_scores`)


def auto_chunk(class_batch: int, syn_per_class: int) -> int | None:
  """`bilp.ite_chunk = 0`: the chunk size of `additive_ite_scores` for B_c real and n_c
  synthetic images per class. A first-order / exact ITE carries the n_c synthetic images through
  a second-order pass per real sample, so its temporaries grow as chunk x n_c. Whole classes
  (None) when B_c n_c <= WHOLE_CLASS_PAIRS (DC at IPC 1 with its 256 real images per class: one
  program without loops, ~7.8 GB of temporaries for ConvNet-3 width 128), else
  CHUNK_PAIRS // n_c real images per chunk (IPC 10: 32, ~1.1 GB)."""
  if class_batch * syn_per_class <= WHOLE_CLASS_PAIRS:
    return None
  return max(1, CHUNK_PAIRS // max(1, syn_per_class))


def unrolls_classes(chunk_size: int | None, backend: str | None = None) -> bool:
  """Whether `additive_ite_scores` runs its classes as a Python loop rather than a `lax.map`:
  on CPU when the classes are scored whole (chunk_size None). XLA:CPU runs convolution
  gradients inside a loop body far slower than at a program's top level (ddjax's ConvNet with
  ddjax's XLA flags, the 16 x 16 x 128 layer, one thread: weight gradient ~190x, input
  gradient ~4x), and the ITE is made of them; a chunked class keeps its `lax.map`s, whose memory
  is bounded by construction, where unrolled chunks were not (XLA kept many of them alive)."""
  backend = backend or jax.default_backend()
  return chunk_size is None and backend == 'cpu'


def additive_ite_scores(form, method: str = 'first_order', chunk_size: int | None = None,
                        sketch_dim: int = 64) -> Array:
  """||ITE||_2 of every real sample of a class-grouped batch from a distiller's additive form.

  form: a `ddjax.distill.base.AdditiveForm` (build, args, keys): `build(*args_c, keys[c])` is
    class c's `Separable`; the args have a leading class axis K (e.g. `DC.additive_form`,
    `DM.additive_form`). method: 'first_order', 'exact' or 'sketch' (`sketch_dim` probes,
    directions drawn from fold_in(keys[c], 1)). chunk_size: real samples of a class scored at
    once: per-sample statistics given as a `PerSampleFn`, their leave-one-out / linear-map
    evaluations and projections exist for that many samples at a time (for a first-order or exact
    ITE each one also carries the class's synthetic images through a second-order pass, so memory
    grows as chunk_size x IPC). None: the whole class at once, its per-sample statistics stored
    and G taken as their sum (`stored_statistics`).

  The classes run one after another, never vmapped (a class-batched second-order pass turns each
  weight gradient into a grouped convolution, both operands carrying the class axis: DC, 10
  classes x 32 real images, IPC 1, one thread: 68.6 s vmapped, 7.7 s one class at a time): a
  `lax.map`, or on CPU with whole classes a Python loop, each class ordered after the previous
  one (`unrolls_classes`).

  Returns (K, B_c) scores in the order of the class-grouped real batch. Jit-able.
  """
  _check_method(method)
  one = _class_scores(form.build, method, chunk_size, sketch_dim)
  per_class = (*form.args, form.keys)
  if not unrolls_classes(chunk_size):
    return jax.lax.map(lambda a: one(*a), per_class)
  scores = []
  for c in range(form.keys.shape[0]):
    args = jax.tree_util.tree_map(lambda a: a[c], per_class)
    scores.append(one(*_sequenced(args, scores[-1] if scores else None)))
  return jnp.stack(scores)


def masked_statistic(g: PyTree, mask: Array) -> PyTree:
  """The real statistic over the kept samples only: g (B, ...) per-sample terms of a batch mean
  (g_i = h(x_i) / B), mask (B,) -> (B / n_kept) sum_i mask_i g_i, the mean of h over the kept
  samples (n_kept >= 1 assumed; `ddjax.scoring.selection` guarantees it)."""
  m = mask.astype(jnp.float32)
  scale = m.shape[0] / jnp.maximum(m.sum(), 1.0)
  return jax.tree_util.tree_map(
      lambda a: scale * jnp.tensordot(m.astype(a.dtype), a, axes=(0, 0)), g)
