"""Default configuration: every section and key the code reads, with defaults.

Other configs import this one and override what differs; `diffusion_jax/config.py` turns
it into the typed run config and rejects any key not listed here. Launch:

    python main.py --config=configs/default.py --workdir=/tmp/diffusion_jax
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default configuration (a small class-conditional RIN on digits)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Input pipeline (diffusion_jax/data/input_pipeline.py).
  config.data = data = ml_collections.ConfigDict()
  data.name = 'digits'  # 'digits' | 'cifar10' | 'imagenet2012' | 'folder'
  data.image_size = 16
  data.num_channels = 1
  data.num_classes = 10
  data.data_dir = ''  # tfds data_dir; '' = tfds default.
  data.folder = ''  # root of an image folder (class = subfolder) for name='folder'.
  data.train_split = 'train'
  data.random_flip = False
  data.shuffle_buffer = 10_000
  data.augment_prob = 0.0  # EDM non-leaking augmentation probability; 0 = off.
  data.prefetch = 2
  data.num_workers = 0  # folder decoding threads; 0 = one per CPU core (at most 32).
  data.verify_images = True  # folder: decode every file once at start-up, skip bad ones.
  data.cache_in_memory = None  # tfds: None = only for small data sets (CIFAR-10).

  # Network (diffusion_jax/models/).
  config.model = model = ml_collections.ConfigDict()
  model.name = 'rin'  # 'rin' | 'unet' | a paper's network (see network_kwargs)
  model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'
  model.param_dtype = 'float32'
  model.remat = False
  # RIN blocks and compute layers as one lax.scan each: compile time flat in depth (the
  # ImageNet models). A few small layers run faster unrolled on CPU (the digits default).
  model.scan_layers = True
  model.attention_impl = 'auto'  # 'auto' | 'xla' | 'cudnn' | 'einsum'
  model.learn_variance = False  # extra output channels for iDDPM's learned variance.
  # False = an unconditional network (no class input) even when data.num_classes > 0;
  # the one source of "is this run class-conditional" (RunConfig.conditional).
  model.class_conditional = True
  # RIN.
  model.patch_size = 2
  # LayerNorm on the patch embeddings. It divides out each token's scale: harmless for
  # 3-channel patches (1 of 48+ values), a bottleneck for 1-channel 2x2 patches (1 of 4).
  model.stem_norm = True
  # Learned tape positions start as 'random' (std 0.02, ViT-style) or 'sincos' (2-D sin-cos
  # codes of unit scale): the latter gives short runs position information from step 0.
  model.tape_pos_init = 'random'
  model.write_kv_norm = False  # LayerNorm on the write unit's latent keys/values (ref.: none).
  model.tape_dim = 128
  model.tape_mlp_ratio = 2  # 0 = the write unit has no MLP (allowed by the reference).
  model.read_write_heads = 4
  model.num_latents = 32
  model.latent_dim = 128
  model.latent_heads = 4
  model.latent_mlp_ratio = 4
  model.num_blocks = 2
  model.num_compute_layers = 2
  model.dropout = 0.0  # RIN: compute-layer MLP hidden units only; U-Net: residual blocks.
  model.drop_path = 0.0  # RIN: stochastic depth on the compute layers' residual branches.
  # U-Net.
  model.base_channels = 64
  model.channel_mults = (1, 2, 2)
  model.num_res_blocks = 2
  model.attention_resolutions = (16,)
  model.num_heads = 4
  model.augment_dim = 0  # EDM augmentation-conditioning width; 0 = none.
  model.self_cond = False  # U-Net: extra input channels for the previous prediction.
  model.scale_shift_norm = False  # iDDPM/ADM: the embedding scales and shifts the norm.
  model.resblock_updown = False  # EDM/ADM: resample inside residual blocks.
  model.skip_scale = 1.0  # EDM's DDPM++ multiplies residual sums by sqrt(1/2).
  # The papers' own networks ('ddpm_unet', 'adm_unet', 'edm_songunet', 'edm_dhariwalunet',
  # 'ncsnv2') take the reference constructor's keyword arguments here, by their names.
  model.network_kwargs = ml_collections.ConfigDict()

  # Diffusion process and training objective (diffusion_jax/schedules.py, objectives).
  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.objective = 'chen'  # 'chen' | 'ddpm' | 'iddpm' | 'edm' | 'ncsn'
  # Chen 2023 (continuous time).
  diffusion.train_schedule = 'linear'  # 'linear' | 'sigmoid' | 'cosine'
  diffusion.schedule_start = 0.0
  diffusion.schedule_end = 1.0
  diffusion.schedule_tau = 1.0
  diffusion.scale = 1.0  # input scale b.
  diffusion.prediction = 'eps'  # 'eps' | 'x0' | 'v'
  diffusion.normalize = 'per_example'  # 'per_example' | 'analytic' | 'none'
  diffusion.self_cond_rate = 0.9
  diffusion.label_drop_prob = 0.1  # classifier-free guidance training.
  # DDPM / iDDPM (discrete time).
  diffusion.num_timesteps = 1000
  diffusion.beta_schedule = 'linear'  # 'linear' | 'cosine'
  diffusion.loss = 'simple'  # 'simple' | 'hybrid' | 'vlb'
  diffusion.importance_sampling = False
  diffusion.rescale_timesteps = True  # model input t * 1000 / T (improved-diffusion).
  diffusion.fixed_variance = 'small'  # reverse variance when not learned: 'small' | 'large'
  diffusion.hybrid_weight = 0.001  # iDDPM's lambda of L_hybrid.
  # EDM.
  diffusion.sigma_data = 0.5
  diffusion.p_mean = -1.2
  diffusion.p_std = 1.2
  diffusion.precond = 'edm'  # EDM's preconditioning: 'edm' | 'vp' (VPPrecond) | 've' (VEPrecond)
  # NCSNv2.
  diffusion.sigma_max = 50.0
  diffusion.sigma_min = 0.01
  diffusion.num_levels = 232
  diffusion.data_range = 'unit'  # network data: 'unit' [0, 1] (reference) | 'symmetric' [-1, 1]
  diffusion.ncsn_loss_reduction = 'sum'  # 'sum' over dims (reference) | 'mean'

  # Optimizer (diffusion_jax/training/optim.py).
  config.optim = optim = ml_collections.ConfigDict()
  optim.name = 'lamb'  # 'lamb' | 'adamw' | 'adam'
  optim.learning_rate = 2e-3
  # Warmup, then 'cosine' | 'cosine@<rate>' | 'linear' | 'exp@<rate>' | 'constant', rate in
  # (0, 1]. cosine@r stretches the cosine over (num_steps - warmup) / r steps, so the run
  # ends at (1 + cos(pi r)) / 2 of the peak (cosine@0.7: 20.6%); exp@r ends at r * peak.
  optim.lr_schedule = 'cosine'
  optim.end_lr_factor = 0.0  # floor of cosine / linear as a fraction of the peak.
  optim.warmup_steps = 200
  optim.b1 = 0.9
  optim.b2 = 0.999
  optim.eps = 1e-8
  optim.weight_decay = 0.01
  optim.grad_clip = 0.0  # global-norm clip; 0 = off.
  optim.ema_decay = 0.9999
  optim.ema_warmup = True
  # EDM's EMA: half-life in thousands of images (> 0 replaces ema_decay / ema_warmup),
  # capped at ema_rampup_ratio x the images seen so far (0 = no ramp-up).
  optim.ema_halflife_kimg = 0.0
  optim.ema_rampup_ratio = 0.05

  # Training loop (diffusion_jax/training/).
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128  # global batch over all devices and hosts.
  training.num_steps = 4000
  training.log_every = 50
  training.checkpoint_every = 500
  training.keep_checkpoints = 3
  training.sample_every = 1000
  training.num_sample_images = 64
  training.profile = False
  training.mesh_fsdp = 1  # size of the 'fsdp' mesh axis; 1 = pure data parallel.
  # Micro-batches per optimizer step (one lax.scan in the compiled step): the same update
  # as the whole batch at once, in 1 / k of the activation memory.
  training.grad_accum_steps = 1
  # EDM2 post-hoc EMA (Karras et al. 2024, Sec. 3): power-function EMA profiles of these
  # relative standard deviations, snapshotted every this many steps; 0 = off.
  training.phema_stds = (0.05, 0.10)
  training.phema_snapshot_every = 0

  # Sampling (diffusion_jax/samplers/; --mode=sample in diffusion_jax/generation.py).
  config.sample = sample = ml_collections.ConfigDict()
  sample.sampler = 'chen_ddpm'  # a registered sampler name, or 'default' (the objective's).
  sample.num_steps = 100
  sample.inference_schedule = 'cosine'
  # chen_ddpm's transition variance: 'large' = 1 - alpha_ts (the authors' code default),
  # 'small' = the posterior variance (their 'ddpm@small').
  sample.chen_ddpm_variance = 'large'
  sample.guidance = 0.0  # classifier-free guidance weight w; 0 = off.
  # Self-conditioning carry under guidance: 'conditional' = both passes read the
  # conditional branch's latents (the reference sampler); 'separate' = one carry each.
  sample.guidance_carry = 'conditional'
  sample.num_samples = 100
  sample.batch_size = 100
  sample.clip_x0 = True
  sample.s_churn = 0.0
  sample.s_tmin = 0.0
  sample.s_tmax = float('inf')
  sample.s_noise = 1.0
  sample.sigma_min = 0.002  # EDM samplers' rho schedule.
  sample.sigma_max = 80.0
  sample.rho = 7.0
  sample.n_steps_each = 5  # Langevin steps per noise level (NCSNv2's T).
  sample.step_lr = 0.0  # Langevin step size; 0 = solve NCSNv2's Technique 4 for it.
  # The fast samplers (euler_ancestral, dpmpp_2m, unipc, ...; README "Which sampler").
  sample.sigmas = 'karras'  # their grid: karras | exponential | polyexponential | discrete.
  sample.polyexponential_rho = 1.0
  sample.timestep_spacing = 'linspace'  # 'discrete' grid: linspace | leading | trailing.
  # Their options; None = the sampler's own default (k-diffusion's / diffusers').
  sample.eta = None  # ancestral / SDE noise scale.
  sample.order = None  # lms, dpm_adaptive, unipc, deis.
  sample.r = None  # dpmpp_sde.
  sample.solver_type = None  # dpmpp_2m_sde: midpoint | heun.
  sample.multistep_style = None  # dpmpp_2m / dpmpp_3m: k_diffusion | diffusers.
  sample.variant = None  # unipc: bh2 | bh1.
  sample.lower_order_final = None
  sample.rtol = None  # dpm_adaptive.
  sample.atol = None
  sample.h_init = None
  sample.pcoeff = None
  sample.icoeff = None
  sample.dcoeff = None
  sample.accept_safety = None
  sample.max_steps = None

  # Evaluation (diffusion_jax/evaluation/, --mode=eval).
  config.eval = ev = ml_collections.ConfigDict()
  ev.num_samples = 1000
  ev.metrics = ('digits',)  # 'digits' | 'fid' | 'is' | 'pr' | 'nll'
  ev.inception_weights = ''  # path to converted FID Inception weights (.npz)
  ev.reference_stats = ''  # path to reference (mu, sigma) .npz
  ev.batch_size = 0  # samples per sampler call; 0 = sample.batch_size.
  ev.seed = None  # seed of the samples; None = config.seed.
  ev.inception_batch_size = 200
  ev.is_splits = 10
  ev.nll_split = 'test'
  ev.nll_num_examples = 1000
  ev.save_samples = False  # write the samples to workdir/eval (the ADM suite's format).
  return config
