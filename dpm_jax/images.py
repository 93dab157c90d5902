"""The 2015 image model as an experiment: MNIST, Fashion-MNIST, CIFAR-10, your own images.

Paper sections 2 and 3.2; reference code: train.py, model.py, regression.py.
The model is dpm_jax.diffusion.DiffusionModel. Images are stored as uint8
(N, H, W, C) and mapped to model units inside the jitted step by one scalar
scale and shift, computed on the training set (dpm_jax.data.compute_stats);
the dequantisation noise is one 8-bit bin wide in those units. Sampling
modes: 'sample', 'inpaint', 'denoise' and 'superres' (paper section 2.5).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import evaluate
from dpm_jax import execution
from dpm_jax import experiment
from dpm_jax import image_folder
from dpm_jax import plotting
from dpm_jax import sampling

DATASETS = tuple(data_lib.IMAGE_SHAPES)
DEQUANTIZATIONS = ("bin", "reference")
SCALE_FROM = ("train_set", "first_batch")


SOURCES = data_lib.SOURCES + ("folder",)


def data_config(source: str = "embedded", dataset: str = "mnist") -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.source = source            # 'embedded' | 'idx' | 'tfds' | 'folder' (your images)
  data.dataset = dataset          # 'mnist' | 'fashion_mnist' | 'cifar10' (embedded, idx, tfds)
  data.dir = ""                   # folder of IDX files (source='idx') or of images ('folder')
  data.tfds_data_dir = ""         # tfds data_dir ('' = tfds default)
  data.download = False           # let tfds download (needs internet)
  data.scale_from = "train_set"   # 'train_set' | 'first_batch' (reference code)
  data.dequantization = "bin"     # 'bin' (one 8-bit bin) | 'reference' ((1/255)/scale)
  # source='folder' (dpm_jax.image_folder): 'resize' (pad to a square, bicubic resize:
  # the reference code's IMAGENET stream) or 'crops' (random crops: textures).
  data.folder_mode = "resize"
  data.test_fraction = 0.1        # folder: the held-out share of the files (fixed seed)
  data.crops_per_image = 100      # folder, crops: training crops of each image per epoch
  data.test_crops = 1000          # folder, crops: test crops, at fixed places
  data.holdout_fraction = 0.25    # folder, crops, one image: its held-out right-hand columns
  data.workers = 0                # folder: processes decoding images beside training (Grain)
  return data


DATA_DOMAINS = {
    "source": config_lib.choice(*SOURCES), "dataset": config_lib.choice(*DATASETS),
    "dir": config_lib.TEXT, "tfds_data_dir": config_lib.TEXT, "download": config_lib.BOOLEAN,
    "scale_from": config_lib.choice(*SCALE_FROM),
    "dequantization": config_lib.choice(*DEQUANTIZATIONS),
    "folder_mode": config_lib.choice(*image_folder.MODES),
    "test_fraction": config_lib.real(0, 1, lo_open=True, hi_open=True),
    "crops_per_image": config_lib.integer(1), "test_crops": config_lib.integer(1),
    "holdout_fraction": config_lib.real(0, 1, lo_open=True, hi_open=True),
    "workers": config_lib.integer(0)}


class ImageExperiment(experiment.Experiment):
  """The 2015 image model on a data set of images (one registry entry per preset)."""
  unit = "pixel"
  sampling_modes = sampling.MODES

  def __init__(self, name: str, description: str, preset: str, source: str, dataset: str):
    self.name, self.description = name, description
    self._preset, self._source, self._dataset = preset, source, dataset

  def default_config(self) -> ml_collections.ConfigDict:
    config = config_lib.base_config()
    config.experiment = self.name
    config.model = config_lib.get_model_config(self._preset)
    config.data = data_config(self._source, self._dataset)
    return config

  def tiny_config(self) -> ml_collections.ConfigDict:
    """The model shrunk (T = 50, 4 convolution channels, 2 + 2 + 2 layers), batch 32, 20 steps."""
    config = self.default_config()
    m = config.model
    m.update(n_hidden_dense_lower=16, n_hidden_dense_lower_output=1, n_hidden_dense_upper=8,
             n_hidden_conv=4, n_layers_conv=2, n_layers_dense_lower=2, n_layers_dense_upper=2,
             trajectory_length=50, n_temporal_basis=4)
    config.train.update(batch_size=32, num_steps=20, log_every_steps=5, eval_every_steps=10,
                        checkpoint_every_steps=10, sample_every_steps=0)
    config.eval.update(batch_size=32, num_batches=3, num_strata=5, num_images=64)
    return config

  def validate(self, config: ml_collections.ConfigDict) -> None:
    config_lib.validate_model_config(config.model)
    config_lib.check_fields("data", config.data, DATA_DOMAINS)

  def make_model(self, config: ml_collections.ConfigDict) -> diffusion.DiffusionModel:
    return diffusion.make_model(config.model, execution.conv_kernel(config.compute.conv))

  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    if config.data.source == "folder":
      m = config.model
      return image_folder.load(config.data, width=m.spatial_width, n_colors=m.n_colors,
                               seed=config.seed)
    return data_lib.load_dataset(config.data)

  def check_data(self, config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> None:
    m = config.model
    if tuple(dataset.image_shape) != (m.spatial_width, m.spatial_width, m.n_colors):
      raise errors.UserError(
          f"The data's images are {tuple(dataset.image_shape)} but the model expects "
          f"({m.spatial_width}, {m.spatial_width}, {m.n_colors}); set model.spatial_width / "
          "model.n_colors, or pick the matching config (experiments/configs/mnist.py or "
          "cifar10.py).")

  def data_stats(self, config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> dict:
    d = config.data
    return data_lib.compute_stats(
        dataset.train, scale_from=d.scale_from, dequantization=d.dequantization,
        batch_size=config.train.batch_size, seed=config.seed).to_dict()

  def prepare(self, batch, stats: Mapping) -> jax.Array:
    return data_lib.to_model_units(batch, data_lib.DataStats.from_dict(stats))

  def uniform_noise(self, stats: Mapping) -> float:
    return float(stats["uniform_noise"])

  def eval_extras(self, config: ml_collections.ConfigDict, stats: Mapping, mean: float,
                  stderr: float) -> dict:
    """With bin-wide dequantisation the bound also bounds the 8-bit data's negative log
    likelihood: `nll_bpd` (bits per dimension, today's convention). With the reference
    code's narrower noise it does not, and the same number is a density in 8-bit units:
    `density_bpd`."""
    n_colors = config.model.n_colors
    value = float(evaluate.nll_bits_per_dim(mean, data_lib.DataStats.from_dict(stats), n_colors))
    name = "nll_bpd" if config.data.dequantization == "bin" else "density_bpd"
    return {name: value, f"{name}_stderr": stderr / n_colors}

  def eval_summary(self, record: Mapping) -> str:
    for prefix in ("eval/", ""):
      if record.get(prefix + "nll_bpd") is not None:
        return f"; NLL bound {record[prefix + 'nll_bpd']:.4f} bits/dim on 8-bit data"
      if record.get(prefix + "density_bpd") is not None:
        return (f"; density {record[prefix + 'density_bpd']:.4f} bits/dim (not a bound on "
                "8-bit data: data.dequantization='reference')")
    return ""

  def to_output_units(self, x: np.ndarray, stats: Mapping) -> np.ndarray:
    return data_lib.to_pixels(np.asarray(x), data_lib.DataStats.from_dict(stats))

  def write_samples(self, samples: np.ndarray, path: str, stats: Mapping) -> str:
    return plotting.save_image_grid(self.to_output_units(samples, stats), path)

  def write_picture(self, out: Mapping, path: str, stats: Mapping) -> str:
    """A grid of samples; with states or a condition, one row per image: the original,
    the observation, the states along the trajectory (or the result)."""
    columns, labels = [], []
    if "true" in out:
      columns += [out["true"], out["observed"]]
      labels += ["original", "observed"]
    if "states" in out:
      columns += list(out["states"])
      labels += [sampling.label_of_t(int(t)) for t in out["record_t"]]
    elif "true" in out:
      columns.append(out["samples"])
      labels.append("result")
    if not columns:
      return plotting.save_image_grid(out["samples"], path)
    return plotting.save_trajectory_grid(np.stack(columns), labels, path)

  def any_size(self, config: ml_collections.ConfigDict) -> bool:
    """Whether the model applies to images of any size: convolutions only (no dense
    pathway, paper Fig. D.1), on sides that 2^(n_scales - 1) divides."""
    m = config.model
    return not (m.n_hidden_dense_lower > 0 and config_lib.n_dense_lower_layers(m) > 0)

  def check_size(self, config: ml_collections.ConfigDict, size: Sequence[int]) -> None:
    """Raises errors.UserError if the model cannot apply at (H, W) = size."""
    m, (h, w) = config.model, size
    factor = 2 ** (m.n_scales - 1)
    if (h, w) != (m.spatial_width, m.spatial_width) and not self.any_size(config):
      raise errors.UserError(
          f"This model has a dense pathway: its image size is fixed at {m.spatial_width} x "
          f"{m.spatial_width}; only convolution-only models (model.n_hidden_dense_lower=0) "
          "sample at other sizes.")
    if h < 1 or w < 1 or h % factor or w % factor:
      raise errors.UserError(
          f"An image of {w} x {h} pixels does not fit the model's {m.n_scales} scales: both "
          f"sides must be positive multiples of {factor}.")

  def load_image(self, config: ml_collections.ConfigDict, path: str) -> np.ndarray:
    """An image file as the model's input, uint8 (H, W, C): as it is (its sides cut
    down to multiples of 2^(n_scales - 1)) for a model of any size, else padded and
    resized to spatial_width as the folder source's resize mode.

    Raises:
      errors.UserError: the file cannot be read.
    """
    m = config.model
    try:
      image = image_folder.decode(path, m.n_colors)
    except Exception as err:  # pylint: disable=broad-except
      raise errors.UserError(f"Cannot read the image {path}: {err}") from err
    if not self.any_size(config):
      return image_folder.pad_and_resize(image, m.spatial_width)
    factor = 2 ** (m.n_scales - 1)
    h, w = image.shape[0] - image.shape[0] % factor, image.shape[1] - image.shape[1] % factor
    return image[:h, :w]

  def generate(self, task, params: Any, mode: str, key: jax.Array, *, num_images: int,
               record_t: Sequence[int] = (), skip_first_step: bool = False,
               true_examples: Optional[np.ndarray] = None, should_stop=None,
               image_size: Optional[Sequence[int]] = None, **options) -> dict:
    experiment.check_mode(self, mode)
    size = true_examples.shape[1:3] if true_examples is not None else image_size
    if size is not None:
      self.check_size(task.config, size)
    return sampling.generate(task.model, params, data_lib.DataStats.from_dict(task.stats), mode,
                             key, num_images=num_images, true_images=true_examples,
                             record_t=record_t, skip_first_step=skip_first_step,
                             should_stop=should_stop, image_size=size, **options)


MNIST = ImageExperiment("mnist", "the reference MNIST model; the 5000 digits shipped by default",
                        "mnist", "embedded", "mnist")
CIFAR10 = ImageExperiment("cifar10", "the reference README's larger CIFAR-10 model", "cifar10",
                          "tfds", "cifar10")


FINAL_DOMAINS = {"num_examples": config_lib.integer(2), "batch_size": config_lib.integer(1),
                 "seed": config_lib.integer(), "image_size": config_lib.integer(1)}


class ConvolutionalImageExperiment(ImageExperiment):
  """An image experiment of the paper's Table 1 trained with the multi-scale convolutional
  network alone (no dense pathway, paper Fig. D.1): it applies at any image size, so it
  trains on crops and is evaluated, sampled and inpainted on larger images. Training
  ends with the final report (dpm_jax.table1): the bound exact over t on held-out or
  fresh examples of final_eval.image_size, beside the paper's row, and figures."""
  final_report = True

  def __init__(self, name: str, description: str, paper: Mapping[str, float]):
    super().__init__(name, description, "mnist", "folder", "mnist")
    self.paper = paper

  def model_config(self) -> ml_collections.ConfigDict:
    """The convolution-only model: three scales, no dense pathway."""
    cfg = config_lib.get_model_config("mnist")
    cfg.spatial_width = 32          # the training crops' width, pixels
    cfg.n_hidden_dense_lower = 0    # no dense pathway: any image size (paper Fig. D.1)
    cfg.n_scales = 3                # scales of the multi-scale convolution (1, 1/2, 1/4)
    cfg.n_hidden_conv = 24
    cfg.n_layers_conv = 4
    cfg.n_hidden_dense_upper = 32
    cfg.n_layers_dense_upper = 2
    return cfg

  def default_config(self) -> ml_collections.ConfigDict:
    config = super().default_config()
    config.model = self.model_config()
    config.train.update(batch_size=64, sample_every_steps=0)  # the final report draws them
    config.eval.update(num_images=256, batch_size=64)
    config.final_eval = final = ml_collections.ConfigDict()
    final.num_examples = 32         # held-out or fresh examples of the final bound
    final.batch_size = 8            # examples per network call
    final.seed = 1                  # the final report's draws
    final.image_size = 64           # their width: larger than the training crops
    return config

  def recipe_config(self) -> ml_collections.ConfigDict:
    """The shipped config (experiments/configs/<name>.py): default_config trained to
    finish within 30 minutes on a 2-core CPU, the bound still improving at its end."""
    config = self.default_config()
    config.model.t_sampling = "per_example"  # one t per example: a steadier gradient
    t = config.train
    t.num_steps = 6000
    t.batches_per_epoch = 6         # the rate decays 10x over the run (1000 such epochs)
    t.log_every_steps = 500
    t.eval_every_steps = 3000
    t.checkpoint_every_steps = 1000
    config.optimizer.update(name="adam", learning_rate=2e-3, min_learning_rate=2e-4)
    config.eval.update(method="stratified", num_strata=20, num_images=256, batch_size=64)
    return config

  def tiny_config(self) -> ml_collections.ConfigDict:
    config = self.default_config()
    config.model.update(n_hidden_conv=4, n_layers_conv=2, n_hidden_dense_upper=8,
                        trajectory_length=20, n_temporal_basis=4, spatial_width=16)
    config.train.update(batch_size=16, num_steps=20, log_every_steps=5, eval_every_steps=10,
                        checkpoint_every_steps=10)
    config.eval.update(batch_size=16, num_batches=3, num_strata=5, num_images=32)
    config.final_eval.update(num_examples=4, batch_size=4, image_size=32)
    return config

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    self.validate_final(config)

  def validate_final(self, config: ml_collections.ConfigDict) -> None:
    """Checks that the model is convolution-only and the final_eval section."""
    if not self.any_size(config):
      raise errors.UserError(
          f"The {self.name} experiment uses the convolutional network alone (paper Fig. D.1): "
          "set model.n_hidden_dense_lower=0.")
    if "final_eval" not in config:
      raise errors.UserError(f"The {self.name} config has no 'final_eval' section; start "
                                   f"from experiments/configs/{self.name}.py.")
    config_lib.check_fields("final_eval", config.final_eval, FINAL_DOMAINS)
    self.check_size(config, (config.final_eval.image_size,) * 2)
