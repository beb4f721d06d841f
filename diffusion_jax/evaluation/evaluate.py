"""`evaluate(config, workdir, sample_fn)`: the metrics of --mode=eval, written to workdir/eval.

Metrics (config.eval.metrics):
- 'digits': accuracy of class-conditional samples under a digits classifier and the Frechet
  distance in its feature space, beside the real test split's numbers (offline);
- 'fid': Frechet Inception distance to config.eval.reference_stats (needs the converted FID
  Inception weights, config.eval.inception_weights);
- 'is': Inception Score (10 splits) from the same network's logits;
- 'pr': improved precision/recall (k = 3) in Inception space against the reference images
  stored under 'arr_0' of the reference .npz (as the ADM suite's reference batches hold);
- 'nll': negative log-likelihood bound in bits/dim on the test split (discrete-time objectives:
  the full-chain L_vlb of DDPM/iDDPM).

Further config.eval keys (configs/default.py): batch_size (samples per shard, one global
batch over every device of every host; 0 = config.sample.batch_size), seed (None =
config.seed), inception_batch_size (200), is_splits (10), nll_split ('test'),
nll_num_examples (1000), save_samples (False: when True the evaluated samples are also written
to workdir/eval/samples_NxHxWxC.npz in the ADM suite's format, arr_0 uint8 images, arr_1
labels).

At scale (streaming.py, shards.py): the samples go to workdir/eval/samples/shard_XXXXX.npz
(uint8) and their features to workdir/eval/features/ as they are drawn, and a rerun after a
kill or preemption samples only the shards not on disk; a manifest of what the samples depend
on (checkpoint, sampler and model settings, seed, shard size) keeps a rerun with other
settings from reusing them. The statistics are streamed from the feature files in float64, so
host memory stays bounded at any number and size of samples.

Everything a metric needs is checked before sampling starts, so a missing weights file fails in
seconds rather than after an hour of sampling. The protocol (number of samples, sampler, NFE,
reference set, seed) is printed and stored with the numbers.

Source: Heusel et al. 2017 (FID); Salimans et al. 2016 (IS); Kynkaanniemi et al. 2019
(precision/recall); Ho et al. 2020 and Nichol & Dhariwal 2021 (NLL in bits/dim).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from diffusion_jax.evaluation import inception, streaming
from diffusion_jax.evaluation import reference_stats as reference_lib
from diffusion_jax.evaluation.streaming import PR_MAX_SAMPLES, class_balanced_labels  # noqa: F401

if TYPE_CHECKING:
  from diffusion_jax.config import RunConfig

METRICS = ('digits', 'fid', 'is', 'pr', 'nll')
SAMPLE_METRICS = ('digits', 'fid', 'is', 'pr')
INCEPTION_METRICS = ('fid', 'is', 'pr')
DISCRETE_OBJECTIVES = ('ddpm', 'iddpm')

SampleFn = Callable[..., Any]
NllFn = Callable[[np.ndarray, np.ndarray, jax.Array], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """`config.eval`, typed and validated (the eval section of the run config).

  Attributes:
    metrics: the metrics to compute, each one of METRICS.
    num_samples: samples drawn for the sample metrics.
    batch_size: samples per sample_fn call (config.eval.batch_size, 0 = config.sample's).
    seed: seed of the samples (config.eval.seed, None = config.seed).
    inception_weights: converted FID Inception weights (.npz), for fid / is / pr.
    reference_stats: reference (mu, sigma) .npz for fid (with 'arr_0' images for pr).
    inception_batch_size: images per Inception forward pass.
    is_splits: splits of the Inception Score.
    nll_split: the data split of the 'nll' metric.
    nll_num_examples: examples of that split.
    save_samples: write the evaluated samples to workdir/eval (the ADM suite's format).
  """

  metrics: tuple[str, ...] = ('digits',)
  num_samples: int = 1000
  batch_size: int = 100
  seed: int = 0
  inception_weights: str = ''
  reference_stats: str = ''
  inception_batch_size: int = 200
  is_splits: int = 10
  nll_split: str = 'test'
  nll_num_examples: int = 1000
  save_samples: bool = False

  @classmethod
  def config_keys(cls) -> tuple[str, ...]:
    """The keys `config.eval` accepts."""
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def from_config(cls, eval_cfg: Any, *, seed: int, sample_batch_size: int) -> EvalSettings:
    """Builds from `config.eval` (a dict of its keys) and the run's seed and sample batch."""
    values = dict(eval_cfg)
    metrics = values.get('metrics', cls.metrics)
    values['metrics'] = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    values['batch_size'] = values.get('batch_size') or sample_batch_size
    values['seed'] = seed if values.get('seed') is None else values['seed']
    for key in ('inception_weights', 'reference_stats'):
      values[key] = str(values.get(key) or '')
    settings = cls(**values)
    settings._validate()
    return settings

  def _validate(self):
    bad = [m for m in self.metrics if m not in METRICS]
    if bad or not self.metrics:
      raise ValueError(
        f'config.eval.metrics={self.metrics!r}: each entry must be one of {METRICS} (at least one).'
      )
    sample_metrics = [m for m in self.metrics if m in SAMPLE_METRICS]
    if sample_metrics and self.num_samples < 2:
      raise ValueError(
        f'config.eval.num_samples={self.num_samples} must be >= 2 for '
        f'{sample_metrics} (50000 for paper-comparable FID/IS).'
      )
    if self.batch_size < 1:
      raise ValueError(f'config.eval.batch_size={self.batch_size} must be >= 1.')
    if 'is' in self.metrics and not 1 <= self.is_splits <= self.num_samples:
      raise ValueError(
        f'config.eval.is_splits={self.is_splits} must be in [1, '
        f'config.eval.num_samples={self.num_samples}].'
      )
    if 'nll' in self.metrics and self.nll_num_examples < 1:
      raise ValueError(f'config.eval.nll_num_examples={self.nll_num_examples} must be >= 1.')


def check_run(run: RunConfig) -> None:
  """The checks of config.eval against the other sections (data set, objective)."""
  metrics, data = run.eval.metrics, run.data
  if 'digits' in metrics and (data.name != 'digits' or data.num_channels != 1):
    raise ValueError(
      "config.eval.metrics contains 'digits', which scores digit images: it "
      "needs config.data.name='digits' and num_channels=1 (got "
      f'{data.name!r}, {data.num_channels}). Use fid/is for other data.'
    )
  if 'nll' in metrics and run.diffusion.objective not in DISCRETE_OBJECTIVES:
    raise ValueError(
      "config.eval.metrics contains 'nll', which needs a discrete-time objective "
      f'({DISCRETE_OBJECTIVES}: the L_vlb bound in bits/dim); config.diffusion.objective is '
      f"{run.diffusion.objective!r}. Remove 'nll' from config.eval.metrics or train a "
      'DDPM/iDDPM model.'
    )


def protocol(run: RunConfig, nfe: int | None) -> dict[str, Any]:
  """What the numbers depend on: samples, labels, sampler, NFE, reference set, seed."""
  settings, data = run.eval, run.data
  sample_metrics = [m for m in settings.metrics if m in SAMPLE_METRICS]
  ref = []
  if 'digits' in settings.metrics:
    ref.append('digits train split (classifier features); real test split as baseline')
  if 'fid' in settings.metrics:
    ref.append(f'FID reference statistics {settings.reference_stats}')
  out = {
    'metrics': list(settings.metrics),
    'num_samples': settings.num_samples if sample_metrics else 0,
    'labels': 'class-balanced' if run.conditional else 'unconditional',
    'sampler': run.sample.sampler,
    'num_steps': run.sample.num_steps,
    'nfe': nfe,
    'guidance': float(run.sample.guidance),
    'objective': run.diffusion.objective,
    'dataset': f'{data.name} {data.image_size}x{data.image_size}x{data.num_channels}',
    'reference': '; '.join(ref) or None,
    'inception_weights': (
      settings.inception_weights if any(m in INCEPTION_METRICS for m in settings.metrics) else None
    ),
    'seed': settings.seed,
  }
  if 'nll' in settings.metrics:
    out['nll_data'] = (
      f'{data.name} {settings.nll_split} split, up to {settings.nll_num_examples} examples'
    )
  return out


def _format_protocol(p: dict[str, Any]) -> str:
  guidance = f', guidance w={p["guidance"]:g}' if p['guidance'] else ''
  nfe = p['nfe'] if p['nfe'] is not None else 'unknown'
  lines = [f'Evaluation protocol: metrics {", ".join(p["metrics"])}; seed {p["seed"]}.']
  if p['num_samples']:
    lines.append(
      f'  samples: {p["num_samples"]} ({p["labels"]}) from the {p["dataset"]} model '
      f'({p["objective"]}), sampler {p["sampler"]!r}, {p["num_steps"]} steps, NFE {nfe}'
      f'{guidance}.'
    )
  if p['reference']:
    lines.append(f'  reference: {p["reference"]}.')
  if p.get('nll_data'):
    lines.append(f'  NLL data: {p["nll_data"]}.')
  return '\n'.join(lines)


def _nll_batches(run: RunConfig) -> Iterator[dict[str, np.ndarray]]:
  """Real batches of the NLL split, on the 256-level grid."""
  settings, data = run.eval, run.data
  if data.name == 'digits':
    from diffusion_jax.data.input_pipeline import load_digits_split

    images, labels = load_digits_split(settings.nll_split, data.image_size)
    images, labels = images[: settings.nll_num_examples], labels[: settings.nll_num_examples]
    if data.num_channels == 3:
      images = np.repeat(images, 3, axis=-1)
    for start in range(0, images.shape[0], settings.batch_size):
      yield {
        'image': images[start : start + settings.batch_size],
        'label': labels[start : start + settings.batch_size],
      }
    return
  from diffusion_jax.data import input_pipeline

  data_cfg = dataclasses.replace(
    data, train_split=settings.nll_split, random_flip=False, augment_prob=0.0
  )
  batch = min(settings.batch_size, settings.nll_num_examples)
  it = input_pipeline.create_input_iter(data_cfg, batch, seed=settings.seed)
  for seen in range(0, settings.nll_num_examples, batch):
    b = next(it)
    n = min(batch, settings.nll_num_examples - seen)
    yield {'image': np.asarray(b['image'])[:n], 'label': np.asarray(b['label'])[:n]}


def nll_fn_from_checkpoint(components: Any, workdir: str) -> NllFn:
  """(images, labels, rng) -> bits/dim [B] of the run's latest EMA parameters (discrete time)."""
  from diffusion_jax import generation

  _check_nll(components)
  try:
    params, _ = generation.restore_ema_params(components, workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{e} (the 'nll' metric evaluates a trained model.)") from None
  return make_nll_fn(components, params)


def _check_nll(components: Any) -> None:
  if not hasattr(components.objective, 'nll_bits_per_dim'):
    raise ValueError(
      "config.eval.metrics contains 'nll', which needs a discrete-time "
      f'objective {DISCRETE_OBJECTIVES}; config.diffusion.objective is '
      f'{components.run.diffusion.objective!r}.'
    )


def make_nll_fn(components: Any, params: Any) -> NllFn:
  """(images, labels, rng) -> bits/dim [B] from a run's components and parameters."""
  _check_nll(components)
  model, objective, conditional = components.model, components.objective, components.run.conditional

  @jax.jit
  def bpd(params, images, labels, rng):
    label = labels if conditional else None
    return objective.nll_bits_per_dim(model.apply, params, images, rng, label=label)

  def fn(images, labels, rng):
    return np.asarray(bpd(params, images, labels, rng))

  return fn


def compute_nll(nll_fn: NllFn, batches, seed: int) -> dict[str, float]:
  """Mean bits/dim (and its standard error) of nll_fn over real batches."""
  key = jax.random.key(seed + 1)
  values = []
  for i, batch in enumerate(batches):
    # The bound is defined for data on the 256-level grid.
    images = inception.quantize_images(batch['image'])
    values.append(
      np.asarray(
        nll_fn(images, np.asarray(batch['label'], np.int32), jax.random.fold_in(key, i)), np.float64
      ).reshape(-1)
    )
  values = np.concatenate(values)
  return {
    'nll_bpd': float(values.mean()),
    'nll_bpd_stderr': float(values.std(ddof=1) / math.sqrt(len(values)))
    if len(values) > 1
    else float('nan'),
    'nll_num_examples': float(len(values)),
  }


def _reference_pr_features(path: str, extractor) -> np.ndarray:
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
      f"config.eval.metrics contains 'pr', which needs reference images: "
      f'config.eval.reference_stats={path!r} is not a file (an .npz with '
      "uint8 images under 'arr_0', like the ADM suite's reference batches)."
    )
  with np.load(path) as data:
    if 'arr_0' not in data.files:
      raise ValueError(
        f"config.eval.metrics contains 'pr', which needs reference images under "
        f"'arr_0' of config.eval.reference_stats={path!r} (as in the ADM "
        f'suite reference batches); that file has only {data.files}.'
      )
    images = data['arr_0'][:PR_MAX_SAMPLES]
  feats = [
    extractor(b.astype(np.float32) / np.float32(127.5) - 1.0)['pool']
    for b in np.array_split(images, max(1, len(images) // 1000))
  ]
  return np.concatenate(feats)


@dataclasses.dataclass
class _Prerequisites:
  """What the requested metrics need, loaded before any sampling."""

  extractor: Any = None
  ref_stats: Any = None
  real_pr_feats: Any = None
  digits: Any = None


def _prerequisites(run: RunConfig, eval_dir: str) -> _Prerequisites:
  wanted, settings, out = run.eval.metrics, run.eval, _Prerequisites()
  if any(m in INCEPTION_METRICS for m in wanted):
    out.extractor = inception.InceptionFeatureExtractor(
      inception.load_inception_variables(settings.inception_weights),
      batch_size=settings.inception_batch_size,
    )
  if 'fid' in wanted:
    out.ref_stats = reference_lib.load_reference_stats(settings.reference_stats)
  if 'pr' in wanted:
    out.real_pr_feats = _reference_pr_features(settings.reference_stats, out.extractor)
  if 'digits' in wanted:
    from diffusion_jax.evaluation import digits_metric

    out.digits = digits_metric.DigitsMetric(run.data.image_size, cache_dir=eval_dir)
  return out


def _write_results(eval_dir: str, proto: dict, results: dict[str, float]) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(eval_dir, exist_ok=True)
  path = os.path.join(eval_dir, 'metrics.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'protocol': proto, 'metrics': results}, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)
  summary = ', '.join(f'{k} {v:.4g}' for k, v in results.items() if not k.endswith('seconds'))
  print(f'Evaluation results ({path}): {summary}', flush=True)


def evaluate(
  config: Any,
  workdir: str,
  sample_fn: SampleFn | None,
  *,
  nll_fn: NllFn | None = None,
  nll_batches=None,
  components: Any = None,
) -> dict[str, float]:
  """Computes config.eval.metrics, writes workdir/eval/metrics.json, returns the numbers.

  Args:
    config: the run config (ConfigDict or RunConfig).
    workdir: the run directory; results go to workdir/eval/.
    sample_fn: draws samples, either `sample_fn(num_samples, rng) -> (images [N, H, W, C] in
      [-1, 1], labels [N])` or — when its first parameter is named `labels` (or it has
      `takes_labels = True`) — `sample_fn(labels [N], rng) -> images` (float in [-1, 1] or
      uint8), the evaluator choosing class-balanced labels. May be None when only 'nll' is
      requested. Called once per shard not yet on disk, with the shard's labels and
      fold_in(key(config.eval.seed), shard index). A `process_local` attribute (as
      generation.load_sampler's sampler has) makes each host sample only its rows; a
      `fingerprint` attribute (a JSON-able dict) identifies its parameters in the manifest.
    nll_fn: for 'nll': `(images, labels, rng) -> bits/dim [B]`; default: the discrete-time
      objective's L_vlb bound with the EMA parameters of the latest checkpoint in workdir.
    nll_batches: for 'nll': iterable of {'image', 'label'} real batches; default: the
      config.eval.nll_split split ('test') of config.data.
    components: the run's build.Components, shared with the sampler (default: built here).

  Returns:
    {metric name: float}, e.g. {'fid': ..., 'inception_score': ..., 'digits_accuracy': ...},
    the same on every process (process 0 writes the files).
  """
  from diffusion_jax import build as build_lib
  from diffusion_jax import config as config_lib

  run = components.run if components is not None else config_lib.build_run_config(config)
  check_run(run)
  eval_dir = os.path.join(workdir, 'eval')
  wanted = run.eval.metrics
  pre = _prerequisites(run, eval_dir)  # every prerequisite before sampling
  if any(m in SAMPLE_METRICS for m in wanted) and sample_fn is None:
    raise ValueError(f'sample_fn is None but config.eval.metrics={wanted} needs samples.')
  if components is None:
    components = build_lib.build(run)
  if 'nll' in wanted and nll_fn is None:
    nll_fn = nll_fn_from_checkpoint(components, workdir)
  proto = protocol(run, build_lib.sampler_nfe(components))
  if jax.process_index() == 0:
    print(_format_protocol(proto), flush=True)
    logging.info('%s', _format_protocol(proto))
  results: dict[str, float] = {}
  if any(m in SAMPLE_METRICS for m in wanted):
    results.update(streaming.sample_metrics(run, sample_fn, pre, eval_dir))
  if 'nll' in wanted:
    t1 = time.time()
    batches = nll_batches if nll_batches is not None else _nll_batches(run)
    results.update(compute_nll(nll_fn, batches, run.eval.seed))
    results['nll_seconds'] = time.time() - t1
  _write_results(eval_dir, proto, results)
  return results
