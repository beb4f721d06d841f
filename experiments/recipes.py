"""Each paper's training recipe, setting by setting, against its reference implementation.

    python -m experiments.recipes            # writes experiments/results/recipes.md
    python -m experiments.recipes --check    # exits 1 if a config drifted from its reference

Every row names a config key, the value the reference code runs with and the reference
file it comes from; `check()` compares the value the config really sets. The tests run
`check()` on every config, so a config cannot drift from its paper without a failing
test, and a reviewer can read the recipe line by line in the generated page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
from typing import Any

from experiments import report

PIX2SEQ = 'google-research/pix2seq'
RIN_SWEEP_IN64 = f'{PIX2SEQ} configs/config_diffusion_imagenet64.py (tape sweep)'
RIN_SWEEP_C10 = f'{PIX2SEQ} configs/config_diffusion_cifar10.py (tape sweep)'
RIN_BASE = f'{PIX2SEQ} configs/config_diffusion_base.py'
PIX2SEQ_LAMB = f'{PIX2SEQ} models/model_utils.py build_optimizer (LAMB has no clipnorm)'
PIX2SEQ_SAMPLER = f'{PIX2SEQ} models/diffusion_utils.py Scheduler.transition_step'
PIX2SEQ_GUIDANCE = f'{PIX2SEQ} models/diffusion_utils.py Scheduler.generate'
PIX2SEQ_TAPE = f'{PIX2SEQ} architectures/tape.py'
PIX2SEQ_EMA = f'{PIX2SEQ} models/image_diffusion_model.py Trainer.train_step'
PIX2SEQ_LR = f'{PIX2SEQ} models/model_utils.py WarmUpAndDecay'

EDM_TRAIN = 'NVlabs/edm train.py (defaults, --cond=1 --arch=ddpmpp)'
EDM_LOOP = 'NVlabs/edm training/training_loop.py'
EDM_LOSS = 'NVlabs/edm training/loss.py EDMLoss'
EDM_SAMPLER = 'NVlabs/edm generate.py edm_sampler'

DDPM_RUN = 'hojonathanho/diffusion scripts/run_cifar.py train()'
IDDPM_README = 'openai/improved-diffusion README.md (CIFAR-10 L_hybrid flags)'
IDDPM_DEFAULTS = 'openai/improved-diffusion improved_diffusion/script_util.py defaults'
IDDPM_TRAIN = 'openai/improved-diffusion scripts/image_train.py, train_util.py'
NCSN_YML = 'ermongroup/ncsnv2 configs/cifar10.yml'

NAME = 'recipes'


@dataclasses.dataclass(frozen=True)
class Setting:
  """One line of a recipe: config key, the reference's value, where it comes from."""

  key: str  # dotted config path, e.g. 'optim.lr_schedule'
  reference: Any
  source: str
  note: str = ''  # the reference's own name for the setting, when it differs


def _rin_common(sweep: str) -> list[Setting]:
  """What the ImageNet-64 and CIFAR-10 RIN sweeps share."""
  return [
    Setting('model.name', 'rin', sweep, "arch 'tape'"),
    Setting('model.class_conditional', True, sweep, "conditional='class'"),
    Setting('diffusion.objective', 'chen', sweep, "'image_diffusion_model'"),
    Setting('diffusion.prediction', 'eps', sweep, "pred_type='eps'"),
    Setting('diffusion.scale', 1.0, sweep, 'b_scale=1.0'),
    Setting('diffusion.normalize', 'none', RIN_BASE, 'normalize_noisy_input=False'),
    Setting('diffusion.self_cond_rate', 0.9, sweep, "self_cond='latent', rate 0.9"),
    Setting('diffusion.label_drop_prob', 0.0, RIN_BASE, 'cond_dropout=0.'),
    Setting('model.write_kv_norm', False, RIN_BASE, 'xattn_enc_ln=False'),
    Setting('model.stem_norm', True, PIX2SEQ_TAPE, 'LayerNorm on the patch embeddings'),
    Setting('model.tape_pos_init', 'random', sweep, "tape_pos_encoding='learned'"),
    Setting('model.num_latents', 128, sweep, 'latent_slots'),
    Setting('model.latent_mlp_ratio', 4, sweep),
    Setting('model.latent_heads', 16, sweep, 'latent_num_heads'),
    Setting('optim.name', 'lamb', sweep),
    Setting('optim.warmup_steps', 10_000, sweep),
    Setting('optim.weight_decay', 0.01, sweep),
    Setting('optim.b1', 0.9, RIN_BASE, 'beta1'),
    Setting('optim.b2', 0.999, sweep, 'beta2'),
    Setting('optim.eps', 1e-8, RIN_BASE),
    Setting('optim.grad_clip', 0.0, PIX2SEQ_LAMB),
    Setting('optim.ema_decay', 0.9999, sweep),
    Setting('optim.ema_warmup', False, PIX2SEQ_EMA, 'constant decay from step 0'),
    Setting('optim.end_lr_factor', 0.0, sweep, 'end_lr_factor'),
    Setting('training.num_steps', 150_000, sweep),
    Setting('data.random_flip', True, RIN_BASE, "flipping='left_right'"),
    Setting('sample.sampler', 'chen_ddpm', sweep, "sampler_name='ddpm' (eval args)"),
    Setting('sample.inference_schedule', 'cosine', sweep, "infer_schedule='cosine'"),
    Setting('sample.chen_ddpm_variance', 'large', PIX2SEQ_SAMPLER, "ddpm_var_type='large'"),
    Setting('sample.guidance_carry', 'conditional', PIX2SEQ_GUIDANCE),
    Setting('sample.clip_x0', True, RIN_BASE, "x0_clip='auto'"),
  ]


RECIPES: dict[str, list[Setting]] = {
  'imagenet64': _rin_common(RIN_SWEEP_IN64)
  + [
    Setting('data.image_size', 64, RIN_SWEEP_IN64),
    Setting('model.patch_size', 8, RIN_SWEEP_IN64),
    Setting('model.num_blocks', 4, RIN_SWEEP_IN64, "num_layers='4,4,4,4'"),
    Setting('model.num_compute_layers', 4, RIN_SWEEP_IN64, "num_layers='4,4,4,4'"),
    Setting('model.latent_dim', 768, RIN_SWEEP_IN64),
    Setting('model.tape_dim', 512, RIN_SWEEP_IN64),
    Setting('model.tape_mlp_ratio', 4, RIN_SWEEP_IN64),
    Setting('model.read_write_heads', 16, RIN_SWEEP_IN64, 'rw_num_heads'),
    Setting('model.dropout', 0.0, RIN_SWEEP_IN64, 'drop_units'),
    Setting('model.drop_path', 0.0, RIN_SWEEP_IN64),
    Setting('diffusion.train_schedule', 'linear', RIN_SWEEP_IN64, "'simple_linear'"),
    Setting('optim.learning_rate', 2e-3, RIN_SWEEP_IN64),
    Setting('optim.lr_schedule', 'cosine@0.7', RIN_SWEEP_IN64),
    Setting('training.batch_size', 1024, RIN_SWEEP_IN64),
    Setting('sample.num_steps', 1000, RIN_SWEEP_IN64, 'infer_iterations 100 / 250 / 1000'),
  ],
  'cifar10_rin': _rin_common(RIN_SWEEP_C10)
  + [
    Setting('data.image_size', 32, RIN_BASE),
    Setting('model.patch_size', 2, RIN_SWEEP_C10),
    Setting('model.num_blocks', 3, RIN_SWEEP_C10, "num_layers='2,2,2'"),
    Setting('model.num_compute_layers', 2, RIN_SWEEP_C10, "num_layers='2,2,2'"),
    Setting('model.latent_dim', 512, RIN_SWEEP_C10),
    Setting('model.tape_dim', 256, RIN_SWEEP_C10),
    Setting('model.tape_mlp_ratio', 2, RIN_SWEEP_C10),
    Setting('model.read_write_heads', 8, RIN_SWEEP_C10, 'rw_num_heads'),
    Setting('model.dropout', 0.1, RIN_SWEEP_C10, 'drop_units (latent MLP hidden units)'),
    Setting('model.drop_path', 0.1, RIN_SWEEP_C10),
    Setting('diffusion.train_schedule', 'sigmoid', RIN_SWEEP_C10, "'sigmoid@-3,3,0.9'"),
    Setting('diffusion.schedule_start', -3.0, RIN_SWEEP_C10),
    Setting('diffusion.schedule_end', 3.0, RIN_SWEEP_C10),
    Setting('diffusion.schedule_tau', 0.9, RIN_SWEEP_C10),
    Setting('optim.learning_rate', 3e-3, RIN_SWEEP_C10),
    Setting('optim.lr_schedule', 'cosine@0.8', RIN_SWEEP_C10),
    Setting('training.batch_size', 256, RIN_SWEEP_C10),
    Setting('sample.num_steps', 1000, RIN_SWEEP_C10, 'infer_iterations 400 / 1000'),
  ],
  'cifar10_ddpm': [
    Setting('diffusion.objective', 'ddpm', DDPM_RUN),
    Setting('diffusion.num_timesteps', 1000, DDPM_RUN, 'num_diffusion_timesteps'),
    Setting('diffusion.beta_schedule', 'linear', DDPM_RUN, '1e-4 .. 0.02'),
    Setting('diffusion.prediction', 'eps', DDPM_RUN, "model_mean_type='eps'"),
    Setting('diffusion.loss', 'simple', DDPM_RUN, "loss_type='mse'"),
    Setting('diffusion.fixed_variance', 'large', DDPM_RUN, "model_var_type='fixedlarge'"),
    Setting('model.base_channels', 128, DDPM_RUN, "'unet2d16b2': ch=128"),
    Setting('model.channel_mults', (1, 2, 2, 2), DDPM_RUN, 'ch_mult'),
    Setting('model.num_res_blocks', 2, DDPM_RUN, 'num_res_blocks'),
    Setting('model.attention_resolutions', (16,), DDPM_RUN, 'attn_resolutions'),
    Setting('model.dropout', 0.1, DDPM_RUN),
    Setting('model.class_conditional', False, DDPM_RUN),
    Setting('data.random_flip', True, DDPM_RUN, 'randflip=1'),
    Setting('optim.name', 'adam', DDPM_RUN),
    Setting('optim.learning_rate', 2e-4, DDPM_RUN, 'lr'),
    Setting('optim.warmup_steps', 5000, DDPM_RUN, 'warmup'),
    Setting('optim.grad_clip', 1.0, DDPM_RUN),
    Setting('optim.ema_decay', 0.9999, 'Ho et al. 2020, Appendix B'),
    Setting('training.batch_size', 128, DDPM_RUN, 'total_bs'),
    Setting('sample.sampler', 'ddpm', DDPM_RUN, 'p_sample_loop'),
    Setting('sample.num_steps', 1000, DDPM_RUN),
  ],
  'cifar10_iddpm': [
    Setting('diffusion.objective', 'iddpm', IDDPM_README),
    Setting('diffusion.num_timesteps', 4000, IDDPM_README, '--diffusion_steps'),
    Setting('diffusion.beta_schedule', 'cosine', IDDPM_README, '--noise_schedule'),
    Setting('diffusion.loss', 'hybrid', IDDPM_DEFAULTS, 'learn_sigma + rescale_learned_sigmas'),
    Setting('diffusion.rescale_timesteps', True, IDDPM_DEFAULTS),
    Setting('model.learn_variance', True, IDDPM_README, '--learn_sigma True'),
    Setting('model.base_channels', 128, IDDPM_README, '--num_channels'),
    Setting('model.num_res_blocks', 3, IDDPM_README),
    Setting('model.dropout', 0.3, IDDPM_README),
    Setting('model.num_heads', 4, IDDPM_DEFAULTS),
    Setting('model.attention_resolutions', (16, 8), IDDPM_DEFAULTS),
    Setting('model.scale_shift_norm', True, IDDPM_DEFAULTS, 'use_scale_shift_norm'),
    Setting('data.random_flip', False, IDDPM_TRAIN, 'image_datasets.py: no flips'),
    Setting('optim.learning_rate', 1e-4, IDDPM_README, '--lr'),
    Setting('optim.weight_decay', 0.0, IDDPM_TRAIN),
    Setting('optim.warmup_steps', 0, IDDPM_TRAIN),
    Setting('optim.grad_clip', 0.0, IDDPM_TRAIN),
    Setting('optim.ema_decay', 0.9999, IDDPM_TRAIN, 'ema_rate'),
    Setting('training.batch_size', 128, IDDPM_README, '--batch_size'),
  ],
  'cifar10_ncsnv2': [
    Setting('model.name', 'ncsnv2', 'ermongroup/ncsnv2 models/ncsnv2.py NCSNv2'),
    Setting('model.network_kwargs.model.ngf', 128, NCSN_YML),
    Setting('model.network_kwargs.model.normalization', 'InstanceNorm++', NCSN_YML),
    Setting('model.network_kwargs.model.nonlinearity', 'elu', NCSN_YML),
    Setting('diffusion.objective', 'ncsn', NCSN_YML),
    Setting('diffusion.sigma_max', 50.0, NCSN_YML, 'sigma_begin'),
    Setting('diffusion.sigma_min', 0.01, NCSN_YML, 'sigma_end'),
    Setting('diffusion.num_levels', 232, NCSN_YML, 'num_classes'),
    Setting('diffusion.data_range', 'unit', NCSN_YML, 'rescaled: false'),
    Setting('diffusion.ncsn_loss_reduction', 'sum', 'ermongroup/ncsnv2 losses/dsm.py'),
    Setting('data.random_flip', True, NCSN_YML),
    Setting('optim.name', 'adam', NCSN_YML),
    Setting('optim.learning_rate', 1e-4, NCSN_YML, 'lr'),
    Setting('optim.eps', 1e-8, NCSN_YML),
    Setting('optim.weight_decay', 0.0, NCSN_YML),
    Setting('optim.ema_decay', 0.999, NCSN_YML, 'ema_rate'),
    Setting('training.batch_size', 128, NCSN_YML),
    Setting('training.num_steps', 300_000, NCSN_YML, 'n_iters'),
    Setting('sample.sampler', 'langevin', NCSN_YML),
    Setting('sample.n_steps_each', 5, NCSN_YML),
    Setting('sample.step_lr', 6.2e-6, NCSN_YML),
  ],
  'cifar10_edm': [
    Setting('diffusion.objective', 'edm', EDM_TRAIN, '--precond=edm'),
    Setting('diffusion.sigma_data', 0.5, EDM_LOSS),
    Setting('diffusion.p_mean', -1.2, EDM_LOSS),
    Setting('diffusion.p_std', 1.2, EDM_LOSS),
    Setting('model.class_conditional', True, EDM_TRAIN, '--cond=1'),
    Setting('model.name', 'edm_songunet', EDM_TRAIN, '--arch=ddpmpp (SongUNet)'),
    Setting('model.network_kwargs.model_channels', 128, EDM_TRAIN, 'model_channels (ddpmpp)'),
    Setting('model.network_kwargs.channel_mult', (2, 2, 2), EDM_TRAIN, 'channel_mult (ddpmpp)'),
    Setting('model.network_kwargs.num_blocks', 4, 'NVlabs/edm training/networks.py SongUNet'),
    Setting('model.network_kwargs.attn_resolutions', (16,), 'NVlabs/edm networks.py SongUNet'),
    Setting('model.network_kwargs.embedding_type', 'positional', EDM_TRAIN, 'ddpmpp'),
    Setting('model.network_kwargs.resample_filter', (1, 1), EDM_TRAIN, 'ddpmpp'),
    Setting('model.network_kwargs.dropout', 0.13, EDM_TRAIN, '--dropout'),
    Setting('model.dropout', 0.13, EDM_TRAIN, '--dropout'),
    Setting('model.network_kwargs.augment_dim', 9, EDM_TRAIN, 'augment_dim'),
    Setting('model.augment_dim', 9, EDM_TRAIN, 'augment_dim'),
    Setting('data.augment_prob', 0.12, EDM_TRAIN, '--augment'),
    Setting('data.random_flip', False, EDM_TRAIN, '--xflip=False'),
    Setting('optim.name', 'adam', EDM_TRAIN, 'torch.optim.Adam'),
    Setting('optim.learning_rate', 1e-3, EDM_TRAIN, '--lr'),
    Setting('optim.b1', 0.9, EDM_TRAIN, 'betas'),
    Setting('optim.b2', 0.999, EDM_TRAIN, 'betas'),
    Setting('optim.eps', 1e-8, EDM_TRAIN),
    Setting('optim.warmup_steps', 10_000_000 // 512, EDM_LOOP, 'lr_rampup_kimg=10000'),
    Setting('optim.ema_halflife_kimg', 500.0, EDM_TRAIN, '--ema=0.5 (Mimg)'),
    Setting('optim.ema_rampup_ratio', 0.05, EDM_LOOP, 'ema_rampup_ratio'),
    Setting('training.batch_size', 512, EDM_TRAIN, '--batch'),
    Setting('training.num_steps', 200_000_000 // 512, EDM_TRAIN, '--duration=200 (Mimg)'),
    Setting('sample.sampler', 'edm_heun', EDM_SAMPLER),
    Setting('sample.num_steps', 18, EDM_SAMPLER),
    Setting('sample.sigma_min', 0.002, EDM_SAMPLER),
    Setting('sample.sigma_max', 80.0, EDM_SAMPLER),
    Setting('sample.rho', 7.0, EDM_SAMPLER),
    Setting('sample.s_churn', 0.0, EDM_SAMPLER, 'S_churn'),
  ],
}


@dataclasses.dataclass(frozen=True)
class CodeFact:
  """Reference behaviour that lives in code, not in a config key, and the test that pins it."""

  behaviour: str
  reference: str
  option: str  # the config key that selects the non-reference variant, or ''
  test: str


CODE_FACTS: list[CodeFact] = [
  CodeFact(
    'LAMB trust ratio per layer of scanned stacks and per q / k / v slice of fused kernels',
    'tfa LAMB on Keras variables, one per layer and per projection (' + PIX2SEQ_LAMB + ')',
    '',
    'tests/test_optim.py::test_three_lamb_steps_agree_between_scanned_and_unrolled_layers, '
    '::test_lamb_on_stacked_fused_kernel_equals_lamb_per_variable',
  ),
  CodeFact(
    'no weight decay or trust ratio on biases and LayerNorm parameters',
    f"exclude_from_weight_decay='bias,beta,gamma' ({RIN_BASE})",
    '',
    'tests/test_optim.py::test_lamb_step_matches_numpy_reference',
  ),
  CodeFact(
    'warmup step / W * peak, then the decay evaluated at step - W (cosine@r, linear, exp@r)',
    PIX2SEQ_LR,
    'optim.lr_schedule',
    'tests/test_optim.py::test_lr_schedule_matches_float64_reference',
  ),
  CodeFact(
    'RIN write unit: keys / values are the raw latents',
    f'xattn_enc_ln=False ({PIX2SEQ_TAPE})',
    'model.write_kv_norm',
    'tests/test_models.py::test_read_and_write_units_match_the_reference_transcription',
  ),
  CodeFact(
    'RIN dropout only on the latent MLP hidden units, drop-path on the compute residuals',
    f'{PIX2SEQ} architectures/transformers.py TransformerEncoderLayer',
    '',
    'tests/test_models.py::test_rin_train_mode_dropout, '
    '::test_rin_dropout_lives_only_in_the_compute_layers',
  ),
  CodeFact(
    'exact (erf) GELU in the RIN MLPs',
    f'{PIX2SEQ} architectures/transformers.py FeedForwardLayer (tf.nn.gelu)',
    '',
    'tests/test_models.py::test_mlp_gelu_is_the_exact_erf_form',
  ),
  CodeFact(
    'time token: standardised sinusoids of 1000 gamma -> Dense -> SiLU -> Dense',
    f'{PIX2SEQ} architectures/transunet.py ScalarEmbedding (normalize=True)',
    '',
    'tests/test_models.py::test_time_features_are_the_reference_standardised_sinusoids',
  ),
  CodeFact(
    'glorot_uniform kernels, zero biases; Keras MultiHeadAttention fans per projection',
    'Keras defaults; tf.keras.layers.MultiHeadAttention',
    '',
    'tests/test_models.py::test_fused_attention_kernels_get_keras_per_projection_fans, '
    '::test_rin_init_is_the_keras_default',
  ),
  CodeFact(
    'Chen DDPM step with the large variance 1 - alpha_ts; x0 returned',
    PIX2SEQ_SAMPLER,
    'sample.chen_ddpm_variance',
    'tests/test_samplers_discrete.py::test_chen_ddpm_matches_float64_reference_transition',
  ),
  CodeFact(
    'guidance with self-conditioning: both passes read the conditional latents',
    PIX2SEQ_GUIDANCE,
    'sample.guidance_carry',
    'tests/test_samplers_edm.py::test_guidance_combines_conditional_and_unconditional',
  ),
  CodeFact(
    'EMA half-life in images with ramp-up: beta = 0.5 ** (B / min(h, ratio * nimg))',
    EDM_LOOP,
    'optim.ema_halflife_kimg',
    'tests/test_optim.py::test_edm_ema_decay_matches_float64_reference',
  ),
  CodeFact(
    'linear betas scaled by 1000 / T; space_timesteps with the accumulating stride',
    'openai/improved-diffusion gaussian_diffusion.get_named_beta_schedule, respace.space_timesteps',
    '',
    'tests/test_schedules.py::test_linear_and_cosine_betas_match_improved_diffusion, '
    '::test_space_timesteps_match_improved_diffusion_for_every_count',
  ),
  CodeFact(
    'model input t * 1000 / T, for respaced chains the original index',
    'openai/improved-diffusion GaussianDiffusion._scale_timesteps, respace._WrappedModel',
    'diffusion.rescale_timesteps',
    'tests/test_objectives_losses.py::test_discrete_model_is_fed_rescaled_timesteps',
  ),
  CodeFact(
    'NCSNv2: network data in [0, 1], summed DSM loss, uniform Langevin start, final clamp',
    'ermongroup/ncsnv2 datasets/__init__.py, losses/dsm.py, models/__init__.py',
    'diffusion.data_range, diffusion.ncsn_loss_reduction',
    'tests/test_objectives_losses.py::'
    'test_cifar10_ncsnv2_ladder_is_the_papers_relative_to_the_data, '
    'tests/test_samplers_langevin.py::test_ncsn_objective_sampler_matches_the_reference_loop',
  ),
]


def config_value(config: Any, key: str) -> Any:
  """The value at a dotted path of a ConfigDict, or a KeyError naming the path."""
  node = config
  for part in key.split('.'):
    if part not in node:
      raise KeyError(f'config has no key {key!r}')
    node = node[part]
  return node


def _equal(got: Any, want: Any) -> bool:
  if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
    return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=0.0)
  if isinstance(want, (tuple, list)):
    return isinstance(got, (tuple, list)) and list(got) == list(want)
  return type(got) is type(want) and got == want


def load_config(name: str) -> Any:
  """configs/<name>.py's `get_config()`."""
  return importlib.import_module(f'configs.{name}').get_config()


def check(name: str) -> list[str]:
  """One line per setting of `name`'s recipe that its config does not match (empty: all do)."""
  config = load_config(name)
  problems = []
  for s in RECIPES[name]:
    try:
      got = config_value(config, s.key)
    except KeyError as e:
      problems.append(f'{name}: {e.args[0]} (reference {s.reference!r}, {s.source})')
      continue
    if not _equal(got, s.reference):
      problems.append(f'{name}: {s.key} = {got!r}, reference {s.reference!r} ({s.source})')
  return problems


def render() -> str:
  """The markdown page: one table per config."""
  lines = [
    "# Training recipes against the papers' reference code",
    '',
    'Generated by `python -m experiments.recipes`; `tests/test_experiments.py` checks',
    'that every config still sets each value. "reference" is what the reference',
    "implementation runs with; the note gives the reference's own name for it.",
  ]
  for name, settings in RECIPES.items():
    config = load_config(name)
    rows = [
      (f'`{s.key}`', repr(config_value(config, s.key)), repr(s.reference), s.note, s.source)
      for s in settings
    ]
    lines += ['', f'## configs/{name}.py', '']
    lines.append(
      report.markdown_table(('setting', 'ours', 'reference', 'reference name', 'source'), rows)
    )
  lines += ['', '## Behaviour in code (every config)', '']
  rows = [(f.behaviour, f.reference, f.option or '-', f.test) for f in CODE_FACTS]
  lines.append(
    report.markdown_table(('behaviour', 'reference', 'option for the variant', 'test'), rows)
  )
  return '\n'.join(lines) + '\n'


def write(out_dir: str = report.RESULTS_DIR) -> str:
  """Writes out_dir/recipes.md and returns its path."""
  path = os.path.join(out_dir, f'{NAME}.md')
  os.makedirs(out_dir, exist_ok=True)
  with open(path, 'w') as f:
    f.write(render())
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true', help='only compare; exit 1 on drift')
  args = parser.parse_args(argv)
  problems = [p for name in RECIPES for p in check(name)]
  for p in problems:
    print(p)
  if args.check:
    return 1 if problems else 0
  print(write())
  return 0


if __name__ == '__main__':
  sys.exit(main())
