"""The default experiment config: the reference MNIST model and recipe.

Every experiment config starts from this one (experiments/configs/*.py import
it by absolute package path) and overrides what differs. Any field can be
overridden on the command line, e.g. --config.train.num_steps=100.
"""

import ml_collections

from dpm_jax import config as model_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                 # every random stream (data order, init, draws) derives from it
  # Run directory when --workdir is not given: <output_dir>/dpm_<dataset><suffix>-<time>.
  config.output_dir = "runs"
  config.suffix = ""              # appended to the run directory's name

  config.model = model_config.get_model_config("mnist")

  config.data = data = ml_collections.ConfigDict()
  data.source = "embedded"        # 'embedded' | 'idx' | 'tfds'
  data.dataset = "mnist"          # 'mnist' | 'fashion_mnist' | 'cifar10'
  data.dir = ""                   # folder of IDX files, for source='idx'
  data.tfds_data_dir = ""         # tfds data_dir ('' = tfds default)
  data.download = False           # let tfds download (needs internet)
  data.scale_from = "train_set"   # 'train_set' | 'first_batch' (reference code)
  data.dequantization = "bin"     # 'bin' (one 8-bit bin) | 'reference' ((1/255)/scale)

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 512          # examples per step, over all devices
  train.num_epochs = 100          # length of the run in epochs, when num_steps = 0
  train.num_steps = 0             # > 0: stop after this many steps instead of epochs
  # Steps per "epoch" for the learning-rate decay and num_epochs; 0 = one pass
  # over the training set. The reference code used 500 batches.
  train.batches_per_epoch = 0
  train.log_every_steps = 50      # the progress line and train/* metrics
  train.eval_every_steps = 1000   # the test-set bound (eval/*) and learning_curves.png
  train.checkpoint_every_steps = 500  # and at the last step and on SIGTERM
  train.keep_checkpoints = 3      # the newest checkpoints kept
  train.sample_every_steps = 1000  # and at the last step; 0: off (grids in workdir/samples)
  train.sample_num_images = 36    # samples per grid
  train.max_nonfinite_steps = 20  # stop after this many non-finite losses in a row

  # RMSprop as the reference code's (no bias correction), after a rule that
  # zeroes a non-finite gradient; the rate decays 10x per 1000 epochs.
  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "rmsprop"            # 'rmsprop' (the reference code's) or 'adam'
  opt.learning_rate = 1e-3        # the initial rate
  opt.min_learning_rate = 1e-4   # the decay's floor
  opt.rmsprop_decay = 0.9         # RMSprop's moving-average decay
  opt.rmsprop_eps = 1e-10         # RMSprop's floor on the root mean square

  # How the model runs: never changes what it computes, and may change when
  # a run is resumed.
  config.compute = compute = ml_collections.ConfigDict()
  # The convolution kernel (dpm_jax.kernels): 'auto' (the CPU kernel on the
  # CPU, XLA's convolution elsewhere), 'xla' or 'cpu'.
  compute.conv = "auto"
  # Each device's gradient accumulated over micro-batches of this size (the
  # same gradient up to float rounding): -1 = 64 with the CPU kernel when a
  # device's part of the batch is larger, where it is faster; 0 = off.
  compute.micro_batch_size = -1
  # CPU devices JAX shows when it runs on the CPU (one per core is fastest):
  # 0 = one per core, as many as divide the batch; 1 = one multi-threaded
  # device. The entry points' --cpu_devices flag, when given, wins.
  compute.cpu_devices = 0

  config.eval = ev = ml_collections.ConfigDict()
  # 'stratified': num_strata random t per test image, the standard error
  # across images; 'one_t': num_batches batches with one random t each, as the
  # reference code (heavy-tailed in t: typically optimistic, see evaluate.py).
  ev.method = "stratified"
  ev.num_strata = 20              # for method='stratified': t strata per test image
  ev.num_images = 1000            # test images per evaluation (0: all)
  ev.batch_size = 500             # test images per network call
  ev.num_batches = 20             # for method='one_t'
  ev.seed = 0                     # the evaluation's draws

  config.sample = sample = ml_collections.ConfigDict()
  sample.skip_first_step = False  # True: stop at x_0, as the reference sampler
  sample.num_intermediate = 4     # columns of experiments.sample --intermediate
  sample.denoise_sigma = 1.0      # reference: signal-to-noise ratio 1
  sample.mask = "right_half"      # reference: the right half known
  return config


def get_synthetic_config(model: ml_collections.ConfigDict, dataset: str, *, num_test: int,
                         final_examples: int, final_batch: int) -> ml_collections.ConfigDict:
  """The defaults shared by the paper's Table 1 experiments (heartbeat, swiss_roll).

  Fresh synthetic data instead of images, Adam in place of the paper's SFO (a
  quasi-Newton method optax lacks), one CPU device for a small model, and the
  final bound on fresh draws, exact over t (dpm_jax.table1).
  """
  config = get_config()
  config.model = model
  config.data = data = ml_collections.ConfigDict()
  data.source = "synthetic"
  data.dataset = dataset
  data.num_train = 100000         # training examples, drawn once with config.seed
  data.num_test = num_test        # held-out examples for the periodic test bound
  config.optimizer.update(name="adam", learning_rate=1e-2)
  config.compute.cpu_devices = 1  # a small model: one device wastes nothing
  config.train.num_epochs = 0
  config.train.sample_every_steps = 0  # the final report draws the samples
  # The final report's bound (dpm_jax.table1): fresh examples, every t, their
  # batch size and seed.
  config.final_eval = final = ml_collections.ConfigDict()
  final.num_examples = final_examples  # fresh examples from the data distribution
  final.batch_size = final_batch       # examples per network call
  final.seed = 1                       # their draws, apart from the training data's
  return config
