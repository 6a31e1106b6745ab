"""The paper's baseline distillers — KD, FitNet, AT, DKD, SAD — as losses, modules, and one
interface the train step calls; the one list of methods (`METHODS`, `CHOICES`) and its
predicates (`is_distilled`, `uses_oracle`). Where the default weights come from:
configs/common.py.

Every loss is a pure function of arrays; teacher arguments pass through `stop_gradient`, so
no gradient ever reaches the teacher (or, with the oracle on, x*). Features are the dicts
the models return with `return_features=True` (NHWC `'stage1'…'stageN'`, after ReLU as
RepDistiller's `is_feat=True`); all arithmetic is float32 whatever the model dtype.

The extra modules (FitNet regressor, SAD projections) run only inside the training loss:
their BatchNorm always uses the current (global) batch's statistics, as PyTorch's train
mode does, and keeps none (the reference code's running statistics are never read).
"""
import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from oracle_jax import losses
from oracle_jax.models import layers

_HIGHEST = jax.lax.Precision.HIGHEST


def stages(features):
  """The stage outputs `[stage1, …, stageN]` of a features dict, in order."""
  n = sum(1 for k in features if k.startswith('stage'))
  return [features[f'stage{i}'] for i in range(1, n + 1)]



# ------------------------------------------------------------------------------ modules


def _torch_uniform(fan_in):
  """PyTorch's default Linear/Conv init: U(±1/√fan_in) for weight and bias alike."""
  return layers.torch_linear_bias_init(fan_in)


class BatchStatNorm(nn.Module):
  """BatchNorm as PyTorch computes it in train mode — batch mean, biased variance, ε 1e-5,
  γ = 1, β = 0 at init — over every axis but the last; no running statistics (see the
  module docstring)."""
  epsilon: float = layers.BN_EPSILON

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return layers.batch_norm_train(x, scale, bias, self.epsilon)[0]


class ConvRegressor(nn.Module):
  """FitNet's regressor, RepDistiller `models/util.py::ConvReg` (use_relu=True, as
  `train_student.py` builds it): conv → BN → ReLU mapping the student feature onto the
  teacher's shape `(out_hw, features)`. The conv, by the spatial sizes (as ConvReg):
  student H = 2·teacher H → 3×3 stride 2 pad 1; student H = teacher H / 2 → 4×4 stride-2
  transposed conv (pad 1); student H ≥ teacher H → a VALID conv of kernel
  (1 + ΔH, 1 + ΔW), i.e. the 1×1 conv when sizes agree; anything else is unsupported.
  Convs have a bias and PyTorch's default init. (Checked against ConvReg itself: equal
  outputs, the transposed conv's kernel being torch's flipped in space, as Flax stores it.)
  """
  features: int
  out_hw: Sequence[int]

  @nn.compact
  def __call__(self, x):
    x = losses.as_float32(x)
    (s_h, s_w, s_c), (t_h, t_w) = x.shape[1:], tuple(self.out_hw)
    if s_h == 2 * t_h:
      kernel, stride, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
    elif 2 * s_h == t_h:
      kernel, stride, padding = (4, 4), (2, 2), None
    elif s_h >= t_h:
      kernel, stride, padding = (1 + s_h - t_h, 1 + s_w - t_w), (1, 1), 'VALID'
    else:
      raise ValueError(f'ConvRegressor: student size {s_h}×{s_w}, teacher {t_h}×{t_w} '
                       'is not a case RepDistiller ConvReg handles.')
    if padding is None:
      # PyTorch ConvTranspose2d(k=4, s=2, p=1): pad the dilated input by k − 1 − p = 2;
      # torch's fan-in for a transposed conv counts output channels.
      fan_in = self.features * 16
      conv = nn.ConvTranspose(self.features, kernel, strides=stride, padding=((2, 2), (2, 2)),
                              kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                              precision=_HIGHEST, name='conv')
    else:
      fan_in = s_c * kernel[0] * kernel[1]
      conv = nn.Conv(self.features, kernel, strides=stride, padding=padding,
                     kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                     precision=_HIGHEST, name='conv')
    y = conv(x)
    if y.shape[1:3] != (t_h, t_w):
      raise ValueError(f'ConvRegressor: regressed {y.shape[1:3]}, teacher ({t_h}, {t_w}).')
    return nn.relu(BatchStatNorm(name='bn')(y))


class _LinearBN(nn.Module):
  """The official SAD code's `nn_bn_relu` without its ReLU: Linear (PyTorch init) → BN1d."""
  features: int

  @nn.compact
  def __call__(self, x):
    init = _torch_uniform(x.shape[-1])
    x = nn.Dense(self.features, kernel_init=init, bias_init=init, precision=_HIGHEST,
                 name='linear')(x)
    return BatchStatNorm(name='bn')(x)


class SADAttention(nn.Module):
  """Show, Attend and Distill (Ji, Heo & Park, AAAI 2021): attention-weighted feature
  matching over every (teacher stage, student stage) pair; returns the loss, unweighted.

  The official code, clovaai/attention-feature-distillation `distill/AFD.py`, step by step:
  * query_t = BN(Linear(channel-mean of teacher stage t)), no ReLU     (`LinearTransformTeacher`)
  * key_s = ReLU(BN(Linear(channel-mean of student stage s)))          (`LinearTransformStudent`)
  * bilinear key: one shared BN(Linear(qk → qk·T)) over all B·S keys, viewed [B, S, T, qk]
  * logit[b,t,s] = (⟨bilinear[b,s,t], query[b,t]⟩ + ⟨p_t[t], p_s[s]⟩) / √qk, with learned
    positional embeddings p_t [T, qk], p_s [S, qk] (Xavier-normal init); softmax over s.
  * values: teacher mean_c f_t² flattened and L2-normalised; student mean_c f_s²
    adaptive-average-pooled to teacher t's size (up or down), flattened, L2-normalised.
  * loss = Σ_t mean_b Σ_s att[b,t,s] · mean_positions (v_s − v_t)².
  qk_dim = 128 is the official `--qk_dim` default. The official code matches every
  residual block's output (e.g. 9 × 27 pairs for resnet20 ← resnet56): `SAD` with
  `features='blocks'`; with `'stages'` the attention runs over the stage outputs (3 × 3 on
  CIFAR), for models that expose no blocks.
  """
  qk_dim: int = 128

  @nn.compact
  def __call__(self, student_feats, teacher_feats):
    student_feats = [losses.as_float32(f) for f in student_feats]
    teacher_feats = [losses.as_float32(jax.lax.stop_gradient(f)) for f in teacher_feats]
    n_s, n_t, b, qk = len(student_feats), len(teacher_feats), student_feats[0].shape[0], self.qk_dim

    query = jnp.stack([_LinearBN(qk, name=f'query{i}')(jnp.mean(f, (1, 2)))
                       for i, f in enumerate(teacher_feats)], axis=1)               # [B, T, qk]
    key = jnp.stack([nn.relu(_LinearBN(qk, name=f'key{i}')(jnp.mean(f, (1, 2))))
                     for i, f in enumerate(student_feats)], axis=1)                 # [B, S, qk]
    bilinear = _LinearBN(qk * n_t, name='bilinear')(key.reshape(b * n_s, qk))
    bilinear = bilinear.reshape(b, n_s, n_t, qk)
    p_t = self.param('p_t', nn.initializers.normal(math.sqrt(2.0 / (n_t + qk))), (n_t, qk))
    p_s = self.param('p_s', nn.initializers.normal(math.sqrt(2.0 / (n_s + qk))), (n_s, qk))
    logit = (jnp.einsum('bstq,btq->bts', bilinear, query, precision=_HIGHEST)
             + jnp.matmul(p_t, p_s.T, precision=_HIGHEST)) / math.sqrt(qk)
    att = jax.nn.softmax(logit, axis=-1)                                           # [B, T, S]

    loss = 0.0
    for i, f_t in enumerate(teacher_feats):
      v_t = losses.l2_normalize(jnp.mean(jnp.square(f_t), -1).reshape(b, -1))              # [B, HW]
      v_s = jnp.stack([
          losses.l2_normalize(losses.adaptive_avg_pool(jnp.mean(jnp.square(f_s), -1, keepdims=True),
                                         f_t.shape[1:3]).reshape(b, -1))
          for f_s in student_feats], axis=1)                                        # [B, S, HW]
      diff = jnp.mean(jnp.square(v_s - v_t[:, None]), axis=-1)                      # [B, S]
      loss = loss + jnp.mean(jnp.sum(diff * att[:, i], axis=-1))
    return loss


# ---------------------------------------------------------------------------- interface


def _zeros_like(features):
  """Concrete zeros for `init` from arrays or `jax.ShapeDtypeStruct`s (e.g. `eval_shape`)."""
  return jax.tree.map(lambda f: jnp.zeros(f.shape, jnp.float32), features)


def opaque(value):
  """A distiller's numeric setting as a float32 scalar XLA cannot constant-fold. A folded
  constant lets XLA reassociate products (e.g. a weight with a mean's 1/N, or through the
  backward pass), so a Python weight (a sequential run's) and a traced one (a population
  member's, `MEMBER_FIELDS`) would round differently; opaque, both compile alike."""
  return jax.lax.optimization_barrier(jnp.asarray(value, jnp.float32))


class Distiller:
  """What the train step calls; one subclass per method.

  `loss(...)` returns `(weighted distillation loss, terms)`: the distillation part of the
  objective, every weight applied, the CE term excluded; `terms` holds each unweighted
  term for logging. `epoch` is the 1-based epoch (mdistiller counts from 1); only DKD uses it.
  """
  needs_features = False

  def init_modules(self, rng, student_feats, teacher_feats):
    """Parameters of the method's trainable extra modules; `{}` when it has none."""
    del rng, student_feats, teacher_feats
    return {}

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class KD(Distiller):
  """α·KD(τ): Hinton et al., `losses.kd_loss` (τ² included)."""
  alpha: float
  temperature: float

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    kd = losses.kd_loss(student_logits, teacher_logits, opaque(self.temperature))
    return opaque(self.alpha) * kd, {'kd': kd}


@dataclasses.dataclass(frozen=True)
class FitNet(Distiller):
  """weight · MSE(ConvRegressor(student[stage]), teacher[stage])."""
  stage: str
  weight: float
  needs_features = True

  def _regressor(self, teacher_feature):
    return ConvRegressor(teacher_feature.shape[-1], tuple(teacher_feature.shape[1:3]))

  def init_modules(self, rng, student_feats, teacher_feats):
    t = teacher_feats[self.stage]
    return self._regressor(t).init(rng, _zeros_like(student_feats[self.stage]))['params']

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    t = teacher_feats[self.stage]
    regressed = self._regressor(t).apply({'params': module_params}, student_feats[self.stage])
    hint = losses.hint_loss(regressed, t)
    return opaque(self.weight) * hint, {'hint': hint}


@dataclasses.dataclass(frozen=True)
class AT(Distiller):
  """β · Σ_stages losses.attention_transfer_loss(student stage i, teacher stage i)."""
  beta: float
  p: float
  needs_features = True

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    s, t = stages(student_feats), stages(teacher_feats)
    if len(s) != len(t):
      raise ValueError(f'AT pairs stages one to one: student has {len(s)}, teacher {len(t)}.')
    at = sum(losses.attention_transfer_loss(f_s, f_t, p=self.p) for f_s, f_t in zip(s, t))
    return opaque(self.beta) * at, {'at': at}


@dataclasses.dataclass(frozen=True)
class DKD(Distiller):
  """min(epoch / warmup, 1) · (α·TCKD + β·NCKD): mdistiller `DKD.forward_train`."""
  alpha: float
  beta: float
  temperature: float
  warmup_epochs: float

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    tckd, nckd = losses.dkd_parts(student_logits, teacher_logits, labels,
                                  temperature=opaque(self.temperature))
    warmup_epochs = opaque(self.warmup_epochs)
    warmup = jnp.where(warmup_epochs > 0,  # a select: the warm-up may be traced
                       jnp.minimum(jnp.asarray(epoch, jnp.float32) / warmup_epochs, 1.0), 1.0)
    loss = warmup * (opaque(self.alpha) * tckd + opaque(self.beta) * nckd)
    return loss, {'tckd': tckd, 'nckd': nckd, 'dkd_warmup': warmup}


# The official SAD code's feature lists (`utils.py` LAYER): every residual block of
# resnet20/56 (9, 27), every second one of resnet110 (27 of 54); every block elsewhere.
SAD_BLOCK_STEP = {'resnet110': 2}


def sad_block_step(model_name):
  return SAD_BLOCK_STEP.get(model_name, 1)


@dataclasses.dataclass(frozen=True)
class SAD(Distiller):
  """β · SADAttention(student features, teacher features) + kd_weight · KD(τ); the
  features are the stage outputs (`features='stages'`) or the residual blocks' outputs
  (`'blocks'`, the official granularity), every `*_block_step`-th block."""
  beta: float
  qk_dim: int
  kd_weight: float
  temperature: float
  features: str = 'stages'
  student_block_step: int = 1
  teacher_block_step: int = 1
  needs_features = True

  def _select(self, feats, step):
    if self.features == 'stages':
      return stages(feats)
    if 'blocks' not in feats:
      raise ValueError("SAD over every block (distill.sad_features='blocks') needs a model "
                       "exposing its blocks (the CIFAR ResNets); use 'stages' for this one.")
    return list(feats['blocks'][step - 1::step])

  def _pair(self, student_feats, teacher_feats):
    return (self._select(student_feats, self.student_block_step),
            self._select(teacher_feats, self.teacher_block_step))

  def init_modules(self, rng, student_feats, teacher_feats):
    return SADAttention(self.qk_dim).init(
        rng, *self._pair(_zeros_like(student_feats), _zeros_like(teacher_feats)))['params']

  def loss(self, module_params, student_logits, student_feats, teacher_logits, teacher_feats,
           labels, *, epoch):
    sad = SADAttention(self.qk_dim).apply({'params': module_params},
                                          *self._pair(student_feats, teacher_feats))
    kd = losses.kd_loss(student_logits, teacher_logits, opaque(self.temperature))
    return opaque(self.beta) * sad + opaque(self.kd_weight) * kd, {'sad': sad, 'kd': kd}


SCRATCH = 'scratch'  # supervised training, no teacher: how teachers are trained
METHODS = ('kd', 'fitnet', 'at', 'dkd', 'sad')  # the distillation methods
CHOICES = (SCRATCH, *METHODS)  # every value `config.method` takes


def is_distilled(config_or_method):
  """Whether a config (or a method name) distils from a teacher: every method but scratch."""
  method = getattr(config_or_method, 'method', config_or_method)
  return method != SCRATCH


def uses_oracle(config):
  """Whether the teacher's signals come from x*: a distilled run with `oracle.enabled`."""
  return is_distilled(config) and bool(config.oracle.enabled)


# Each method's distiller fields, as distiller field → config key: `get` reads them. The
# numeric ones (MEMBER_FIELDS) a population's members may choose freely (traced per
# member: one program for all); the others are structure, static and shared.
# LOSS_WEIGHTS: the fields that weight a method's loss terms (all 0: the distillation
# loss adds nothing, as for a population's scratch members).
MEMBER_FIELDS = {
    'kd': {'alpha': 'alpha', 'temperature': 'temperature'},
    'fitnet': {'weight': 'distill.fitnet_weight'},
    'at': {'beta': 'distill.at_beta'},
    'dkd': {'alpha': 'distill.dkd_alpha', 'beta': 'distill.dkd_beta',
            'temperature': 'distill.dkd_temperature',
            'warmup_epochs': 'distill.dkd_warmup_epochs'},
    'sad': {'beta': 'distill.sad_beta', 'kd_weight': 'distill.sad_kd_weight',
            'temperature': 'temperature'},
}
STATIC_FIELDS = {'kd': {}, 'fitnet': {'stage': 'distill.fitnet_stage'},
                 'at': {'p': 'distill.at_p'}, 'dkd': {}, 'sad': {'qk_dim': 'distill.sad_qk_dim'}}
LOSS_WEIGHTS = {'kd': ('alpha',), 'fitnet': ('weight',), 'at': ('beta',),
                'dkd': ('alpha', 'beta'), 'sad': ('beta', 'kd_weight')}
DISTILLERS = {'kd': KD, 'fitnet': FitNet, 'at': AT, 'dkd': DKD, 'sad': SAD}


def _lookup(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def get(config) -> Distiller:
  """The distiller for `config.method` (one of METHODS), its fields read from the config
  keys MEMBER_FIELDS and STATIC_FIELDS name (`config.distill` for all but KD)."""
  method = config.method
  if method not in METHODS:
    raise ValueError(f'Unknown distillation method {method!r}; choose one of {METHODS}.')
  keys = {**MEMBER_FIELDS[method], **STATIC_FIELDS[method]}
  if config.get('distill') is None and any(k.startswith('distill.') for k in keys.values()):
    raise ValueError(f'method {method!r} needs config.distill (see configs/common.py).')
  fields = {field: _lookup(config, key) for field, key in keys.items()}
  if method == 'sad':
    fields.update(sad_structure(config))
  return DISTILLERS[method](**fields)


def sad_structure(config):
  """SAD's feature granularity (`distill.sad_features`) and, over blocks, each model's
  block step (`sad_block_step`)."""
  features = config.distill.get('sad_features', 'stages')
  if features not in ('stages', 'blocks'):
    raise ValueError(f"distill.sad_features must be 'stages' or 'blocks', got {features!r}.")
  if features == 'stages':
    return dict(features=features)
  return dict(features=features, student_block_step=sad_block_step(config.student.model),
              teacher_block_step=sad_block_step(config.teacher.model))
