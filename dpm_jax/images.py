"""The 2015 image model as an experiment: MNIST, Fashion-MNIST, CIFAR-10, your own images,
and the convolution-only image rows of the paper's Table 1 (dead leaves, textures).

Paper sections 2 and 3.2; reference code: train.py, model.py, regression.py.
The model is dpm_jax.diffusion.DiffusionModel. Images are stored as uint8
(N, H, W, C) and mapped to model units inside the jitted step by one scalar
scale and shift, computed on the training set (data.compute_stats); the
dequantisation noise is one 8-bit bin wide in those units.

A Table 1 image experiment (dpm_jax.dead_leaves, dpm_jax.texture) is an
ImageExperiment given a `Report`: its model is the multi-scale convolutional
network alone (no dense pathway, paper Fig. D.1), which applies at any image
size, so it trains on crops and its final report (dpm_jax.table1) evaluates,
samples and inpaints larger images.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import execution
from dpm_jax import experiment
from dpm_jax import image_folder
from dpm_jax import plotting
from dpm_jax import sampling
from dpm_jax import table1

C = config_lib

# How stored 8-bit images become model units, shared by every image data section.
UNITS = C.Section(
    scale_from=("train_set", C.choice("train_set", "first_batch"),
                "'train_set': scale and shift from the whole training set (of images not "
                "held in memory, a fixed sample of 1000); 'first_batch': from one training "
                "minibatch (the reference code)"),
    dequantization=("bin", C.choice("bin", "reference"),
                    "'bin': uniform noise one 8-bit bin wide (a bound on the 8-bit data); "
                    "'reference': (1/255)/scale, the reference code's"),
)
DATA = C.Section(
    source=("embedded", C.choice(*data_lib.SOURCES, "folder"),
            "'embedded' (5000 MNIST digits shipped with the package), 'idx' (IDX files in "
            "dir), 'tfds' (tensorflow-datasets' prepared data) or 'folder' (your images in "
            "dir)"),
    dataset=("mnist", C.choice(*data_lib.IMAGE_SHAPES),
             "'mnist', 'fashion_mnist' or 'cifar10' (sources embedded, idx, tfds)"),
    dir=("", C.TEXT, "the folder of IDX files (source='idx') or of images (source='folder')"),
    tfds_data_dir=("", C.TEXT, "tfds data_dir ('' = tfds' default)"),
    download=(False, C.BOOLEAN, "fetch the data set when it is not there: tfds' download, or "
              "the IDX files into data.dir (source='idx'); needs internet"),
    **UNITS,
    folder_mode=("resize", C.choice(*image_folder.MODES),
                 "source='folder': 'resize' (pad to a square, bicubic resize: the reference "
                 "code's IMAGENET stream) or 'crops' (random crops: textures)"),
    test_fraction=(0.1, C.real(0, 1, lo_open=True, hi_open=True),
                   "source='folder': the held-out share of the files (a fixed seed)"),
    crops_per_image=(100, C.integer(1), "folder, crops: training crops of each image an epoch "
                     "counts"),
    test_crops=(1000, C.integer(1), "folder, crops: test crops, at fixed places"),
    holdout_fraction=(0.25, C.real(0, 1, lo_open=True, hi_open=True),
                      "folder, crops, one image: its held-out right-hand columns"),
    workers=(0, C.integer(0), "source='folder': processes decoding images beside training "
             "(Grain)"),
)
FINAL_EVAL = C.Section(
    **table1.FINAL_EVAL.with_defaults(num_examples=32, batch_size=8),
    image_size=(64, C.integer(1), "the final report's image width: larger than the "
                "training crops"),
)


@dataclasses.dataclass(frozen=True)
class Report:
  """What a Table 1 image experiment adds: the paper's row and its final report.

  Attributes:
    paper, source: the experiment's `paper` and `report_source`.
    examples: (config, num, seed) -> num uint8 images of final_eval.image_size.
    figures: as table1.final_report's.
    crops: (config) -> the widths of the held-out crops examples and figures take
      from an image folder, by what sets each (checked before training).
  """
  paper: Mapping[str, float]
  source: str
  examples: Callable[..., np.ndarray]
  figures: Callable[..., list]
  crops: Callable[..., Mapping[str, int]] = lambda config: {}


class ImageExperiment(experiment.Experiment):
  """The 2015 image model on a data set of images.

  Args:
    model_defaults: the image model's fields that define this experiment (the image
      size; a Table 1 experiment's convolution-only network), over IMAGE_MODEL's.
    data: the data section's fields (DATA, or a Table 1 experiment's own).
    load: (config) -> data_lib.Dataset, for a data section other than DATA.
    check_data: (config) -> None, raising errors.UserError, for such a section.
    report: a Table 1 experiment's Report: a convolution-only model and a
      final_eval section.
  """
  unit = "pixel"
  sampling_modes = sampling.MODES

  def __init__(self, name: str, description: str, *, model_defaults: Optional[Mapping] = None,
               data: C.Section = DATA,
               data_defaults: Optional[Mapping] = None, load: Optional[Callable] = None,
               check_data: Optional[Callable] = None, report: Optional[Report] = None):
    self.name, self.description = name, description
    self._model_defaults = dict(model_defaults or {})
    self._data, self._data_defaults = data, dict(data_defaults or {})
    self._load, self._check_data, self._report = load, check_data, report
    sections = dict(model=C.IMAGE_MODEL, data=data, **C.SHARED)
    if report is not None:
      self.paper, self.report_source = report.paper, report.source
      sections["final_eval"] = FINAL_EVAL
    self.help = C.help_of(**{"": C.TOP}, **sections)

  def default_config(self) -> ml_collections.ConfigDict:
    config = C.base_config(self.name)
    config.model = C.IMAGE_MODEL.config(**self._model_defaults)
    config.data = self._data.config(**self._data_defaults)
    if self._report is not None:
      config.train.sample_every_steps = 0  # the final report draws the samples
      config.final_eval = FINAL_EVAL.config()
    return config

  def validate(self, config: ml_collections.ConfigDict) -> None:
    C.validate_model_config(config.model)
    self._data.check("data", config.data)
    d = config.data
    if self._data is DATA and d.dir and d.source not in ("idx", "folder"):
      raise errors.UserError(
          f"data.dir={d.dir!r} is read by data.source='folder' (your images) or 'idx' (IDX "
          f"files) only, not by data.source={d.source!r}: set data.source, or drop data.dir.")
    if self._report is not None:
      if not any_size(config.model):
        raise errors.UserError(
            f"The {self.name} experiment uses the convolutional network alone (paper Fig. "
            "D.1): set model.n_hidden_dense_lower=0.")
      if "final_eval" not in config:
        raise errors.UserError(f"The {self.name} config has no 'final_eval' section; start "
                               f"from experiments/configs/{self.name}.py.")
      FINAL_EVAL.check("final_eval", config.final_eval)
      check_size(config.model, (config.final_eval.image_size,) * 2)
    if self._check_data is not None:
      self._check_data(config)

  def make_model(self, config: ml_collections.ConfigDict) -> diffusion.DiffusionModel:
    return diffusion.make_model(config.model, execution.conv_kernel(config.compute.conv))

  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    if self._load is not None:
      return self._load(config)
    if config.data.source == "folder":
      m = config.model
      return image_folder.load(config.data, width=m.spatial_width, n_colors=m.n_colors,
                               seed=config.seed,
                               later_crops=self._report and self._report.crops(config))
    return data_lib.load_dataset(config.data)

  def units(self, config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None,
            saved: Optional[Mapping] = None) -> data_lib.DataStats:
    d = config.data
    from_config = dict(n_colors=config.model.n_colors, dequantization=d.dequantization)
    if saved is not None:
      return data_lib.DataStats.from_dict(saved, **from_config)
    stats = data_lib.compute_stats(
        dataset.train, scale_from=d.scale_from, dequantization=d.dequantization,
        batch_size=config.train.batch_size, seed=config.seed)
    return dataclasses.replace(stats, **from_config)

  def write_picture(self, out: Mapping, path: str, units) -> str:
    """A grid of samples; with states or a condition, one row per image: the original,
    the observation, the states along the trajectory (or the result)."""
    del units
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

  def generate(self, task, params: Any, mode: str, key: jax.Array, *, num_images: int,
               record_t: Sequence[int] = (), skip_first_step: bool = False,
               true_examples: Optional[np.ndarray] = None, image: Optional[str] = None,
               image_size: Optional[Sequence[int]] = None, should_stop=None,
               **options) -> dict:
    experiment.check_mode(self, mode)
    if mode == "sample" and (image is not None or true_examples is not None):
      raise errors.UserError("--image is for the conditional modes (inpaint, denoise, superres).")
    if mode != "sample" and image_size is not None:
      raise errors.UserError("--image_size is for --mode=sample; a conditional mode samples at "
                             "the size of what it conditions on (--image).")
    if mode != "inpaint" and options.get("box") is not None:
      raise errors.UserError("--box is for --mode=inpaint.")
    if image is not None:
      true_examples = np.repeat(load_image(task.config.model, image)[None], num_images, axis=0)
      if mode == "inpaint" and options.get("box") is None:  # the paper's Figure 5
        h, w = true_examples.shape[1:3]
        options.update(mask_kind="box", box=sampling.central_box(w, h))
    size = true_examples.shape[1:3] if true_examples is not None else image_size
    if size is not None:
      check_size(task.config.model, size)
    return sampling.generate(task.model, params, task.units, mode, key, num_images=num_images,
                             true_images=true_examples, record_t=record_t,
                             skip_first_step=skip_first_step, should_stop=should_stop,
                             image_size=size, **options)

  def final_report(self, task, run, should_stop=None) -> dict:
    if self._report is None:
      return super().final_report(task, run, should_stop)
    fe = run.config.final_eval
    # 8-bit data dequantised by a uniform draw w wide (model units): a density of at
    # most 1 / w per dimension, so K <= -log2(w) bits per dimension, whatever the model.
    ceiling = -task.model.unit_dims * math.log2(task.units.uniform_noise)
    return table1.final_report(task, run, self._report.examples(run.config, fe.num_examples,
                                                                fe.seed),
                               self._report.figures, reference={"ceiling_bits": ceiling},
                               should_stop=should_stop)


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An image config shrunk to run in seconds on a CPU (tests, smoke runs, the
  `:tiny` variant of the config files)."""
  config.train.update(num_steps=20, log_every_steps=5, eval_every_steps=10,
                      checkpoint_every_steps=10, sample_every_steps=0)
  config.eval.update(num_batches=3, num_strata=5)
  if "final_eval" in config:  # a Table 1 model: convolutions only, on 16-pixel crops
    config.model.update(n_hidden_conv=4, n_layers_conv=2, n_hidden_dense_upper=8,
                        trajectory_length=20, n_temporal_basis=4, spatial_width=16)
    config.train.batch_size = 16
    config.eval.update(batch_size=16, num_images=32)
    config.final_eval.update(num_examples=4, batch_size=4, image_size=32)
    return config
  config.model.update(n_hidden_dense_lower=16, n_hidden_dense_lower_output=1,
                      n_hidden_dense_upper=8, n_hidden_conv=4, n_layers_conv=2,
                      n_layers_dense_lower=2, n_layers_dense_upper=2, trajectory_length=50,
                      n_temporal_basis=4)
  config.train.batch_size = 32
  config.eval.update(batch_size=32, num_images=64)
  return config


def any_size(model: ml_collections.ConfigDict) -> bool:
  """Whether the model applies to images of any size: convolutions only (no dense
  pathway, paper Fig. D.1), on sides that 2^(n_scales - 1) divides."""
  return not (model.n_hidden_dense_lower > 0 and C.n_dense_lower_layers(model) > 0)


def check_size(model: ml_collections.ConfigDict, size: Sequence[int]) -> None:
  """Raises errors.UserError if the model cannot apply at (H, W) = size."""
  h, w = size
  factor = 2 ** (model.n_scales - 1)
  if (h, w) != (model.spatial_width, model.spatial_width) and not any_size(model):
    raise errors.UserError(
        f"This model has a dense pathway: its image size is fixed at {model.spatial_width} x "
        f"{model.spatial_width}; only convolution-only models (model.n_hidden_dense_lower=0) "
        "sample at other sizes.")
  if h < 1 or w < 1 or h % factor or w % factor:
    raise errors.UserError(
        f"An image of {w} x {h} pixels does not fit the model's {model.n_scales} scales: both "
        f"sides must be positive multiples of {factor}.")


def load_image(model: ml_collections.ConfigDict, path: str) -> np.ndarray:
  """An image file as the model's input, uint8 (H, W, C): as it is (its sides cut down to
  multiples of 2^(n_scales - 1)) for a model of any size, else padded and resized to
  spatial_width as the folder source's resize mode.

  Raises:
    errors.UserError: the file cannot be read.
  """
  try:
    image = image_folder.decode(path, model.n_colors)
  except Exception as err:  # pylint: disable=broad-except
    raise errors.UserError(f"Cannot read the image {path}: {err}") from err
  if not any_size(model):
    return image_folder.pad_and_resize(image, model.spatial_width)
  factor = 2 ** (model.n_scales - 1)
  h, w = image.shape[0] - image.shape[0] % factor, image.shape[1] - image.shape[1] % factor
  return image[:h, :w]


MNIST = ImageExperiment("mnist", "the reference MNIST model; the 5000 digits shipped by default")
CIFAR10 = ImageExperiment("cifar10", "the reference code's larger CIFAR-10 model",
                          model_defaults=dict(spatial_width=32, n_colors=3),
                          data_defaults=dict(source="tfds", dataset="cifar10"))
# The convolutional network alone, on three scales: any image size (paper Fig. D.1).
CONVOLUTIONAL = dict(n_hidden_dense_lower=0, n_scales=3, spatial_width=32)
