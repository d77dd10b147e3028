"""The evaluation architecture zoo (ddjax.models.zoo) and its networks: every network builds on
28 px grey, 32 px and 64 px RGB images, trains, and has PyTorch's parameter count."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddjax import config as config_lib
from ddjax.models import build_model, from_config
from ddjax.models.zoo import ZOO, ZOO_DEFAULTS, zoo_block, zoo_model, zoo_names

SHAPES = ((2, 28, 28, 1), (2, 32, 32, 3), (2, 64, 64, 3))
BN = {'ConvNet-3-BN', 'VGG-11-BN', 'ResNet-18-BN', 'ResNet-18-AP'}


def conv(k, c_in, c_out, bias=True):
  return k * k * c_in * c_out + (c_out if bias else 0)


def dense(d_in, d_out):
  return d_in * d_out + d_out


def convnet_features(depth, side, channels, width=128):
  side = 32 if (side, channels) == (28, 1) else side      # DC's 28 px grey padding
  return (side // 2 ** depth) ** 2 * width


# D, the head's input, per input shape of SHAPES (28 x 28 x 1, 32 x 32 x 3, 64 x 64 x 3)
FEATURES = {
    **{name: tuple(convnet_features(ZOO[name]['depth'], s[1], s[3]) for s in SHAPES)
       for name in ZOO if name.startswith('ConvNet')},
    'LeNet': (84, 84, 84),
    'AlexNet': (4 * 4 * 192, 4 * 4 * 192, 8 * 8 * 192),   # 28 px padded to 32: same as 32 px
    'VGG-11-BN': (512, 512, 512),                           # 64 px: 2 x 2 averaged
    'ResNet-18-BN': (512, 512, 512),
    'ResNet-18-IN': (512, 512, 512),
    'ResNet-18-AP': (3 * 3 * 512, 4 * 4 * 512, 8 * 8 * 512),  # flattened, 28 -> 14 -> 7 -> 3
    'MLP': (128, 128, 128),
}


def _abstract(model, shape, **kw):
  """((logits, features), variables) as ShapeDtypeStructs: traced, not compiled."""
  return jax.eval_shape(lambda k: model.init_with_output(k, jnp.zeros(shape), train=False, **kw),
                        jax.random.PRNGKey(0))


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))


def test_the_zoo_names_and_its_convnet_is_dcs_default():
  assert zoo_names() == tuple(ZOO)
  for name in ('ConvNet-3', 'ConvNet-3-BN', 'ConvNet-3-NN', 'ConvNet-3-GN', 'ConvNet-3-MaxPool',
               'ConvNet-2', 'ConvNet-4', 'LeNet', 'AlexNet', 'VGG-11-BN', 'ResNet-18-BN',
               'ResNet-18-AP', 'MLP'):
    assert name in ZOO
  assert set(FEATURES) == set(ZOO)
  model = zoo_model('ConvNet-3', 10)
  assert (model.depth, model.width, model.norm, model.pooling, model.norm_placement,
          model.double_width) == (3, 128, 'instance', 'avg', 'dc', False)
  assert zoo_model('ConvNet-3-GN', 10).norm == 'group'
  assert zoo_model('ConvNet-3-MaxPool', 10).pooling == 'max'
  # every key of a model block has a default, so the zoo builds without a config
  assert set(ZOO_DEFAULTS) == set(config_lib.model_config())


def test_a_base_block_gives_what_the_name_leaves_open():
  base = config_lib.model_config(width=32, double_width=True, norm='batch',
                                 norm_placement='frepo', dtype='bfloat16', bn_momentum=0.5)
  model = zoo_model('ConvNet-3', 10, base_block=base)
  assert (model.width, model.dtype) == (32, jnp.bfloat16)                   # from the base
  assert (model.norm, model.norm_placement, model.double_width) == ('instance', 'dc', False)
  resnet = zoo_model('ResNet-18-AP', 10, base_block=base)
  assert (resnet.norm, resnet.bn_momentum, resnet.dtype) == ('batch', 0.5, jnp.bfloat16)
  assert zoo_block('MLP', base).mlp_widths == (128, 128)                    # DC's MLP
  assert base.width == 32 and base.norm == 'batch'                          # base unchanged


@pytest.mark.parametrize('name', list(ZOO))
def test_every_zoo_net_builds_on_28_32_and_64_px(name):
  model = zoo_model(name, 10)
  for shape, d in zip(SHAPES, FEATURES[name]):
    (logits, features), variables = _abstract(model, shape)
    assert logits.shape == (2, 10) and features.shape == (2, d), (shape, features.shape)
    assert logits.dtype == features.dtype == jnp.float32
    assert ('batch_stats' in variables) == (name in BN)
  for shape in ((2, 28, 28, 3), (2, 48, 48, 1)):     # RGB at 28 px, grey above 28 px
    (logits, features), _ = _abstract(model, shape)
    assert logits.shape == (2, 10) and features.shape[0] == 2 and features.shape[1] > 0


# One network per code path runs for real (below), one compile each (2 to 10 s at the suite's XLA
# level): the other ConvNet entries differ from ConvNet-3 only in norm, pooling or depth, which
# tests/test_models.py runs; ResNet-18-BN and -IN share ResNet-18-AP's stem, blocks and norms
# (`ddjax.models.resnet._body`) with strided downsampling, which RDED's observer trains
# (tests/test_rded.py).
RUN = ('ConvNet-3', 'ConvNet-3-GN', 'LeNet', 'AlexNet', 'VGG-11-BN', 'ResNet-18-AP', 'MLP')


def _variables(model, shape, seed):
  """Variables of `model` for inputs of `shape`, drawn with numpy: kernels N(0, 1 / fan_in),
  biases 0, norm scales 1, running means 0 and variances 1 (flax's initialisers under jit take
  seconds per large network at the suite's XLA level 0; their structure is `model.init`'s)."""
  (_, _), abstract = _abstract(model, shape)
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(a.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(a.shape, np.float32)
    return rng.standard_normal(a.shape, np.float32) / np.float32(np.sqrt(np.prod(a.shape[:-1])))

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _program(model):
  """One jitted program (one compile per network): eval-mode forwards on the three SHAPES, and
  one SGD step (lr 0.05) on the 32 px batch in train mode. Returns (outputs per shape, loss, new
  params, new state)."""
  def loss_fn(params, state, x, y):
    (logits, _), new_state = model.apply({'params': params, **state}, x, train=True,
                                         mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

  def program(variables, xs, y):
    outs = [model.apply(v, x, train=False) for v, x in zip(variables, xs)]
    params = variables[1]['params']
    state = {k: v for k, v in variables[1].items() if k != 'params'}
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, xs[1], y)
    return outs, loss, jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads), new_state

  return jax.jit(program)


@pytest.mark.parametrize('name', RUN)
def test_zoo_nets_give_finite_features_and_train_one_step(name):
  model = zoo_model(name, 10)
  variables = [_variables(model, s, i) for i, s in enumerate(SHAPES)]
  xs = [jax.random.normal(jax.random.PRNGKey(i), s) for i, s in enumerate(SHAPES)]
  y = jnp.array([3, 7])
  outs, loss, params, state = _program(model)(variables, xs, y)
  for v, (logits, features), d in zip(variables, outs, FEATURES[name]):
    assert features.shape == (2, d) and np.all(np.isfinite(features))
    assert np.all(np.isfinite(logits)) and np.std(features) > 0
    head = v['params']['head']                # the features are the head's input
    np.testing.assert_allclose(logits, features @ head['kernel'] + head['bias'], rtol=2e-4,
                               atol=2e-4)
  assert np.isfinite(loss) and loss > 0
  old = jax.tree_util.tree_leaves_with_path(variables[1]['params'])
  new = jax.tree_util.tree_leaves(params)
  unchanged = [jax.tree_util.keystr(p) for (p, a), b in zip(old, new) if np.array_equal(a, b)]
  assert not unchanged, unchanged                     # every parameter array takes a step
  if name in BN:
    moved = [not np.allclose(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(variables[1]['batch_stats']),
        jax.tree_util.tree_leaves(state['batch_stats']))]
    assert moved and all(moved)                       # every running mean and variance
  else:
    assert 'batch_stats' not in variables[1] and not state


def test_parameter_counts_are_pytorchs_on_32px_rgb_10_classes():
  # DC's networks.py layer by layer, PyTorch counting (BatchNorm: weight and bias, 2 per channel;
  # running statistics are buffers, here 'batch_stats').
  lenet = (conv(5, 3, 6) + conv(5, 6, 16)                  # 32 -> 28 -> 14 -> 10 -> 5
           + dense(16 * 5 * 5, 120) + dense(120, 84) + dense(84, 10))
  alexnet = (conv(5, 3, 128) + conv(5, 128, 192) + conv(3, 192, 256) + conv(3, 256, 192)
             + conv(3, 192, 192) + dense(192 * 4 * 4, 10))
  vgg, c_in = 0, 3
  for c in (64, 128, 256, 256, 512, 512, 512, 512):        # conv with bias + BatchNorm2d
    vgg, c_in = vgg + conv(3, c_in, c) + 2 * c, c
  vgg += dense(512, 10)
  body, c_in = conv(3, 3, 64, bias=False) + 2 * 64, 64     # stem conv + bn
  for c, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for block in range(2):
      body += conv(3, c_in, c, False) + conv(3, c, c, False) + 2 * (2 * c)
      if block == 0 and stride != 1:                         # 1 x 1 shortcut + its norm
        body += conv(1, c_in, c, False) + 2 * c
      c_in = c
  resnet_ap = body + dense(512 * 4 * 4, 10)                  # flattened 4 x 4 x 512 maps
  expected = {'LeNet': lenet, 'AlexNet': alexnet, 'VGG-11-BN': vgg, 'ResNet-18-AP': resnet_ap,
              'ResNet-18-BN': body + dense(512, 10)}
  assert expected == {'LeNet': 62_006, 'AlexNet': 1_872_202, 'VGG-11-BN': 9_231_114,
                      'ResNet-18-AP': 11_250_762, 'ResNet-18-BN': 11_173_962}
  for name, n in expected.items():
    _, variables = _abstract(zoo_model(name, 10), (1, 32, 32, 3))
    assert _count(variables['params']) == n, name
  # 28 px grey: LeNet-5's 61,706 (pad 2 keeps 28 px); DC's ResNet_AP head on 3 x 3 x 512 maps
  assert _count(_abstract(zoo_model('LeNet', 10), SHAPES[0])[1]['params']) == 61_706
  assert _count(_abstract(zoo_model('ResNet-18-AP', 10), SHAPES[0])[1]['params']) == (
      body - conv(3, 3, 64, bias=False) + conv(3, 1, 64, bias=False) + dense(512 * 3 * 3, 10))


def test_resnet18_ap_downsamples_by_average_pooling_after_stride_1_convolutions():
  (_, _), variables = _abstract(zoo_model('ResNet-18-AP', 10), (2, 32, 32, 3),
                                capture_intermediates=True)
  (_, _), strided = _abstract(zoo_model('ResNet-18-BN', 10), (2, 32, 32, 3),
                              capture_intermediates=True)
  ap, st = variables['intermediates'], strided['intermediates']
  for stage, (width, side) in enumerate(((64, 32), (128, 16), (256, 8), (512, 4)), start=1):
    block0 = f'stage{stage}_block0'
    assert ap[f'stage{stage}_block1']['__call__'][0].shape == (2, side, side, width)
    # conv1 keeps the input's size in AP (the pooling follows); ResNet-18's strides it
    conv1_side = 2 * side if stage > 1 else side
    assert ap[block0]['conv1']['__call__'][0].shape == (2, conv1_side, conv1_side, width)
    assert st[block0]['conv1']['__call__'][0].shape == (2, side, side, width)
  for name in ('shortcut_conv', 'conv1'):
    assert variables['params']['stage2_block0'][name]['kernel'].shape == (
        strided['params']['stage2_block0'][name]['kernel'].shape)


def test_group_norm_is_dcs_groupnorm_with_4_groups():
  model = build_model('convnet', 3, depth=1, width=8, norm='group', pooling='none')
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 2)) * 3.0 + 1.0
  variables = _variables(model, x.shape, 0)
  variables['params']['norm0'] = {'scale': jnp.linspace(0.5, 2.0, 8),
                                  'bias': jnp.linspace(-1.0, 1.0, 8)}
  (_, features) = model.apply(variables, x)
  p = variables['params']
  h = np.asarray(jax.lax.conv_general_dilated(x, p['conv0']['kernel'], (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
                 + p['conv0']['bias'])
  g = h.reshape(2, 5, 5, 4, 2)                 # 4 groups of 2 consecutive channels
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  ref = ((g - mean) / np.sqrt(var + 1e-5)).reshape(h.shape) * p['norm0']['scale'] + (
      p['norm0']['bias'])
  np.testing.assert_allclose(features, np.maximum(ref, 0).reshape(2, -1), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="norm 'group' splits channels into 4 groups.*6 channels"):
    _abstract(build_model('convnet', 3, depth=1, width=6, norm='group'), (1, 8, 8, 1))


def test_unknown_names_and_architectures_are_refused_with_the_allowed_ones():
  with pytest.raises(ValueError, match=r"unknown zoo architecture 'ResNet-50'; the zoo has: "
                                       r'ConvNet-3, .*VGG-11-BN, .*MLP'):
    zoo_model('ResNet-50', 10)
  with pytest.raises(ValueError, match=r"unknown architecture 'vgg16'; allowed: .*vgg11"):
    build_model('vgg16', 10)
  with pytest.raises(ValueError, match='allowed: none, instance, batch, layer, group'):
    build_model('vgg11', 10, norm='weight')
  with pytest.raises(ValueError, match='VGG11 needs images of at least 28 x 28 px'):
    _abstract(build_model('vgg11', 10), (1, 24, 24, 3))
  with pytest.raises(ValueError, match='ResNet18AP needs images of at least 8 x 8 px'):
    _abstract(build_model('resnet18_ap', 10), (1, 6, 6, 3))


@pytest.mark.parametrize('arch', ['lenet', 'alexnet', 'vgg11', 'resnet18_ap'])
def test_the_config_takes_the_new_architectures(arch):
  cfg = config_lib.base_config()
  cfg.eval.model.arch = arch
  config_lib.validate(cfg)
  assert type(from_config(cfg.eval.model, 10)).__name__ == {
      'lenet': 'LeNet', 'alexnet': 'AlexNet', 'vgg11': 'VGG11', 'resnet18_ap': 'ResNet18AP'}[arch]


def test_the_config_refuses_bad_zoo_settings_before_compute(tiny_npz, tmp_path):
  from conftest import tiny_config
  from ddjax.runtime import pipeline
  cfg = config_lib.base_config()
  cfg.eval.model.arch = 'vgg16'
  with pytest.raises(config_lib.ConfigError, match=r"eval.model.arch='vgg16' is not one of .*"
                                                   r"'vgg11'"):
    config_lib.validate(cfg)
  cfg = config_lib.base_config()
  cfg.model.update(norm='group', width=6)
  with pytest.raises(config_lib.ConfigError, match="model.width=6: norm 'group' splits"):
    config_lib.validate(cfg)
  cfg = tiny_config(tiny_npz)                  # 12 x 12 images: too small for VGG-11
  cfg.eval.model.arch = 'vgg11'
  with pytest.raises(config_lib.ConfigError,
                     match=r"eval.model.arch='vgg11' needs images of at least 28 x 28 px.*"
                           r'these are 12 x 12'):
    pipeline.run(cfg, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'config.json').exists()
