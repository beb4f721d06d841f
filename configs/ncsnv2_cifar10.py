"""NCSNv2's published CIFAR-10 checkpoint (ermongroup/ncsnv2, exp/logs/cifar10), sampled here.

Launch (convert the reference's run directory: checkpoint.pth or its latest
checkpoint_<step>.pth with the config.yml beside it; then sample):

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/cifar10 \
        --workdir=workdir/ncsnv2_cifar10
    python main.py --config=configs/ncsnv2_cifar10.py --workdir=workdir/ncsnv2_cifar10 --mode=sample

The run of configs/cifar10_ncsnv2.py (`configs/cifar10.yml`): NCSNv2 RefineNet, ngf = 128,
29.69M parameters; sigmas 50 -> 0.01, L = 232; annealed Langevin dynamics with T = 5,
eps = 6.2e-6 and the final denoising step (1161 network evaluations) on the EMA weights.
Published: FID 10.87, IS 8.40.
"""

import ml_collections

from configs import cifar10_ncsnv2


def get_config() -> ml_collections.ConfigDict:
  """Returns the configuration of the converted CIFAR-10 checkpoint."""
  return cifar10_ncsnv2.get_config()
