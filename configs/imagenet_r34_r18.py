"""ImageNet, ResNet-34 → ResNet-18, oracle KD on mdistiller's recipe.

mdistiller (Zhao et al., DKD, CVPR 2022) `configs/imagenet/r34_r18/kd.yaml`: SGD lr 0.2 at
batch 512, momentum 0.9, weight decay 1e-4, 100 epochs, ×0.1 at 30/60/90; KD τ = 1,
ce_weight 0.5, α (KD weight) 0.5. The teacher is torchvision's ResNet-34 (IMAGENET1K_V1,
73.31 % top-1), `zoo:torchvision/imagenet/resnet34`: downloaded, verified and converted on
first use (oracle_jax/zoo.py); or point teacher.checkpoint at `resnet34-b627a593.pth`.
Other methods take their recipe from the config argument, not from --config.method:
`--config=configs/imagenet_r34_r18.py:dkd` (or `:at`, `:fitnet`, …) keeps the optimizer and
sets mdistiller's CE weight 1 for them; `dkd` also takes `configs/imagenet/r34_r18/dkd.yaml`'s
α 1, β 0.5, τ 1, warm-up 1 epoch.
Data: TFDS imagenet2012, manual download (ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/).
"""
from configs import common


def get_config(arg='kd'):
  method = common.parse_arg(arg, method='kd').method
  c = common.base_config()
  c.method = method
  c.dataset = 'imagenet2012'
  c.teacher.model, c.student.model = 'resnet34', 'resnet18'
  c.teacher.checkpoint = 'zoo:torchvision/imagenet/resnet34'
  c.temperature, c.alpha = 1.0, 0.5
  c.ce_weight = 0.5 if method == 'kd' else 1.0  # mdistiller: KD 0.5; AT, DKD, FitNet 1
  c.batch_size = 512
  c.optimizer.learning_rate = 0.2
  c.optimizer.base_batch_size = 512     # lr scales linearly if batch_size is changed
  c.optimizer.weight_decay = 1e-4
  c.num_epochs = 100.0
  c.schedule.decay_epochs = (30, 60, 90)
  c.eval_batch_size = 1024            # divisible by pod device counts (16, 32, 64, …)
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  if method == 'dkd':
    c.distill.dkd_beta, c.distill.dkd_temperature, c.distill.dkd_warmup_epochs = 0.5, 1.0, 1.0
  return c
