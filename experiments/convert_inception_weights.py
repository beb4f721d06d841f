"""Converts pytorch-fid's FID Inception weights (.pth) into the flat .npz our Flax model loads.

    # once, on any machine with internet access:
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    pip install torch --index-url https://download.pytorch.org/whl/cpu   # only for this script
    python experiments/convert_inception_weights.py \\
        --input pt_inception-2015-12-05-6726825d.pth --output inception_fid.npz

then train/evaluate with `--config.eval.inception_weights=inception_fid.npz`. The .pth is the
TensorFlow 2015-12-05 Inception graph (the one FID and IS are defined with) ported to
PyTorch; the layer names are torchvision's `Inception3` ones, which diffusion_jax's
`InceptionV3` mirrors, so the mapping is per tensor:

    X.conv.weight [O, I, kh, kw]  -> params/X/conv/kernel [kh, kw, I, O]
    X.bn.weight / bias            -> params/X/bn/scale / bias
    X.bn.running_mean / var       -> batch_stats/X/bn/mean / var
    fc.weight [1008, 2048] / bias -> params/fc/kernel [2048, 1008] / bias

With `--check` and the `pytorch-fid` package installed, the script also runs both networks on
random images and prints the largest feature difference.

Source: pytorch-fid (mseitzer/pytorch-fid, `inception.py`, FID_WEIGHTS_URL).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusion_jax.evaluation import inception  # noqa: E402

_BN = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}


def torch_to_flax_key(key: str) -> str | None:
  """The flat Flax key of a torch state-dict key (None for tensors the FID model does not use)."""
  *path, leaf = key.split('.')
  if leaf == 'num_batches_tracked' or (path and path[0] == 'AuxLogits'):
    return None
  if path == ['fc'] and leaf in ('weight', 'bias'):
    return f'params/fc/{"kernel" if leaf == "weight" else "bias"}'
  if path and path[-1] == 'conv' and leaf == 'weight':
    return 'params/' + '/'.join(path) + '/kernel'
  if path and path[-1] == 'bn' and leaf in _BN:
    collection, name = _BN[leaf]
    return f'{collection}/{"/".join(path)}/{name}'
  raise ValueError(f'unexpected tensor {key!r} in the state dict: is this the FID Inception?')


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torch state dict (as numpy arrays) -> flat Flax variables {'params/...': array}."""
  flat = {}
  for key, value in state_dict.items():
    new_key = torch_to_flax_key(key)
    if new_key is None:
      continue
    value = np.asarray(value, np.float32)
    if new_key.endswith('/kernel'):
      value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
    flat[new_key] = np.ascontiguousarray(value)
  return flat


def flax_to_torch_state_dict(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The inverse of convert_state_dict (used to test the mapping without torch)."""
  inverse_bn = {v: k for k, v in _BN.items()}
  out = {}
  for key, value in flat.items():
    collection, *path, name = key.split('/')
    value = np.asarray(value)
    if name == 'kernel':
      value = value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1)
      leaf = 'weight'
    elif path[-1] == 'bn':
      leaf = inverse_bn[(collection, name)]
    else:
      leaf = 'bias'
    out['.'.join(path + [leaf])] = value
  return out


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict into numpy arrays (imports torch only here)."""
  try:
    import torch
  except ImportError as e:
    raise SystemExit(
      'This conversion reads a PyTorch file and needs torch: '
      'pip install torch --index-url https://download.pytorch.org/whl/cpu '
      '(diffusion_jax itself does not need torch).'
    ) from e
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def check_against_pytorch_fid(path_npz: str, num_images: int = 4) -> float:
  """Largest |pool feature difference| between pytorch-fid and our model on random images."""
  import torch
  from pytorch_fid.inception import InceptionV3 as TorchInception

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (num_images, 64, 64, 3)).astype(np.float32)
  torch_model = TorchInception([3], resize_input=True, normalize_input=True).eval()
  with torch.no_grad():
    ref = torch_model(torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2))[0]
  ref = ref.numpy().reshape(num_images, -1)
  ours = inception.InceptionFeatureExtractor(
    inception.load_inception_variables(path_npz), batch_size=num_images, quantize=False
  )(images)
  return float(np.max(np.abs(ours['pool'] - ref)))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True, help='pt_inception-2015-12-05-6726825d.pth')
  parser.add_argument('--output', required=True, help='where to write the .npz')
  parser.add_argument(
    '--check',
    action='store_true',
    help='compare features with the pytorch-fid package (if installed)',
  )
  args = parser.parse_args(argv)
  if not os.path.isfile(args.input):
    raise SystemExit(f'{args.input} does not exist; download it from {inception.FID_WEIGHTS_URL}')
  flat = convert_state_dict(load_torch_state_dict(args.input))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  np.savez(args.output, **flat)
  inception.load_inception_variables(args.output)  # validates every key and shape.
  print(f'Wrote {len(flat)} arrays to {args.output}; set config.eval.inception_weights to it.')
  if args.check:
    print(
      f'max |pool feature difference| vs pytorch-fid: {check_against_pytorch_fid(args.output):.3g}'
    )


if __name__ == '__main__':
  main()
