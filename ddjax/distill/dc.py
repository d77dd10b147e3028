"""DC / DSA: dataset condensation by gradient matching (Zhao et al., ICLR 2021; Zhao & Bilen,
ICML 2021), as in the official VICO-UoE/DatasetCondensation `main.py`.

One DC iteration, for a freshly initialised network theta:
    for ol in range(outer_loop):
      L(S) = sum_c D(grad_theta l(theta; A(B_c)), grad_theta l(theta; A(S_c)))      (DC Eq. 5)
      S <- S - lr_img * momentum-SGD(grad_S L)
      if ol == outer_loop - 1: break
      theta <- inner_loop epochs of SGD(lr_net) on S (DSA applied when on)

with D the layer-wise distance of `ddjax.distill.matching.gradient_distance`, l the cross-entropy
on hard labels, A the siamese augmentation (same DSA parameters for real and synthetic of a class;
none for plain DC). In ddjax one outer-loop update is one step of the shared step function:
`update` trains theta (or, after the last outer loop, draws a new network), so a DC "iteration" is
`outer_loop` ddjax steps and DC's 1000 iterations are `1000 * outer_loop` steps.

Batch norm is handled as DC does: before matching, the network runs once in train mode on
`bn_size` real images per class to set its statistics, then matches in eval mode.

The real gradient is the batch mean of per-sample gradients, G_c = sum_i g(x_i) with
g(x_i) = grad l(theta; x_i) / |B_c|; `per_sample_gradients` returns them (vmapped) for BiLP's ITE,
`per_class` uses the cheaper batch gradient; `additive_form` is that form per class (what BiLP's
ITE needs). `per_class` reports a `PerClass` record (loss = K * class distance, so its mean is
DC's sum over classes); row transforms (ISA, drop-easiest) do not apply.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import registry
from ddjax.augment.dsa import DSAParams, dsa
from ddjax.distill.base import PER_CLASS, AdditiveForm, Distiller, RunHooks
from ddjax.distill.matching import depth_mask, gradient_distance, group_by_class, matching_defaults
from ddjax.models import per_example_model
from ddjax.models.order import in_module_order, parameter_order
from ddjax.models.training import (carry_variables, cross_entropy, epoch_batches, init_carry,
                                   make_train_step)
from ddjax.scoring.ite import PerSampleFn, Separable
from ddjax.transforms.base import PerClass

Array = jax.Array
PyTree = Any

# DC's (outer_loop, inner_loop) by images per class (utils.get_loops).
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
  """DC's (outer_loop, inner_loop) for an IPC; other IPCs must set them explicitly."""
  if ipc not in DC_LOOPS:
    raise ValueError(f'DC defines its (outer_loop, inner_loop) only for IPC in {sorted(DC_LOOPS)}; '
                     f'for IPC {ipc} set dc.outer_loop and dc.inner_loop.')
  return DC_LOOPS[ipc]


CLASS_BATCHINGS = ('auto', 'unroll', 'vmap')
UNROLL_MAX_CLASSES = 20   # 'auto' unrolls up to this many classes on CPU (compile time ~ K)


def resolve_class_batching(choice: str, num_classes: int, backend: str | None = None) -> str:
  """'auto' -> 'unroll' on CPU with at most UNROLL_MAX_CLASSES classes, else 'vmap' (on
  accelerators grouped convolutions are fast and one batched program compiles faster)."""
  if choice not in CLASS_BATCHINGS:
    raise ValueError(f'dc.class_batching={choice!r} is not one of {CLASS_BATCHINGS}.')
  if choice != 'auto':
    return choice
  backend = backend or jax.default_backend()
  return 'unroll' if backend == 'cpu' and num_classes <= UNROLL_MAX_CLASSES else 'vmap'


@flax.struct.dataclass
class DCState:
  """variables: the current network (params, batch_stats if any). count: () int32, outer-loop
  updates done on this network."""
  variables: PyTree
  count: Array


class DC(Distiller):
  """DC (dsa_strategy='') and DSA as a bundle of pure functions (`Distiller`, per-class record,
  additive over real samples).

  Args:
    model: Flax module returning (logits, features).
    image_shape: (H, W, C). num_classes: K (the synthetic set is class-grouped).
    outer_loop, inner_loop: DC's loop sizes (`dc_loops(ipc)`).
    lr_net: SGD learning rate of the inner network training (DC: 0.01).
    inner_batch: synthetic batch of the inner training (DC's batch_train: 256).
    metric: 'ours' (DC's layer-wise distance), 'mse' or 'cos'.
    layer_fraction: PAD's deep-layer filter, the shallow fraction of parameters left unmatched.
    dsa_strategy / dsa_params: DSA ('' = plain DC, no augmentation).
    bn_size: real images per class that set the batch-norm statistics (DC: 16).
    class_batching: 'unroll' | 'vmap' | 'auto' (unroll up to UNROLL_MAX_CLASSES classes on CPU,
      vmap otherwise): how `class_gradients` computes the K class gradients.
  """

  def __init__(self, model: nn.Module, image_shape: tuple, num_classes: int, outer_loop: int,
               inner_loop: int, lr_net: float = 0.01, inner_batch: int = 256,
               metric: str = 'ours', layer_fraction: float = 0.0, dsa_strategy: str = '',
               dsa_params: DSAParams = DSAParams(), bn_size: int = 16,
               class_batching: str = 'auto'):
    self.model = model
    self.per_example_model = per_example_model(model)   # vmapped single-image gradients
    self.image_shape = tuple(image_shape)
    self.num_classes = num_classes
    self.outer_loop = int(outer_loop)
    self.inner_loop = int(inner_loop)
    self.lr_net = lr_net
    self.inner_batch = inner_batch
    self.metric = metric
    self.layer_fraction = layer_fraction
    self.dsa_strategy = dsa_strategy
    self.dsa_params = dsa_params
    self.bn_size = bn_size
    self.class_batching = resolve_class_batching(class_batching, num_classes)
    self.net_opt = optax.sgd(lr_net)
    gradient_distance({}, {}, metric)          # validates the metric name early

  # -- networks -----------------------------------------------------------------------------------
  def fresh_network(self, key: Array) -> PyTree:
    return dict(self.model.init(key, jnp.zeros((1,) + self.image_shape, jnp.float32),
                                train=False))

  record = PER_CLASS

  def init(self, syn: PyTree, key: Array) -> DCState:
    del syn
    return DCState(variables=self.fresh_network(key), count=jnp.zeros((), jnp.int32))

  def augment(self, key: Array, x: Array, batchmode: bool = True) -> Array:
    """DSA. Matching passes a seed to DiffAugment, which turns on its batch mode (one draw per
    class batch, shared by real and synthetic); the inner training augments per sample."""
    if not self.dsa_strategy:
      return x
    return dsa(key, x, self.dsa_strategy, params=self.dsa_params, batchmode=batchmode)

  def classifier_loss(self, params: PyTree, rest: PyTree, x: Array, labels: Array,
                      weights: Array | None = None, model: nn.Module | None = None) -> Array:
    """Mean cross-entropy over x (B, ...), or its `weights`-weighted mean (B,) when given;
    `model` in place of the distiller's (the same network, e.g. `per_example_model`)."""
    model = self.model if model is None else model
    logits, _ = model.apply({'params': params, **rest}, x, train=False)
    if weights is None:
      return cross_entropy(logits, labels)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)

  def with_bn_stats(self, variables: PyTree, x_real: Array) -> PyTree:
    """DC's batch-norm handling: one train-mode pass over bn_size real images per class;
    x_real (K, B_c, H, W, C) class-grouped."""
    if 'batch_stats' not in variables:
      return variables
    x = x_real[:, :self.bn_size].reshape((-1,) + x_real.shape[2:])
    _, upd = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
    return {**variables, 'batch_stats': upd['batch_stats']}

  # -- the meta-loss ------------------------------------------------------------------------------
  def class_gradients(self, variables: PyTree, x: Array, keys: Array,
                      weights: Array | None = None) -> PyTree:
    """Mean cross-entropy gradient per class: x (K, n, H, W, C) -> pytree with leading axis K.
    weights (K, n): the weighted mean instead (0/1 weights: the mean over the kept samples).

    `class_batching` 'unroll' traces one gradient per class (K copies in the program); 'vmap'
    batches them. Under vmap the per-class weight gradients become grouped convolutions
    (feature_group_count = K) with layout transposes around them, which XLA:CPU runs about 1.5x
    slower than K plain ones (DC step at IPC 1, one thread: 15.6 s vmapped, 10.4 s unrolled;
    benchmarks/results/matching_speed.md); unrolling costs compile time linear in K."""
    params = variables['params']
    rest = {k: v for k, v in variables.items() if k != 'params'}
    if weights is None:
      weights = jnp.ones(x.shape[:2], jnp.float32)

    def one(key, xc, c, wc):
      xc = self.augment(key, xc)
      labels = jnp.full((xc.shape[0],), c, jnp.int32)
      return jax.grad(self.classifier_loss)(params, rest, xc, labels, wc)

    if self.class_batching == 'vmap':
      return jax.vmap(one)(keys, x, jnp.arange(self.num_classes), weights)
    outs = [one(keys[c], x[c], c, weights[c]) for c in range(self.num_classes)]
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  def per_sample_gradients(self, variables: PyTree, x: Array, labels: Array,
                           key: Array, chunk_size: int | None = None) -> PyTree:
    """g(x_i) = grad l(theta; A(x_i)) / B for x (B, H, W, C), integer labels (B,): the additive
    form of the real gradient (their sum over the leading axis is the batch-mean gradient).
    The augmentation is the matching's (one DSA draw from `key` for the whole class batch), so
    the sum equals the real gradient `class_gradients` matches. chunk_size: samples
    differentiated at once (`lax.map` over vmapped chunks; bounded activation memory)."""
    params = variables['params']
    rest = {k: v for k, v in variables.items() if k != 'params'}
    x = self.augment(key, x)
    one = lambda xy: jax.grad(self.classifier_loss)(params, rest, xy[0][None], xy[1][None],
                                                    model=self.per_example_model)
    if chunk_size is None:
      g = jax.vmap(one)((x, labels))
    else:
      g = jax.lax.map(one, (x, labels), batch_size=int(chunk_size))
    return jax.tree_util.tree_map(lambda a: a / x.shape[0], g)

  def distance(self, g_real: PyTree, g_syn: PyTree) -> Array:
    mask = None
    if self.layer_fraction > 0:   # counted in the network's module order, not g_real's key order
      order = parameter_order(self.model, self.image_shape)
      mask = depth_mask(in_module_order(g_real, order), self.layer_fraction)
    return gradient_distance(g_real, g_syn, self.metric, mask)

  def per_class(self, syn: PyTree, state: DCState, batch: dict[str, Array],
                key: Array) -> PerClass:
    """batch {'x': (B, ...), 'y': (B, K)} class-balanced -> one record per class (K rows).

    An optional batch['weight'] (B,) weights the real samples in their class gradient (BiLP's
    adaptive pruning passes its 0/1 keep mask)."""
    keys = jax.random.split(key, self.num_classes)
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, self.num_classes)
    wr = (group_by_class(batch['weight'], labels, self.num_classes) if 'weight' in batch
          else None)
    xs = syn['x'].reshape((self.num_classes, -1) + syn['x'].shape[1:])
    variables = self.with_bn_stats(state.variables, xr)
    g_real = jax.lax.stop_gradient(self.class_gradients(variables, xr, keys, wr))
    g_syn = self.class_gradients(variables, xs, keys)
    per_class = jax.vmap(self.distance)(g_real, g_syn)
    return PerClass(loss=self.num_classes * per_class)

  # -- the additive form (BiLP's ITE) -------------------------------------------------------------
  def class_separable(self, variables: PyTree, x_real: Array, x_syn: Array, label, key: Array,
                      chunk_size: int | None = None) -> Separable:
    """One class of gradient matching as L(G, S) = distance(G, grad_theta l(theta; A(S))), with
    g_i = grad_theta l(theta; A(x_i)) / B and G = sum_i g_i, the real class gradient
    `per_class` matches; A is the class's DSA draw from `key` on both sides (`per_class` uses
    keys = split(key, K), pass keys[c]). L's S-gradient is that of DC's meta-loss (the other
    classes do not depend on S_c; `per_class` scales by K only so that its mean is the class sum).

    G is the batch gradient (one backward pass); the g_i come as a `PerSampleFn` on the augmented
    images, computed chunk by chunk where the ITE uses them (`ddjax.scoring.ite`), never stored
    for the whole batch; `per_sample_gradients` stores them.

    variables: the network (with batch-norm statistics set, `with_bn_stats`); x_real (B, H, W, C)
    real images of class `label`; x_syn (ipc, H, W, C) its synthetic images. chunk_size: unused
    (the ITE chunks the per-sample gradients; kept for the `additive_form` signature).
    """
    del chunk_size
    params = variables['params']
    rest = {k: v for k, v in variables.items() if k != 'params'}
    label = jnp.asarray(label, jnp.int32)
    b = x_real.shape[0]
    x_aug = jax.lax.stop_gradient(self.augment(key, x_real))
    G = jax.lax.stop_gradient(jax.grad(self.classifier_loss)(
        params, rest, x_aug, jnp.full((b,), label, jnp.int32)))

    def g_one(xa):
      gi = jax.grad(self.classifier_loss)(params, rest, xa[None], label[None],
                                          model=self.per_example_model)
      return jax.lax.stop_gradient(jax.tree_util.tree_map(lambda a: a / b, gi))

    def features(S):
      labels = jnp.full((S.shape[0],), label, jnp.int32)
      return jax.grad(self.classifier_loss)(params, rest, self.augment(key, S), labels,
                                            model=self.per_example_model)

    return Separable(self.distance, features, G, x_syn, PerSampleFn(g_one, x_aug))

  def class_additive_form(self, variables: PyTree, x_real: Array, x_syn: Array, keys: Array,
                          chunk_size: int | None = None) -> AdditiveForm:
    """Every class at once: x_real (K, B_c, ...), x_syn (K, ipc, ...), keys (K,)."""
    build = lambda xr, xs, c, k: self.class_separable(variables, xr, xs, c, k, chunk_size)
    return AdditiveForm(build, (x_real, x_syn, jnp.arange(self.num_classes)), keys)

  def additive_form(self, syn: PyTree, state: DCState, batch: dict[str, Array], key: Array,
                    chunk_size: int | None = None) -> AdditiveForm:
    """The additive form of `per_class(syn, state, batch, key)`'s meta-loss, class by class,
    with the same network, batch-norm statistics and DSA draws."""
    labels = jnp.argmax(batch['y'], -1)
    xr = group_by_class(batch['x'], labels, self.num_classes)
    xs = jax.lax.stop_gradient(syn['x']).reshape((self.num_classes, -1) + syn['x'].shape[1:])
    variables = self.with_bn_stats(state.variables, xr)
    return self.class_additive_form(variables, xr, xs, jax.random.split(key, self.num_classes),
                                    chunk_size)

  # -- the inner loop -----------------------------------------------------------------------------
  def train_network(self, variables: PyTree, syn_x: Array, key: Array) -> PyTree:
    """inner_loop epochs of SGD(lr_net) with cross-entropy on the synthetic set (hard labels by
    class-grouped position), batches of at most inner_batch, DSA per batch when on. An epoch has
    ceil(n / inner_batch) equal batches of a fresh permutation (the last one wraps around): the
    shared classifier step and epoch batcher of `ddjax.models.training`."""
    n = syn_x.shape[0]
    labels = jnp.repeat(jnp.arange(self.num_classes), n // self.num_classes)
    syn_x = jax.lax.stop_gradient(syn_x)
    step = make_train_step(self.model, self.net_opt, cross_entropy,
                           functools.partial(self.augment, batchmode=False))

    # Python loops, not lax.scan: XLA:CPU runs convolution gradients inside a loop body (a
    # scan, even one of length 1, which XLA keeps as a while loop) far slower than at the top
    # level of a program (the weight gradient of the 16 x 16 x 128 layer ~190x with ddjax's XLA
    # flags; see ddjax.evaluate.train.default_loop); inner_loop is at most 50 and an epoch has
    # ceil(n / inner_batch) batches, so the unrolled program stays small.
    carry = init_carry(variables, self.net_opt)
    for k in jax.random.split(key, self.inner_loop):
      k_perm, k_aug = jax.random.split(k)
      idx = epoch_batches(k_perm, n, self.inner_batch)
      for i, k_batch in enumerate(jax.random.split(k_aug, idx.shape[0])):
        carry = step(carry, syn_x[idx[i]], labels[idx[i]], k_batch)[0]
    return carry_variables(carry)

  # The inner update: a new network after the last outer loop, else inner_loop epochs on S. The
  # phase is a host-side function of the step counter (the `host_phase` hook), so the run
  # compiles the image update and each branch as separate programs; `update` is the same choice
  # traced.
  TRAIN, FRESH = 'train', 'fresh'

  @property
  def hooks(self) -> RunHooks:
    """The host-side schedule of the inner update (`host_phase`, `update_at`)."""
    return RunHooks(host_phase=self.host_phase, update_at=self.update_at)

  def host_phase(self, step: int) -> str:
    """The inner update after outer step `step` (0-based, counted over the whole run; one DC
    iteration is `outer_loop` steps): FRESH after the iteration's last outer loop, else TRAIN.
    Equal to `update`'s device-side choice, since `count` == step % outer_loop (both start at 0
    and advance once per step)."""
    return self.FRESH if (int(step) + 1) % self.outer_loop == 0 else self.TRAIN

  def update_at(self, phase: str, syn: PyTree, state: DCState, key: Array) -> DCState:
    """`update` in a host-chosen phase: FRESH draws the next iteration's network (count 0),
    TRAIN trains the current one on S (count + 1)."""
    k_new, k_train = jax.random.split(key)
    if phase == self.FRESH:
      return DCState(variables=self.fresh_network(k_new), count=jnp.zeros((), jnp.int32))
    if phase == self.TRAIN:
      return DCState(variables=self.train_network(state.variables, syn['x'], k_train),
                     count=(state.count + 1).astype(jnp.int32))
    raise ValueError(f'unknown DC update phase {phase!r}; allowed: {self.TRAIN}, {self.FRESH}')

  def update(self, syn: PyTree, state: DCState, key: Array) -> DCState:
    """After outer-loop update `count`: train the network on S, or, after the last outer loop,
    draw a new network (the next DC iteration); `update_at`'s branches under a `lax.cond`."""
    last = state.count + 1 >= self.outer_loop
    return jax.lax.cond(last, lambda: self.update_at(self.FRESH, syn, state, key),
                        lambda: self.update_at(self.TRAIN, syn, state, key))


# -- registration ---------------------------------------------------------------------------------
CPU_ITERATIONS, PAPER_ITERATIONS = 200, 1000


def config_block() -> ml_collections.ConfigDict:
  """cfg.dc: gradient matching (DC; DSA = DC + dsa.strategy)."""
  b = ml_collections.ConfigDict()
  b.iterations = 0            # > 0: DC iterations; distill.steps = iterations x outer_loop
  b.outer_loop = 0            # 0 -> DC's rule by IPC (1: 1, 10: 10, 50: 50)
  b.inner_loop = 0            # 0 -> DC's rule by IPC (1: 1, 10: 50, 50: 10)
  b.lr_net = 0.01             # SGD of the network on the synthetic set
  b.inner_batch = 256         # DC's batch_train
  b.metric = 'ours'           # ours (layer-wise) | mse | cos
  b.layer_fraction = 0.0      # PAD: leave the shallowest fraction of parameters unmatched
  b.bn_size = 16              # real images per class setting batch-norm statistics
  b.class_batching = 'auto'   # per-class gradients: unroll | vmap | auto (unroll on CPU, K <= 20)
  return b


def loops_from_config(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """DC's (outer_loop, inner_loop): the config's, else DC's rule by IPC."""
  if cfg.dc.outer_loop and cfg.dc.inner_loop:
    return cfg.dc.outer_loop, cfg.dc.inner_loop
  outer, inner = dc_loops(cfg.distill.ipc)
  return cfg.dc.outer_loop or outer, cfg.dc.inner_loop or inner


def _steps(cfg: ml_collections.ConfigDict) -> int:
  """ddjax steps of a run: dc.iterations x outer_loop, or distill.steps when iterations is 0."""
  if cfg.dc.iterations:
    return cfg.dc.iterations * loops_from_config(cfg)[0]
  return cfg.distill.steps


def _configure(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """DC's main.py: images by SGD lr 0.1 from noise, 200 iterations on CPU, 1000 (`paper`)."""
  matching_defaults(cfg)
  cfg.distill.lr = 0.1
  cfg.distill.init = 'noise'
  cfg.dc.iterations = PAPER_ITERATIONS if preset == 'paper' else CPU_ITERATIONS


def _validate(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import choice_errors, fraction_errors, int_errors
  from ddjax.distill.matching import METRICS
  errors = choice_errors(cfg, 'dc.metric', METRICS) + fraction_errors(cfg, 'dc.layer_fraction')
  errors += choice_errors(cfg, 'dc.class_batching', CLASS_BATCHINGS)
  for key in ('iterations', 'outer_loop', 'inner_loop'):
    errors += int_errors(cfg, f'dc.{key}', 0, " (0: DC's rule by IPC)")
  try:
    loops_from_config(cfg)            # DC's rule by IPC, unless both loops are set
  except ValueError as e:
    errors.append(str(e))
  return errors


def _build(cfg: ml_collections.ConfigDict, data) -> DC:
  from ddjax.augment.dsa import strategy_from_config
  from ddjax.models import from_config
  outer, inner = loops_from_config(cfg)
  d = cfg.dc
  return DC(from_config(cfg.model, data.num_classes), data.image_shape, data.num_classes,
            outer_loop=outer, inner_loop=inner, lr_net=d.lr_net, inner_batch=d.inner_batch,
            metric=d.metric, layer_fraction=d.layer_fraction,
            dsa_strategy=strategy_from_config(cfg), bn_size=d.bn_size,
            class_batching=d.class_batching)


registry.register(registry.Method(
    name='dc', distiller_class=DC, blocks=(registry.ConfigBlock('dc', config_block),),
    build=_build, configure=_configure, validate=_validate,
    plan=lambda cfg, facts: {'steps': _steps(cfg)}, protocol='dc',
    description='DC / DSA: gradient matching (with siamese augmentation when dsa.strategy is on)'))
