"""The configuration every experiment shares, and `parse_arg` for `--config=file.py:arg`.

Defaults are the official oracle-KD code's CIFAR recipe (its `train.py` arguments and
RepDistiller's, which it follows): SGD lr 0.05, momentum 0.9, weight decay 2.5e-4 on
every parameter, batch 64, 240 epochs with lr ×0.1 at epochs 150/180/210, τ = 4,
α = 1, ce_weight = 1, γ = 1.0, one refinement step (`rec_num` 1). Configs are data: they
import nothing of the library, which validates them (oracle_jax/validation.py).
"""
import ml_collections


def base_config():
  c = ml_collections.ConfigDict()
  c.dataset = 'cifar100'
  c.data_dir = ''             # '' = TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.train_examples = 0        # > 0: train on a fixed class-stratified subset of this size
  # Dataset overrides ('folder:DIR' datasets: docs/data.md). () / '' = the dataset's own:
  # a folder's images' own size, statistics computed from its train split, its first of
  # test/ val/ validation/, crop_flip up to 64 px and random_resized_crop above.
  c.image_size = ()           # (H, W) every image is resized to (folders only)
  c.data_mean = ()            # per channel, in [0, 1] units: x = (u8 / 255 - mean) / std
  c.data_std = ()
  c.eval_split = ''
  c.augment = ''              # 'crop_flip' | 'random_resized_crop' (streamed) | 'none'
  c.in_memory_gb = 4.0        # a folder dataset decoded above this is streamed from its files
  # 'scratch' (supervised; trains teachers) | 'kd' | 'fitnet' | 'at' | 'dkd' | 'sad'.
  # oracle.enabled applies to every distiller: all teacher signals come from x*.
  c.method = 'kd'

  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = 'resnet56'
  c.teacher.checkpoint = ''   # orbax model checkpoint dir, a run's workdir, or a .pth file
  c.teacher.small_stem = False

  c.student = ml_collections.ConfigDict()
  c.student.model = 'resnet20'
  c.student.small_stem = False
  # Fine-tuning: the trained network (the student, or a scratch run's model) starts from
  # this checkpoint (orbax model dir, a run's workdir, .pth, .safetensors or zoo:NAME);
  # a classifier of another class count starts fresh; a resumed run ignores it. '' = off.
  c.init_checkpoint = ''

  c.oracle = ml_collections.ConfigDict()
  c.oracle.enabled = True
  c.oracle.gamma = 1.0                  # official default; its README example uses 0.2
  c.oracle.steps = 1                    # official `rec_num`
  c.oracle.reference_batch_size = 64    # γ is quoted at the official batch of 64

  c.temperature = 4.0
  c.alpha = 1.0
  c.ce_weight = 1.0
  c.label_smoothing = 0.0
  c.distill = distill_config()          # FitNet/AT/DKD/SAD hyper-parameters

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'sgd'
  c.optimizer.learning_rate = 0.05      # at batch_size 64; scaled linearly if base_batch_size set
  c.optimizer.base_batch_size = 0       # > 0: lr = learning_rate · batch_size / base_batch_size
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 2.5e-4
  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = 'step'              # 'step' | 'cosine'
  c.schedule.decay_epochs = (150, 180, 210)
  c.schedule.decay_factor = 0.1
  c.schedule.warmup_epochs = 0.0

  c.batch_size = 64                     # global, over all devices and processes
  c.grad_accum_steps = 1                # > 1: mean gradient of this many micro-batches
  c.num_epochs = 240.0
  c.train_steps = 0                     # > 0 overrides num_epochs
  c.eval_every_epochs = 1.0
  c.eval_batch_size = 512
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  # TensorBoard summaries in WORKDIR/tensorboard (written by TensorFlow's own filesystems);
  # False: metrics.jsonl only.
  c.tensorboard = True
  c.seed = 0
  c.dtype = 'float32'                   # 'bfloat16': compute in bf16, params/stats float32
  # 'cpu': the same convolutions computed faster on CPU (chunked weight gradients, paired
  # narrow convolutions, XLA's multi-threaded kernels; oracle_jax/conv.py); identical
  # parameters and checkpoints, float32-rounding-level differences in gradients.
  # 'chunked': only the weight gradients. 'auto': 'cpu' on a single CPU device, 'default'
  # (XLA's own) on GPU/TPU and on several devices.
  c.conv_impl = 'auto'
  # A published best top-1 (%) this run reproduces, e.g. the released student's (cifar.py);
  # results.json then shows it next to ours with the difference. 0 = none.
  c.reference_top1 = 0.0
  c.overwrite = False                   # allow a workdir holding a run of another config
  # JAX's persistent compilation cache (a local directory or gs://, shared by a pod's hosts);
  # 'auto': the environment's JAX_COMPILATION_CACHE_DIR, else ~/.cache/oracle_jax/xla
  # (oracle_jax/compilation_cache.py); '' = off.
  c.compilation_cache_dir = 'auto'
  return c


def distill_config():
  """`config.distill`: the baselines' hyper-parameters (sources: docs/recipes.md).

  KD itself reads the top-level `config.alpha` and `config.temperature`; SAD's KD term
  reads `config.temperature` too (both 4, the official oracle and SAD defaults).
  """
  c = ml_collections.ConfigDict()
  c.fitnet_stage = 'stage2'       # RepDistiller --hint_layer 2
  c.fitnet_weight = 100.0         # RepDistiller -b 100
  c.at_p = 2.0                    # RepDistiller Attention(p=2)
  c.at_beta = 1000.0              # RepDistiller -b 1000 (sum over stages)
  c.dkd_alpha = 1.0               # mdistiller CFG.DKD.ALPHA
  c.dkd_beta = 8.0                # mdistiller CFG.DKD.BETA (per-pair values: configs/cifar.py)
  c.dkd_temperature = 4.0         # mdistiller CFG.DKD.T
  c.dkd_warmup_epochs = 20.0      # mdistiller CFG.DKD.WARMUP
  c.sad_beta = 200.0              # official SAD --beta 200
  c.sad_qk_dim = 128              # official SAD --qk_dim 128
  c.sad_kd_weight = 0.9           # official SAD --alpha 0.9 (its KD term)
  c.sad_features = 'stages'       # 'blocks': every residual block, as the official code
  return c


class ArgumentError(ValueError):
  """A mistake in `file.py:arg`; the command line prints it as one line (oracle_jax/cli.py)."""


def parse_arg(arg, **spec):
  """`arg` as a ConfigDict of `spec`'s keys, in big_vision's `parse_arg` style.

  `arg` is comma-separated `key=value` items; an item without `=` is the value of the first
  key of `spec` not yet given, so `file.py:resnet56,resnet20,method=dkd` sets the first two
  keys by position. Each value is converted to the type of its default in `spec`.
  """
  items, keys = [item for item in (arg or '').split(',') if item], list(spec)
  usage = (f'the config argument is "{",".join(keys)}" (in order, or as key=value)' if keys
           else 'this config takes no argument')
  result, given = ml_collections.ConfigDict(spec), set()
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      key, value = next((k for k in keys if k not in given), None), item
      if key is None:
        raise ArgumentError(f'{usage}; {arg!r} has too many values.')
    if key not in spec or key in given:
      raise ArgumentError(f'{usage}; {arg!r} has ' + (
          f'{key!r} twice.' if key in given else f'no key {key!r}.'))
    given.add(key)
    result[key] = _converted(value, spec[key], key)
  return result


def _converted(text, default, key):
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false'):
      raise ArgumentError(f'config argument {key}={text!r} must be true or false.')
    return text.lower() == 'true'
  try:
    return type(default)(text)
  except ValueError:
    raise ArgumentError(f'config argument {key}={text!r} must be of type '
                        f'{type(default).__name__}.') from None
