"""Every configuration field of diffusion_jax, with its meaning and unit.

Experiment files (cifar10.py, digits.py, ...) import `get_config()` from here and override.
Any field can be changed from the command line, e.g.
  python main.py --config=configs/cifar10.py --workdir=/tmp/c10 --config.training.batch_size=64
The config is locked: a misspelt field fails with a suggestion instead of being ignored.
The defaults are DDPM's CIFAR-10 setup (Ho et al. 2020, Appendix B).
"""

from ml_collections import config_dict

from diffusion_jax import samplers


def get_config() -> config_dict.ConfigDict:
  """Returns the default configuration."""
  config = config_dict.ConfigDict()
  config.seed = 0  # Seeds parameter init, timesteps, noise, dropout and the data order.
  # XLA:CPU's YNNPACK fusions (jaxlib's default) if True; False: XLA's loops and Eigen's
  # convolutions, faster for every config measured (diffusion_jax.xla_flags). CPU only.
  config.xla_cpu_ynnpack = False

  # --- Data: read by diffusion_jax.input_pipeline. -----------------------------------------
  config.data = data = config_dict.ConfigDict()
  data.dataset = "cifar10"  # TFDS name; "digits" is the embedded 8x8 sklearn digits set.
  data.image_size = 32  # Side of the square images fed to the model, pixels.
  data.num_channels = 3  # Image channels C (3 RGB, 1 grey).
  data.random_flip = True  # Random horizontal flips during training.
  data.data_dir = config_dict.placeholder(str)  # TFDS data_dir; None = TFDS's default.
  data.download = True  # Download and prepare a TFDS data set on first use (False: offline).
  data.train_split = "train"  # TFDS split used for training.
  data.eval_split = "test"  # TFDS split used by --mode=eval.

  # --- Model: the U-Net's constructor arguments (diffusion_jax.models.UNet). ----------------
  # Its output channels (out_ch) follow from data.num_channels and diffusion.var_type.
  config.model = model = config_dict.ConfigDict()
  model.ch = 128  # Base channel count.
  model.ch_mult = (1, 2, 2, 2)  # Channel multiplier per resolution; len - 1 downsamplings.
  model.num_res_blocks = 2  # Residual blocks per resolution.
  model.attn_resolutions = (16,)  # Resolutions (pixels) at which self-attention is applied.
  model.dropout = 0.1  # Dropout rate inside the residual blocks.
  model.resamp_with_conv = True  # Conv after nearest upsampling and strided-conv downsampling.
  model.num_heads = 1  # Attention heads (ignored when num_head_channels > 0).
  model.num_head_channels = -1  # Channels per attention head; -1 = use num_heads.
  model.resblock_updown = False  # BigGAN-style residual up/downsampling (ADM).
  model.use_scale_shift_norm = False  # AdaGN timestep conditioning (ADM).
  model.skip_rescale = False  # Divide residual sums by sqrt(2) (ADM).
  model.num_classes = config_dict.placeholder(int)  # Class-conditional with this many classes.
  model.dtype = "float32"  # Computation dtype of the U-Net ("float32" or "bfloat16").
  model.temb_convention = "ddpm"  # Timestep embedding: ddpm | improved (improved-diffusion).
  model.norm_groups = 32  # GroupNorm groups; must divide every ch * ch_mult[i].
  model.norm_eps = 1e-6  # GroupNorm epsilon (1e-6 DDPM, 1e-5 ADM).
  model.downsample_padding = 0  # Stride-2 conv padding: 0 = DDPM's (0, 1), 1 = ADM's symmetric.
  model.remat = False  # Recompute residual blocks in the backward pass: less memory, more compute.

  # --- Diffusion process and objective (diffusion_jax.schedules / losses). -------------------
  config.diffusion = diffusion = config_dict.ConfigDict()
  # Beta schedule: linear | quad | const | jsd | warmup10 | warmup50 | cosine | linear_scaled.
  diffusion.beta_schedule = "linear"
  diffusion.num_timesteps = 1000  # T, the number of diffusion steps (SDE: its N steps; ncsn: L levels).
  diffusion.mean_type = "eps"  # What the network predicts: eps | x0 | mean | v (score objectives: eps | x0 | v).
  # Reverse-process variance: fixedlarge | fixedsmall | learned | learned_range.
  diffusion.var_type = "fixedlarge"
  diffusion.loss_type = "mse"  # mse (L_simple) | rescaled_mse (L_hybrid) | kl | rescaled_kl
  # Training objective: ddpm (the losses above on the discrete chain of beta_schedule) |
  # score_sde (continuous-time denoising score matching on diffusion.sde, Song et al. 2021) |
  # ncsn (NCSN's loss on num_timesteps geometric sigma levels, Song & Ermon 2019). Score models
  # are sampled with the score-based samplers (pc, annealed_langevin).
  diffusion.objective = "ddpm"
  diffusion.sde = "vp"  # score_sde's forward SDE: vp | subvp | ve (ncsn always uses ve levels).
  diffusion.beta_min = 0.1  # vp / subvp: beta(0) of the linear beta(t) (0.1 with 20: DDPM's chain).
  diffusion.beta_max = 20.0  # vp / subvp: beta(1); num_timesteps must exceed it.
  diffusion.sigma_min = 0.01  # ve / ncsn: smallest noise std, in units of the [-1, 1] data.
  diffusion.sigma_max = 50.0  # ve / ncsn: largest noise std (~ the largest distance between images).
  diffusion.sde_weighting = "sigma2"  # score_sde loss weight lambda(t): sigma2 | likelihood (g(t)^2).
  diffusion.sde_eps = 1e-5  # score_sde: training times t ~ U(sde_eps, 1).

  # --- Training (diffusion_jax.train). -------------------------------------------------------
  config.training = training = config_dict.ConfigDict()
  training.batch_size = 128  # GLOBAL batch size: summed over all devices and hosts.
  training.num_train_steps = 800_000  # Optimizer steps in total (a resumed run continues).
  training.learning_rate = 2e-4  # Adam peak learning rate.
  training.warmup_steps = 5000  # Linear learning-rate warmup from 0, steps.
  training.grad_clip = 1.0  # Clip gradients to this global L2 norm; <= 0 disables.
  training.adam_b1 = 0.9  # Adam beta1.
  training.adam_b2 = 0.999  # Adam beta2.
  training.adam_eps = 1e-8  # Adam epsilon.
  training.ema_decay = 0.9999  # EMA of the parameters: ema = decay * ema + (1 - decay) * params.
  # How t is drawn: uniform | loss_second_moment (importance sampling, Improved DDPM Sec. 3.3).
  training.timestep_sampler = "uniform"
  training.log_every_steps = 100  # TensorBoard scalars (loss, grad norm, lr, steps/s), steps.
  training.checkpoint_every_steps = 10_000  # Checkpoint period, steps (also at the end).
  training.sample_every_steps = 50_000  # Sample-grid period with the EMA params, steps; 0 = never.
  training.num_grid_samples = 64  # Images in each sample grid.
  training.keep_checkpoints = 3  # Keep the last N checkpoints.
  training.n_jitted_steps = 1  # Optimizer steps per device dispatch (one lax.scan over k batches).
  # Class-conditional models (model.num_classes): probability of replacing a label by the null
  # label model.num_classes, so one network is conditional, unconditional and classifier-free
  # guided (Ho & Salimans 2022 use 0.1 or 0.2); 0 = always the label.
  training.label_dropout = 0.0

  # --- Sampling: the periodic grids and --mode=sample (diffusion_jax.samplers.sample). -------
  config.sampling = sampling = config_dict.ConfigDict()
  sampling.sampler = "ancestral"  # Sampler name: `python -m diffusion_jax.samplers` lists all.
  sampling.num_steps = config_dict.placeholder(int)  # Model evaluations; None = all T steps.
  sampling.clip_denoised = True  # Clip the predicted x_0 to [-1, 1] at every step.
  sampling.num_samples = 64  # --mode=sample: images written to samples/<step>/samples.npz.
  sampling.batch_size = 64  # GLOBAL images per sampling call (divisible by the device count).
  sampling.checkpoint_step = config_dict.placeholder(int)  # Checkpoint to use; None = latest.
  # One section per sampler family, declared with the sampler in diffusion_jax/samplers/ (its
  # options, defaults, meaning and allowed values; `python -m diffusion_jax.samplers` prints
  # them): sampling.ddim (eta, spacing), sampling.dpm_solver (order, method, time_grid,
  # final_step, lower_order_final, integer_timesteps, thresholding, thresholding_ratio,
  # thresholding_max_value), sampling.analytic (spacing, clip_last_steps, num_samples),
  # sampling.pc (predictor, corrector, snr, n_corrector_steps, denoise, time_input),
  # sampling.annealed_langevin (n_steps_each, step_size, denoise, init, time_input),
  # sampling.edm (rho, sigma_min, sigma_max), sampling.edm_stochastic (the same and s_churn,
  # s_tmin, s_tmax, s_noise), sampling.ode (solver, rtol, atol, t_min, denoise, time_input,
  # max_steps). Only the section of the selected sampler is read, e.g.
  # --config.sampling.ddim.eta=1.0.
  sampling.update(samplers.registry.config_sections())
  # Guidance of class-conditional sampling (diffusion_jax.guidance), in --mode=sample and
  # --mode=eval (the training grids stay unguided).
  sampling.guidance = guidance = config_dict.ConfigDict()
  # none | classifier (ADM-G: the classifier of --mode=train_classifier, in workdir/classifier)
  # | classifier_free (needs a model trained with training.label_dropout > 0).
  guidance.kind = "none"
  guidance.scale = 1.0  # Classifier: gradient scale s (0 = unguided). Free: w (1 = conditional).
  # Classifier guidance's form: auto (mean_shift for ancestral, eps otherwise) | mean_shift
  # (Algorithm 1, mu + s Sigma grad log p) | eps (Algorithm 2, eps - s sqrt(1 - abar) grad log p).
  guidance.form = "auto"
  guidance.classes = ()  # Classes to sample (drawn uniformly); () = all of model.num_classes.
  # --mode=sample also writes guidance_grid.png (+ .npz): one row per class of `classes`, one
  # column per scale here, the same noise in every column; () = no grid.
  guidance.grid_scales = ()
  guidance.classifier_checkpoint_step = config_dict.placeholder(int)  # None = latest.

  # --- Noisy classifier for classifier guidance: --mode=train_classifier. ---------------------
  # Writes workdir/classifier/ (checkpoints/, TensorBoard events, eval JSON); the diffusion
  # (beta_schedule, num_timesteps) and the data come from the sections above, the number of
  # classes from model.num_classes. Defaults: ADM's classifier (Dhariwal & Nichol 2021).
  config.classifier = classifier = config_dict.ConfigDict()
  classifier.model = cmodel = config_dict.ConfigDict()  # diffusion_jax.models.NoisyClassifier
  cmodel.ch = 128  # Base width (ADM: 128).
  cmodel.ch_mult = (1, 2, 2, 2)  # Per level; ADM: (1, 2, 3, 4) at 64 px, (1, 1, 2, 3, 4) at 128.
  cmodel.num_res_blocks = 2  # Residual blocks per level (ADM's "depth": 2; 4 at 64 px).
  cmodel.attn_resolutions = (16,)  # Feature-map sizes with attention (ADM: 32, 16, 8).
  cmodel.dropout = 0.0  # Dropout in the residual blocks (ADM: 0).
  cmodel.resamp_with_conv = True  # Strided-conv downsampling (when not resblock_updown).
  cmodel.num_heads = 1  # Attention heads when num_head_channels = -1.
  cmodel.num_head_channels = 64  # Channels per attention head (ADM: 64); -1 = use num_heads.
  cmodel.resblock_updown = True  # BigGAN residual downsampling blocks (ADM).
  cmodel.use_scale_shift_norm = True  # AdaGN time conditioning (ADM).
  cmodel.skip_rescale = False  # Divide residual sums by sqrt(2).
  cmodel.pool = "attention"  # Head: attention (ADM) | adaptive (average pool + linear).
  cmodel.dtype = "float32"  # Computation dtype ("float32" or "bfloat16").
  cmodel.temb_convention = "improved"  # Timestep embedding: ddpm | improved.
  cmodel.norm_groups = 32  # GroupNorm groups; must divide every ch * ch_mult[i].
  cmodel.norm_eps = 1e-5  # GroupNorm epsilon (ADM: 1e-5).
  cmodel.downsample_padding = 1  # Stride-2 conv padding: 1 symmetric (ADM) | 0 (DDPM).
  cmodel.remat = False  # Recompute residual blocks in the backward pass (less memory).
  classifier.training = ctrain = config_dict.ConfigDict()  # --mode=train_classifier's optimizer and loop
  ctrain.batch_size = 256  # GLOBAL batch of noised images (ADM's 128 px classifier: 256).
  ctrain.num_train_steps = 300_000  # Optimizer steps (ADM's 128 px classifier: 300K).
  ctrain.learning_rate = 3e-4  # AdamW learning rate (ADM: 3e-4).
  ctrain.weight_decay = 0.05  # AdamW decoupled weight decay (ADM: 0.05).
  ctrain.anneal_lr = True  # Decay the learning rate linearly to 0 over the run (ADM: yes).
  ctrain.t_bands = 4  # Accuracy is logged per band of t: [0, T/4), [T/4, T/2), ... (quartiles).
  ctrain.log_every_steps = 100  # TensorBoard scalars (loss, accuracy per t band), steps.
  ctrain.checkpoint_every_steps = 10_000  # Checkpoint period, steps (also at the end).
  ctrain.keep_checkpoints = 3  # Keep the last N checkpoints.
  ctrain.eval_batches = 10  # At the end: accuracy per t band on this many eval_split batches.

  # --- Evaluation: --mode=eval and the end of training. --------------------------------------
  config.eval = eval_config = config_dict.ConfigDict()
  # Test-set negative log-likelihood (DDPM Table 2) via losses.calc_bpd_loop over eval_split.
  eval_config.batch_size = 128  # GLOBAL batch size of the bits/dim loop.
  eval_config.num_batches = config_dict.placeholder(int)  # Batches to evaluate; None = whole split.
  eval_config.clip_denoised = True  # Clip pred_x0 inside the reverse means of the bound.
  eval_config.checkpoint_step = config_dict.placeholder(int)  # Checkpoint to use; None = latest.
  eval_config.compute_bpd = True  # --mode=eval: test-set bits/dim (slow: T model calls per image).
  # Bits/dim along the probability-flow ODE (diffusion_jax.likelihood; DDPM models through
  # their VP SDE), on the bound's test batches, the protocol in eval/bpd_<step>.json; the only
  # likelihood of a score model (objective score_sde / ncsn).
  eval_config.ode_bpd = False  # --mode=eval: also (or, without compute_bpd, only) the ODE bits/dim.
  eval_config.ode = ode_config = config_dict.ConfigDict()  # likelihood.bits_per_dim options.
  ode_config.estimator = "hutchinson"  # Divergence: hutchinson (unbiased) | exact (small images).
  ode_config.probe = "rademacher"  # Hutchinson probes: rademacher | gaussian.
  ode_config.num_probes = 1  # Probes per image, averaged.
  ode_config.dequantization = "uniform"  # uniform (a bound on the 8-bit likelihood) | none.
  ode_config.solver = "tsit5"  # diffrax solver (samplers.ode.SOLVERS).
  ode_config.rtol = 1e-5  # Solver tolerances (Song et al.: 1e-5 / 1e-5).
  ode_config.atol = 1e-5  # (absolute tolerance)
  ode_config.t_min = config_dict.placeholder(float)  # Where the data sits; None = step 0.
  # Sample quality (config.sampling's sampler, EMA params): the digits Frechet distance on the
  # digits data; FID / IS / precision-recall (diffusion_jax.evaluation) when inception_weights
  # and reference_stats are set. Run by --mode=eval, and after training if sample_quality_at_end.
  eval_config.sample_quality_at_end = False  # Sample and score once training finishes.
  eval_config.num_quality_samples = 50_000  # Samples scored (the DDPM paper's 50k for FID).
  eval_config.quality_batch_size = 512  # GLOBAL samples per resumable FID chunk (divisible by devices).
  eval_config.inception_weights = config_dict.placeholder(str)  # pt_inception-2015-12-05 .pth/.npz.
  eval_config.reference_stats = config_dict.placeholder(str)  # .npz from evaluation.fid_stats.
  eval_config.inception_batch_size = 200  # Images per Inception forward pass.
  eval_config.inception_precision = "highest"  # highest (float32, the protocol) | default.
  eval_config.num_is_splits = 10  # Inception Score splits.
  eval_config.pr_k = 3  # k of the k-NN manifolds of precision/recall.
  eval_config.pr_num_samples = 10_000  # Real and fake features for precision/recall; 0 = off.
  eval_config.save_samples = True  # Keep the uint8 sample chunks under eval/<name>/.

  # --- Analysis: --mode=analyze, the DDPM paper's figures (diffusion_jax.analyze). -----------
  # Writes analysis/<kind>_<step>.png and .json; chains are ancestral with config.sampling's
  # clip_denoised; rate_distortion runs the --mode=eval bits/dim loop (eval.batch_size,
  # eval.num_batches, eval.clip_denoised) and ends at its bits/dim.
  config.analysis = analysis = config_dict.ConfigDict()
  # progressive | shared_latent | interpolation | rate_distortion | all
  analysis.kind = "all"
  analysis.timesteps = ()  # Steps t of the progressive / shared-latent figures; () = 8, T-1..0.
  analysis.num_images = 8  # Chains (progressive), or test images (shared_latent; 2 per pair).
  analysis.num_samples = 4  # shared_latent: chains drawn from each shared x_t.
  analysis.interpolation_t = config_dict.placeholder(int)  # Step of the mixed latents; None: T//2.
  analysis.num_lambdas = 9  # Mixing weights, evenly spaced in [0, 1], of the interpolation.
  analysis.ddim_steps = config_dict.placeholder(int)  # DDIM grid of the slerp interpolation; None:
  # min(50, T).
  analysis.checkpoint_step = config_dict.placeholder(int)  # Checkpoint to use; None = latest.
  return config
