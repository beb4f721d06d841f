"""EDM's released class-conditional CIFAR-10 DDPM++ network (edm-cifar10-32x32-cond-vp.pkl).

Launch (the released checkpoint, then sampling or FID):

    python -m diffusion_jax.convert --from=edm --input=edm-cifar10-32x32-cond-vp.pkl \
      --config=configs/edm_cifar10_vp.py --workdir=workdir/edm_cifar10_vp
    python main.py --config=configs/edm_cifar10_vp.py --workdir=workdir/edm_cifar10_vp --mode=sample

Training from scratch is configs/cifar10_edm.py, the recipe that produced this file.
Smoke test at 16x16 with a 2-level, 16-channel network of the same structure:
python main.py --config=configs/edm_cifar10_vp.py:tiny --workdir=/tmp/edm_vp_tiny

"vp" in EDM's file names is the architecture (DDPM++, from the VP SDE of Song et al.
2021); the network was trained with EDM's own preconditioning (train.py --precond=edm, the
default): EDMPrecond(SongUNet DDPM++), 55.74M parameters, 9 augmentation labels, fed
zeros at sampling. Sampler: deterministic Heun, 18 steps (NFE 35), sigma 0.002 -> 80,
rho 7 (EDM Algorithm 1). Published: FID 1.79 (EDM Table 2; 50k images, min of 3 seeds).
The unconditional edm-cifar10-32x32-uncond-vp.pkl (FID 1.97) converts with this config:
the converter writes the config with model.class_conditional = False beside the checkpoint.
"""

import ml_collections

from configs import cifar10_edm


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Returns the configuration of the released checkpoint; `arg='tiny'` the test size."""
  config = cifar10_edm.get_config()
  config.sample.num_samples = 50_000
  config.sample.batch_size = 500
  config.eval.num_samples = 50_000
  if arg == 'tiny':
    cifar10_edm.shrink_network(config)
  elif arg:
    raise ValueError(f"configs/edm_cifar10_vp.py takes '' or 'tiny', got {arg!r}.")
  return config
