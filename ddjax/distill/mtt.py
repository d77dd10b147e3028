"""MTT: matching training trajectories (Cazenavette et al., CVPR 2022), and the machinery DATM and
PAD share (`ddjax.distill.datm`, `ddjax.distill.pad`).

One iteration (the official distill.py:320-396):
  1. sample an expert e and a start epoch t in [min_start, upper) (MTT: upper = max_start_epoch;
     DATM's window grows it), and read theta*_t and theta*_{t+M} from the expert buffer
     (`ddjax.distill.experts`; only these two snapshots are read);
  2. unroll N student SGD steps from theta*_t on minibatches of the synthetic set, each after
     DSA (drawn per step before the loop, `inner_batches`), with the learnable step size alpha
     (`syn['syn_lr']`, initially `lr_teacher`):
         theta_{i+1} = theta_i - alpha * grad_theta CE(f(DSA(x_b); theta_i), y_b)
  3. L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2     (MTT Eq. 2)
     (PAD's FIEM: both sums over a mask of the flattened parameters, `ParameterMask`);
  4. images, step size (and DATM's labels) by SGD with momentum at their own rates.

Gradients through the unroll (`trajectory.gradient`):
  'exact'  reverse mode through a `lax.scan` whose body is wrapped in `jax.checkpoint`: memory
           holds the N parameter vectors and one step's activations (the step is recomputed on
           the way back), and the gradient is MTT's, Hessian cross-terms included. MTT's code
           keeps the whole graph (memory grows with N x activations); `trajectory.remat=False`
           does the same here. On CPU the steps are unrolled in the graph instead of scanned
           (`default_loop`: XLA:CPU runs convolutions in loops ~9x slower); there XLA recomputes
           but does not lower the peak (measured: the same temp memory with and without remat,
           ~15 MB per step at width 32; benchmarks/results/trajectory_unroll.md), so the bounded
           memory holds for `trajectory.loop=scan`, the default on accelerators.
  'tesla'  TESLA's decomposition (Cui et al., ICML 2023, distill.py:364-432) as a `custom_vjp`:
           theta_N = theta_0 - alpha * sum_i g_i with the theta_i held fixed, so
           dL/dX = -alpha sum_i (d g_i / dX)^T c and dL/dalpha = -G^T c for c = dL/dtheta_N.
           It drops the terms through d theta_j / dX for j > i: an approximation of the exact
           gradient, documented as such by ddjax (TESLA's paper calls it exact). TESLA's factor-2
           bug (issue #5) is not copied.

Failure modes MTT users hit (issues #16, #20, #42): a step size that goes negative or a non-finite
loss; the run stops naming the step and the value (`problem`), never with silent NaN images.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ddjax import registry
from ddjax.distill.base import PER_SET, Distiller, RunHooks
from ddjax.models.order import in_module_order, parameter_order
from ddjax.transforms.base import PerClass

Array = jax.Array
PyTree = Any

GRADIENTS = ('exact', 'tesla')
MASKS = ('none', 'depth', 'per_layer', 'loss')
LABEL_LOSSES = ('hard', 'soft')


# -- the student's loss and the unroll -------------------------------------------------------------
def student_loss(logits: Array, y: Array, soft: bool) -> Array:
  """Mean cross-entropy of logits (b, K) against y (b, K): hard labels argmax(y) (MTT), or the
  soft targets softmax(y) of learned label logits (DATM's SoftCrossEntropy, T = 1)."""
  log_p = jax.nn.log_softmax(logits)
  if soft:
    return -jnp.mean(jnp.sum(jax.nn.softmax(y) * log_p, axis=-1))
  return -jnp.mean(jnp.take_along_axis(log_p, jnp.argmax(y, -1)[:, None], axis=-1))


def make_student_grad(model: nn.Module, unravel: Callable, soft: bool) -> Callable:
  """grad_fn(theta (P,), x (b, H, W, C), y (b, K)) -> (P,): the gradient of `student_loss` of the
  network with flat parameters theta (instance norm / no norm: no running statistics)."""
  def loss(theta, x, y):
    logits, _ = model.apply({'params': unravel(theta)}, x, train=True)
    return student_loss(logits, y, soft)
  return jax.grad(loss)


def minibatch_indices(key: Array, n: int, batch: int, steps: int) -> Array:
  """(steps, batch) int32 rows of the synthetic set for the N inner steps: consecutive
  permutations of range(n) cut into batches, as MTT's randperm / split / pop without replacement
  (batch = n: every step sees the whole set)."""
  batch = min(batch, n)
  reps = -(-steps * batch // n)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, reps))
  return perms.reshape(-1)[:steps * batch].reshape(steps, batch)


def inner_batches(x: Array, y: Array, idx: Array, keys: Array,
                  augment: Callable) -> tuple[Array, Array]:
  """The N inner steps' inputs, drawn before the unroll: xs (N, b, H, W, C) = A_i(x[idx_i]) with
  A_i = augment(keys[i], .) (each step its own DSA draw), ys (N, b, K) = y[idx_i].
  Differentiable in x and y; the unroll then holds no augmentation. A `lax.map` over the steps,
  not a vmap: DSA picks its op family with `lax.switch`, which under vmap would run (and keep
  for the backward pass) every family for every step."""
  xs = jax.lax.map(lambda args: augment(args[0], x[args[1]]), (keys, idx))
  return xs, y[idx]


def default_loop(backend: str | None = None) -> str:
  """'python' on CPU, 'scan' elsewhere. XLA:CPU runs convolutions inside a while-loop body far
  slower than outside (jax issue #12868): measured on this 2-core CPU for N = 50 steps of a
  width-32 ConvNet-3 on 10 images, 7.2 s per iteration as a remat `lax.scan` against 0.81 s as a
  Python-unrolled loop of `jax.checkpoint`-ed steps (the same values; compilation grows with N)."""
  backend = backend or jax.default_backend()
  return 'python' if backend == 'cpu' else 'scan'


def unroll(grad_fn: Callable, theta0: Array, xs: Array, ys: Array, lr: Array,
           remat: bool = True, loop: str = 'scan') -> Array:
  """theta_N of N student SGD steps theta_{i+1} = theta_i - lr * grad_fn(theta_i, xs[i], ys[i]).

  theta0 (P,), xs (N, b, H, W, C), ys (N, b, K) (`inner_batches`), lr (). Differentiable in all
  four (exact reverse mode). remat: each step is a `jax.checkpoint`, so reverse mode stores only
  the N carries theta_i and recomputes one step's activations at a time. loop: 'scan' (a
  `lax.scan` over the steps) or 'python' (the same steps unrolled in the graph; `default_loop`).
  """
  def step(theta, xb, yb):
    return theta - lr * grad_fn(theta, xb, yb)

  if remat:
    step = jax.checkpoint(step)
  if loop == 'python':
    theta = theta0
    for i in range(xs.shape[0]):
      theta = step(theta, xs[i], ys[i])
    return theta
  theta, _ = jax.lax.scan(lambda th, b: (step(th, *b), None), theta0, (xs, ys))
  return theta


def tesla_unroll(grad_fn: Callable, loop: str = 'scan') -> Callable:
  """fn(theta0, xs, ys, lr) -> theta_N (as `unroll`) with TESLA's gradient (module docstring):
  the forward pass keeps theta_0..theta_{N-1} and G = sum_i g_i; the backward pass, for the
  cotangent c of theta_N, is xs_bar[i] = vjp_x(g_i)(-lr c), ys_bar[i] likewise, lr_bar = -<G, c>,
  theta0_bar = c (the terms through d theta_j / d xs[i], j > i, are dropped)."""

  def forward(theta0, xs, ys, lr):
    def body(carry, b):
      theta, g_sum = carry
      g = grad_fn(theta, *b)
      return (theta - lr * g, g_sum + g), theta

    if loop == 'python':
      carry, thetas = (theta0, jnp.zeros_like(theta0)), []
      for i in range(xs.shape[0]):
        carry, th = body(carry, (xs[i], ys[i]))
        thetas.append(th)
      return carry[0], carry[1], jnp.stack(thetas)
    (theta, g_sum), thetas = jax.lax.scan(body, (theta0, jnp.zeros_like(theta0)), (xs, ys))
    return theta, g_sum, thetas

  @jax.custom_vjp
  def fn(theta0, xs, ys, lr):
    return forward(theta0, xs, ys, lr)[0]

  def fwd(theta0, xs, ys, lr):
    theta, g_sum, thetas = forward(theta0, xs, ys, lr)
    return theta, (thetas, g_sum, xs, ys, lr)

  def bwd(res, c):
    thetas, g_sum, xs, ys, lr = res

    def one(theta, xb, yb):
      _, vjp = jax.vjp(lambda xb_, yb_: grad_fn(theta, xb_, yb_), xb, yb)
      return vjp(-lr * c)

    if loop == 'python':
      parts = [one(thetas[i], xs[i], ys[i]) for i in range(xs.shape[0])]
      xs_bar = jnp.stack([p[0] for p in parts])
      ys_bar = jnp.stack([p[1] for p in parts])
    else:
      _, (xs_bar, ys_bar) = jax.lax.scan(lambda _, b: (None, one(*b)), None, (thetas, xs, ys))
    lr_bar = -jnp.vdot(g_sum, c).astype(jnp.result_type(lr))
    return c, xs_bar, ys_bar, lr_bar

  fn.defvjp(fwd, bwd)
  return fn


# -- the matching loss and PAD's parameter masks ---------------------------------------------------
def normalized_distance(theta: Array, start: Array, target: Array,
                        mask: Array | None = None) -> Array:
  """MTT's ||theta - target||^2 / ||start - target||^2 over the entries where mask (P,) is 1
  (all without a mask). theta, start, target (P,)."""
  num = jnp.square(theta - target)
  den = jnp.square(start - target)
  if mask is not None:
    num, den = num * mask, den * mask
  return jnp.sum(num) / jnp.sum(den)


def loss_ranked_mask(errors: Array, fraction: float) -> Array:
  """PAD's loss-based selection (its ablation; the official PAD.py at HEAD): 0 on the `fraction`
  of entries with the smallest error (theta_N - theta*)^2, 1 elsewhere. errors (P,) -> (P,),
  not differentiated (a selection)."""
  errors = jax.lax.stop_gradient(errors)
  cut = int(fraction * errors.shape[0])
  if cut == 0:
    return jnp.ones_like(errors)
  order = jnp.argsort(errors)
  return jnp.ones_like(errors).at[order[:cut]].set(0.0)


def parameter_mask(template: PyTree, mode: str, fraction: float,
                   order: Sequence[tuple[str, ...]] = ()) -> Array | None:
  """PAD's FIEM mask as a flat (P,) vector in `ravel_pytree(template)` order, or None (match
  everything; also 'loss', whose mask depends on the errors and is built per step).

  'depth'      drop the first `fraction` of the parameters flattened shallow to deep in PyTorch's
               order (conv kernels OIHW, the cut falling mid-tensor), as PAD's code
               (`ddjax.distill.matching.depth_mask`, the same mask DC's layer_fraction uses);
  'per_layer'  the same cut rounded down to a tensor boundary (whole tensors dropped): ddjax's
               variant, not the official code.
  order: the leaves' paths shallow to deep (`ddjax.models.parameter_order` of the buffer's
  network; needed by 'depth' / 'per_layer'): `template`'s own key order is not the network's (a
  buffer's template comes back sorted by name, the norms after the head).
  """
  from ddjax.distill.matching import depth_mask
  if mode in ('none', 'loss') or fraction <= 0:
    return None
  if not order:
    raise ValueError(f"fiem mask {mode!r} needs the network's parameter order "
                     '(ddjax.models.parameter_order).')
  tree = depth_mask(in_module_order(template, order), fraction, per_layer=(mode == 'per_layer'))
  flat, _ = ravel_pytree(tree)
  return flat


# -- the distiller ---------------------------------------------------------------------------------
class TrajectoryMatching(Distiller):
  """MTT's meta-loss on a buffer of expert trajectories (module docstring).

  The real "batch" of a step is a pair of expert snapshots {'start': (P,), 'target': (P,),
  'epoch': ()} drawn on the host by the `batch_sampler` hook (so a resumed run replays the same
  pairs);
  the synthetic set is {'x': (n, H, W, C), 'y': (n, K), 'syn_lr': ()}.

  Args:
    buffer: an expert buffer (`ddjax.distill.experts.ExpertBuffer`).
    syn_steps: N. expert_epochs: M. min_start / max_start: the start epoch is drawn from
      [min_start, max_start) (numpy's randint, as the official code).
    batch_syn: synthetic images per inner step (0: all).
    dsa_strategy: DSA ops of the inner loop ('' off).
    soft_labels: the student learns softmax(y) (DATM) instead of argmax(y) (MTT).
    gradient: 'exact' or 'tesla'. remat: recompute each step on the way back ('exact').
    mask_mode / mask_fraction: PAD's FIEM ('none' | 'depth' | 'per_layer' | 'loss').
    loop: 'scan' or 'python' ('' = `default_loop()` for the backend).
  """

  record = PER_SET

  def __init__(self, buffer, syn_steps: int, expert_epochs: int, max_start: int,
               min_start: int = 0, batch_syn: int = 0, dsa_strategy: str = '',
               soft_labels: bool = False, gradient: str = 'exact', remat: bool = True,
               mask_mode: str = 'none', mask_fraction: float = 0.0, loop: str = ''):
    from ddjax.augment.dsa import dsa
    if gradient not in GRADIENTS:
      raise ValueError(f'trajectory.gradient={gradient!r}: choose one of {GRADIENTS}.')
    if mask_mode not in MASKS:
      raise ValueError(f'fiem mask {mask_mode!r}: choose one of {MASKS}.')
    self.buffer = buffer
    self.model = buffer.model
    self.syn_steps = int(syn_steps)
    self.expert_epochs = int(expert_epochs)
    self.min_start, self.max_start = int(min_start), int(max_start)
    self.batch_syn = int(batch_syn)
    self.soft_labels = soft_labels
    self.gradient = gradient
    self.mask_mode, self.mask_fraction = mask_mode, float(mask_fraction)
    order = ()
    if mask_mode in ('depth', 'per_layer') and mask_fraction > 0:
      order = parameter_order(self.model, buffer.record['image_shape'])
    self.mask = parameter_mask(buffer.template, mask_mode, mask_fraction, order)
    if dsa_strategy:
      self.augment = lambda key, x: dsa(key, x, dsa_strategy)
    else:
      self.augment = lambda key, x: x
    self.grad_fn = make_student_grad(self.model, buffer.unravel, soft_labels)
    loop = loop or default_loop()
    if gradient == 'tesla':
      self._unroll = tesla_unroll(self.grad_fn, loop)
    else:
      self._unroll = lambda *a: unroll(self.grad_fn, *a, remat=remat, loop=loop)

  @property
  def hooks(self) -> RunHooks:
    """The run's pieces of trajectory matching: expert-snapshot batches, the learned step size
    and start epoch as metrics, the step-size check."""
    return RunHooks(batch_sampler=self.batch_sampler, extra_metrics=self.extra_metrics,
                    problem=self.problem)

  # -- sampling expert snapshots on the host -------------------------------------------------------
  def start_window(self, iteration: int) -> tuple[int, int]:
    """[low, high) of the start epoch at `iteration` (MTT: fixed; DATM overrides)."""
    del iteration
    return self.min_start, self.max_start

  def batch_sampler(self, seed: int) -> Callable[[int], dict]:
    """sampler(step) -> {'start', 'target': (P,) float32, 'epoch': () int32}: expert and start
    epoch drawn by a numpy generator seeded with (seed, step), then only those two snapshots
    read from the buffer."""
    def sample(step: int) -> dict:
      rng = np.random.default_rng([seed, 0x7a1, step])
      expert = int(rng.integers(self.buffer.num_experts))
      low, high = self.start_window(step)
      start = int(rng.integers(low, max(high, low + 1)))
      return {'start': self.buffer.snapshot(expert, start),
              'target': self.buffer.snapshot(expert, start + self.expert_epochs),
              'epoch': np.asarray(start, np.int32)}
    return sample

  # -- the meta-loss -------------------------------------------------------------------------------
  def student_final(self, syn: PyTree, start: Array, key: Array) -> Array:
    """theta_N from `start` (P,) on the synthetic set (differentiable in syn)."""
    n = syn['x'].shape[0]
    batch = self.batch_syn or n
    k_idx, k_aug = jax.random.split(key)
    idx = minibatch_indices(k_idx, n, batch, self.syn_steps)
    keys = jax.random.split(k_aug, self.syn_steps)
    xs, ys = inner_batches(syn['x'], syn['y'], idx, keys, self.augment)
    return self._unroll(start, xs, ys, syn['syn_lr'])

  def matching_loss(self, theta: Array, start: Array, target: Array) -> Array:
    mask = self.mask
    if self.mask_mode == 'loss' and self.mask_fraction > 0:
      mask = loss_ranked_mask(jnp.square(theta - target), self.mask_fraction)
    return normalized_distance(theta, start, target, mask)

  def per_class(self, syn: PyTree, state: Any, batch: dict[str, Array], key: Array) -> PerClass:
    """The matching loss of one expert pair as a one-row record (`record = PER_SET`)."""
    del state
    start = jax.lax.stop_gradient(batch['start'])
    target = jax.lax.stop_gradient(batch['target'])
    theta = self.student_final(syn, start, key)
    return PerClass(loss=self.matching_loss(theta, start, target)[None])

  def extra_metrics(self, syn, state, batch) -> dict:
    del state
    return {'syn_lr': syn['syn_lr'], 'start_epoch': batch['epoch'].astype(jnp.float32)}

  def problem(self, metrics: dict) -> str | None:
    """A host-side check of one step's metrics: a step size <= 0 (MTT issue #16)."""
    lr = metrics.get('syn_lr')
    if lr is not None and not lr > 0:
      return (f'the learned step size syn_lr = {lr:.4g} is no longer positive (MTT issue #16); '
              'lower trajectory.lr_lr or distill.lr')
    return None


# -- configuration ---------------------------------------------------------------------------------
def trajectory_block() -> ml_collections.ConfigDict:
  """cfg.trajectory: the knobs MTT, DATM and PAD share (MTT's argparse names in comments)."""
  b = ml_collections.ConfigDict()
  b.syn_steps = 20          # N (syn_steps)
  b.expert_epochs = 2       # M (expert_epochs)
  b.min_start_epoch = 0     # T^- (DATM's min_start_epoch)
  b.max_start_epoch = 2     # T^+ (max_start_epoch): start in [T^-, T^+)
  b.lr_teacher = 0.01       # initial learned step size (lr_teacher)
  b.lr_lr = 1e-5            # its learning rate (lr_lr), SGD momentum as distill.momentum
  b.batch_syn = 0           # synthetic images per inner step (0: all, batch_syn=None)
  b.gradient = 'exact'      # exact (remat scan) | tesla (TESLA's custom_vjp approximation)
  b.remat = True            # exact: recompute each inner step on the way back
  b.loop = 'auto'           # auto (python on CPU, scan elsewhere) | scan | python
  return b


def validate_trajectory(cfg: ml_collections.ConfigDict) -> list[str]:
  """The family's shared rules (MTT, DATM, PAD)."""
  from ddjax.infra.config_checks import choice_errors, int_errors
  t = cfg.trajectory
  errors = choice_errors(cfg, 'trajectory.gradient', GRADIENTS)
  errors += choice_errors(cfg, 'trajectory.loop', ('auto', 'scan', 'python'))
  for k, low in (('syn_steps', 1), ('expert_epochs', 1), ('min_start_epoch', 0),
                 ('max_start_epoch', 1), ('batch_syn', 0)):
    errors += int_errors(cfg, f'trajectory.{k}', low)
  if errors:
    return errors
  if t.min_start_epoch >= t.max_start_epoch:
    errors.append(f'trajectory.min_start_epoch={t.min_start_epoch} must be below '
                  f'max_start_epoch={t.max_start_epoch} (start epochs are drawn from [min, max)).')
  need = t.max_start_epoch - 1 + t.expert_epochs
  if need > cfg.expert.epochs:
    errors.append(f'trajectory.max_start_epoch={t.max_start_epoch} with expert_epochs='
                  f'{t.expert_epochs} reads expert epoch {need}, but the buffer trains '
                  f'expert.epochs={cfg.expert.epochs}; raise expert.epochs to {need} or lower '
                  'max_start_epoch (MTT issue #4).')
  if cfg.model.norm == 'batch':
    errors.append("trajectory matching unrolls a student with flat parameters and no running "
                  "statistics; use model.norm='instance' (MTT's) or 'none'.")
  if cfg.model.arch != 'convnet':
    errors.append(f"model.arch={cfg.model.arch!r}: the expert buffers are ConvNets here.")
  if t.lr_teacher <= 0:
    errors.append(f'trajectory.lr_teacher={t.lr_teacher} must be > 0 (the initial step size).')
  return errors


def configure_family(cfg: ml_collections.ConfigDict) -> None:
  """What MTT, DATM and PAD share: ConvNet-3 with instance norm for experts, students and
  evaluation; DSA; SGD on the images with momentum 0.5, constant rates; hard one-hot labels;
  the 'tm' evaluation protocol (5 networks)."""
  cfg.model.update(arch='convnet', depth=3, width=128, norm='instance', pooling='avg',
                   double_width=False, norm_placement='dc')
  cfg.eval.model.update(arch='convnet', depth=3, width=128, norm='instance', pooling='avg',
                        double_width=False, norm_placement='dc')
  cfg.dsa.strategy = 'auto'
  cfg.distill.update(optimizer='sgd', momentum=0.5, schedule='constant', init='real',
                     label_init='one_hot', learn_label=False, batch_size=1)
  cfg.expert.dsa = True
  cfg.eval.krr = False
  cfg.eval.num_models = 5


def cpu_widths(cfg: ml_collections.ConfigDict, width: int) -> None:
  """The CPU default's network width (experts, students and evaluation alike)."""
  cfg.model.width = width
  cfg.eval.model.width = width


def extra_params(cfg: ml_collections.ConfigDict) -> dict:
  """The learned step size alpha: lr_teacher at rate lr_lr."""
  return {'syn_lr': (jnp.asarray(cfg.trajectory.lr_teacher, jnp.float32), cfg.trajectory.lr_lr)}


def plan(cfg: ml_collections.ConfigDict, facts) -> dict:
  """The family's plan: the learned step size as an extra learned entry of the set."""
  del facts
  return {'extra_params': extra_params(cfg)}


def expert_block() -> ml_collections.ConfigDict:
  """cfg.expert: the expert trajectories trajectory matching learns from (MTT, DATM, PAD;
  `ddjax.distill.experts`). dir '' = runs/buffers/<dataset>_<short hash of the record>, shared
  by runs."""
  b = ml_collections.ConfigDict()
  b.dir = ''
  b.num_experts = 5          # MTT: 100
  b.epochs = 8               # MTT: 50; DATM / PAD (FTD experts): 100
  b.lr = 0.01                # SGD, constant (MTT buffer.py)
  b.momentum = 0.0           # MTT: 0
  b.weight_decay = 0.0       # coupled L2 as PyTorch's SGD (MTT: 0)
  b.batch_size = 256         # shuffled every epoch (MTT: 256)
  b.dsa = True               # DSA while training (dsa_strategy_for: no flip on digits)
  b.parallel = 0             # experts stepped at once (vmap; CPU: unrolled); 0 = all
                             # (CPU: 1, see ddjax.distill.experts.default_mode)
  b.seed = 0                 # the experts' own seed (runs with other seeds share a buffer)
  b.gsam = False             # FTD's GSAM experts (DATM / PAD): rho, alpha below
  b.gsam_rho = 0.01          # FTD: rho_max = rho_min = 0.01
  b.gsam_alpha = 0.3         # FTD: 0.3
  b.gsam_adaptive = True     # |w|-scaled (ASAM) perturbation: FTD / PAD code's default
  b.fiex = False             # PAD's FIEX data scheduler (ddjax.scoring.fiex)
  b.fiex_init_ratio = 0.75   # PAD: IR 0.75 (easiest fraction of each class at epoch 0)
  b.fiex_add_end_epoch = 20  # PAD: AEE 20 (CIFAR-10), 40 (CIFAR-100, Tiny)
  b.fiex_remove_epochs = (40, 60)      # PAD README: rm_epoch_first / second
  b.fiex_remove_ratios = (0.1, 0.2)    # PAD README; the paper text says 10 %
  b.fiex_score_models = 4    # K early models whose EL2N is averaged (ddjax's choice)
  b.fiex_score_epochs = 2    # epochs each scoring model trains (ddjax's choice)
  return b


def validate_expert(cfg: ml_collections.ConfigDict) -> list[str]:
  """The expert block's sizes, and FIEX's two removal stages: epochs (e1, e2) with e1 <= e2,
  ratios (r1, r2) in [0, 1)."""
  from ddjax.infra.config_checks import fraction_errors, get, int_errors
  errors = []
  for key in ('num_experts', 'epochs', 'batch_size', 'fiex_score_models', 'fiex_score_epochs'):
    errors += int_errors(cfg, f'expert.{key}', 1)
  errors += int_errors(cfg, 'expert.parallel', 0, ' (0: all experts at once)')
  errors += int_errors(cfg, 'expert.fiex_add_end_epoch', 0)
  errors += fraction_errors(cfg, 'expert.fiex_init_ratio', closed=True)
  epochs, ratios = get(cfg, 'expert.fiex_remove_epochs'), get(cfg, 'expert.fiex_remove_ratios')
  ok = lambda v, t: (isinstance(v, (tuple, list)) and len(v) == 2
                     and all(isinstance(a, t) and not isinstance(a, bool) and a >= 0 for a in v))
  if not ok(epochs, int) or epochs[0] > epochs[1]:
    errors.append(f'expert.fiex_remove_epochs must be two integers e1 <= e2 (PAD: (40, 60)), got '
                  f'{epochs!r}.')
  if not ok(ratios, (int, float)) or max(ratios) >= 1:
    errors.append(f'expert.fiex_remove_ratios must be two fractions in [0, 1) (PAD: (0.1, 0.2)), '
                  f'got {ratios!r}.')
  return errors


# The trajectory family's shared blocks (MTT, DATM, PAD declare both).
TRAJECTORY_BLOCKS = (registry.ConfigBlock('trajectory', trajectory_block),
                     registry.ConfigBlock('expert', expert_block, validate=validate_expert))


def build_kwargs(cfg: ml_collections.ConfigDict) -> dict:
  from ddjax.augment.dsa import strategy_from_config
  t = cfg.trajectory
  return dict(syn_steps=t.syn_steps, expert_epochs=t.expert_epochs, max_start=t.max_start_epoch,
              min_start=t.min_start_epoch, batch_syn=t.batch_syn,
              dsa_strategy=strategy_from_config(cfg), gradient=t.gradient, remat=t.remat,
              loop='' if t.loop == 'auto' else t.loop)


def get_buffer(cfg: ml_collections.ConfigDict, data):
  from ddjax.distill import experts
  return experts.get_buffer(cfg, data, progress=lambda line: print('[experts] ' + line,
                                                                    flush=True))


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """CPU default (Fashion-MNIST): width-32 networks, a buffer of 5 experts x 6 epochs,
  the faithful IPC-1 schedule otherwise (N 50, M 2, T+ 2, lr_img 1000, lr_lr 1e-7,
  lr_teacher 0.01) for distill.steps iterations. 'faithful': reference section 7 (width 128,
  100 experts x 50 epochs, 5000 iterations). 'paper' / 'cifar10' / 'cifar100': MTT's CIFAR IPC-1
  rows with MTT's ZCA ('zca_mtt': kornia's, eps 0.1 on raw pixels;
  Fashion-MNIST presets keep per-channel standardisation, as MTT's code for 1-channel data)."""
  configure_family(cfg)
  cfg.trajectory.update(syn_steps=50, expert_epochs=2, max_start_epoch=2, lr_teacher=0.01,
                        lr_lr=1e-7)
  cfg.distill.update(lr=1000.0, steps=5000)
  cfg.eval.batch_size = 256
  cfg.expert.update(num_experts=100, epochs=50)
  if preset in ('', 'cpu'):
    cpu_widths(cfg, 32)
    cfg.expert.update(num_experts=5, epochs=6)
    cfg.distill.steps = 500
    cfg.checkpoint.every, cfg.log.every = 100, 10
  elif preset in ('paper', 'cifar10'):
    cfg.data.name = 'cifar10'
    cfg.data.update(preprocessing='zca_mtt', zca_reg=0.1)   # MTT's: kornia, eps 0.1, raw pixels
    cfg.distill.lr = 100.0
  elif preset == 'cifar100':      # MTT's CIFAR-100 IPC-1 row (ZCA)
    cfg.data.update(name='cifar100', preprocessing='zca_mtt', zca_reg=0.1)
    cfg.trajectory.update(syn_steps=20, expert_epochs=3, max_start_epoch=20, lr_lr=1e-5)


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  return validate_trajectory(cfg)


def _build(cfg: ml_collections.ConfigDict, data) -> TrajectoryMatching:
  return TrajectoryMatching(get_buffer(cfg, data), soft_labels=False, **build_kwargs(cfg))


registry.register(registry.Method(
    name='mtt', build=_build, distiller_class=TrajectoryMatching, blocks=TRAJECTORY_BLOCKS,
    configure=_configure, validate=_validate,
    presets=registry.PRESETS + ('faithful', 'cifar10', 'cifar100'), plan=plan, protocol='tm', description='MTT: matching training trajectories of experts'))
