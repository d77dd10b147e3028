r"""NCFM: dataset distillation with the neural characteristic function discrepancy, a min-max game
(Wang et al., CVPR 2025, "Dataset Distillation with Neural Characteristic Function: A Minmax
Perspective"; official code gszfwsb/NCFM: NCFM/NCFM.py, NCFM/SampleNet.py,
condenser/Condenser.py, condenser/compute_loss.py, condense/condense_script.py, utils/utils.py).

**The discrepancy** (`cf_discrepancy`; CFLossFunc in NCFM/NCFM.py). For L2-normalised features
f_j (real, B_r of them) and g_k (synthetic, B_s) of one class and frequencies t_m (M of them, in
feature space R^D), the empirical characteristic functions are

    phi_r(t) = 1/B_r sum_j exp(i <t, f_j>),      phi_s(t) = 1/B_s sum_k exp(i <t, g_k>),

and with a = |phi_r(t)|, b = |phi_s(t)| (amplitudes),

    amp(t)   = (a - b)^2,
    phase(t) = max(2 (a b - Re phi_r(t) Re phi_s(t) - Im phi_r(t) Im phi_s(t)), 1e-12),
    CFD      = mean_m sqrt(alpha amp(t_m) + beta phase(t_m)),

alpha = beta = 0.5 (the weights of amplitude and phase). phase = 2 a b (1 - cos(theta_r -
theta_s)) is the phase term; amp + phase = |phi_r - phi_s|^2, so with alpha = beta the summand is
sqrt(alpha) |phi_r(t) - phi_s(t)|. The clamp makes identical sets score sqrt(beta 1e-12) (7.1e-7),
not 0. The meta-loss of a class is 300 x CFD (the code's factor), on the penultimate features of
a ConvNet (the flattened last block) L2-normalised per sample.

**The frequencies** come from the sampling network (`SampleNet`; NCFM/SampleNet.py): white noise
z (ceil(T / r), D) ~ N(0, t_var) through three Linear(D, D) -> BatchNorm1d -> activation layers
(LeakyReLU 0.2, LeakyReLU 0.2, tanh), the output rows tiled r times and cut to T rows (T =
sampling_net_t_batchsize 4096, r = t_repeat 16: 256 distinct frequencies). The tiled rows only
repeat distinct ones, so `cf_discrepancy` takes the distinct rows with the weights of their copies
(`tile_weights`): the same mean, 16x less arithmetic. The network's BatchNorm is always in train
mode in the official code (batch statistics of the noise rows; its running statistics are never
read), so `SampleNet` normalises with batch statistics and keeps none. Linear layers are initialised
as PyTorch's (weights and biases U(-1/sqrt(D), 1/sqrt(D))). Without the sampling network
(`ncfm.sampling_net=False`, config/ipc10/cifar10.yaml) t is num_freqs (4096) rows of N(0, I_D),
drawn afresh for every class.

**The min-max game** (condenser/compute_loss.py): for each class c in turn, the loss L_c(S, psi)
at the current sampling network psi is computed once; the images take a step down its gradient and
psi a step up it (SGD on -L_c, lr 1e-3, momentum 0.5, condense_script.py), so psi after class c is
the psi class c + 1 sees.

Note on the official code: its default branch (sampling_net_ascent_scale unset, as in every
shipped yaml) calls loss.backward(retain_graph=True), steps the images, zeroes only the images'
gradients, then calls (-loss).backward() before the sampling network's step, so the sampling
network's accumulated gradient is g - g = 0 and its SGD never moves it: psi stays at its random
initialisation (the frequencies are still that fixed network on fresh noise). Its later branch
(sampling_net_ascent_scale = s != 0) takes g by autograd.grad first and steps psi on -s g, the
min-max the paper describes. ddjax implements the latter (`ncfm.ascent_scale`, 1 by default);
ascent_scale 0 reproduces the former. ddjax computes the same sequence exactly: `before_loss` embeds the real
batch and the (stop-gradient) synthetic set once, then scans the classes, giving class c the psi_c
that the official loop gives it and ascending L_c to psi_{c+1}; class c's frequencies (from psi_c) and
the embedded real features are handed to the meta-loss (`per_class`), and `update` keeps psi_K and its
optimizer state. The state between steps holds the pool and psi only (checkpointed); the
features exist inside one step.

**The embedding networks** (utils/utils.py `update_feature_extractor`; pretrain/pretrain_script.py):
20 ConvNets pretrained on the real data, each kept at its initialisation and after training. Every
iteration draws one of them, i, and lambda ~ U(0, 1), and embeds with the interpolated parameters
lambda theta_i^init + (1 - lambda) theta_i^trained; the calibration term uses theta_i^trained.
ddjax's pool is an expert buffer (`ddjax.distill.experts`, the `expert` config block trajectory
matching uses): expert i's snapshots at epoch 0 and at `expert.epochs`. The official pretraining
runs SGD (lr 0.01, momentum 0.9, weight decay 0.01, 60 epochs, batch 256) with a multi-step decay
(x0.2 at 2/3 and 5/6 of the epochs) and CutMix plus IDC's random augmentation; ddjax's experts keep
the rate constant and use DSA (no CutMix). The pool lives in the distiller's state (2 x experts x
parameters floats, checkpointed with it).

**The calibration term** (NCFM.py `cailb_loss`, compute_loss.py `compute_calib_loss`): after the
matching steps, each class's images take a step down calib_weight x CE(theta_i^trained(A(S_c)), c)
(iter_calib 1, calib_weight 1). ddjax adds it to the class's meta-loss term, so one step of the set
takes both.

**Augmentation and parameterisation.** Each class's real and synthetic images go through the same
draw of DSA 'color_crop_cutout' (the code's aug_type, DiffAug in batch mode: one draw per class
batch; ddjax's DSA ops stand in for IDC's DiffAug); the calibration term draws its own. The set is
IDC's multi-formation (factor 2, decode 'single', 'mix' initialisation: `ddjax.distill.idc`).

Differences from the official code, all documented in configs/ncfm.py too: one optimizer step of
the set per iteration on the sum over classes (the official loop steps AdamW once per class, K
matching and K calibration steps per iteration); Adam without AdamW's decoupled weight decay 0.01
(ddjax's set optimizers have none); no ReduceLROnPlateau (the sampling-net yaml's patience 20000
never fires in 20000 iterations); the pretrained pool as above. The images are clipped to the pixel
range [0, 1] after every update (the `project` hook, in the standardised space ddjax stores), as
the official loop clamps them.

Capabilities: `record = PER_CLASS` (row transforms such as ISA are refused); `additive_form` is
implemented: the real side of the discrepancy is the empirical CF, a mean over real samples of
g(x_j) = (cos <t, f_j>, sin <t, f_j>) / B_c for every frequency, and L(G, S) is the CFD of G against
the synthetic CF, so BiLP's ITE applies (the calibration term does not depend on the real batch
and drops out of the ITE).
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax import registry
from ddjax.data.preprocess import clip_to_pixel_range
from ddjax.distill.base import PER_CLASS, AdditiveForm, Distiller, RunHooks
from ddjax.distill.matching import group_by_class, matching_defaults
from ddjax.scoring.ite import Separable
from ddjax.transforms.base import PerClass

Array = jax.Array
PyTree = Any

PHASE_FLOOR = 1e-12        # the clamp of the phase term (NCFM.py)
LOSS_SCALE = 300.0         # match_loss's factor (NCFM.py)
BN_EPS = 1e-5              # BatchNorm1d's eps


# -- the characteristic-function discrepancy --------------------------------------------------------
def empirical_cf(features: Array, t: Array, weight: Array | None = None) -> Array:
  """The empirical characteristic function of a feature set at frequencies t.

  Args:
    features: (B, D) samples f_j. t: (M, D) frequencies.
    weight: optional (B,) non-negative sample weights (BiLP's keep mask); None: uniform.

  Returns:
    (2, M): [Re, Im] of phi(t_m) = sum_j w_j exp(i <t_m, f_j>) / sum_j w_j.
  """
  proj = features @ t.T                                     # (B, M)
  if weight is None:
    return jnp.stack([jnp.cos(proj).mean(0), jnp.sin(proj).mean(0)])
  w = weight.astype(proj.dtype) / jnp.maximum(jnp.sum(weight), 1e-12)
  return jnp.stack([w @ jnp.cos(proj), w @ jnp.sin(proj)])


def _safe_sqrt(x: Array) -> Array:
  """sqrt with a finite gradient at 0 (the official torch.sqrt has an infinite one there; equal
  values elsewhere)."""
  return jnp.sqrt(jnp.maximum(x, 1e-30))


def cf_distance(cf_real: Array, cf_syn: Array, alpha: float = 0.5, beta: float = 0.5,
                freq_weight: Array | None = None) -> Array:
  """The discrepancy of two empirical CFs (module docstring), a scalar.

  Args:
    cf_real, cf_syn: (2, M) [Re, Im] at the same M frequencies (`empirical_cf`).
    alpha, beta: the weights of the amplitude and the phase terms.
    freq_weight: optional (M,) weights of the frequencies summing to 1 (`tile_weights`);
      None: the plain mean.
  """
  re_r, im_r = cf_real[0], cf_real[1]
  re_s, im_s = cf_syn[0], cf_syn[1]
  a = _safe_sqrt(re_r * re_r + im_r * im_r)
  b = _safe_sqrt(re_s * re_s + im_s * im_s)
  amp = jnp.square(a - b)
  phase = jnp.maximum(2.0 * (a * b - re_r * re_s - im_r * im_s), PHASE_FLOOR)
  per_freq = jnp.sqrt(alpha * amp + beta * phase)
  if freq_weight is None:
    return per_freq.mean()
  return jnp.sum(freq_weight * per_freq)


def cf_discrepancy(f_real: Array, f_syn: Array, t: Array, alpha: float = 0.5, beta: float = 0.5,
                   real_weight: Array | None = None,
                   freq_weight: Array | None = None) -> Array:
  """NCFM's CF discrepancy between two feature sets (CFLossFunc; module docstring), jittable.

  Args:
    f_real: (B_r, D) real features. f_syn: (B_s, D) synthetic features (the code normalises both
      to unit L2 norm first; this function takes them as given).
    t: (M, D) frequencies.
    alpha, beta: amplitude and phase weights (0.5, 0.5).
    real_weight: optional (B_r,) weights of the real samples in their CF.
    freq_weight: optional (M,) frequency weights summing to 1 (None: mean over t).

  Returns:
    () mean over frequencies of sqrt(alpha (|phi_r| - |phi_s|)^2 + beta max(2 (|phi_r| |phi_s| -
    Re phi_r Re phi_s - Im phi_r Im phi_s), 1e-12)).
  """
  return cf_distance(empirical_cf(f_real, t, real_weight), empirical_cf(f_syn, t), alpha, beta,
                     freq_weight)


def l2_normalize(f: Array) -> Array:
  """Rows of f (B, D) to unit L2 norm (torch's F.normalize: divided by max(|f|, 1e-12))."""
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


# -- the sampling network -------------------------------------------------------------------------
def _torch_uniform(fan_in: int):
  """PyTorch's nn.Linear initialiser for weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class SampleNet(nn.Module):
  """NCFM's frequency-sampling network (NCFM/SampleNet.py): noise z (n, D) -> frequencies (n, D).

  Three layers Linear(D, D) -> batch norm (train mode: the statistics of the n rows, biased
  variance, eps 1e-5, affine) -> LeakyReLU(0.2), LeakyReLU(0.2), tanh. The rows are the distinct
  frequencies; the official module tiles them (`tile_weights` gives their weights).
  """
  feature_dim: int
  num_layers: int = 3

  @nn.compact
  def __call__(self, z: Array) -> Array:
    d = self.feature_dim
    a = z
    for i in range(self.num_layers):
      a = nn.Dense(d, kernel_init=_torch_uniform(d), bias_init=_torch_uniform(d),
                   name=f'linear{i}')(a)
      mean = a.mean(0)
      var = jnp.mean(jnp.square(a - mean), 0)
      scale = self.param(f'bn{i}_scale', nn.initializers.ones, (d,))
      shift = self.param(f'bn{i}_bias', nn.initializers.zeros, (d,))
      a = (a - mean) / jnp.sqrt(var + BN_EPS) * scale + shift
      a = nn.leaky_relu(a, 0.2) if i < self.num_layers - 1 else jnp.tanh(a)
    return a


def distinct_frequencies(t_batchsize: int, t_repeat: int) -> int:
  """Distinct rows the sampling network computes: max(1, ceil(T / r)) (SampleNet.py)."""
  return max(1, -(-int(t_batchsize) // max(1, int(t_repeat))))


def tile_weights(t_batchsize: int, t_repeat: int) -> np.ndarray:
  """(n,) weights of the n distinct rows in the official output: the n rows tiled r times
  (torch's repeat(r, 1): row k is distinct row k mod n) and cut to the first T rows; weight i =
  (copies of row i among them) / T. A mean over the T tiled rows equals the weighted sum over the
  distinct rows."""
  n = distinct_frequencies(t_batchsize, t_repeat)
  t = int(t_batchsize)
  counts = np.full(n, t // n, np.float64) + (np.arange(n) < t % n)
  return (counts / t).astype(np.float32)


def tiled_frequencies(t_distinct: Array, t_batchsize: int, t_repeat: int) -> Array:
  """The official (T, D) output from the distinct rows (for tests and comparison)."""
  reps = max(1, int(t_repeat))
  return jnp.tile(t_distinct, (reps, 1))[:int(t_batchsize)]


# -- state ----------------------------------------------------------------------------------------
@flax.struct.dataclass
class StepCache:
  """What `before_loss` hands to the meta-loss and `update` within one step.

  real_feats: (K, B_c, D) normalised real features of the step's class batches.
  freqs: (K, n, D) class c's frequencies, from psi_c (None without the sampling network: the
    Gaussian ones are drawn where they are used).
  psi_next, opt_next: psi and its optimizer state after the K ascent steps (None without it).
  psi_per_class: the psi_c stacked over classes, only when `prepare(..., keep_psi=True)` (tests).
  """
  real_feats: Array
  freqs: Array | None = None
  psi_next: PyTree = None
  opt_next: PyTree = None
  psi_per_class: PyTree = None


@flax.struct.dataclass
class NCFMState:
  """pool_init, pool_final: (P_models, P) flat parameters of the pretrained pool at
  initialisation and after training. psi: the sampling network's params (None without it);
  psi_opt: its optimizer state. cache: a `StepCache` inside a step, None between steps."""
  pool_init: Array
  pool_final: Array
  psi: PyTree = None
  psi_opt: PyTree = None
  cache: StepCache | None = None


class Draws(NamedTuple):
  """The random choices of one iteration, all from the meta-loss key."""
  embed: PyTree          # variables of the interpolated network
  final: PyTree          # variables of the trained network (calibration)
  aug_keys: Array        # (K,) DSA keys, real and synthetic of class c alike
  noise_keys: Array      # (K,) keys of the sampling network's noise / Gaussian frequencies
  calib_keys: Array      # (K,) DSA keys of the calibration term


# -- the distiller --------------------------------------------------------------------------------
class NCFM(Distiller):
  """NCFM's meta-loss, min-max game and pretrained pool (module docstring).

  Args:
    model: the pool's network (a ddjax ConvNet returning (logits, features); no batch norm).
    unravel: flat (P,) -> the model's params (the expert buffer's `unravel`).
    pool_init, pool_final: (P_models, P) float32 snapshots of the pool.
    image_shape: (H, W, C). num_classes: K (the set is class-grouped).
    sampling_net: learn the frequencies with `SampleNet` (True) or draw N(0, I) (False).
    t_batchsize, t_repeat, t_var: the sampling network's T, r and noise variance.
    num_freqs: Gaussian frequencies per class without the sampling network.
    sampling_lr, sampling_momentum: the sampling network's SGD.
    alpha, beta: amplitude and phase weights. scale: the loss factor (300).
    calib_weight: weight of the calibration term (0: off).
    dsa_strategy: DSA ops of the matching and calibration augmentation ('' off).
    ascent_scale: the sampling network's gradient is ascent_scale x dL/dpsi, ascended (1: the
      min-max; 0: psi stays at its initialisation, what the official default code path does).
  """

  record = PER_CLASS

  def __init__(self, model: nn.Module, unravel, pool_init: np.ndarray, pool_final: np.ndarray,
               image_shape: tuple, num_classes: int, sampling_net: bool = True,
               t_batchsize: int = 4096, t_repeat: int = 16, t_var: float = 1.0,
               num_freqs: int = 4096, sampling_lr: float = 1e-3, sampling_momentum: float = 0.5,
               alpha: float = 0.5, beta: float = 0.5, scale: float = LOSS_SCALE,
               calib_weight: float = 1.0, dsa_strategy: str = 'color_crop_cutout',
               ascent_scale: float = 1.0, project=None):
    if getattr(model, 'norm', 'none') == 'batch':
      raise ValueError("NCFM interpolates flat network parameters with no running statistics; "
                       "use model.norm='instance' (NCFM's) or 'none'.")
    pool_init, pool_final = np.asarray(pool_init, np.float32), np.asarray(pool_final, np.float32)
    if pool_init.ndim != 2 or pool_init.shape != pool_final.shape:
      raise ValueError(f'the pool needs (models, P) snapshots at init and after training of one '
                       f'shape, got {pool_init.shape} and {pool_final.shape}.')
    self.model = model
    self.unravel = unravel
    self._pool = (pool_init, pool_final)
    self.image_shape = tuple(image_shape)
    self.num_classes = int(num_classes)
    self.sampling_net = bool(sampling_net)
    self.t_batchsize, self.t_repeat, self.t_var = int(t_batchsize), int(t_repeat), float(t_var)
    self.num_freqs = int(num_freqs)
    self.alpha, self.beta, self.scale = float(alpha), float(beta), float(scale)
    self.calib_weight = float(calib_weight)
    self.ascent_scale = float(ascent_scale)
    self._project = project
    self.dsa_strategy = dsa_strategy
    feats = jax.eval_shape(
        lambda p: model.apply({'params': p}, jnp.zeros((1,) + self.image_shape), train=False)[1],
        unravel(jnp.zeros(pool_init.shape[1], jnp.float32)))
    self.feature_dim = int(feats.shape[-1])
    self.sampler = SampleNet(self.feature_dim)
    self.psi_optimizer = optax.sgd(sampling_lr, momentum=sampling_momentum or None)
    self.freq_weight = (jnp.asarray(tile_weights(self.t_batchsize, self.t_repeat))
                        if self.sampling_net else None)

  # -- state and draws ----------------------------------------------------------------------------
  def init(self, syn: PyTree, key: Array) -> NCFMState:
    """The pool, and a fresh sampling network with its optimizer state (PyTorch's init)."""
    del syn
    psi = opt = None
    if self.sampling_net:
      n = distinct_frequencies(self.t_batchsize, self.t_repeat)
      psi = self.sampler.init(key, jnp.zeros((n, self.feature_dim), jnp.float32))['params']
      opt = self.psi_optimizer.init(psi)
    return NCFMState(pool_init=jnp.asarray(self._pool[0]), pool_final=jnp.asarray(self._pool[1]),
                     psi=psi, psi_opt=opt)

  @property
  def hooks(self) -> RunHooks:
    return RunHooks(before_loss=self.before_loss, project=self.project)

  def project(self, syn):
    """The stored images clipped to the pixel range after every update (`project` given)."""
    if self._project is None:
      return syn
    return dict(syn, x=self._project(syn['x']))

  def draws(self, state: NCFMState, key: Array) -> Draws:
    """One pool member i (uniform) and lambda ~ U(0, 1): the embedding network lambda init_i +
    (1 - lambda) trained_i and the calibration network trained_i; the per-class keys."""
    k_net, k_aug, k_noise, k_calib = jax.random.split(key, 4)
    k_idx, k_lam = jax.random.split(k_net)
    idx = jax.random.randint(k_idx, (), 0, state.pool_init.shape[0])
    lam = jax.random.uniform(k_lam, ())
    init, final = state.pool_init[idx], state.pool_final[idx]
    k = self.num_classes
    return Draws(embed={'params': self.unravel(lam * init + (1.0 - lam) * final)},
                 final={'params': self.unravel(final)},
                 aug_keys=jax.random.split(k_aug, k), noise_keys=jax.random.split(k_noise, k),
                 calib_keys=jax.random.split(k_calib, k))

  def augment(self, key: Array, x: Array) -> Array:
    """x (n, H, W, C): one DSA draw for the whole batch (DiffAug's batch mode)."""
    if not self.dsa_strategy:
      return x
    from ddjax.augment.dsa import dsa
    return dsa(key, x, self.dsa_strategy, batchmode=True)

  def embed(self, variables: PyTree, key: Array, x: Array) -> Array:
    """Normalised features of augment(key, x): (n, H, W, C) -> (n, D)."""
    _, feats = self.model.apply(variables, self.augment(key, x), train=False)
    return l2_normalize(feats)

  def frequencies(self, psi: PyTree, key: Array) -> Array:
    """The class's frequencies: (n, D) distinct rows of the sampling network on fresh noise, or
    (num_freqs, D) Gaussian rows without it."""
    if not self.sampling_net:
      return jax.random.normal(key, (self.num_freqs, self.feature_dim), jnp.float32)
    n = distinct_frequencies(self.t_batchsize, self.t_repeat)
    z = jax.random.normal(key, (n, self.feature_dim), jnp.float32) * math.sqrt(self.t_var)
    return self.sampler.apply({'params': psi}, z)

  def match(self, f_real: Array, f_syn: Array, t: Array, real_weight: Array | None = None):
    """scale x CFD of one class."""
    return self.scale * cf_discrepancy(f_real, f_syn, t, self.alpha, self.beta, real_weight,
                                       self.freq_weight)

  # -- the min-max step ---------------------------------------------------------------------------
  def prepare(self, syn: PyTree, state: NCFMState, batch: dict[str, Array],
              key: Array, keep_psi: bool = False) -> StepCache:
    """The real features of the step and the sampling network's K ascent steps (module
    docstring), all from the meta-loss key. The cache holds class c's frequencies, not psi_c
    (K copies of a D x D network would be K times its size). keep_psi (static): also return
    the psi_c."""
    d = self.draws(state, key)
    k = self.num_classes
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, k)
    real = jax.lax.map(lambda a: self.embed(d.embed, a[0], a[1]), (d.aug_keys, xr))
    real = jax.lax.stop_gradient(real)
    if not self.sampling_net:
      return StepCache(real_feats=real)
    weight = batch.get('weight')
    wr = (group_by_class(weight, labels, k) if weight is not None
          else jnp.ones(xr.shape[:2], jnp.float32))
    xs = jax.lax.stop_gradient(syn['x']).reshape((k, -1) + syn['x'].shape[1:])
    fs = jax.lax.stop_gradient(jax.vmap(lambda kk, x: self.embed(d.embed, kk, x))(d.aug_keys, xs))

    def one_class(carry, inputs):
      psi, opt = carry
      fr_c, fs_c, w_c, key_c = inputs
      loss = lambda p: -self.ascent_scale * self.match(fr_c, fs_c, self.frequencies(p, key_c),
                                                       w_c)
      grad = jax.grad(loss)(psi)
      updates, opt_new = self.psi_optimizer.update(grad, opt, psi)
      out = (self.frequencies(psi, key_c), psi if keep_psi else None)
      return (optax.apply_updates(psi, updates), opt_new), out

    (psi_next, opt_next), (freqs, per_class) = jax.lax.scan(
        one_class, (state.psi, state.psi_opt), (real, fs, wr, d.noise_keys))
    return StepCache(real_feats=real, freqs=jax.lax.stop_gradient(freqs), psi_next=psi_next,
                     opt_next=opt_next, psi_per_class=per_class)

  def before_loss(self, syn: PyTree, state: NCFMState, batch: dict[str, Array], step: Array,
                  key: Array) -> NCFMState:
    del step
    return state.replace(cache=self.prepare(syn, state, batch, key))

  def update(self, syn: PyTree, state: NCFMState, key: Array) -> NCFMState:
    """Keep the sampling network after its K ascent steps; drop the step's cache."""
    del syn, key
    cache = state.cache
    if cache is None:
      return state
    if self.sampling_net:
      state = state.replace(psi=cache.psi_next, psi_opt=cache.opt_next)
    return state.replace(cache=None)

  def _cache(self, syn, state, batch, key) -> StepCache:
    return state.cache if state.cache is not None else self.prepare(syn, state, batch, key)

  def class_frequencies(self, cache: StepCache, noise_keys: Array) -> Array:
    """(K, M, D) frequencies of every class (class c's from psi_c)."""
    if not self.sampling_net:
      return jax.vmap(lambda kk: self.frequencies(None, kk))(noise_keys)
    return cache.freqs

  def calibration(self, variables: PyTree, keys: Array, xs: Array) -> Array:
    """(K,) mean cross-entropy of the trained network on each class's augmented images
    xs (K, n_c, H, W, C) against their class."""
    def one(key, x, c):
      logits, _ = self.model.apply(variables, self.augment(key, x), train=False)
      return -jnp.mean(jax.nn.log_softmax(logits)[:, c])
    return jax.vmap(one)(keys, xs, jnp.arange(self.num_classes))

  def per_class(self, syn: PyTree, state: NCFMState, batch: dict[str, Array],
                key: Array) -> PerClass:
    """batch {'x': (B, ...), 'y': (B, K)} class-balanced -> K rows: K x (300 CFD_c +
    calib_weight CE_c), so their mean is the sum over classes. An optional batch['weight'] (B,)
    weights the real samples in their CF (BiLP's keep mask)."""
    cache = self._cache(syn, state, batch, key)
    d = self.draws(state, key)
    k = self.num_classes
    labels = jnp.argmax(batch['y'], -1)
    weight = batch.get('weight')
    wr = group_by_class(weight, labels, k) if weight is not None else None
    xs = syn['x'].reshape((k, -1) + syn['x'].shape[1:])
    fs = jax.vmap(lambda kk, x: self.embed(d.embed, kk, x))(d.aug_keys, xs)
    t = self.class_frequencies(cache, d.noise_keys)
    if wr is None:
      match = jax.vmap(self.match)(cache.real_feats, fs, t)
    else:
      match = jax.vmap(self.match)(cache.real_feats, fs, t, wr)
    loss = match
    if self.calib_weight:
      loss = loss + self.calib_weight * self.calibration(d.final, d.calib_keys, xs)
    return PerClass(loss=k * loss)

  # -- the additive form (BiLP's ITE) -------------------------------------------------------------
  def class_separable(self, variables: PyTree, x_real: Array, x_syn: Array, t: Array,
                      key: Array) -> Separable:
    """One class: g_j = (cos <t, f_j>, sin <t, f_j>) / B (2, M) per real sample, G = sum_j g_j
    the real empirical CF, L(G, S) = scale x CFD(G, CF of S), f and S's features after the
    class's DSA draw `key`. x_real (B, H, W, C); x_syn (n_c, H, W, C); t (M, D)."""
    fr = jax.lax.stop_gradient(self.embed(variables, key, x_real))
    proj = fr @ t.T
    g = jnp.stack([jnp.cos(proj), jnp.sin(proj)], axis=1) / x_real.shape[0]     # (B, 2, M)
    features = lambda s: empirical_cf(self.embed(variables, key, s), t)
    distance = lambda g_sum, cf_s: self.scale * cf_distance(g_sum, cf_s, self.alpha, self.beta,
                                                            self.freq_weight)
    return Separable(distance, features, g.sum(axis=0), x_syn, g)

  def additive_form(self, syn: PyTree, state: NCFMState, batch: dict[str, Array], key: Array,
                    chunk_size: int | None = None) -> AdditiveForm:
    """The additive form of `per_class`'s matching term with the same network, DSA draws and
    frequencies (class c's psi_c). (Whole classes; chunk_size unused.)"""
    del chunk_size
    cache = self._cache(syn, state, batch, key)
    d = self.draws(state, key)
    k = self.num_classes
    xr = group_by_class(batch['x'], jnp.argmax(batch['y'], -1), k)
    xs = jax.lax.stop_gradient(syn['x']).reshape((k, -1) + syn['x'].shape[1:])
    t = jax.lax.stop_gradient(self.class_frequencies(cache, d.noise_keys))
    build = lambda xr_c, xs_c, t_c, key_c: self.class_separable(d.embed, xr_c, xs_c, t_c, key_c)
    return AdditiveForm(build, (xr, xs, t), d.aug_keys)


# -- configuration ---------------------------------------------------------------------------------
def ncfm_block() -> ml_collections.ConfigDict:
  """cfg.ncfm: the official names in comments (config/sampling_net/ipc10/cifar10.yaml)."""
  b = ml_collections.ConfigDict()
  b.sampling_net = True        # sampling_net: learn t (min-max); False: t ~ N(0, I)
  b.t_batchsize = 4096         # sampling_net_t_batchsize: T frequencies (tiled)
  b.t_repeat = 16              # sampling_net_t_repeat (condense_script.py default): T / r distinct
  b.t_var = 1.0                # sampling_net_t_var: variance of the noise input
  b.num_freqs = 4096           # num_freqs: Gaussian frequencies without the sampling net
  b.sampling_lr = 1e-3         # lr_sampling_net (SGD)
  b.sampling_momentum = 0.5    # sampling_net_mom (default mom_img 0.5)
  b.alpha = 0.5                # alpha_for_loss: amplitude weight
  b.beta = 0.5                 # beta_for_loss: phase weight
  b.scale = LOSS_SCALE         # match_loss's factor 300
  b.calib_weight = 1.0         # calib_weight (iter_calib 1); 0: no calibration term
  b.ascent_scale = 1.0         # sampling_net_ascent_scale: 1 the min-max; 0 psi frozen (the
                               # official default branch, whose gradients cancel: see ncfm.py)
  return b


def validate_block(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import int_errors
  errors = []
  for key in ('t_batchsize', 't_repeat', 'num_freqs'):
    errors += int_errors(cfg, f'ncfm.{key}', 1)
  b = cfg.ncfm
  if b.alpha + b.beta <= 0:
    errors.append(f'ncfm.alpha={b.alpha} and ncfm.beta={b.beta}: at least one must be > 0 '
                  '(NCFM: 0.5 and 0.5).')
  if b.t_var <= 0:
    errors.append(f'ncfm.t_var={b.t_var} must be > 0 (NCFM: 1).')
  return errors


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """NCFM's CIFAR-10 IPC-10 setting with the sampling network (`paper`, `cifar10`; `cifar100`
  the same on CIFAR-100), or the CPU default on Fashion-MNIST (configs/ncfm.py has the sources)."""
  matching_defaults(cfg)                      # ConvNet-3 w128 instance norm, DC's evaluation
  cfg.model.update(arch='convnet', depth=3, width=128, norm='instance', pooling='avg',
                   double_width=False, norm_placement='dc')
  cfg.distill.update(optimizer='adam', lr=1e-3, schedule='constant', init='real',
                     batch_per_class=1024, balanced_batch=True, steps=20000, ipc=10)
  cfg.idc.factor = 2
  cfg.dsa.strategy = 'color_crop_cutout'
  cfg.expert.update(num_experts=20, epochs=60, lr=0.01, momentum=0.9, weight_decay=0.01,
                    batch_size=256, dsa=True)
  cfg.eval.num_models = 5
  if preset in ('paper', 'cifar10', 'cifar100'):
    cfg.data.name = 'cifar100' if preset == 'cifar100' else 'cifar10'
    cfg.data.preprocessing = 'standard'
    cfg.checkpoint.every = 500
  else:                                         # the CPU default (Fashion-MNIST)
    cfg.model.width = 32
    cfg.distill.update(ipc=1, steps=300, batch_per_class=128)
    cfg.expert.update(num_experts=2, epochs=1)
    cfg.eval.num_models = 2
    cfg.checkpoint.every, cfg.log.every = 100, 10


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  errors = []
  if cfg.model.norm == 'batch':
    errors.append("method='ncfm' with model.norm='batch': the pool is flat parameters with no "
                  "running statistics; use 'instance' (NCFM's) or 'none'.")
  if cfg.model.arch != 'convnet':
    errors.append(f"method='ncfm' with model.arch={cfg.model.arch!r}: the pool is an expert "
                  "buffer of ConvNets; use model.arch='convnet'.")
  if not cfg.distill.balanced_batch or cfg.distill.batch_per_class <= 0:
    errors.append("method='ncfm' matches class by class: set distill.balanced_batch=True and "
                  'distill.batch_per_class > 0 (NCFM: 1024).')
  return errors


def _build(cfg: ml_collections.ConfigDict, data) -> NCFM:
  from ddjax.augment.dsa import strategy_from_config
  from ddjax.distill.mtt import get_buffer
  buf = get_buffer(cfg, data)
  members = range(int(cfg.expert.num_experts))
  pool_init = np.stack([buf.snapshot(i, 0) for i in members])
  pool_final = np.stack([buf.snapshot(i, int(cfg.expert.epochs)) for i in members])
  b = cfg.ncfm
  return NCFM(buf.model, buf.unravel, pool_init, pool_final, data.image_shape, data.num_classes,
              sampling_net=b.sampling_net, t_batchsize=b.t_batchsize, t_repeat=b.t_repeat,
              t_var=b.t_var, num_freqs=b.num_freqs, sampling_lr=b.sampling_lr,
              sampling_momentum=b.sampling_momentum, alpha=b.alpha, beta=b.beta, scale=b.scale,
              calib_weight=b.calib_weight, dsa_strategy=strategy_from_config(cfg),
              ascent_scale=b.ascent_scale,
              project=functools.partial(clip_to_pixel_range, data.pre))


def _blocks() -> tuple:
  from ddjax.distill.mtt import expert_block, validate_expert
  return (registry.ConfigBlock('ncfm', ncfm_block, validate=validate_block),
          registry.ConfigBlock('expert', expert_block, validate=validate_expert))


registry.register(registry.Method(
    name='ncfm', distiller_class=NCFM, build=_build, blocks=_blocks(), configure=_configure,
    validate=_validate, presets=registry.PRESETS + ('cifar10', 'cifar100'), protocol='dc',
    description='NCFM: characteristic-function matching with a learned frequency sampler'))
