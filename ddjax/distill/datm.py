"""DATM: difficulty-aligned trajectory matching (Guo et al., ICLR 2024), on MTT's meta-loss
(`ddjax.distill.mtt`). What it adds (the official distill/DATM.py):

  window   the start epoch is drawn from [T^-, upper(it)) with
               upper(it) = min(T + int((T^+ - T) * it / expansion_end_epoch), T^+)
           when `datm.sequential` (DATM.py:484-491), else upper = T^+ (MTT's rule);
  init     real images that the experts classify correctly ("samples_predicted_correctly",
           DATM.py:185-236): per class, the class's images in a random order, classified by
           expert 0 at `datm.label_epoch` (-1: the last snapshot), the first IPC correct ones
           kept, moving on to the next expert when the class is exhausted;
  labels   learned logits, initialised for each image as the mean logits of the experts (all of
           them, at `datm.label_epoch`) that classify it correctly (DATM.py:270-307); the student
           learns softmax(y) (SoftCrossEntropy, T = 1); labels by SGD with momentum 0.9 at lr_y;
  gate     a step whose loss exceeds `datm.threshold` changes nothing (DATM.py:556-561).

Evaluation: the 'tm' protocol with soft cross-entropy on softmax(y), batch 128 (DATM's configs).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import registry
from ddjax.distill import mtt


def window_upper(iteration: int, min_start: int, current_max: int, max_start: int,
                 expansion_end: int, sequential: bool) -> int:
  """The exclusive upper bound of DATM's start-epoch window at `iteration` (module docstring);
  the window is [min_start, upper)."""
  if not sequential:
    return max_start
  grown = current_max + int((max_start - current_max) * iteration / max(expansion_end, 1))
  return min(grown, max_start)


class DATM(mtt.TrajectoryMatching):
  """Trajectory matching with DATM's window, initialisation, soft labels and update gate.

  Args beyond `TrajectoryMatching`'s:
    x_train (N, H, W, C), y_train (N,) int: the real images initial images are drawn from.
    current_max: T (the window's initial upper bound). expansion_end: iterations over which it
    grows to max_start. sequential: grow it (else MTT's fixed window). threshold: the gate.
    label_epoch: the expert snapshot that initialises images and labels (-1: the last).
    init: 'correct' (samples predicted correctly) or 'real' (the run's random real images; the
      labels then come from expert 0 alone, as DATM.py:309-319).
  """

  def __init__(self, buffer, x_train, y_train, num_classes: int, *, current_max: int,
               expansion_end: int, sequential: bool, threshold: float, label_epoch: int = -1,
               init: str = 'correct', progress=None, **kwargs):
    kwargs.setdefault('soft_labels', True)
    super().__init__(buffer, **kwargs)
    self.x_train, self.y_train = x_train, np.asarray(y_train)
    self.num_classes = num_classes
    self.current_max, self.expansion_end = int(current_max), int(expansion_end)
    self.sequential = bool(sequential)
    self.threshold = float(threshold)
    self.label_epoch = buffer.num_epochs if label_epoch < 0 else int(label_epoch)
    self.init_mode = init
    self.progress = progress
    self.initial_accuracy = None
    self._logits = jax.jit(lambda theta, x: self.model.apply(
        {'params': buffer.unravel(theta)}, x, train=False)[0])

  def start_window(self, iteration: int) -> tuple[int, int]:
    return self.min_start, window_upper(iteration, self.min_start, self.current_max,
                                        self.max_start, self.expansion_end, self.sequential)

  @property
  def hooks(self) -> mtt.RunHooks:
    """Trajectory matching's hooks, with DATM's update gate and initial set."""
    return super().hooks._replace(update_gate=self.update_gate, initial_set=self.initial_set)

  def update_gate(self, loss):
    return loss <= self.threshold

  # -- initialisation ------------------------------------------------------------------------------
  def expert_logits(self, expert: int, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Logits (n, K) of expert `expert` at `label_epoch` on x (n, H, W, C)."""
    theta = jnp.asarray(self.buffer.snapshot(expert, self.label_epoch))
    return np.concatenate([np.asarray(self._logits(theta, jnp.asarray(x[i:i + chunk])))
                           for i in range(0, len(x), chunk)])

  def correct_images(self, ipc: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """Indices (K * ipc,) into x_train, class-sorted: per class the first `ipc` images, in a
    random order, that expert 0 classifies correctly, then expert 1 on the rest, and so on.
    Raises ValueError when all experts together find fewer than `ipc` for a class."""
    picks = []
    for c in range(self.num_classes):
      members = rng.permutation(np.flatnonzero(self.y_train == c))
      chosen: list[int] = []
      for e in range(self.buffer.num_experts):
        rest = np.setdiff1d(members, chosen, assume_unique=True)
        rest = members[np.isin(members, rest)]          # keep the random order
        for i in range(0, len(rest), chunk):
          idx = rest[i:i + chunk]
          right = self.expert_logits(e, self.x_train[idx]).argmax(-1) == c
          chosen += idx[right][:ipc - len(chosen)].tolist()
          if len(chosen) == ipc:
            break
        if len(chosen) == ipc:
          break
      if len(chosen) < ipc:
        raise ValueError(f'class {c}: the {self.buffer.num_experts} experts classify only '
                         f'{len(chosen)} of its images correctly, fewer than IPC={ipc}; use '
                         "datm.init='real' or train the experts longer.")
      picks += chosen
    return np.asarray(picks)

  def label_logits(self, x: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, float]:
    """(y (n, K), initial accuracy): each image's mean logits over the experts that classify it
    correctly (DATM.py:270-307); an image no expert gets right keeps the mean over all experts
    (DATM would divide by zero). With init 'real' only expert 0 (DATM.py:309-319)."""
    experts = range(self.buffer.num_experts) if self.init_mode == 'correct' else range(1)
    total = np.zeros((len(x), self.num_classes), np.float64)
    every = np.zeros_like(total)
    count = np.zeros((len(x), 1))
    for e in experts:
      z = self.expert_logits(e, x)
      right = (z.argmax(-1) == classes)[:, None]
      total += z * right
      every += z
      count += right
    y = np.where(count > 0, total / np.maximum(count, 1), every / len(experts))
    acc = float(np.mean(y.argmax(-1) == classes))
    return y.astype(np.float32), acc

  def initial_set(self, syn, key):
    n = syn['x'].shape[0]
    ipc = n // self.num_classes
    classes = np.repeat(np.arange(self.num_classes), ipc)
    x = np.asarray(syn['x'])
    if self.init_mode == 'correct':
      seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
      x = self.x_train[self.correct_images(ipc, np.random.default_rng(seed))]
    y, self.initial_accuracy = self.label_logits(x, classes)
    if self.progress is not None:
      self.progress(f'initial set: {self.init_mode} images, soft labels from the experts at epoch '
                    f'{self.label_epoch}; InitialAcc {100 * self.initial_accuracy:.1f} %')
    return dict(syn, x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y))


# -- configuration ---------------------------------------------------------------------------------
INITS = ('correct', 'real')


def datm_block() -> ml_collections.ConfigDict:
  b = ml_collections.ConfigDict()
  b.sequential = False          # Sequential_Generation (the growing window)
  b.current_max_start_epoch = 2  # T, the window's initial upper bound
  b.expansion_end_epoch = 1000  # iterations over which it grows to trajectory.max_start_epoch
  b.threshold = 1.1             # skip a step whose loss exceeds this (C10 IPC 1: 1.1, else 1.0)
  b.label_epoch = -1            # Label_Model_Timestamp: expert snapshot for init (-1: last)
  b.init = 'correct'            # correct (samples_predicted_correctly) | real
  return b


def validate_datm(cfg: ml_collections.ConfigDict) -> list[str]:
  from ddjax.infra.config_checks import choice_errors, int_errors
  errors = mtt.validate_trajectory(cfg) + choice_errors(cfg, 'datm.init', INITS)
  errors += int_errors(cfg, 'datm.expansion_end_epoch', 1)
  d, t = cfg.datm, cfg.trajectory
  if d.sequential and not (t.min_start_epoch < d.current_max_start_epoch <= t.max_start_epoch):
    errors.append(f'datm.current_max_start_epoch={d.current_max_start_epoch} must lie in '
                  f'(trajectory.min_start_epoch, trajectory.max_start_epoch] = '
                  f'({t.min_start_epoch}, {t.max_start_epoch}].')
  if d.label_epoch > cfg.expert.epochs:
    errors.append(f'datm.label_epoch={d.label_epoch} exceeds expert.epochs={cfg.expert.epochs}.')
  return errors


def configure_datm(cfg: ml_collections.ConfigDict, preset: str) -> None:
  """DATM's C10/IPC1.yaml transferred to Fashion-MNIST: N 80, M 2,
  window [0, 4) fixed, lr_img 100, lr_lr 1e-7, lr_y 5 (momentum 0.9), threshold 1.1, batch_syn
  10 (all), 10000 iterations, eval batch 128; experts: FTD's GSAM, 100 epochs ('faithful').
  CPU default: width 32, a 5 x 6 buffer without GSAM, N 40, 500 iterations. 'cifar10' /
  'paper': C10/IPC1.yaml on CIFAR-10 with MTT's ZCA ('zca_mtt'); 'cifar100': C100/IPC1.yaml."""
  mtt.configure_family(cfg)
  cfg.trajectory.update(syn_steps=80, expert_epochs=2, min_start_epoch=0, max_start_epoch=4,
                        lr_teacher=0.01, lr_lr=1e-7)
  cfg.datm.update(sequential=False, current_max_start_epoch=4, threshold=1.1, init='correct')
  cfg.distill.update(lr=100.0, steps=10000, learn_label=True, label_lr=5.0, label_momentum=0.9,
                     label_init='one_hot')
  cfg.eval.batch_size = 128
  cfg.expert.update(num_experts=100, epochs=100, gsam=True)
  if preset in ('', 'cpu'):
    mtt.cpu_widths(cfg, 32)
    cfg.expert.update(num_experts=5, epochs=6, gsam=False)
    cfg.trajectory.syn_steps = 40
    cfg.distill.steps = 500
    cfg.checkpoint.every, cfg.log.every = 100, 10
  elif preset in ('paper', 'cifar10'):
    cfg.data.name = 'cifar10'
    cfg.data.update(preprocessing='zca_mtt', zca_reg=0.1)   # MTT's: kornia, eps 0.1, raw pixels
  elif preset == 'cifar100':      # C100/IPC1.yaml
    cfg.data.update(name='cifar100', preprocessing='zca_mtt', zca_reg=0.1)
    cfg.trajectory.update(syn_steps=40, expert_epochs=3, max_start_epoch=20, lr_lr=1e-5)
    cfg.datm.update(sequential=True, current_max_start_epoch=10, expansion_end_epoch=1000,
                    threshold=1.0)
    cfg.distill.update(lr=1000.0, label_lr=10.0)


def build_kwargs(cfg: ml_collections.ConfigDict, data) -> dict:
  d = cfg.datm
  log = lambda line: print(f'[{cfg.method}] ' + line, flush=True)
  return dict(x_train=data.x_train, y_train=data.y_train, num_classes=data.num_classes,
              current_max=d.current_max_start_epoch, expansion_end=d.expansion_end_epoch,
              sequential=d.sequential, threshold=d.threshold, label_epoch=d.label_epoch,
              init=d.init, progress=log, **mtt.build_kwargs(cfg))


def _build(cfg: ml_collections.ConfigDict, data) -> DATM:
  return DATM(mtt.get_buffer(cfg, data), **build_kwargs(cfg, data))


registry.register(registry.Method(
    name='datm', build=_build, distiller_class=DATM,
    blocks=(registry.ConfigBlock('datm', datm_block, signed_keys=('datm.label_epoch',)),
            *mtt.TRAJECTORY_BLOCKS),
    configure=configure_datm, validate=validate_datm,
    presets=registry.PRESETS + ('faithful', 'cifar10', 'cifar100'),
    plan=mtt.plan, protocol='tm', description='DATM: difficulty-aligned trajectory matching, soft labels'))
