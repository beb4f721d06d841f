"""EDM's released class-conditional CIFAR-10 NCSN++ network (edm-cifar10-32x32-cond-ve.pkl).

Launch (the released checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=edm --input=edm-cifar10-32x32-cond-ve.pkl \
      --config=configs/edm_cifar10_ve.py --workdir=workdir/edm_cifar10_ve
    python main.py --config=configs/edm_cifar10_ve.py --workdir=workdir/edm_cifar10_ve --mode=sample

Training from scratch: python main.py --config=configs/edm_cifar10_ve.py --workdir=/tmp/ve
Smoke test: python main.py --config=configs/edm_cifar10_ve.py:tiny --workdir=/tmp/ve_tiny

"ve" in EDM's file names is the architecture (NCSN++, from the VE SDE of Song et al.
2021): train.py --cond=1 --arch=ncsnpp with EDM's preconditioning (EDMPrecond). SongUNet
with a Fourier noise embedding (256 features, frequencies ~ N(0, 16^2)), the residual
encoder path, the [1, 3, 3, 1] resampling filter; otherwise as DDPM++ (configs/cifar10_edm.py):
56.40M parameters. Sampler: deterministic Heun, 18 steps (NFE 35). Published: FID 1.79
(conditional), 1.98 (edm-cifar10-32x32-uncond-ve.pkl), EDM Table 2.
"""

import ml_collections

from configs import cifar10_edm


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the NCSN++ configuration; `arg='tiny'` the test-size variant."""
  config = cifar10_edm.get_config()
  config.model.network_kwargs = ml_collections.ConfigDict(cifar10_edm.NCSNPP)
  config.sample.num_samples = 50_000
  config.sample.batch_size = 500
  config.eval.num_samples = 50_000
  if arg == 'tiny':
    cifar10_edm.shrink_network(config)
  elif arg:
    raise ValueError(f"configs/edm_cifar10_ve.py takes '' or 'tiny', got {arg!r}.")
  return config
