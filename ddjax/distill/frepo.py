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
import ml_collections
import optax

from ddjax import registry
from ddjax.distill.base import Distiller
from ddjax.kernels.krr import krr_solve
from ddjax.models.training import (carry_variables, fresh_carry, make_train_step,
                                   merge_variables, mse_loss, split_variables)
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
  label_margin: bool = flax.struct.field(pytree_node=False, default=True)      # lb_margin_th


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


class FRePo(Distiller):
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
    """A fresh pool model: (variables, online optimizer state), exactly `model.init(key, ...)`."""
    params, batch_stats, opt_state = fresh_carry(self.model, key, self.input_shape,
                                                 self.online_opt, fast_rng=False)
    return merge_variables(params, batch_stats), opt_state

  def features(self, variables: PyTree, x: Array) -> Array:
    """Penultimate features f_theta(x), (N, H, W, C) -> (N, D).

    In inference mode, as FRePo (`train=False`): a batch-norm model normalises the real and the
    synthetic images alike with the running statistics its online training keeps, and no
    gradient flows through the statistics of a 10-image batch.
    """
    _, feats = self.model.apply(variables, x, train=False)
    return feats

  def online_step(self, variables: PyTree, opt_state: PyTree, syn: PyTree):
    """One optimizer step of one pool model on the (stop-gradient) synthetic set: MSE (mean over
    the batch of 1/2 sum_k) against its labels, the shared classifier step of
    `ddjax.models.training` (batch norm in train mode, its statistics updated)."""
    x, y = flip_support(jax.lax.stop_gradient(syn), self.cfg.flip)
    step = make_train_step(self.model, self.online_opt, mse_loss)
    carry, _ = step((*split_variables(variables), opt_state), x, y)
    return carry_variables(carry), carry[2]

  # --- the distiller interface ----------------------------------------------------------------
  def init(self, syn: PyTree, key: Array) -> PoolState:
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
    """FRePo's label-margin term on the learned labels: -mean_i min(top1_i - top2_i, 1 / K), with
    top1_i >= top2_i the two largest entries of label row i (whatever their classes). Rewards a
    gap between a label's two largest entries up to 1 / K, nothing beyond (0 when off).
    syn['y']: (n, K); classes unused (the term is class-agnostic)."""
    del classes
    if not self.cfg.label_margin:
      return jnp.zeros((), jnp.float32)
    y = syn['y']
    top2 = jax.lax.top_k(y, 2)[0]
    return -jnp.mean(jnp.minimum(top2[:, 0] - top2[:, 1], 1.0 / y.shape[1]))

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


# -- registration ---------------------------------------------------------------------------------
def config_block():
  """cfg.frepo: the pool and the KRR regulariser (FRePo's values in comments)."""
  b = ml_collections.ConfigDict()
  b.num_models = 5            # FRePo: 10
  b.max_online_updates = 100
  b.online_lr = 1e-3          # FRePo: 3e-4 (Adam)
  b.reg = 1e-6                # lambda = reg * trace(K_SS) / n
  b.flip = 'auto'             # auto: on except for 1-channel (digit / clothing) datasets
  b.label_margin = True       # FRePo's label-margin term (always on in FRePo)
  return b


def apply_paper_preset(cfg) -> None:
  """FRePo's official distillation and evaluation settings (GPU scale)."""
  cfg.model.width = 128
  cfg.model.double_width = True
  cfg.model.norm = 'batch'
  cfg.model.norm_placement = 'frepo'     # no norm in block 0, norm before conv after it
  cfg.model.bn_momentum = 0.1            # FRePo's flax BatchNorm
  cfg.distill.steps = 500_000
  cfg.distill.end_fraction = 0.1         # cosine to 0.1 x lr
  cfg.distill.batch_size = 1024
  cfg.distill.optimizer = 'lamb'
  cfg.distill.lr = 3e-4
  cfg.distill.label_lr = 3e-4
  cfg.frepo.num_models = 10
  cfg.frepo.max_online_updates = 100
  cfg.frepo.online_lr = 3e-4
  cfg.eval.model.width = 128
  cfg.eval.model.double_width = True
  cfg.eval.model.norm = 'none'   # FRePo evaluates its batch-norm ConvNet without norm
  cfg.checkpoint.every = 10_000
  cfg.log.every = 1000


# The CPU default's number of steps, by IPC (used when `distill.steps = 0`; `cpu_steps`): the
# budget at which FRePo's evaluation stops improving within about an hour on a 2-core CPU. More
# images per class need more steps (figures: benchmarks/README.md, FRePo + ISA).
CPU_STEPS = 5000
CPU_STEPS_IPC10 = 10_000
# The images' Adam learning rate of the CPU default, by IPC (used when `distill.lr = 0`; `cpu_lr`):
# the best rate of the CPU search at each IPC (benchmarks/results/frepo_search.md).
CPU_LR = 1e-2
CPU_LR_IPC10 = 2e-2
LARGE_IPC = 10       # from this IPC on, the CPU default uses the *_IPC10 budget and lr


def cpu_steps(ipc: int) -> int:
  """The CPU default's number of steps for `ipc` images per class: 5000 below IPC 10, 10000 from
  IPC 10 on (more images need more steps; 10000 fit the 60-minute budget at IPC 10)."""
  return CPU_STEPS if ipc < LARGE_IPC else CPU_STEPS_IPC10


def cpu_lr(ipc: int) -> float:
  """The CPU default's image learning rate for `ipc` images per class: 1e-2 below IPC 10, 2e-2
  from IPC 10 on."""
  return CPU_LR if ipc < LARGE_IPC else CPU_LR_IPC10


def _by_ipc(value, cpu_default):
  """`value` as given, or (when it is 0) the CPU default for distill.ipc: `cpu_default(ipc)`."""
  return lambda cfg: value(cfg) or cpu_default(int(cfg.distill.ipc))


_steps = _by_ipc(lambda cfg: int(cfg.distill.steps), cpu_steps)
_lr = _by_ipc(lambda cfg: float(cfg.distill.lr), cpu_lr)


def _configure(cfg, preset: str) -> None:
  if preset == 'paper':
    apply_paper_preset(cfg)
  elif not preset:
    cfg.distill.steps = 0          # 0: `cpu_steps(distill.ipc)`; any other value is used as given
    cfg.distill.lr = 0.0           # 0: `cpu_lr(distill.ipc)`; any other value is used as given


def flip_enabled(flip, channels: int) -> bool:
  """frepo.flip resolved: 'auto' mirrors prototypes except on 1-channel digit / clothing data."""
  return channels != 1 if flip == 'auto' else bool(flip)


def _validate(cfg) -> list[str]:
  from ddjax.infra.config_checks import choice_errors, int_errors
  return (int_errors(cfg, 'frepo.num_models', 1) + int_errors(cfg, 'frepo.max_online_updates', 1)
          + choice_errors(cfg, 'frepo.flip', ('auto', True, False)))


def _build(cfg, data) -> FRePo:
  from ddjax.models import from_config
  f = cfg.frepo
  fcfg = FRePoConfig(num_models=f.num_models, max_online_updates=f.max_online_updates,
                     online_lr=f.online_lr, reg=f.reg,
                     flip=flip_enabled(f.flip, data.image_shape[-1]),
                     label_margin=f.label_margin)
  return FRePo(from_config(cfg.model, data.num_classes), fcfg, data.image_shape)


registry.register(registry.Method(
    name='frepo', build=_build, distiller_class=FRePo,
    blocks=(registry.ConfigBlock('frepo', config_block),),
    configure=_configure, validate=_validate,
    plan=lambda cfg, facts: {'steps': _steps(cfg), 'lr': _lr(cfg), 'krr_reg': cfg.frepo.reg},
    protocol='frepo',
    description='FRePo: KRR on a pool of online-trained networks\' features'))
