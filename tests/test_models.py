"""Models (ConvNet, MLP, build_model, init_model) and basic augmentation."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax.augment import augment_batch
from ddjax.models import (ARCHITECTURES, NORMS, POOLINGS, MLP, ConvNet, build_model,
                          init_model)


@functools.lru_cache(maxsize=None)
def _apply(model, train):
  mutable = ['batch_stats'] if train else False
  return jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))


def _run(model, x, train=False, key=0):
  variables = init_model(model, jax.random.PRNGKey(key), x.shape)
  return variables, _apply(model, train)(variables, x)


def _shapes(model, shape):
  """((logits, features), variables) as ShapeDtypeStructs: no compilation."""
  return jax.eval_shape(
      lambda k: model.init_with_output(k, jnp.zeros(shape), train=False), jax.random.PRNGKey(0))


def _x(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize('norm', NORMS)
def test_convnet_28x28x1_padded_to_4x4_features(norm):
  model = build_model('convnet', 10, depth=3, width=4, norm=norm)
  (logits, feats), variables = _shapes(model, (2, 28, 28, 1))
  assert logits.shape == (2, 10)
  assert feats.shape == (2, 4 * 4 * 4)
  assert ('batch_stats' in variables) == (norm == 'batch')
  assert variables['params']['conv0']['kernel'].shape == (3, 3, 1, 4)


def test_convnet_28x28x1_without_padding_trick():
  # 28 -> 14 -> 7 -> 3 when the first conv keeps 'same' padding.
  model = ConvNet(10, depth=3, width=4, pad_1ch_28=False)
  (_, feats), _ = _shapes(model, (2, 28, 28, 1))
  assert feats.shape == (2, 3 * 3 * 4)


@pytest.mark.parametrize('pooling,side', [('avg', 4), ('max', 4), ('none', 32)])
def test_convnet_32x32x3_poolings(pooling, side):
  model = build_model('convnet', 7, depth=3, width=4, pooling=pooling)
  (logits, feats), _ = _shapes(model, (2, 32, 32, 3))
  assert logits.shape == (2, 7)
  assert feats.shape == (2, side * side * 4)


def test_convnet_double_width():
  model = build_model('convnet', 10, depth=3, width=4, double_width=True)
  (logits, feats), variables = _shapes(model, (2, 32, 32, 3))
  assert feats.shape == (2, 4 * 4 * 16)  # widths 4, 8, 16
  kernels = [variables['params'][f'conv{i}']['kernel'].shape[-1] for i in range(3)]
  assert kernels == [4, 8, 16]
  assert logits.shape == (2, 10)


@pytest.mark.parametrize('norm', ['instance', 'layer'])
def test_features_are_the_head_input(norm):
  model = build_model('convnet', 3, depth=2, width=4, norm=norm)
  variables, (logits, feats) = _run(model, _x((2, 8, 8, 1)))
  assert np.all(np.isfinite(logits))
  head = variables['params']['head']
  np.testing.assert_allclose(logits, feats @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-5)


def test_batch_norm_train_updates_stats_and_eval_uses_running_stats():
  model = build_model('convnet', 3, depth=2, width=4, norm='batch')
  x = _x((6, 8, 8, 1)) * 3.0 + 2.0
  variables = init_model(model, jax.random.PRNGKey(0), x.shape)
  (_, _), new = _apply(model, True)(variables, x)
  old_mean = variables['batch_stats']['norm0']['mean']
  new_mean = new['batch_stats']['norm0']['mean']
  assert not np.allclose(old_mean, new_mean)
  # momentum 0.9: new = 0.9 * old + 0.1 * batch mean, with old = 0
  updated = {'params': variables['params'], 'batch_stats': new['batch_stats']}
  out1 = _apply(model, False)(updated, x)
  out2 = _apply(model, False)(updated, x)
  np.testing.assert_array_equal(out1[0], out2[0])
  # Running statistics: an example's output does not depend on the rest of the batch.
  out_single = _apply(model, False)(updated, x[:3])
  np.testing.assert_allclose(out1[0][:3], out_single[0], rtol=1e-5, atol=1e-5)
  # ... and they are the updated ones, not the initial ones.
  out_init = _apply(model, False)(variables, x)
  assert not np.allclose(out1[0], out_init[0])


def test_unknown_names_raise_with_allowed_values():
  with pytest.raises(ValueError, match='convnet.*mlp'):
    build_model('resnet1000', 10)
  with pytest.raises(ValueError, match='instance'):
    build_model('convnet', 10, norm='groups')
  with pytest.raises(ValueError, match='avg'):
    build_model('convnet', 10, pooling='median')
  with pytest.raises(ValueError, match='none'):
    ConvNet(10, norm='bogus').init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  assert ARCHITECTURES == ('convnet', 'mlp', 'resnet18', 'lenet', 'alexnet', 'vgg11',
                           'resnet18_ap')
  with pytest.raises(ValueError, match='batch'):
    build_model('resnet18', 10, norm='groups')
  assert set(POOLINGS) == {'avg', 'max', 'none'}


def resnet18_parameters_by_hand(channels, classes):
  """torchvision's CIFAR ResNet-18 (3 x 3 stride-1 stem, no max-pool) counted layer by layer:
  convolutions without bias, two parameters per norm channel, projections where shapes change."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out
  n = conv(3, channels, 64) + 2 * 64
  c_in = 64
  for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
    for block in range(2):
      n += conv(3, c_in, c_out) + conv(3, c_out, c_out) + 2 * (2 * c_out)
      if (block == 0 and stride != 1) or c_in != c_out:
        n += conv(1, c_in, c_out) + 2 * c_out
      c_in = c_out
  return n + 512 * classes + classes


def test_resnet18_parameter_count_is_torchvisions():
  # torchvision resnet18: 11,689,512 with a 7 x 7 stem and 1000 classes
  assert resnet18_parameters_by_hand(3, 1000) - 3 * 3 * 3 * 64 + 7 * 7 * 3 * 64 == 11_689_512
  assert resnet18_parameters_by_hand(3, 10) == 11_173_962


@pytest.mark.parametrize('side', [32, 64])
def test_resnet18_small_stem_shapes_and_parameters(side):
  from ddjax.models import ResNet18
  model = build_model('resnet18', 10)
  assert isinstance(model, ResNet18)
  (logits, feats), variables = jax.eval_shape(
      lambda k: model.init_with_output(k, jnp.zeros((2, side, side, 3)), train=False,
                                       capture_intermediates=True), jax.random.PRNGKey(0))
  assert logits.shape == (2, 10) and feats.shape == (2, 512)
  count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables['params']))
  assert count == resnet18_parameters_by_hand(3, 10) == 11_173_962
  assert variables['params']['stem_conv']['kernel'].shape == (3, 3, 3, 64)
  assert 'batch_stats' in variables
  # the small-image stem keeps the resolution (no stride, no max-pool); stages 2-4 halve it
  inter = variables['intermediates']
  assert inter['stem_conv']['__call__'][0].shape == (2, side, side, 64)
  for stage, (width, div) in enumerate(((64, 1), (128, 2), (256, 4), (512, 8)), start=1):
    out = inter[f'stage{stage}_block1']['__call__'][0]
    assert out.shape == (2, side // div, side // div, width), (stage, out.shape)
  # projections only where the shape changes
  blocks = {k: v for k, v in variables['params'].items() if k.startswith('stage')}
  with_projection = sorted(k for k, v in blocks.items() if 'shortcut_conv' in v)
  assert with_projection == ['stage2_block0', 'stage3_block0', 'stage4_block0']
  # one channel: only the stem's kernel changes
  _, grey = jax.eval_shape(lambda k: model.init_with_output(k, jnp.zeros((1, side, side, 1))),
                           jax.random.PRNGKey(0))
  grey_count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(grey['params']))
  assert grey_count == resnet18_parameters_by_hand(1, 10) == 11_173_962 - 2 * 9 * 64


def test_resnet18_from_a_model_block():
  from ddjax.config import model_config
  from ddjax.models import ResNet18, from_config
  block = model_config(arch='resnet18', norm='instance', bn_momentum=0.8, dtype='bfloat16')
  model = from_config(block, 7)
  assert isinstance(model, ResNet18)
  assert (model.norm, model.bn_momentum, model.dtype) == ('instance', 0.8, jnp.bfloat16)
  (logits, feats), variables = _shapes(model, (2, 28, 28, 1))
  assert logits.shape == (2, 7) and feats.shape == (2, 512)
  assert logits.dtype == feats.dtype == jnp.float32            # bf16 compute, float32 outputs
  assert 'batch_stats' not in variables
  assert variables['params']['stem_norm']['scale'].dtype == jnp.float32


def test_mlp_shapes():
  model = build_model('mlp', 5, widths=[16, 12])
  assert isinstance(model, MLP)
  (logits, feats), variables = _shapes(model, (3, 8, 8, 1))
  assert logits.shape == (3, 5)
  assert feats.shape == (3, 12)
  assert variables['params']['dense0']['kernel'].shape == (64, 16)


def test_parameter_order_is_the_forward_passes_not_the_keys():
  """Shallow to deep as the network calls its modules (weight before bias), for both ConvNet
  norm placements and MLPs with 10+ layers (where name order puts dense10 before dense2);
  `in_module_order` re-keys a name-sorted tree in that order without touching the leaves."""
  from ddjax.models import in_module_order, parameter_order
  dc = parameter_order(build_model('convnet', 10, depth=2, width=4, norm='instance'), (8, 8, 1))
  assert ['.'.join(p) for p in dc] == [
      'conv0.kernel', 'conv0.bias', 'norm0.scale', 'norm0.bias', 'conv1.kernel', 'conv1.bias',
      'norm1.scale', 'norm1.bias', 'head.kernel', 'head.bias']
  frepo = parameter_order(build_model('convnet', 10, depth=2, width=4, norm='instance',
                                      norm_placement='frepo'), (1, 8, 8, 1))
  assert [p[0] for p in frepo[::2]] == ['conv0', 'norm1', 'conv1', 'head']
  mlp = build_model('mlp', 10, widths=tuple([3] * 11))
  assert [p[0] for p in parameter_order(mlp, (1, 4))[::2]] == [
      f'dense{i}' for i in range(11)] + ['head']
  params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))['params']
  sorted_params = jax.tree_util.tree_map(lambda a: a, params)
  assert list(sorted_params)[:3] == ['dense0', 'dense1', 'dense10']
  again = in_module_order(sorted_params, parameter_order(mlp, (1, 4)))
  assert list(again) == [f'dense{i}' for i in range(11)] + ['head']
  assert again['dense3']['kernel'] is sorted_params['dense3']['kernel']
  with pytest.raises(ValueError, match='same model'):
    in_module_order({'head': params['head']}, parameter_order(mlp, (1, 4)))


def test_init_model_deterministic_per_key():
  model = build_model('mlp', 2, widths=(4,))
  a = init_model(model, jax.random.PRNGKey(1), (1, 3))
  b = init_model(model, jax.random.PRNGKey(1), (1, 3))
  c = init_model(model, jax.random.PRNGKey(2), (1, 3))
  np.testing.assert_array_equal(a['params']['dense0']['kernel'], b['params']['dense0']['kernel'])
  assert not np.allclose(a['params']['dense0']['kernel'], c['params']['dense0']['kernel'])


# ----------------------------------------------------------------------------- augmentation

_augment = jax.jit(augment_batch, static_argnames=('translate', 'cutout', 'flip', 'pad_mode'))


def test_augment_identity_when_disabled():
  x = _x((4, 8, 8, 2))
  out = augment_batch(jax.random.PRNGKey(0), x, translate=0, cutout=0, flip=False)
  np.testing.assert_array_equal(out, x)


def test_augment_preserves_shape():
  x = _x((4, 9, 7, 3))
  out = _augment(jax.random.PRNGKey(0), x, translate=2, cutout=3, flip=True)
  assert out.shape == x.shape and out.dtype == x.dtype


def test_translate_moves_a_pixel_by_at_most_translate():
  n, t = 64, 2
  x = jnp.zeros((n, 9, 9, 1)).at[:, 4, 4, 0].set(1.0)
  out = np.asarray(_augment(jax.random.PRNGKey(3), x, translate=t, cutout=0, flip=False))
  np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 1.0)  # the pixel stays in the frame
  pos = np.stack(np.unravel_index(out.reshape(n, -1).argmax(1), (9, 9)), 1)
  shifts = pos - 4
  assert np.abs(shifts).max() <= t
  assert len({tuple(s) for s in shifts}) > 5  # really translates, in several directions


def test_edge_padding_repeats_border():
  x = jnp.ones((8, 6, 6, 1))
  out = _augment(jax.random.PRNGKey(0), x, translate=2, cutout=0, flip=False, pad_mode='edge')
  np.testing.assert_array_equal(out, x)


def test_cutout_zeroes_at_most_a_square():
  x = jnp.ones((64, 16, 16, 1))
  out = np.asarray(_augment(jax.random.PRNGKey(1), x, translate=0, cutout=4, flip=False))
  zeros = (out == 0).sum(axis=(1, 2, 3))
  assert zeros.min() >= 1 and zeros.max() == 16


def test_flip_is_identity_or_mirror():
  x = _x((32, 5, 5, 1))
  out = np.asarray(_augment(jax.random.PRNGKey(2), x, translate=0, cutout=0, flip=True))
  same = np.all(out == np.asarray(x), axis=(1, 2, 3))
  mirrored = np.all(out == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and same.any() and mirrored.any()


@pytest.mark.parametrize('channels,weight_grad', [(3, 'auto'), (6, 'auto'), (6, 'im2col')])
def test_conv2d_matches_lax_convolution_in_value_first_and_second_order_gradients(channels,
                                                                                  weight_grad):
  # ConvNet's convolution computes its weight gradient by im2col matmuls (in chunks) for inputs
  # of at most _IM2COL_MAX_CHANNELS channels (3 here) or at any width with weight_grad='im2col'
  # (per-example gradients), and by XLA's backward-filter convolution otherwise (6, 'auto'):
  # each must agree with XLA's convolution everywhere DC uses it, including the gradient of a
  # gradient (DC differentiates the synthetic gradient w.r.t. the images) and under vmap.
  from ddjax.models.convnet import _DW_CHUNK_ELEMENTS, _IM2COL_MAX_CHANNELS
  from ddjax.models.convnet import conv2d as conv2d_any
  conv2d = functools.partial(conv2d_any, weight_grad=weight_grad)
  assert (channels <= _IM2COL_MAX_CHANNELS) == (channels == 3)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(7, 9, 8, channels)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, channels, 4)), jnp.float32)
  pad = ((3, 1), (1, 2))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), pad,
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv2d(x, w, pad), ref(x, w), atol=1e-5)
  for f in (lambda c: jnp.sum(jnp.sin(c)), lambda c: jnp.sum(c[:, ::2] ** 2)):
    g = jax.grad(lambda x, w: f(conv2d(x, w, pad)), (0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: f(ref(x, w)), (0, 1))(x, w)
    for a, b in zip(g, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # second order: d/dx of |dL/dw|^2
  inner = lambda conv: lambda x: jnp.sum(jax.grad(lambda w: jnp.sum(jnp.sin(conv(x, w))))(w) ** 2)
  gg = jax.grad(inner(lambda x, w: conv2d(x, w, pad)))(x)
  gg_ref = jax.grad(inner(ref))(x)
  np.testing.assert_allclose(gg, gg_ref, rtol=1e-3, atol=1e-3)
  # vmap over batches with shared weights (DC's per-class gradients)
  per_batch = lambda conv: jax.vmap(jax.grad(lambda w, xb: jnp.sum(jnp.sin(conv(xb, w)))),
                                    (None, 0))(w, x[:, None])
  gv = per_batch(lambda xb, w: conv2d(xb, w, pad))
  gv_ref = per_batch(ref)
  np.testing.assert_allclose(gv, gv_ref, rtol=1e-4, atol=1e-4)
  # several weight-gradient chunks: a batch larger than one chunk
  big = jnp.asarray(rng.normal(size=(_DW_CHUNK_ELEMENTS // (9 * 8 * 9 * channels) + 5, 9, 8,
                                     channels)), jnp.float32)
  gb = jax.grad(lambda w: jnp.sum(jnp.sin(conv2d(big, w, pad))))(w)
  gb_ref = jax.grad(lambda w: jnp.sum(jnp.sin(ref(big, w))))(w)
  np.testing.assert_allclose(gb, gb_ref, rtol=1e-3, atol=1e-2)


def test_per_example_model_gives_the_same_per_example_and_second_order_gradients():
  # BiLP's ITE takes per-example gradients (vmap of single-image gradients) and differentiates a
  # synthetic gradient again with `per_example_model`'s im2col weight gradients: the same values
  # as the default network's XLA backward-filter convolutions
  from ddjax.models import per_example_model
  model = ConvNet(num_classes=3, depth=2, width=8, norm='instance')
  pe = per_example_model(model)
  assert (model.weight_grad, pe.weight_grad) == ('auto', 'im2col')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 12, 12, 2)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  np.testing.assert_array_equal(model.apply(variables, x)[0], pe.apply(variables, x)[0])

  def loss(m, p, xb):
    return jnp.sum(jax.nn.log_softmax(m.apply({**variables, 'params': p}, xb)[0])[:, 0])

  per_example = lambda m: jax.vmap(lambda xi: jax.grad(loss, 1)(m, variables['params'],
                                                                xi[None]))(x)
  for a, b in zip(jax.tree_util.tree_leaves(per_example(model)),
                  jax.tree_util.tree_leaves(per_example(pe))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # and the point of it: no grouped convolution (one group per example, 5) left in the program
  grouped = lambda m: 'feature_group_count = 5' in jax.jit(
      lambda: per_example(m)).lower().as_text()
  assert grouped(model) and not grouped(pe)
  sq_norm = lambda tree: sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(tree))
  second = lambda m: jax.grad(lambda xb: sq_norm(jax.grad(loss, 1)(m, variables['params'], xb)))(x)
  np.testing.assert_allclose(second(model), second(pe), rtol=1e-3, atol=1e-4)
  mlp = MLP(num_classes=3, widths=(4,))
  assert per_example_model(mlp) is mlp
  with pytest.raises(ValueError, match='weight gradient'):
    ConvNet(num_classes=3, weight_grad='conv').init(jax.random.PRNGKey(0), x)


def test_frepo_norm_placement_matches_frepos_convnet():
  """FRePo's ConvNet-3 (networks.py): no norm in block 0, a norm on the input of blocks 1 and 2
  (128 and 256 channels with doubling), none after the last conv; flax momentum 0.1."""
  model = ConvNet(10, depth=3, width=128, double_width=True, norm='batch', norm_placement='frepo',
                  bn_momentum=0.1)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)), train=False)
  shapes = jax.tree_util.tree_map(lambda a: a.shape, variables['params'])
  assert sorted(k for k in shapes if k.startswith('norm')) == ['norm1', 'norm2']
  assert shapes['norm1']['scale'] == (128,) and shapes['norm2']['scale'] == (256,)
  assert shapes['conv2']['kernel'] == (3, 3, 256, 512) and shapes['head']['kernel'] == (8192, 10)
  # flax momentum m: from zero running means one train step gives (1 - m) x the batch mean, so
  # momentum 0.1 moves them 9 times as far as momentum 0.9 (same weights, same batch)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  _, new = model.apply(variables, x, train=True, mutable=['batch_stats'])
  _, new_dc = model.clone(bn_momentum=0.9).apply(variables, x, train=True, mutable=['batch_stats'])
  mean1, mean1_dc = (np.asarray(n['batch_stats']['norm1']['mean']) for n in (new, new_dc))
  assert np.abs(mean1).max() > 0
  np.testing.assert_allclose(mean1, 9.0 * mean1_dc, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match='norm placement'):
    ConvNet(10, norm_placement='before').init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))


def test_instance_norm_matches_flax_group_norm_in_value_and_first_and_second_order_gradients():
  # ConvNet's 'instance' norm (DC's GroupNorm(C, C)) has its own two-pass backward
  # (convnet.instance_norm); it must equal flax's GroupNorm(num_groups=C) with the same params.
  from ddjax.models.convnet import InstanceNorm
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6, 5, 3)) * 2 + 1, jnp.float32)
  ours, ref = InstanceNorm(), nn.GroupNorm(num_groups=3, epsilon=1e-5)
  params = ref.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      ours.init(jax.random.PRNGKey(0), x))
  params = jax.tree_util.tree_map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype),
                                  params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)) * jnp.arange(3.0))
  for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss(ours), (0, 1))(params, x)),
                  jax.tree_util.tree_leaves(jax.grad(loss(ref), (0, 1))(params, x))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # d/dx of |dL/dparams|^2 (DC's meta-gradient through the synthetic gradient)
  meta = lambda m: lambda x: sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(
      jax.grad(loss(m))(params, x)))
  np.testing.assert_allclose(jax.grad(meta(ours))(x), jax.grad(meta(ref))(x), rtol=1e-3,
                             atol=1e-3)
  # forward mode through the gradient (BiLP's first-order ITE linearises it)
  f = lambda m: lambda x: jax.grad(loss(m))(params, x)
  t = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  for a, b in zip(jax.tree_util.tree_leaves(jax.jvp(f(ours), (x,), (t,))[1]),
                  jax.tree_util.tree_leaves(jax.jvp(f(ref), (x,), (t,))[1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_avg_pool_2x2_equals_flax_avg_pool_with_its_gradient():
  from ddjax.models.convnet import avg_pool_2x2
  rng = np.random.default_rng(1)
  for shape in ((2, 8, 6, 3), (1, 7, 5, 2)):      # an odd row / column is dropped, as VALID does
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    ref = lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_allclose(avg_pool_2x2(x), ref(x), atol=1e-6)
    f = lambda pool: jax.grad(lambda x: jnp.sum(jnp.sin(pool(x)) * jnp.arange(shape[-1])))(x)
    np.testing.assert_allclose(f(avg_pool_2x2), f(ref), atol=1e-6)


@pytest.mark.parametrize('shape,norm,placement', [((28, 28, 1), 'none', 'dc'),
                                                  ((9, 7, 3), 'batch', 'frepo')])
def test_fused_first_block_equals_the_plain_block(shape, norm, placement):
  # ConvNet's first block without norm runs as conv_relu_pool (few-channel conv recomputed in
  # the backward); same parameters from the same key, same outputs, first- and second-order
  # gradients and forward-mode through the gradient (BiLP's ITE) as conv -> relu -> pool.
  # 9 x 7 at padding 1: odd sides, the last row / column dropped by the pooling.
  from ddjax.models import convnet
  kw = dict(depth=2, width=6, norm=norm, norm_placement=placement)
  fused, plain = ConvNet(3, **kw), ConvNet(3, fuse_first_block=False, **kw)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + shape), jnp.float32)
  assert fused._fused_first_block(x) and not plain._fused_first_block(x)
  variables = fused.init(jax.random.PRNGKey(0), x)
  ref_variables = plain.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(ref_variables)
  for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(ref_variables)):
    np.testing.assert_array_equal(a, b)
  variables = jax.tree_util.tree_map(lambda v: v + 0.1 * jnp.sin(jnp.arange(v.size).reshape(
      v.shape)), variables)                 # nonzero biases: some pre-activations negative
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)[1]) * jnp.cos(
      jnp.arange(m.apply(v, x)[1].shape[-1])))
  np.testing.assert_allclose(fused.apply(variables, x)[1], plain.apply(variables, x)[1],
                             rtol=1e-5, atol=1e-5)
  close = lambda a, b, tol: [np.testing.assert_allclose(p, q, rtol=tol, atol=tol) for p, q in
                             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
  grads = lambda m: jax.jit(jax.grad(loss(m), (0, 1)))(variables, x)
  close(grads(fused), grads(plain), 1e-4)
  meta = lambda m: lambda x: sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(
      jax.grad(loss(m))(variables, x)))
  close(jax.jit(jax.grad(meta(fused)))(x), jax.jit(jax.grad(meta(plain)))(x), 1e-3)
  t = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)
  tangent = lambda m: jax.jit(lambda x: jax.jvp(lambda x: jax.grad(loss(m))(variables, x), (x,),
                                                (t,))[1])(x)
  close(tangent(fused), tangent(plain), 1e-3)
  # the fused op itself: its pooled output is all it keeps of the (N, H', W', O) activation
  w, b = variables['params']['conv0']['kernel'], variables['params']['conv0']['bias']
  pad = ((3, 3), (3, 3)) if shape == (28, 28, 1) else ((1, 1), (1, 1))
  jaxpr = jax.make_jaxpr(lambda x: jax.vjp(lambda w: convnet.conv_relu_pool(x, w, b, pad), w))(x)
  pooled = convnet.conv_relu_pool(x, w, b, pad).shape
  residual_sizes = [v.aval.size for v in jaxpr.jaxpr.outvars if hasattr(v.aval, 'size')]
  assert max(residual_sizes) <= max(np.prod(pooled), x.size)


def test_fused_first_block_only_where_it_applies():
  x1, x3, x8 = (jnp.zeros((1, 8, 8, c)) for c in (1, 3, 8))
  assert ConvNet(2, norm='none')._fused_first_block(x3)
  assert ConvNet(2, norm='instance', norm_placement='frepo')._fused_first_block(x1)
  assert not ConvNet(2, norm='instance')._fused_first_block(x1)      # DC: norm in block 0
  assert not ConvNet(2, norm='none')._fused_first_block(x8)          # many channels
  assert not ConvNet(2, norm='none', pooling='max')._fused_first_block(x1)
  assert not ConvNet(2, norm='none', dtype=jnp.bfloat16)._fused_first_block(x1)
