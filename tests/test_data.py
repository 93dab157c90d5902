"""Data sources, preprocessing and batching."""

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

from dpm_jax import data as data_lib
from dpm_jax import errors


def write_idx(path, images, gzipped=None):
  n, h, w = images.shape
  payload = struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()
  gzipped = path.endswith(".gz") if gzipped is None else gzipped
  with (gzip.open if gzipped else open)(path, "wb") as f:
    f.write(payload)


def test_embedded_digits_split_is_stratified_and_fixed():
  ds = data_lib.load_embedded()
  assert ds.train.shape == (4500, 28, 28, 1) and ds.test.shape == (500, 28, 28, 1)
  assert ds.train.dtype == np.uint8
  with np.load(data_lib.EMBEDDED_FILE) as f:
    labels = f["labels"]
  train_idx, test_idx = data_lib.embedded_split(labels)
  assert np.bincount(labels[test_idx]).tolist() == [50] * 10
  assert not set(train_idx) & set(test_idx)
  assert len(train_idx) + len(test_idx) == 5000
  np.testing.assert_array_equal(data_lib.embedded_split(labels)[1], test_idx)
  # Real digits: a dark background with bright strokes.
  assert np.median(ds.train) == 0 and ds.train.max() == 255


def test_embedded_rejects_other_datasets():
  class Cfg(dict):
    __getattr__ = dict.__getitem__
  with pytest.raises(errors.UserError, match="ships MNIST only"):
    data_lib.load_dataset(Cfg(source="embedded", dataset="cifar10"))


@pytest.mark.parametrize("name,gzipped", [
    ("{}-images-idx3-ubyte.gz", True), ("{}-images-idx3-ubyte", False),
    ("{}-images.idx3-ubyte", False),  # the MNIST site's files, unpacked
    ("{}-images-idx3-ubyte.gz", False),  # unpacked under the packed name
    ("{}-images-idx3-ubyte", True),  # packed under the unpacked name
])
def test_idx_files_are_read_by_content_whatever_their_names(tmp_path, name, gzipped):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
  test = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
  for split, images in (("train", train), ("t10k", test)):
    write_idx(str(tmp_path / "staging"), images, gzipped)
    os.replace(tmp_path / "staging", tmp_path / name.format(split))
  ds = data_lib.load_idx(str(tmp_path), "fashion_mnist")
  np.testing.assert_array_equal(ds.train[..., 0], train)
  np.testing.assert_array_equal(ds.test[..., 0], test)


def test_idx_errors_name_the_problem(tmp_path):
  with pytest.raises(errors.UserError, match="needs data.dir"):
    data_lib.load_idx("")
  with pytest.raises(errors.UserError, match="is not a folder.*Offline options"):
    data_lib.load_idx(str(tmp_path / "nope"))
  with pytest.raises(errors.UserError, match="No train-images-idx3-ubyte.*data.download=True"):
    data_lib.load_idx(str(tmp_path))
  bad = tmp_path / "train-images-idx3-ubyte.gz"
  with gzip.open(bad, "wb") as f:
    f.write(struct.pack(">IIII", 0x00000801, 1, 2, 2) + b"\0" * 4)
  with pytest.raises(errors.UserError, match="not an IDX3 ubyte image file"):
    data_lib.read_idx_images(str(bad))
  with gzip.open(bad, "wb") as f:
    f.write(struct.pack(">IIII", 0x00000803, 5, 28, 28) + b"\0" * 100)
  with pytest.raises(errors.UserError, match="truncated or corrupt"):
    data_lib.read_idx_images(str(bad))
  bad.write_bytes(b"not gzip at all, definitely not")
  with pytest.raises(errors.UserError, match="is not an IDX3 ubyte image file"):
    data_lib.read_idx_images(str(bad))
  bad.write_bytes(gzip.compress(struct.pack(">IIII", 0x00000803, 5, 28, 28))[:-9])
  with pytest.raises(errors.UserError, match="Cannot read IDX file.*damaged"):
    data_lib.read_idx_images(str(bad))


class IdxServer:
  """A local HTTP server of IDX files that the downloader's URLs and checksums point at."""

  def __init__(self, folder, monkeypatch):
    rng = np.random.default_rng(4)
    self.images = {"train": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
                   "t10k": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)}
    self.requests = []
    checksums = {}
    for split, images in self.images.items():
      name = f"{split}-images-idx3-ubyte.gz"
      write_idx(str(folder / name), images)
      raw = (folder / name).read_bytes()
      checksums[name] = (len(raw), hashlib.sha256(raw).hexdigest())
    requests = self.requests

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):
        requests.append(self.path)
        super().do_GET()

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
    threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01},
                     daemon=True).start()
    monkeypatch.setitem(data_lib.IDX_URLS, "mnist", self.url)
    monkeypatch.setitem(data_lib.IDX_CHECKSUMS, "mnist", checksums)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
      monkeypatch.delenv(var, raising=False)

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture
def idx_server(tmp_path, monkeypatch):
  (tmp_path / "served").mkdir()
  server = IdxServer(tmp_path / "served", monkeypatch)
  yield server
  server.close()


def test_idx_download_fetches_the_image_files_then_loads_them(tmp_path, idx_server):
  class Cfg(dict):
    __getattr__ = dict.__getitem__
  folder = tmp_path / "data" / "mnist"
  ds = data_lib.load_dataset(Cfg(source="idx", dataset="mnist", dir=str(folder), download=True))
  np.testing.assert_array_equal(ds.train[..., 0], idx_server.images["train"])
  np.testing.assert_array_equal(ds.test[..., 0], idx_server.images["t10k"])
  files = ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
  assert sorted(idx_server.requests) == ["/" + f for f in files]
  assert sorted(os.listdir(folder)) == files


def test_idx_download_refuses_a_file_that_does_not_match_its_checksum(tmp_path, idx_server,
                                                                      monkeypatch):
  size, _ = data_lib.IDX_CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"]
  monkeypatch.setitem(data_lib.IDX_CHECKSUMS["mnist"], "train-images-idx3-ubyte.gz",
                      (size, hashlib.sha256(b"the published file").hexdigest()))
  folder = tmp_path / "data"
  with pytest.raises(errors.UserError, match=r"train-images-idx3-ubyte.gz: SHA-256 .* does not "
                     r"match the published .*damaged; nothing was kept; retry"):
    data_lib.load_idx(str(folder), "mnist", download=True)
  assert os.listdir(folder) == []


def test_idx_download_from_an_unreachable_host_is_one_line_naming_the_url(tmp_path, idx_server,
                                                                          monkeypatch):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setitem(data_lib.IDX_URLS, "mnist", f"http://127.0.0.1:{port}/")
  folder = tmp_path / "data"
  with pytest.raises(errors.UserError) as err:
    data_lib.load_idx(str(folder), "mnist", download=True)
  message = str(err.value)
  assert "\n" not in message
  url = f"http://127.0.0.1:{port}/train-images-idx3-ubyte.gz"
  assert message.startswith(f"Could not download {url} (")
  assert "by hand" in message and "Offline options" in message
  assert os.listdir(folder) == []
  # An HTTP error: a file the server does not have.
  (tmp_path / "served" / "t10k-images-idx3-ubyte.gz").unlink()
  monkeypatch.setitem(data_lib.IDX_URLS, "mnist", idx_server.url)
  with pytest.raises(errors.UserError, match=r"Could not download http://.*/t10k-images-idx3-"
                     r"ubyte.gz \(HTTP 404 .*by hand"):
    data_lib.load_idx(str(folder), "mnist", download=True)
  assert os.listdir(folder) == ["train-images-idx3-ubyte.gz"]


def test_idx_download_fetches_only_missing_files(tmp_path, idx_server):
  folder = tmp_path / "data"
  folder.mkdir()
  write_idx(str(folder / "train-images.idx3-ubyte"), idx_server.images["train"])  # unpacked
  ds = data_lib.load_idx(str(folder), "mnist", download=True)
  assert idx_server.requests == ["/t10k-images-idx3-ubyte.gz"]
  np.testing.assert_array_equal(ds.test[..., 0], idx_server.images["t10k"])
  data_lib.load_idx(str(folder), "mnist", download=True)
  assert idx_server.requests == ["/t10k-images-idx3-ubyte.gz"]
  with pytest.raises(errors.UserError, match="fetches the IDX files of .* only"):
    data_lib.load_idx(str(tmp_path / "empty"), "cifar10", download=True)


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist():
  ds = data_lib.load_idx("/usr/share/datasets/fashion-mnist", "fashion_mnist")
  assert ds.train.shape == (60000, 28, 28, 1) and ds.test.shape == (10000, 28, 28, 1)


def test_stats_give_zero_mean_unit_variance_over_the_training_set():
  rng = np.random.default_rng(1)
  train = rng.integers(0, 256, (1000, 8, 8, 1), dtype=np.uint8)
  stats = data_lib.compute_stats(train)
  x = np.asarray(data_lib.to_model_units(train, stats), np.float64)
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5
  np.testing.assert_allclose(stats.uniform_noise, stats.scale / 255.0)
  # One 8-bit step in pixels is exactly one dequantisation width in model units.
  step = np.asarray(data_lib.to_model_units(np.array([101], np.uint8), stats)
                    - data_lib.to_model_units(np.array([100], np.uint8), stats))
  np.testing.assert_allclose(step, stats.uniform_noise, rtol=1e-5)
  np.testing.assert_allclose(data_lib.to_pixels(x, stats), train / 255.0, atol=1e-6)


def test_reference_preprocessing_switches():
  rng = np.random.default_rng(2)
  train = np.concatenate([np.zeros((500, 4, 4, 1)), rng.integers(0, 256, (500, 4, 4, 1))]).astype(np.uint8)
  full = data_lib.compute_stats(train)
  ref = data_lib.compute_stats(train, dequantization="reference")
  np.testing.assert_allclose(ref.uniform_noise, (1 / 255) / full.scale)
  first = data_lib.compute_stats(train, scale_from="first_batch", batch_size=16, seed=3)
  batch = train[data_lib.epoch_permutation(1000, 3, 0)[:16]] / 255.0
  np.testing.assert_allclose(first.scale, 1 / batch.std(), rtol=1e-10)
  with pytest.raises(errors.UserError, match="dequantization"):
    data_lib.compute_stats(train, dequantization="none")
  with pytest.raises(errors.UserError, match="constant"):
    data_lib.compute_stats(np.zeros((4, 2, 2, 1), np.uint8))


def test_batches_are_deterministic_and_cover_each_epoch():
  n, b = 103, 10
  assert data_lib.steps_per_epoch(n, b) == 10
  epoch0 = np.concatenate([data_lib.batch_indices(s, n, b, seed=7) for s in range(10)])
  assert len(set(epoch0)) == 100
  epoch1 = np.concatenate([data_lib.batch_indices(s, n, b, seed=7) for s in range(10, 20)])
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(data_lib.batch_indices(13, n, b, seed=7), epoch1[30:40])
  assert not np.array_equal(data_lib.batch_indices(0, n, b, seed=8), epoch0[:10])
  with pytest.raises(errors.UserError, match="exceeds the 103 training images"):
    data_lib.steps_per_epoch(n, 200)


def test_tfds_mock_data_mnist_and_cifar10():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = data_lib.load_tfds("mnist")
    assert ds.train.shape == (12, 28, 28, 1) and ds.train.dtype == np.uint8
    ds = data_lib.load_tfds("cifar10")
    assert ds.test.shape == (12, 32, 32, 3)


def test_tfds_offline_fails_fast_with_the_offline_options(tmp_path):
  start = time.time()
  with pytest.raises(errors.UserError, match="not prepared.*data.source='embedded'"):
    data_lib.load_tfds("mnist", data_dir=str(tmp_path))
  assert time.time() - start < 30


def test_tfds_download_without_network_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(data_lib, "_can_reach", lambda *a, **k: False)
  start = time.time()
  with pytest.raises(errors.UserError, match="cannot be reached"):
    data_lib.load_tfds("cifar10", data_dir=str(tmp_path), download=True)
  assert time.time() - start < 30


def test_unknown_tfds_dataset():
  with pytest.raises(errors.UserError, match="must be one of"):
    data_lib.load_tfds("imagenet")
