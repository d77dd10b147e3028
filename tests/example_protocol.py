"""A user's evaluation protocol, registered from outside the package as a user would
(tests/test_registry.py runs it through the CLI): classify each test image by its nearest
synthetic image (1-NN), with a config block of its own."""
import ml_collections
import numpy as np

import ddjax


def nearest_block():
  b = ml_collections.ConfigDict()
  b.metric = 'l2'             # l2 | cosine
  return b


def _settings(n, num_classes, overrides):
  del num_classes, overrides
  return dict(optimizer='sgd', lr=0.0, steps=1, batch_size=n, augment=False)


def nearest_predictions(x_set, y_set, x_test, metric='l2'):
  """The class (argmax of the label row) of each test image's nearest set image: (m,) int."""
  a = np.asarray(x_set, np.float64).reshape(len(x_set), -1)
  b = np.asarray(x_test, np.float64).reshape(len(x_test), -1)
  if metric == 'cosine':
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = -b @ a.T
  else:
    dist = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None]
  return np.argmax(np.asarray(y_set), -1)[np.argmin(dist, axis=1)]


def evaluate(cfg, data, syn, plan, key):
  del plan, key
  pred = nearest_predictions(syn['x'], syn['y'], data.x_test, cfg.nearest.metric)
  acc = float(np.mean(pred == np.asarray(data.y_test)))
  return ({'eval': {'protocol': 'nearest', 'acc_mean': acc, 'accs': [acc], 'acc_std': 0.0}},
          f'1-NN test accuracy {100 * acc:.2f} %')


def _validate(cfg):
  if cfg.nearest.metric in ('l2', 'cosine'):
    return []
  return [f"nearest.metric={cfg.nearest.metric!r} is not one of ('l2', 'cosine')."]


ddjax.register_protocol(ddjax.Protocol(
    name='nearest', settings=_settings, evaluate=evaluate,
    blocks=(ddjax.ConfigBlock('nearest', nearest_block, validate=_validate),),
    description='1-NN on the set (a user protocol)'), replace=True)
