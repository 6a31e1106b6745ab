"""The configuration every experiment shares; each config file overrides what differs.

Defaults are the official oracle-KD code's CIFAR recipe (its `train.py` arguments and
RepDistiller's, which it follows): SGD lr 0.05, momentum 0.9, weight decay 2.5e-4 on
every parameter, batch 64, 240 epochs with lr ×0.1 at epochs 150/180/210, τ = 4,
α = 1, ce_weight = 1, γ = 1.0, one refinement step (`rec_num` 1).
"""
import ml_collections

from oracle_jax import compilation_cache, methods


def base_config():
  c = ml_collections.ConfigDict()
  c.dataset = 'cifar100'
  c.data_dir = ''             # '' = TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
  c.train_examples = 0        # > 0: train on a fixed class-stratified subset of this size
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

  c.oracle = ml_collections.ConfigDict()
  c.oracle.enabled = True
  c.oracle.gamma = 1.0                  # official default; its README example uses 0.2
  c.oracle.steps = 1                    # official `rec_num`
  c.oracle.reference_batch_size = 64    # γ is quoted at the official batch of 64

  c.temperature = 4.0
  c.alpha = 1.0
  c.ce_weight = 1.0
  c.label_smoothing = 0.0
  c.distill = methods.default_distill_config()  # FitNet/AT/DKD/SAD hyper-parameters

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
  # JAX's persistent compilation cache (a local directory or gs://, shared by a pod's hosts):
  # the environment's JAX_COMPILATION_CACHE_DIR, else ~/.cache/oracle_jax/xla; '' = off.
  c.compilation_cache_dir = compilation_cache.default_directory()
  # The offline default (oracle_jax/demo.py), switched on by configs/default.py: a teacher
  # trained for demo_teacher_steps (unless teacher.checkpoint names one), its analysis, then
  # scratch / KD / oracle-KD students over demo_seeds as one population.
  c.demo = False
  c.demo_seeds = (0, 1, 2, 3, 4)
  c.demo_teacher_steps = 400
  return c
