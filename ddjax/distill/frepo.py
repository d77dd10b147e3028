"""FRePo: neural feature regression with a pool of online models (Zhou et al., 2022).

The meta-loss (ISA Eq. 4) regresses the real batch on the synthetic set with the conjugate kernel of
one model's penultimate features:

    F_S = f_theta(X_S), F_T = f_theta(X_T),  w = (F_S F_S^T + lambda I)^-1 Y_S,  P_T = F_T F_S^T w,
    loss_i = 1/2 ||y_i - P_T[i]||^2,   lambda = reg * trace(F_S F_S^T) / n_s.

The "inner loop" is a pool of `num_models` networks. At every outer step one model is drawn
uniformly from the pool, gives the features above, and afterwards takes one optimizer step on the
current synthetic set (MSE against the synthetic labels). A model that has taken `max_online_updates`
steps is re-initialised. The pool starts with staggered ages: model i is first trained for
i * max_online_updates // num_models steps on the initial synthetic set, so resets are spread over
time instead of happening all at once (FRePo's intent of a pool of models at different stages).

Everything here is a pure function of explicit keys. The pool is one stacked pytree (leading axis =
model) so that selecting, updating and resetting a model are gathers and `jnp.where`s inside jit.

Synthetic set: `{'x': (n, H, W, C), 'y': (n, K)}`, labels real-valued (learned when enabled).
Flip augmentation of prototypes (FRePo, for datasets where flipping is label-preserving): the
prototypes and their horizontal mirrors, with the same labels, form the support set.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from ddjax.kernels.krr import krr_solve
from ddjax.transforms.base import PerSample, per_sample_mse

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class FRePoConfig:
  """Static settings (FRePo's defaults in parentheses; the CPU preset changes some)."""
  num_models: int = flax.struct.field(pytree_node=False, default=10)           # num_nn_state
  max_online_updates: int = flax.struct.field(pytree_node=False, default=100)
  online_lr: float = flax.struct.field(pytree_node=False, default=3e-4)        # Adam
  reg: float = flax.struct.field(pytree_node=False, default=1e-6)              # lambda / (tr/n)
  flip: bool = flax.struct.field(pytree_node=False, default=False)             # mirror prototypes
  batch_stats_features: bool = flax.struct.field(pytree_node=False, default=True)
  label_margin: float = flax.struct.field(pytree_node=False, default=0.0)      # 0 disables


@flax.struct.dataclass
class PoolState:
  """The model pool, stacked along a leading axis of size num_models.

  variables: flax variables of every model (params, and batch_stats when the model has them).
  opt_state: the online optimizer state of every model.
  age: (num_models,) int32, online updates since the model's last (re)initialisation.
  current: () int32, the model the next outer step uses.
  resets: () int32, how many re-initialisations happened (for monitoring).
  """
  variables: PyTree
  opt_state: PyTree
  age: Array
  current: Array
  resets: Array


def _index(tree: PyTree, i: Array) -> PyTree:
  return jax.tree_util.tree_map(lambda a: a[i], tree)


def _set_index(tree: PyTree, i: Array, value: PyTree) -> PyTree:
  return jax.tree_util.tree_map(lambda a, v: a.at[i].set(v), tree, value)


def flip_support(syn: PyTree, flip: bool) -> tuple[Array, Array]:
  """Support set (x, y): the prototypes, plus their horizontal mirrors when `flip` (FRePo)."""
  x, y = syn['x'], syn['y']
  if flip:
    x = jnp.concatenate([x, x[:, :, ::-1, :]], axis=0)
    y = jnp.concatenate([y, y], axis=0)
  return x, y


class FRePo:
  """FRePo as a bundle of pure functions over (synthetic set, PoolState).

  Args:
    model: a flax module whose `__call__(x, train)` returns `(logits, features)`.
    cfg: FRePoConfig.
    input_shape: (H, W, C) of one image.
  """

  def __init__(self, model: nn.Module, cfg: FRePoConfig, input_shape: tuple[int, ...]):
    self.model = model
    self.cfg = cfg
    self.input_shape = tuple(input_shape)
    self.online_opt = optax.adam(cfg.online_lr)

  # --- models -------------------------------------------------------------------------------
  def _init_one(self, key: Array) -> tuple[PyTree, PyTree]:
    variables = self.model.init(key, jnp.zeros((1,) + self.input_shape, jnp.float32), train=False)
    variables = dict(variables)
    return variables, self.online_opt.init(variables['params'])

  def features(self, variables: PyTree, x: Array) -> Array:
    """Penultimate features f_theta(x), (N, H, W, C) -> (N, D).

    With batch norm the batch's own statistics are used (train mode) and the updated running
    statistics are discarded, so the meta-loss stays a pure function of (x, variables).
    """
    if 'batch_stats' in variables and self.cfg.batch_stats_features:
      (_, feats), _ = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
    else:
      _, feats = self.model.apply(variables, x, train=False)
    return feats

  def online_loss(self, params: PyTree, other: PyTree, x: Array, y: Array):
    """MSE (mean over the batch of 1/2 sum_k) of a pool model on the synthetic set."""
    variables = {'params': params, **other}
    if 'batch_stats' in other:
      (logits, _), new = self.model.apply(variables, x, train=True, mutable=['batch_stats'])
      other = {**other, **new}
    else:
      logits, _ = self.model.apply(variables, x, train=False)
    return jnp.mean(0.5 * jnp.sum(jnp.square(logits - y), axis=-1)), other

  def online_step(self, variables: PyTree, opt_state: PyTree, syn: PyTree):
    """One optimizer step of one pool model on the (stop-gradient) synthetic set."""
    x, y = flip_support(jax.lax.stop_gradient(syn), self.cfg.flip)
    params = variables['params']
    other = {k: v for k, v in variables.items() if k != 'params'}
    (_, other), grads = jax.value_and_grad(self.online_loss, has_aux=True)(params, other, x, y)
    updates, opt_state = self.online_opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {'params': params, **other}, opt_state

  # --- the distiller interface ----------------------------------------------------------------
  def init(self, key: Array, syn: PyTree) -> PoolState:
    """A pool of fresh models with staggered ages (model i pre-trained i*max//num steps)."""
    cfg = self.cfg
    k_init, k_first = jax.random.split(key)
    keys = jax.random.split(k_init, cfg.num_models)
    step = jax.jit(self.online_step)
    members, ages = [], []
    for i in range(cfg.num_models):
      variables, opt_state = self._init_one(keys[i])
      age = (i * cfg.max_online_updates) // cfg.num_models
      for _ in range(age):
        variables, opt_state = step(variables, opt_state, syn)
      members.append((variables, opt_state))
      ages.append(age)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *members)
    return PoolState(
        variables=stacked[0], opt_state=stacked[1], age=jnp.asarray(ages, jnp.int32),
        current=jax.random.randint(k_first, (), 0, cfg.num_models, dtype=jnp.int32),
        resets=jnp.zeros((), jnp.int32))

  def per_sample(self, syn: PyTree, state: PoolState, batch: dict[str, Array],
                 key: Array) -> PerSample:
    """Per-example KRR meta-loss of the real batch (ISA Eq. 4), differentiable in `syn`.

    batch: {'x': (B, H, W, C), 'y': (B, K)} with real-valued targets (centred one-hot).
    Returns PerSample(pred (B, K), target (B, K), loss (B,)).
    """
    del key
    variables = _index(state.variables, state.current)
    x_s, y_s = flip_support(syn, self.cfg.flip)
    f_s = self.features(variables, x_s)
    f_t = jax.lax.stop_gradient(self.features(variables, batch['x']))
    k_ss = f_s @ f_s.T
    k_ts = f_t @ f_s.T
    pred = k_ts @ krr_solve(k_ss, y_s, self.cfg.reg)
    return per_sample_mse(pred, batch['y'])

  def regularizer(self, syn: PyTree, classes: Array) -> Array:
    """Label-margin term on learned labels: mean relu(m - (y[c] - max_{k != c} y[k])).

    classes: (n,) the class each prototype was initialised as. Keeps every learned label's own
    class ahead of the others by at least `label_margin` (0 disables the term).
    """
    if self.cfg.label_margin <= 0:
      return jnp.zeros((), jnp.float32)
    y = syn['y']
    own = jnp.take_along_axis(y, classes[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(classes, y.shape[1], dtype=bool), -jnp.inf, y).max(axis=1)
    return jnp.mean(jax.nn.relu(self.cfg.label_margin - (own - others)))

  def update(self, syn: PyTree, state: PoolState, key: Array) -> PoolState:
    """FRePo's inner loop: train the model just used one step, reset it if too old, draw the next."""
    cfg = self.cfg
    k_reset, k_next = jax.random.split(key)
    i = state.current
    variables, opt_state = self.online_step(
        _index(state.variables, i), _index(state.opt_state, i), syn)
    age = state.age[i] + 1
    expired = age >= cfg.max_online_updates
    fresh_vars, fresh_opt = self._init_one(k_reset)
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(expired, a, b), new, old)
    variables = pick(fresh_vars, variables)
    opt_state = pick(fresh_opt, opt_state)
    return state.replace(
        variables=_set_index(state.variables, i, variables),
        opt_state=_set_index(state.opt_state, i, opt_state),
        age=state.age.at[i].set(jnp.where(expired, 0, age)),
        current=jax.random.randint(k_next, (), 0, cfg.num_models, dtype=jnp.int32),
        resets=state.resets + expired.astype(jnp.int32))
