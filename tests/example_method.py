"""A method defined outside the package, the way a user adds one (README, "Adding a method").

`linear_krr`: KIP with the linear kernel of the raw pixels, K(x, x') = <x, x'> / D. Its record is
per real sample, so ISA's transforms and BiLP's adaptive pruning apply. Its config block is
cfg.linear_krr.

`pixel_means`: match every class's mean real image to its mean synthetic image. Its record is per
class and it declares no additive form, so BiLP's ITE and row transforms must be refused.

`class_means`: a set builder (no meta-loss, no steps): every stored image is the mean of a random
half of its class's real images. Its registration leaves `steps` at the config's: the pipeline
takes no steps because of the built object's kind.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import ddjax
from ddjax.distill.base import PER_CLASS
from ddjax.distill.matching import group_by_class
from ddjax.kernels.krr import krr_solve
from ddjax.transforms.base import PerClass, per_sample_mse


class LinearKRR(ddjax.Distiller):

  def __init__(self, reg: float):
    self.reg = reg

  def per_sample(self, syn, state, batch, key):
    flat = lambda x: x.reshape(x.shape[0], -1)
    xs, xt = flat(syn['x']), flat(batch['x'])
    d = xs.shape[1]
    pred = (xt @ xs.T / d) @ krr_solve(xs @ xs.T / d, syn['y'], self.reg)
    return per_sample_mse(pred, batch['y'])


class PixelMeans(ddjax.Distiller):
  record = PER_CLASS

  def __init__(self, num_classes: int):
    self.num_classes = num_classes

  def per_class(self, syn, state, batch, key):
    k = self.num_classes
    real = group_by_class(batch['x'], jnp.argmax(batch['y'], -1), k).mean(axis=1)
    fake = syn['x'].reshape((k, -1) + syn['x'].shape[1:]).mean(axis=1)
    return PerClass(loss=jnp.sum(jnp.square(real - fake).reshape(k, -1), axis=1))


class ClassMeans(ddjax.SetBuilder):

  def __init__(self, x_train, y_train, num_classes: int):
    self.x, self.y, self.num_classes = np.asarray(x_train), np.asarray(y_train), num_classes

  def build(self, syn_init, key):
    """syn_init {'x': (K * ipc, ...), 'y': (K * ipc, K)}, class-grouped -> the same shapes."""
    ipc = syn_init['x'].shape[0] // self.num_classes
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
    x = []
    for c in range(self.num_classes):
      members = np.flatnonzero(self.y == c)
      x += [self.x[rng.choice(members, len(members) // 2, replace=False)].mean(0)
            for _ in range(ipc)]
    return {**syn_init, 'x': jnp.asarray(np.stack(x), jnp.float32)}

  def report(self):
    return {'images_averaged': int(len(self.y) // 2)}


def linear_krr_block():
  b = ml_collections.ConfigDict()
  b.reg = 1e-3
  return b


def _configure_linear_krr(cfg, preset):
  cfg.distill.lr = 1e-2
  cfg.distill.schedule = 'constant'


ddjax.register(ddjax.Method(
    name='linear_krr', distiller_class=LinearKRR,
    blocks=(ddjax.ConfigBlock('linear_krr', linear_krr_block),), configure=_configure_linear_krr,
    validate=lambda cfg: ([] if cfg.linear_krr.reg > 0 else
                          ['linear_krr.reg must be > 0 (the kernel is rank-deficient).']),
    build=lambda cfg, data: LinearKRR(cfg.linear_krr.reg),
    plan=lambda cfg, facts: {'krr_reg': cfg.linear_krr.reg}), replace=True)

ddjax.register(ddjax.Method(
    name='pixel_means', distiller_class=PixelMeans,
    build=lambda cfg, data: PixelMeans(data.num_classes),
    configure=lambda cfg, preset: cfg.distill.update(batch_per_class=8, learn_label=False),
    protocol='dc'), replace=True)

ddjax.register(ddjax.Method(
    name='class_means', distiller_class=ClassMeans,
    build=lambda cfg, data: ClassMeans(data.x_train, data.y_train, data.num_classes)),
    replace=True)
