"""Data sources ('embedded', 'idx', 'tfds'), training batches and preprocessing.

Images are uint8 NHWC arrays in host memory, scaled to model units inside the
jitted step: one scalar scale and shift from the whole training set (zero mean,
unit variance) and dequantisation noise one 8-bit bin wide.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import gzip
import hashlib
import http.client
import math
import os
import re
import socket
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from typing import Optional

import ml_collections

import numpy as np
from dpm_jax import errors
from dpm_jax import outputs

EMBEDDED_FILE = os.path.join(os.path.dirname(__file__), "data", "mnist_5k.npz")
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
SOURCES = ("embedded", "idx", "tfds")
# One 8-bit quantisation bin of data in [0, 1].
BIN_WIDTH = 1.0 / 255.0
# Examples not held in memory: their scale and shift come from this many of them.
STATS_EXAMPLES = 1000


OFFLINE_OPTIONS = (
    "Offline options: data.source='embedded' (5000 real MNIST digits shipped "
    "with the package); data.source='idx' with data.dir pointing at gzipped "
    "IDX files (e.g. Debian's dataset-fashion-mnist installs Fashion-MNIST in "
    "/usr/share/datasets/fashion-mnist); or prepare the tfds data set on a "
    "machine with internet (tfds.data_source(name, download=True, "
    "download_and_prepare_kwargs={'file_format': 'array_record'})) and copy "
    "its data_dir here, then set data.tfds_data_dir.")

# What data.download=True fetches for data.source='idx': the image files (the labels go
# unused) from tensorflow-datasets' URLs (tensorflow_datasets/image_classification/mnist.py),
# each checked against the size in bytes and SHA-256 tfds publishes for it
# (tensorflow_datasets/url_checksums/mnist.txt and fashion_mnist.txt, tfds 4.9.10).
IDX_URLS = {"mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"}
IDX_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (
            9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "t10k-images-idx3-ubyte.gz": (
            1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (
            26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "t10k-images-idx3-ubyte.gz": (
            4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    },
}
DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read, not for the whole file


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An experiment's stored examples and where they came from.

  Attributes:
    train, test: (N, ...) each: uint8 (N, H, W, C) images, Examples, or an
      experiment's own arrays.
    provenance: JSON-able: the source and what it needs to be read again
      (sampling and evaluation use the same data or say they cannot). None:
      arrays given from Python, which no file holds.
  """
  train: np.ndarray
  test: np.ndarray
  name: str
  provenance: Optional[dict] = None

  def record(self) -> dict:
    return {**(self.provenance or {"source": "arrays", "note": "arrays given from Python"}),
            "name": self.name, "num_train": int(len(self.train)),
            "num_test": int(len(self.test)), "fingerprint": fingerprint(self)}


def fingerprint(dataset: Dataset) -> str:
  """SHA-256 of train then test: of arrays' shapes, dtypes and bytes, or Examples.fingerprint."""
  h = hashlib.sha256()
  for part in (dataset.train, dataset.test):
    if isinstance(part, Examples):
      h.update(part.fingerprint().encode())
      continue
    part = np.ascontiguousarray(part)
    h.update(f"{part.shape}{part.dtype}".encode())
    h.update(memoryview(part).cast("B"))
  return h.hexdigest()


class Examples(abc.ABC):
  """Stored examples made on demand (decoded from a file, drawn from a generator).

  Numpy-like (len, shape, dtype; an int, a slice or an index array gives uint8
  arrays). The training batch of step s is a function of (seed, s) alone, whatever
  the worker count, so a resumed run repeats the uninterrupted one.
  """
  dtype = np.dtype(np.uint8)

  @abc.abstractmethod
  def __len__(self) -> int:
    """Examples per epoch (the learning-rate decay counts epochs)."""

  @property
  @abc.abstractmethod
  def example_shape(self) -> tuple:
    """The shape of one example, (H, W, C) for images."""

  @abc.abstractmethod
  def example(self, index: int) -> np.ndarray:
    """Example `index` (any int: streams may run past one epoch)."""

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """A digest of what the examples are made from (files, sizes, settings)."""

  @property
  def shape(self) -> tuple:
    return (len(self),) + tuple(self.example_shape)

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self.example(int(index) % len(self))
    indices = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
    out = np.empty((len(indices),) + tuple(self.example_shape), self.dtype)
    for j, i in enumerate(indices.ravel()):
      out[j] = self.example(int(i))
    return out

  def batches(self, batch_size: int, seed: int, start_step: int, *, process_index: int = 0,
              process_count: int = 1, workers: int = 0):
    """Rows [p n, (p + 1) n) of each step's global batch from start_step (0-based),
    n = batch_size / process_count: epoch after epoch, each shuffled afresh from seed."""
    import grain  # pylint: disable=g-import-not-at-top
    local = batch_size // process_count
    ds = grain.MapDataset.source(self).seed(seed).shuffle().repeat(None)
    ds = ds.batch(local, drop_remainder=True)
    ds = ds[process_index::process_count][start_step:]
    return prefetch(ds, workers)


def prefetch(ds, workers: int):
  """An iterator over a grain.MapDataset: read ahead by two threads, or decoded by
  `workers` processes, in the dataset's order either way."""
  import grain  # pylint: disable=g-import-not-at-top
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (grain issue #1355)
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2))
  return iter(it)


def train_batches(train, batch_size: int, seed: int, start_step: int, *, process_index: int = 0,
                  process_count: int = 1, workers: int = 0):
  """This process's part of the training batch of each step from start_step (0-based):
  for arrays in memory, its rows of the examples at batch_indices(step)."""
  if isinstance(train, Examples):
    yield from train.batches(batch_size, seed, start_step, process_index=process_index,
                             process_count=process_count, workers=workers)
    return
  local = batch_size // process_count
  step = start_step
  while True:
    indices = batch_indices(step, len(train), batch_size, seed)
    yield train[indices[process_index * local:(process_index + 1) * local]]
    step += 1


def from_arrays(train: np.ndarray, test: Optional[np.ndarray] = None, *, name: str = "arrays",
                test_fraction: float = 0.1, seed: int = 0) -> Dataset:
  """A Dataset of images held in memory: uint8 (N, H, W, C), or (N, H, W) greyscale.

  Args:
    train: the training images (all images, if `test` is None).
    test: held-out images; if None, a `test_fraction` of `train`, split with `seed`.

  Raises:
    errors.UserError: images that are not uint8, not 3- or 4-dimensional, or too few.
  """
  arrays = []
  for what, x in (("train", train), ("test", test)):
    if x is None:
      arrays.append(None)
      continue
    x = np.asarray(x)
    if x.ndim == 3:
      x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4:
      raise errors.UserError(f"from_arrays: {what} images must be uint8 (N, H, W, C) or (N, H, W), got "
                      f"{x.dtype} {x.shape}; convert with (x * 255).round().astype(np.uint8).")
    arrays.append(x)
  train, test = arrays
  if test is None:
    n_test = int(round(len(train) * test_fraction))
    if not 0 < n_test < len(train):
      raise errors.UserError(f"from_arrays: {len(train)} images cannot be split {test_fraction:g} "
                      "for testing; pass test= or more images.")
    order = np.random.default_rng(seed).permutation(len(train))
    train, test = train[np.sort(order[n_test:])], train[np.sort(order[:n_test])]
  return Dataset(train, test, name)


@dataclasses.dataclass(frozen=True)
class DataStats:
  """How 8-bit images map to model units (dpm_jax.experiment.Units for images).

  x_model = pixels / 255 * scale + shift; uniform_noise is the dequantisation
  width in model units. n_colors and dequantization come from the config, not
  the run's saved stats.
  """
  scale: float
  shift: float
  uniform_noise: float
  n_colors: int = 1
  dequantization: str = "bin"

  def to_model(self, batch):
    return to_model_units(batch, self)

  def to_output(self, x) -> np.ndarray:
    return to_pixels(x, self)

  def nll_bits_per_dim(self, cost_bits_per_pixel):
    """-(K - L_null) in bits per pixel -> the NLL bound in bits per dimension on 8-bit data.

    Per dimension in model units the bound is -log p(x) <= cost * ln2 / n_colors
    + H(1) nats; a density on 0..255 units is lower by log(255 / scale).
    """
    nats = (np.asarray(cost_bits_per_pixel) * math.log(2.0) / self.n_colors
            + 0.5 * (1.0 + math.log(2.0 * math.pi)) + math.log(255.0 / self.scale))
    return nats / math.log(2.0)

  def extras(self, mean: float, stderr: float) -> dict:
    """`nll_bpd`, bits per dimension, bounds the 8-bit data's NLL with bin-wide
    dequantisation; with the reference code's narrower noise the same number is only
    a density in 8-bit units, `density_bpd`."""
    name = "nll_bpd" if self.dequantization == "bin" else "density_bpd"
    return {name: float(self.nll_bits_per_dim(mean)), f"{name}_stderr": stderr / self.n_colors}

  def summary(self, record) -> str:
    for prefix in ("eval/", ""):
      if record.get(prefix + "nll_bpd") is not None:
        return f"; NLL bound {record[prefix + 'nll_bpd']:.4f} bits/dim on 8-bit data"
      if record.get(prefix + "density_bpd") is not None:
        return (f"; density {record[prefix + 'density_bpd']:.4f} bits/dim (not a bound on "
                "8-bit data: data.dequantization='reference')")
    return ""

  def to_dict(self) -> dict:
    return {"scale": self.scale, "shift": self.shift, "uniform_noise": self.uniform_noise}

  @classmethod
  def from_dict(cls, d, **config_fields) -> "DataStats":
    return cls(float(d["scale"]), float(d["shift"]), float(d["uniform_noise"]), **config_fields)


def load_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
  source = data_config.source
  if source == "embedded":
    if data_config.dataset != "mnist":
      raise errors.UserError(
          f"data.source='embedded' ships MNIST only, but data.dataset="
          f"{data_config.dataset!r}; set data.dataset='mnist' or use "
          "data.source='idx' or 'tfds'.")
    return load_embedded()
  if source == "idx":
    return load_idx(data_config.dir, name=data_config.dataset, download=data_config.download)
  if source == "tfds":
    return load_tfds(data_config.dataset, data_dir=data_config.tfds_data_dir or None,
                     download=data_config.download)
  raise errors.UserError(f"data.source must be one of {SOURCES}, got {source!r}.")


def embedded_split(labels: np.ndarray, test_per_class: int = 50, seed: int = 0):
  """Sorted (train, test) indices: test_per_class test digits per class."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == label))
    test.append(idx[:test_per_class])
    train.append(idx[test_per_class:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_embedded() -> Dataset:
  """The 5000 MNIST digits shipped with the package: 4500 train, 500 test."""
  if not os.path.exists(EMBEDDED_FILE):
    raise errors.UserError(
        f"The embedded digits {EMBEDDED_FILE} are missing from this install; "
        "reinstall the package (pip install .) or run "
        "tools/make_embedded_mnist.py.")
  try:
    with np.load(EMBEDDED_FILE) as f:
      images, labels = f["images"], f["labels"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
    raise errors.UserError(f"The embedded digits {EMBEDDED_FILE} cannot be read ({type(err).__name__}: "
                    f"{err}); reinstall the package (pip install .).") from err
  train, test = embedded_split(labels)
  return Dataset(images[train, :, :, None], images[test, :, :, None], "mnist_embedded",
                 {"source": "embedded", "dataset": "mnist"})


def read_idx_images(path: str) -> np.ndarray:
  """An IDX3 ubyte image file as uint8 (N, H, W), gzipped or not: gzip is told by its
  header and IDX by its magic number, not by the file's name."""
  try:
    with open(path, "rb") as raw:
      gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as f:
      header = f.read(16)
      if len(header) < 16:
        raise errors.UserError(f"{path} is too short to be an IDX image file.")
      magic, n, rows, cols = struct.unpack(">IIII", header)
      if magic != 0x00000803:
        raise errors.UserError(
            f"{path} is not an IDX3 ubyte image file (magic {magic:#010x}, "
            "expected 0x00000803).")
      data = np.frombuffer(f.read(), dtype=np.uint8)
  except (OSError, EOFError, zlib.error, struct.error, ValueError) as e:
    raise errors.UserError(f"Cannot read IDX file {path}: {type(e).__name__}: {e}. The file is damaged "
                    "or not an IDX file; download it again.") from e
  if data.size != n * rows * cols:
    raise errors.UserError(
        f"{path} holds {data.size} pixels, but its header promises "
        f"{n}x{rows}x{cols}; the file is truncated or corrupt.")
  return data.reshape(n, rows, cols)


def _idx_files(directory: str, split: str) -> list:
  """The image files of `split` ('train' or 't10k'), sorted: named <split>-images then
  idx3-ubyte with '-' or '.' between (the MNIST site's unpacked names use '.'),
  compressed or not."""
  if not os.path.isdir(directory):
    return []
  return sorted(name for name in os.listdir(directory)
                if re.fullmatch(rf"{split}-images[-.]idx3-ubyte(\.gz)?", name, re.I))


def _find_idx(directory: str, split: str) -> str:
  """The path of the image file of `split` ('train' or 't10k')."""
  found = _idx_files(directory, split)
  if not found:
    raise errors.UserError(
        f"No {split}-images-idx3-ubyte in data.dir={directory!r} (nor {split}-images."
        "idx3-ubyte; gzipped or not). Point data.dir at a folder with the IDX image files "
        "train-images-idx3-ubyte and t10k-images-idx3-ubyte (MNIST or Fashion-MNIST), or set "
        "--config.data.download=True to fetch them (needs internet). " + OFFLINE_OPTIONS)
  return os.path.join(directory, found[0])  # the same images, compressed or not


def load_idx(directory: str, name: str = "idx", download: bool = False) -> Dataset:
  """train-images-idx3-ubyte(.gz) and t10k-images-idx3-ubyte(.gz) of a folder; with
  `download`, those missing are first fetched into it (download_idx)."""
  if not directory:
    raise errors.UserError("data.source='idx' needs data.dir, the folder holding the IDX files. "
                    + OFFLINE_OPTIONS)
  directory = os.path.expanduser(directory)
  if download:
    download_idx(directory, name)
  if not os.path.isdir(directory):
    raise errors.UserError(f"data.dir={directory!r} is not a folder; set "
                           "--config.data.download=True to fetch the IDX files into it (needs "
                           "internet). " + OFFLINE_OPTIONS)
  train = read_idx_images(_find_idx(directory, "train"))
  test = read_idx_images(_find_idx(directory, "t10k"))
  return Dataset(train[..., None], test[..., None], f"{name}_idx",
                 {"source": "idx", "dataset": name, "dir": directory})


def download_idx(directory: str, dataset: str) -> None:
  """Fetches into `directory` (created) the gzipped IDX image files of `dataset` it lacks.

  Each file is written beside its target, checked against its published size and
  SHA-256 (IDX_CHECKSUMS), then renamed: a failure leaves no file, whole or partial.

  Raises:
    errors.UserError: a data set with no known files, a folder that cannot be written, a
      host that cannot be reached, an HTTP error or a damaged download; one line naming
      the URL or folder and the fix.
  """
  missing = [f"{split}-images-idx3-ubyte.gz" for split in ("train", "t10k")
             if not _idx_files(directory, split)]
  if not missing:
    return
  if dataset not in IDX_URLS:
    raise errors.UserError(
        f"data.download=True fetches the IDX files of {sorted(IDX_URLS)} only, not of "
        f"data.dataset={dataset!r}; copy its IDX files into data.dir={directory!r} by hand.")
  outputs.writable_folder("data.dir", directory, "point data.dir at a folder you can write")
  os.makedirs(directory, exist_ok=True)
  for file in missing:
    url, (size, sha256) = IDX_URLS[dataset] + file, IDX_CHECKSUMS[dataset][file]
    digest, n = hashlib.sha256(), 0
    with outputs.atomic_path(os.path.join(directory, file)) as tmp, open(tmp, "wb") as f:
      try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
          while chunk := response.read(1 << 20):
            digest.update(chunk)
            n += len(chunk)
            f.write(chunk)
      except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
        if isinstance(err, urllib.error.HTTPError):
          reason = f"HTTP {err.code} {err.reason}"
        else:
          cause = getattr(err, "reason", err)  # URLError wraps the socket's error
          reason = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else cause
        raise errors.UserError(
            f"Could not download {url} ({reason}); copy the files into "
            f"data.dir={directory!r} by hand, or run where the host can be reached. "
            + OFFLINE_OPTIONS) from err
      if (n, digest.hexdigest()) != (size, sha256):
        raise errors.UserError(
            f"{url}: SHA-256 {digest.hexdigest()} ({n} bytes) does not match the published "
            f"{sha256} ({size} bytes); the download is damaged; nothing was kept; retry.")


def _can_reach() -> bool:
  """Whether the tfds download host answers within 3 s."""
  try:
    with socket.create_connection(("storage.googleapis.com", 443), timeout=3.0):
      return True
  except OSError:
    return False


def load_tfds(dataset: str, data_dir: Optional[str] = None, download: bool = False) -> Dataset:
  """A data set through tfds.data_source (array_record; no TensorFlow needed).

  Never waits on download retries: without a prepared copy it fails at once,
  and with download=True it first checks that the download host answers.
  """
  if dataset not in IMAGE_SHAPES:
    raise errors.UserError(f"data.dataset must be one of {sorted(IMAGE_SHAPES)} for "
                    f"data.source='tfds', got {dataset!r}.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    sources = tfds.data_source(dataset, split=["train", "test"], data_dir=data_dir,
                               download=False)
  except Exception as err:  # pylint: disable=broad-except
    if not download:
      raise errors.UserError(
          f"tfds data set {dataset!r} is not prepared in array_record format in "
          f"{data_dir or 'the default tfds data_dir (~/tensorflow_datasets)'} "
          f"({type(err).__name__}). Set data.download=True on a machine with "
          "internet, or work offline. " + OFFLINE_OPTIONS) from err
    if not _can_reach():
      raise errors.UserError(
          f"data.download=True but the tfds download host cannot be reached; "
          f"{dataset!r} cannot be fetched from this machine. " + OFFLINE_OPTIONS) from err
    sources = tfds.data_source(
        dataset, split=["train", "test"], data_dir=data_dir, download=True,
        download_and_prepare_kwargs={"file_format": "array_record"})
  train, test = (_read_all(s, dataset) for s in sources)
  return Dataset(train, test, f"{dataset}_tfds", {"source": "tfds", "dataset": dataset})


def _read_all(source, name) -> np.ndarray:
  n = len(source)
  if n == 0:
    raise errors.UserError(f"tfds split of {name!r} is empty.")
  try:
    first = np.asarray(source[0]["image"])
    out = np.empty((n,) + first.shape, np.uint8)
    for i in range(n):
      out[i] = np.asarray(source[i]["image"])
  except Exception as err:  # pylint: disable=broad-except
    # array_record, protobuf and image decoders raise their own types.
    raise errors.UserError(f"Cannot read the tfds data set {name!r} ({type(err).__name__}: "
                    f"{str(err)[:300]}); its prepared files are damaged: prepare it again.") from err
  return out


def compute_stats(train: np.ndarray, *, scale_from: str = "train_set",
                  dequantization: str = "bin", batch_size: int = 512,
                  seed: int = 0) -> DataStats:
  """Scale and shift to zero mean, unit variance; dequantisation width.

  Args:
    train: uint8 training images; of Examples, a fixed sample of STATS_EXAMPLES.
    scale_from: 'train_set' or 'first_batch' (the reference code: one shuffled
      training minibatch of batch_size, shuffled with seed).
    dequantization: 'bin' (one 8-bit bin, scale / 255) or 'reference'
      ((1/255) / scale, the reference code's value).
  """
  if isinstance(train, Examples):
    train = train[epoch_permutation(len(train), seed, 0)[:STATS_EXAMPLES]]
  if scale_from == "train_set":
    x = train
  elif scale_from == "first_batch":
    x = train[epoch_permutation(len(train), seed, 0)[:batch_size]]
  else:
    raise errors.UserError(f"data.scale_from must be 'train_set' or 'first_batch', got {scale_from!r}.")
  # Two passes in float64, chunked: exact enough and bounded in memory.
  n = x.size
  mean = sum(float(c.sum(dtype=np.float64)) for c in _chunks(x)) / n / 255.0
  var = sum(float(np.square(c / 255.0 - mean).sum()) for c in _chunks(x)) / n
  if var <= 0:
    raise errors.UserError("The training images are constant; they cannot be scaled to unit variance.")
  scale = 1.0 / np.sqrt(var)
  shift = -mean * scale
  if dequantization == "bin":
    uniform_noise = BIN_WIDTH * scale
  elif dequantization == "reference":
    uniform_noise = BIN_WIDTH / scale
  else:
    raise errors.UserError(f"data.dequantization must be 'bin' or 'reference', got {dequantization!r}.")
  return DataStats(float(scale), float(shift), float(uniform_noise))


def _chunks(x, size=4096):
  for i in range(0, len(x), size):
    yield x[i:i + size].astype(np.float64)


def to_model_units(images_uint8: np.ndarray, stats: DataStats) -> np.ndarray:
  """uint8 pixels -> float32 model units (numpy or jax arrays, inside jit too)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(images_uint8).astype(jnp.float32)
  return x * (stats.scale / 255.0) + stats.shift


def to_pixels(x: np.ndarray, stats: DataStats) -> np.ndarray:
  """Model units -> [0, 1] pixel intensities (not clipped)."""
  with np.errstate(divide="ignore", invalid="ignore"):  # a zero scale: Inf, which writers refuse
    return (np.asarray(x) - stats.shift) / stats.scale


@functools.lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The training set's order in an epoch: a function of (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
  """Full batches in one pass over the training set (the remainder is dropped)."""
  if batch_size > n_train:
    raise errors.UserError(
        f"train.batch_size={batch_size} exceeds the {n_train} training images; "
        "lower train.batch_size.")
  return n_train // batch_size


def batch_indices(step: int, n_train: int, batch_size: int, seed: int) -> np.ndarray:
  """Indices of the training batch of a step (0-based)."""
  per_epoch = steps_per_epoch(n_train, batch_size)
  epoch, i = divmod(step, per_epoch)
  return epoch_permutation(n_train, seed, epoch)[i * batch_size:(i + 1) * batch_size]
