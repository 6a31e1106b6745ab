"""The baseline distillers against independent NumPy computations of their formulas.

Each reference below is written from the paper/reference-code formula (cited in
`oracle_jax/methods.py`), in float64, without calling the implementation.
"""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from oracle_jax import losses, methods, models

RNG = np.random.default_rng(0)
B, C = 6, 10
S_LOGITS = (RNG.normal(size=(B, C)) * 3).astype(np.float32)
T_LOGITS = (RNG.normal(size=(B, C)) * 3).astype(np.float32)
LABELS = RNG.integers(0, C, B)


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(p, log_q):
  """Σ p (log p − log q), with 0·log 0 = 0 (torch's kl_div)."""
  safe = np.where(p > 0, p, 1.0)
  return np.sum(np.where(p > 0, p * (np.log(safe) - log_q), 0.0), -1)


def np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def relu_features(shapes, seed):
  r = np.random.default_rng(seed)
  return {f'stage{i}': np.maximum(r.normal(size=(B, h, w, c)), 0).astype(np.float32)
          for i, (h, w, c) in enumerate(shapes, start=1)}


def config(method):
  c = ml_collections.ConfigDict({'method': method, 'alpha': 1.0, 'temperature': 4.0})
  c.distill = common.distill_config()
  return c


def run(d, params, s_feats, t_feats, *, epoch=1, s_logits=S_LOGITS, t_logits=T_LOGITS):
  """`d.loss` jitted (eager op-by-op dispatch is what would make these tests slow)."""
  return jax.jit(lambda *a: d.loss(*a, LABELS, epoch=epoch))(params, s_logits, s_feats,
                                                              t_logits, t_feats)


def random_params(d, s_feats, t_feats, seed=0):
  """Module parameters of the right structure, values drawn here (any values serve the
  formula checks; `init` itself is exercised on real model features below)."""
  shapes = jax.eval_shape(lambda: d.init_modules(jax.random.key(0), s_feats, t_feats))
  r = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.5 * r.normal(size=a.shape) + 0.2).astype(np.float32), shapes)


# ------------------------------------------------------------------------------------ KD


def np_kd(s, t, tau):
  p_t = np.exp(np_log_softmax(t / tau))
  return np.mean(np_kl(p_t, np_log_softmax(s / tau))) * tau**2


def test_kd_is_tau_squared_kl():
  s, t = S_LOGITS.astype(np.float64), T_LOGITS.astype(np.float64)
  for tau in (1.0, 4.0):
    np.testing.assert_allclose(losses.kd_loss(S_LOGITS, T_LOGITS, tau), np_kd(s, t, tau),
                               rtol=1e-5)
  # τ² keeps the gradient scale: at τ = 4 the loss is 16 × the plain KL of the softened outputs.
  kl4 = np.mean(np_kl(np.exp(np_log_softmax(t / 4)), np_log_softmax(s / 4)))
  np.testing.assert_allclose(losses.kd_loss(S_LOGITS, T_LOGITS, 4.0), 16 * kl4, rtol=1e-5)
  c = config('kd')
  c.alpha = 0.5
  loss, terms = run(methods.get(c), {}, None, None)
  np.testing.assert_allclose(terms['kd'], np_kd(s, t, 4.0), rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * np_kd(s, t, 4.0), rtol=1e-5)


# ----------------------------------------------------------------------------------- DKD


def np_dkd_parts(s, t, y, tau):
  """mdistiller's dkd_loss, step by step: gt/other masks, binary (target, rest) KL, and the
  non-target KL with the gt logit pushed down by 1000 after dividing by τ."""
  s, t = s.astype(np.float64), t.astype(np.float64)
  gt = np.zeros_like(s)
  gt[np.arange(len(y)), y] = 1
  other = 1 - gt
  p_s, p_t = np.exp(np_log_softmax(s / tau)), np.exp(np_log_softmax(t / tau))
  b_s = np.stack([(p_s * gt).sum(1), (p_s * other).sum(1)], 1)
  b_t = np.stack([(p_t * gt).sum(1), (p_t * other).sum(1)], 1)
  tckd = np_kl(b_t, np.log(b_s)).sum() * tau**2 / len(y)
  p_t2 = np.exp(np_log_softmax(t / tau - 1000 * gt))
  log_p_s2 = np_log_softmax(s / tau - 1000 * gt)
  nckd = np_kl(p_t2, log_p_s2).sum() * tau**2 / len(y)
  return tckd, nckd


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_dkd_matches_numpy(tau):
  tckd, nckd = np_dkd_parts(S_LOGITS, T_LOGITS, LABELS, tau)
  got_t, got_n = losses.dkd_parts(S_LOGITS, T_LOGITS, LABELS, temperature=tau)
  np.testing.assert_allclose([got_t, got_n], [tckd, nckd], rtol=1e-5)
  np.testing.assert_allclose(
      losses.dkd_loss(S_LOGITS, T_LOGITS, LABELS, alpha=0.7, beta=3.0, temperature=tau),
      0.7 * tckd + 3.0 * nckd, rtol=1e-5)
  np.testing.assert_allclose(losses.dkd_loss(S_LOGITS, T_LOGITS, LABELS),  # 1, 8, 4
                             sum(w * v for w, v in zip((1, 8), np_dkd_parts(
                                 S_LOGITS, T_LOGITS, LABELS, 4.0))), rtol=1e-5)


def test_dkd_splits_target_from_non_target():
  """Same target probability, non-targets permuted: TCKD is 0, only NCKD sees it; the
  reverse (non-targets equal in ratio, target moved) leaves NCKD at 0."""
  s = np.array([[2.0, 0.0, 1.0, -1.0]], np.float32)
  y = np.array([0])
  permuted = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
  tckd, nckd = losses.dkd_parts(s, permuted, y, temperature=1.0)
  assert abs(float(tckd)) < 1e-6 and float(nckd) > 0.1
  np.testing.assert_allclose(nckd, np_dkd_parts(s, permuted, y, 1.0)[1], rtol=1e-5)
  shifted_target = np.array([[5.0, 0.0, 1.0, -1.0]], np.float32)
  tckd, nckd = losses.dkd_parts(s, shifted_target, y, temperature=1.0)
  assert abs(float(nckd)) < 1e-6 and float(tckd) > 0.1
  np.testing.assert_allclose(tckd, np_dkd_parts(s, shifted_target, y, 1.0)[0], rtol=1e-5)


def test_dkd_warmup_is_linear_in_the_one_based_epoch():
  dkd = methods.get(config('dkd'))
  full = 1.0 * np.array(np_dkd_parts(S_LOGITS, T_LOGITS, LABELS, 4.0)) @ np.array([1.0, 8.0])
  step = jax.jit(lambda e: dkd.loss({}, S_LOGITS, None, T_LOGITS, None, LABELS, epoch=e))
  for epoch, factor in [(1, 1 / 20), (5, 0.25), (20, 1.0), (150, 1.0)]:
    loss, terms = step(jnp.asarray(epoch))
    np.testing.assert_allclose(terms['dkd_warmup'], factor, rtol=1e-6)
    np.testing.assert_allclose(loss, factor * full, rtol=1e-5)


# ------------------------------------------------------------------------------------ AT


def np_attention(f, p=2):
  return np_normalize((np.abs(f.astype(np.float64))**p).mean(-1).reshape(len(f), -1))


def test_attention_map_is_unit_norm_channel_mean():
  f = relu_features([(4, 4, 5)], 1)['stage1']
  a = np.asarray(losses.attention_map(f))
  np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(a, np_attention(f), rtol=1e-5)
  np.testing.assert_allclose(losses.attention_map(-f, p=1), np_attention(f, 1), rtol=1e-5)


def test_attention_transfer_matches_numpy():
  fs = relu_features([(4, 4, 3)], 2)['stage1']
  ft = relu_features([(4, 4, 7)], 3)['stage1']
  want = np.mean((np_attention(fs) - np_attention(ft))**2)
  np.testing.assert_allclose(losses.attention_transfer_loss(fs, ft), want, rtol=1e-5)
  # A 4×4 student against a 2×2 teacher: the student is average-pooled in 2×2 blocks first.
  ft_small = relu_features([(2, 2, 7)], 4)['stage1']
  pooled = fs.astype(np.float64).reshape(B, 2, 2, 2, 2, 3).mean((2, 4))
  want = np.mean((np_attention(pooled) - np_attention(ft_small))**2)
  np.testing.assert_allclose(losses.attention_transfer_loss(fs, ft_small), want, rtol=1e-5)
  np.testing.assert_allclose(losses.attention_transfer_loss(ft_small, fs),
                             np.mean((np_attention(ft_small) - np_attention(pooled))**2),
                             rtol=1e-5)


def test_at_distiller_sums_stages_times_1000():
  fs = relu_features([(8, 8, 3), (4, 4, 5), (2, 2, 6)], 5)
  ft = relu_features([(8, 8, 4), (4, 4, 7), (2, 2, 9)], 6)
  want = sum(np.mean((np_attention(fs[k]) - np_attention(ft[k]))**2) for k in fs)
  loss, terms = run(methods.get(config('at')), {}, fs, ft)
  np.testing.assert_allclose(terms['at'], want, rtol=1e-5)
  np.testing.assert_allclose(loss, 1000 * want, rtol=1e-5)


def test_adaptive_avg_pool_uses_pytorch_bins():
  x = RNG.normal(size=(2, 5, 2, 3)).astype(np.float32)
  # 5 → 3: bins [floor(i·5/3), ceil((i+1)·5/3)) = [0,2), [1,4), [3,5)
  want = np.stack([x[:, 0:2].mean(1), x[:, 1:4].mean(1), x[:, 3:5].mean(1)], 1)
  np.testing.assert_allclose(losses.adaptive_avg_pool(x, (3, 2)), want, rtol=1e-6)
  # 2 → 4 (upsampling, as SAD does for deep student maps): bins [0,1),[0,1),[1,2),[1,2)
  y = x[:, :2]
  np.testing.assert_allclose(losses.adaptive_avg_pool(y, (4, 2)),
                             np.repeat(y, 2, axis=1), rtol=1e-6)


# -------------------------------------------------------------------------------- FitNet


def np_batchnorm(x):
  axes = tuple(range(x.ndim - 1))
  return (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5)


def test_hint_loss_is_mse():
  a, b = RNG.normal(size=(3, 4, 4, 5)), RNG.normal(size=(3, 4, 4, 5))
  np.testing.assert_allclose(losses.hint_loss(a, b), np.mean((a - b)**2), rtol=1e-5)


@pytest.mark.parametrize('s_hw,t_hw,kernel', [(8, 8, (1, 1)), (8, 4, (3, 3)), (4, 8, (4, 4)),
                                              (7, 4, (4, 4))])
def test_regressor_follows_convreg_cases(s_hw, t_hw, kernel):
  m, x = methods.ConvRegressor(5, (t_hw, t_hw)), jnp.zeros((2, s_hw, s_hw, 3))
  variables = jax.eval_shape(m.init, jax.random.key(0), x)
  assert set(variables) == {'params'}  # batch statistics only: no running stats to carry
  assert variables['params']['conv']['kernel'].shape == (*kernel, 3, 5)
  assert jax.eval_shape(m.apply, variables, x).shape == (2, t_hw, t_hw, 5)


def test_regressor_rejects_what_convreg_rejects():
  with pytest.raises(ValueError, match='ConvReg'):
    jax.eval_shape(methods.ConvRegressor(5, (8, 8)).init, jax.random.key(0),
                   jnp.zeros((2, 3, 3, 3)))


def test_fitnet_distiller_matches_numpy():
  fs = relu_features([(8, 8, 3), (4, 4, 5), (2, 2, 6)], 7)
  ft = relu_features([(8, 8, 4), (4, 4, 7), (2, 2, 9)], 8)
  fitnet = methods.get(config('fitnet'))
  params = random_params(fitnet, fs, ft)
  loss, terms = run(fitnet, params, fs, ft)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  y = fs['stage2'].astype(np.float64) @ p['conv']['kernel'][0, 0] + p['conv']['bias']  # 1×1 conv
  y = np.maximum(np_batchnorm(y) * p['bn']['scale'] + p['bn']['bias'], 0)
  want = np.mean((y - ft['stage2'])**2)
  np.testing.assert_allclose(terms['hint'], want, rtol=1e-5)
  np.testing.assert_allclose(loss, 100 * want, rtol=1e-5)


# ----------------------------------------------------------------------------------- SAD


def np_linear_bn(x, p):
  return np_batchnorm(x @ p['linear']['kernel'] + p['linear']['bias']) * p['bn']['scale'] + \
      p['bn']['bias']


def np_sad(p, fs, ft, qk):
  """Ji, Heo & Park's AFD: teacher queries, student (bilinear) keys, positional term,
  softmax over student stages, attention-weighted MSE of normalised spatial maps."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  fs = [f.astype(np.float64) for f in fs]
  ft = [f.astype(np.float64) for f in ft]
  n_s, n_t = len(fs), len(ft)
  query = np.stack([np_linear_bn(f.mean((1, 2)), p[f'query{i}']) for i, f in enumerate(ft)], 1)
  key = np.stack([np.maximum(np_linear_bn(f.mean((1, 2)), p[f'key{i}']), 0)
                  for i, f in enumerate(fs)], 1)
  bil = np_linear_bn(key.reshape(B * n_s, qk), p['bilinear']).reshape(B, n_s, n_t, qk)
  logit = np.zeros((B, n_t, n_s))
  for t in range(n_t):
    for s in range(n_s):
      logit[:, t, s] = ((bil[:, s, t] * query[:, t]).sum(-1) + p['p_t'][t] @ p['p_s'][s])
  logit /= np.sqrt(qk)
  att = np.exp(logit - logit.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  loss = 0.0
  for t, f_t in enumerate(ft):
    h = f_t.shape[1]
    v_t = np_normalize((f_t**2).mean(-1).reshape(B, -1))
    for s, f_s in enumerate(fs):
      m = (f_s**2).mean(-1)
      r = m.shape[1] // h if m.shape[1] >= h else None
      # integer-ratio average pooling down, nearest repetition up (PyTorch adaptive bins)
      m = m.reshape(B, h, r, h, r).mean((2, 4)) if r else m.repeat(h // m.shape[1], 1).repeat(
          h // m.shape[2], 2)
      v_s = np_normalize(m.reshape(B, -1))
      loss += np.mean(att[:, t, s] * ((v_s - v_t)**2).mean(-1))
  return loss


def test_sad_matches_numpy():
  fs = relu_features([(8, 8, 3), (4, 4, 5), (2, 2, 6)], 9)
  ft = relu_features([(8, 8, 4), (4, 4, 7)], 10)  # T ≠ S exercises the [B, S, T, qk] layout
  c = config('sad')
  c.distill.sad_qk_dim = 6
  sad = methods.get(c)
  params = random_params(sad, fs, ft)
  assert params['bilinear']['linear']['kernel'].shape == (6, 6 * 2)
  assert params['p_t'].shape == (2, 6) and params['p_s'].shape == (3, 6)
  want = np_sad(params, list(fs.values()), list(ft.values()), 6)
  loss, terms = run(sad, params, fs, ft)
  np.testing.assert_allclose(terms['sad'], want, rtol=1e-5)
  kd = np_kd(S_LOGITS.astype(np.float64), T_LOGITS.astype(np.float64), 4.0)
  np.testing.assert_allclose(loss, 200 * want + 0.9 * kd, rtol=1e-5)


# ------------------------------------------------------------------ gradients and wiring


S_FEATS = relu_features([(8, 8, 3), (4, 4, 5), (2, 2, 6)], 11)
T_FEATS = relu_features([(8, 8, 4), (4, 4, 7), (2, 2, 9)], 12)


@pytest.mark.parametrize('method', methods.METHODS)
def test_gradients_reach_student_and_modules_never_teacher(method):
  d = methods.get(config(method))
  params = random_params(d, S_FEATS, T_FEATS)

  def loss(params, s_logits, s_feats, t_logits, t_feats):
    return d.loss(params, s_logits, s_feats, t_logits, t_feats, LABELS, epoch=jnp.asarray(3))[0]

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(params, S_LOGITS, S_FEATS,
                                                          T_LOGITS, T_FEATS)
  g_params, g_s_logits, g_s_feats, g_t_logits, g_t_feats = grads
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert not np.any(g_t_logits) and not any(np.any(g) for g in jax.tree.leaves(g_t_feats))
  if method in ('kd', 'dkd', 'sad'):
    assert np.any(g_s_logits)
  if d.needs_features:
    assert any(np.any(g) for g in jax.tree.leaves(g_s_feats))
  if method in ('fitnet', 'sad'):
    leaves = jax.tree_util.tree_leaves_with_path(g_params)
    assert leaves
    for path, g in leaves:  # a bias right before BatchNorm has zero gradient by construction
      if not (len(path) > 1 and path[-1].key == 'bias' and path[-2].key in ('conv', 'linear')):
        assert np.any(g), path
  else:
    assert params == {}


def test_get_reads_config_and_rejects_unknown_methods():
  d = common.distill_config()
  assert (d.fitnet_stage, d.fitnet_weight, d.at_beta, d.at_p) == ('stage2', 100.0, 1000.0, 2.0)
  assert (d.dkd_alpha, d.dkd_beta, d.dkd_temperature, d.dkd_warmup_epochs) == (1, 8, 4, 20)
  assert (d.sad_beta, d.sad_qk_dim, d.sad_kd_weight) == (200.0, 128, 0.9)
  assert not methods.get(config('kd')).needs_features
  assert not methods.get(config('dkd')).needs_features
  assert all(methods.get(config(m)).needs_features for m in ('fitnet', 'at', 'sad'))
  with pytest.raises(ValueError, match='Unknown distillation method'):
    methods.get(config('crd'))


def test_method_predicates():
  assert methods.CHOICES == ('scratch', *methods.METHODS)
  assert not methods.is_distilled('scratch')
  assert all(methods.is_distilled(m) for m in methods.METHODS)
  c = config('kd')
  c.oracle = ml_collections.ConfigDict({'enabled': True})
  assert methods.is_distilled(c) and methods.uses_oracle(c)
  c.oracle.enabled = False
  assert not methods.uses_oracle(c)
  c.method, c.oracle.enabled = 'scratch', True
  assert not methods.is_distilled(c) and not methods.uses_oracle(c)  # no teacher, no x*


def test_get_reads_each_field_from_the_key_the_mapping_names():
  """One mapping (field → config key) builds the distillers and names what population
  members may choose: every field of every distiller is in it, read from its key."""
  sad_structure = {'features', 'student_block_step', 'teacher_block_step'}
  for method in methods.METHODS:
    keys = {**methods.MEMBER_FIELDS[method], **methods.STATIC_FIELDS[method]}
    fields = {f.name for f in dataclasses.fields(methods.DISTILLERS[method])} - sad_structure
    assert set(keys) == fields, method
    c = config(method)
    for field, key in keys.items():
      *parents, leaf = key.split('.')
      node = c
      for part in parents:
        node = node[part]
      node[leaf] = 'stage3' if isinstance(node[leaf], str) else node[leaf] + 1
      assert getattr(methods.get(c), field) == node[leaf], (method, field)


def test_every_method_on_the_models_features_dicts():
  """resnet8 ← resnet14 (traced, not run): the extra modules initialise from `eval_shape`
  output, and every loss runs on features dicts of exactly the models' keys and shapes."""
  x = jnp.zeros((4, 8, 8, 3))
  shapes = {}
  for role, name in (('student', 'resnet8'), ('teacher', 'resnet14')):
    model = models.create(name, C)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    shapes[role] = jax.eval_shape(lambda v, m=model: m.apply(v, x, return_features=True)[1],
                                  variables)
  r = np.random.default_rng(1)
  s_feats, t_feats = (jax.tree.map(lambda v: np.maximum(r.normal(size=v.shape), 0).astype(
      np.float32), shapes[role]) for role in ('student', 'teacher'))
  y = LABELS[:4]
  for method in methods.METHODS:
    d = methods.get(config(method))
    params = jax.jit(lambda k, d=d: d.init_modules(k, shapes['student'], shapes['teacher']))(
        jax.random.key(3))
    loss_fn = lambda p, s_l, s_f, d=d: d.loss(p, s_l, s_f, T_LOGITS[:4], t_feats, y, epoch=1)[0]
    loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1, 2)))(
        params, S_LOGITS[:4], s_feats)
    assert np.isfinite(loss) and loss > 0, method
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), method
