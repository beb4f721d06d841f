"""Unconditional CIFAR-10 with NCSNv2 (Song & Ermon 2020): annealed Langevin dynamics.

Launch:

    python main.py --config=configs/cifar10_ncsnv2.py --workdir=/tmp/cifar10_ncsnv2

Hyperparameters are the paper's CIFAR-10 ones (the reference's `configs/cifar10.yml`):
the paper's own network, NCSNv2's RefineNet with ngf = 128 (29.69M parameters, InstanceNorm++,
ELU; `config.model.name = 'ncsnv2'`, its yml settings in `network_kwargs`), geometric
sigmas 50 -> 0.01 with L = 232 levels, noise-unconditional network s(x) / sigma
(Technique 3), Adam 1e-4, batch 128, 300k steps, EMA 0.999 (Technique 5); sampling
with T = 5 Langevin steps per level, eps = 6.2e-6 (Technique 4) and a final denoising
step: 232 x 5 + 1 = 1161 network evaluations. Published: FID 10.87, IS 8.40 (with the
denoising step).

Data range: the paper's sigmas and eps are for data in [0, 1] (the reference's
`configs/cifar10.yml` has `rescaled: false`). This config keeps them verbatim and feeds
the network [0, 1] data (`diffusion.data_range = 'unit'`): the objective maps the
pipeline's [-1, 1] to (x + 1) / 2 and its samples back. The equivalent on [-1, 1]
(`data_range = 'symmetric'`) is sigma_1 = 100, sigma_L = 0.02, eps = 2.48e-5, with the
network told so (network_kwargs data.rescaled = True: it then skips its 2 x - 1).
The loss is the reference's: 1/2 ||F(x~) + z||^2 summed over the 3072 dimensions,
averaged over the batch. Sampling starts from uniform noise and clamps the final
denoised samples to the data range, as the reference does.
"""

import ml_collections

from configs import cifar10_ddpm


def get_config() -> ml_collections.ConfigDict:
  """Returns the NCSNv2 CIFAR-10 configuration."""
  config = cifar10_ddpm.get_config()

  set_network(config, arch='NCSNv2')

  diffusion = config.diffusion
  diffusion.objective = 'ncsn'
  diffusion.sigma_max = 50.0
  diffusion.sigma_min = 0.01
  diffusion.num_levels = 232
  diffusion.data_range = 'unit'  # the ladder above is for [0, 1] data
  diffusion.ncsn_loss_reduction = 'sum'

  optim = config.optim
  optim.learning_rate = 1e-4
  optim.warmup_steps = 0
  optim.grad_clip = 0.0
  optim.ema_decay = 0.999
  optim.ema_warmup = False

  config.training.num_steps = 300_000

  sample = config.sample
  sample.sampler = 'langevin'
  sample.num_steps = 232  # one annealing stage per noise level.
  sample.n_steps_each = 5  # T
  sample.step_lr = 6.2e-6  # eps, in the network's [0, 1] units
  sample.clip_x0 = True  # clamps only the final sample; Langevin scores are never clipped
  config.eval.metrics = ('fid', 'is')
  return config


def set_network(config: ml_collections.ConfigDict, arch: str, ngf: int = 128) -> None:
  """NCSNv2's RefineNet as the reference builds it (models/ncsnv2.py): `arch` is NCSNv2
  (CIFAR-10, CelebA), NCSNv2Deeper (LSUN) or NCSNv2Deepest (FFHQ), fed [0, 1] data
  (`rescaled: false`, mapped to 2 x - 1 inside, as diffusion.data_range = 'unit' gives)."""
  model = config.model
  model.name = 'ncsnv2'
  model.class_conditional = False
  model.dropout = 0.0
  model.network_kwargs = ml_collections.ConfigDict(
    {
      'model': {'arch': arch, 'ngf': ngf, 'normalization': 'InstanceNorm++', 'nonlinearity': 'elu'},
      'data': {'logit_transform': False, 'rescaled': False},
    }
  )


def set_reference_run(
  config: ml_collections.ConfigDict,
  *,
  sigma_begin: float,
  num_classes: int,
  step_lr: float,
  n_steps_each: int,
  n_iters: int,
  batch_size: int = 128,
  adam_eps: float = 1e-8,
) -> None:
  """A reference yml's ladder (sigma_begin -> sigma_end = 0.01, num_classes levels), its
  annealed Langevin settings and training length (configs/<data set>.yml)."""
  diffusion = config.diffusion
  diffusion.sigma_max = float(sigma_begin)
  diffusion.sigma_min = 0.01
  diffusion.num_levels = num_classes
  config.optim.eps = adam_eps
  config.training.num_steps = n_iters
  config.training.batch_size = batch_size
  sample = config.sample
  sample.num_steps = num_classes
  sample.n_steps_each = n_steps_each
  sample.step_lr = step_lr


def folder_config(
  folder: str, image_size: int, arch: str, **reference_run
) -> ml_collections.ConfigDict:
  """A reference yml's run on images read from `folder` (CelebA, LSUN, FFHQ): unconditional,
  `arch`'s RefineNet at `image_size`, `set_reference_run(**reference_run)`, FID only."""
  config = get_config()
  data = config.data
  data.name = 'folder'
  data.folder = folder
  data.image_size = image_size
  data.num_classes = 0
  set_network(config, arch=arch)
  set_reference_run(config, **reference_run)
  config.eval.metrics = ('fid',)
  return config
