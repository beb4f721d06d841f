"""diffusion_jax: the diffusion design space of DDPM, iDDPM, NCSNv2, EDM and Chen 2023 in JAX."""

from setuptools import find_packages, setup

# Versions verified to install and import together on Python 3.11 (2026-11).
INSTALL_REQUIRES = [
  'jax>=0.10.2,<0.11',
  'jaxlib>=0.10.2,<0.11',
  'flax>=0.12.8,<0.13',
  'optax>=0.2.8,<0.3',
  'orbax-checkpoint>=0.12.8,<0.13',
  'ml-collections>=1.1.0,<2',
  'tensorflow-datasets>=4.9.10,<5',
  'tensorflow-cpu>=2.21.0,<2.22',
  'tensorboard>=2.21.0,<2.22',
  'clu>=0.0.12,<0.1',
  'importlib_resources>=6',
  'numpy>=2.0,<3',
  'scipy>=1.11',
  'scikit-learn>=1.4',
  'pillow>=10',
  'matplotlib>=3.8',
]

EXTRAS_REQUIRE = {
  'test': [
    'pytest>=8',
    'pytest-xdist>=3.5',
    'ruff>=0.17.6,<0.18',  # formatting rules change between minor releases
    'nbclient>=0.10',
    'nbformat>=5.10',
    'ipykernel>=6.29',
  ],
  # The checkpoint converters (python -m diffusion_jax.convert) and their parity tests. torch
  # pinned exactly: unpinned, pip picks a newer build with CUDA wheels (gigabytes).
  'convert': ['torch==2.13.0', 'safetensors>=0.4', 'diffusers==0.42.1'],
}

setup(
  name='diffusion_jax',
  version='0.1.0',
  description='Diffusion models in JAX/Flax: DDPM, iDDPM, NCSNv2, EDM and Chen 2023 with RIN.',
  packages=find_packages(include=['diffusion_jax', 'diffusion_jax.*']),
  python_requires='>=3.10',
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
