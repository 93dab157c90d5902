"""Your own images (dpm_jax.image_folder) and the dead leaves generator: examples made
on demand, the training stream, and the errors of a bad folder."""


import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

import runs
from dpm_jax import data, dead_leaves, image_folder, registry
from dpm_jax import errors


def folder_config(folder, mode="resize", **fields):
  config = registry.get("mnist").default_config().data
  config.update(source="folder", dir=str(folder), folder_mode=mode, **fields)
  return config


def write(folder, name, array):
  path = folder / name
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


@pytest.fixture
def photos(tmp_path):
  """20 images of several sizes, greyscale and colour, in two subfolders."""
  rng = np.random.default_rng(0)
  for i in range(20):
    shape = (20 + i, 40 - i) + ((3,) if i % 2 else ())
    write(tmp_path, f"{'ab'[i % 2]}/{i:02d}.png", rng.integers(0, 256, shape, np.uint8))
  return tmp_path


def test_resize_is_the_reference_code_s_imagenet_preprocessing():
  """Black borders of (long - short) // 2 on both short sides, then a bicubic resize."""
  rng = np.random.default_rng(1)
  for shape in ((30, 20, 3), (20, 31, 3), (25, 25, 3)):
    image = rng.integers(0, 256, shape, np.uint8)
    pil = Image.fromarray(image)
    long, short = max(pil.size), min(pil.size)
    border = (long - short) // 2
    pad = (border, 0, border, 0) if pil.size[0] < pil.size[1] else (0, border, 0, border)
    expected = np.asarray(ImageOps.expand(pil, pad).resize((16, 16), Image.BICUBIC))
    np.testing.assert_array_equal(image_folder.pad_and_resize(image, 16), expected)


def test_a_folder_in_resize_mode(photos):
  dataset = image_folder.load(folder_config(photos), width=28, n_colors=1, seed=0)
  assert dataset.train.shape == (18, 28, 28, 1) and dataset.test.shape == (2, 28, 28, 1)
  names = set(dataset.train.files) | set(dataset.test.files)
  assert len(names) == 20 and not set(dataset.train.files) & set(dataset.test.files)
  again = image_folder.load(folder_config(photos), width=28, n_colors=1, seed=3)
  assert again.test.files == dataset.test.files  # the split's seed is fixed
  batch = dataset.train[np.asarray([3, 0, 3])]
  assert batch.dtype == np.uint8 and batch.shape == (3, 28, 28, 1)
  np.testing.assert_array_equal(batch[0], batch[2])
  colour = image_folder.load(folder_config(photos), width=8, n_colors=3, seed=0)
  assert colour.train[0].shape == (8, 8, 3)
  assert data.fingerprint(dataset) == data.fingerprint(image_folder.load(
      folder_config(photos), width=28, n_colors=1, seed=0))
  assert dataset.record()["num_files"] == 20


def test_crops_of_one_image_hold_out_a_region(tmp_path):
  image = np.tile(np.arange(64, dtype=np.uint8)[None, :], (40, 1)) * 4  # value = 4 * column
  write(tmp_path, "texture.png", image)
  config = folder_config(tmp_path, "crops", crops_per_image=50, test_crops=30,
                         holdout_fraction=0.25)
  dataset = image_folder.load(config, width=8, n_colors=1, seed=0)
  assert len(dataset.train) == 50 and len(dataset.test) == 30
  train_columns = dataset.train[:] // 4
  test_columns = dataset.test[:] // 4
  assert train_columns.max() < 48 <= test_columns.min()  # the right quarter held out
  assert len({int(c[0, 0, 0]) for c in train_columns}) > 10  # crops at many places
  np.testing.assert_array_equal(dataset.test[:], image_folder.load(
      config, width=8, n_colors=1, seed=5).test[:])  # test crops at fixed places


def test_the_stream_is_a_function_of_seed_and_step(photos):
  dataset = image_folder.load(folder_config(photos), width=8, n_colors=1, seed=0)
  stream = data.train_batches(dataset.train, 4, 7, 0)
  batches = [next(stream) for _ in range(8)]  # past one epoch of 18
  resumed = data.train_batches(dataset.train, 4, 7, 5)
  for b in batches[5:]:
    np.testing.assert_array_equal(next(resumed), b)
  parts = [data.train_batches(dataset.train, 4, 7, 2, process_index=p, process_count=2)
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([next(p) for p in parts]), batches[2])
  arrays = data.train_batches(dataset.train[:], 4, 7, 0)  # in memory: the permutation path
  indices = data.batch_indices(0, 18, 4, 7)
  np.testing.assert_array_equal(next(arrays), dataset.train[indices])


@pytest.mark.slow
def test_worker_processes_change_nothing(photos):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  dataset = image_folder.load(folder_config(photos, "crops"), width=8, n_colors=1, seed=0)
  serial = data.train_batches(dataset.train, 6, 1, 3)
  workers = data.train_batches(dataset.train, 6, 1, 3, workers=2)
  for _ in range(5):
    np.testing.assert_array_equal(next(serial), next(workers))


def test_damaged_files_are_skipped_and_counted(photos):
  raw = (photos / "a" / "00.png").read_bytes()
  (photos / "a" / "broken.png").write_bytes(raw[:30] + bytes(40) + raw[70:])
  (photos / "empty.jpg").write_bytes(b"")
  dataset = image_folder.load(folder_config(photos), width=8, n_colors=1, seed=0)
  record = dataset.record()
  assert record["damaged_files"] == 2 and sorted(record["damaged"]) == ["a/broken.png",
                                                                        "empty.jpg"]
  assert len(dataset.train) + len(dataset.test) == 20


def test_file_names_that_are_not_utf8(photos):
  """Names are bytes to the file system: read, fingerprinted and reported as \\xNN."""
  raw = (photos / "a" / "00.png").read_bytes()
  folder = os.fsencode(str(photos))
  with open(os.path.join(folder, b"\xff\xfe0.png"), "wb") as f:
    f.write(raw)
  with open(os.path.join(folder, b"b", b"broken-\xe9.png"), "wb") as f:
    f.write(raw[:40])
  dataset = image_folder.load(folder_config(photos), width=8, n_colors=1, seed=0)
  assert len(dataset.train) + len(dataset.test) == 21
  assert data.fingerprint(dataset) != data.fingerprint(image_folder.load(
      folder_config(photos / "a"), width=8, n_colors=1, seed=0))
  record = dataset.record()
  assert record["damaged"] == ["b/broken-\\xe9.png"]
  json.dumps(record, ensure_ascii=False).encode("utf-8")  # a UTF-8 file takes it
  def example(name):  # the file read by its name as the file system holds it
    part = dataset.train if name in dataset.train.files else dataset.test
    return part[np.asarray([part.files.index(name)])][0]

  np.testing.assert_array_equal(example("\udcff\udcfe0.png"), example("a/00.png"))


@pytest.mark.parametrize("make,message", [
    (lambda folder: None, "No PNG or JPEG images in"),
    (lambda folder: (folder / "a.png").write_bytes(b"not a png"), "Every image in"),
    (lambda folder: write(folder, "small.png", np.zeros((6, 40), np.uint8)),
     "smaller than the 8 x 8 crop"),
])
def test_a_bad_folder_is_one_error_naming_it(tmp_path, make, message):
  make(tmp_path)
  with pytest.raises(errors.UserError, match=message) as caught:
    image_folder.load(folder_config(tmp_path, "crops"), width=8, n_colors=1, seed=0)
  assert str(tmp_path) in str(caught.value)
  with pytest.raises(errors.UserError, match="is not a folder"):
    image_folder.load(folder_config(tmp_path / "nowhere"), width=8, n_colors=1, seed=0)


def test_one_image_needs_crops(tmp_path):
  write(tmp_path, "one.png", np.zeros((40, 40), np.uint8))
  with pytest.raises(errors.UserError, match="use data.folder_mode='crops'"):
    image_folder.load(folder_config(tmp_path), width=8, n_colors=1, seed=0)


# ----------------------------------------------------------------------------
# Dead leaves.


def test_radii_follow_the_power_law():
  """Density r^-3 on [1, 32]: P(r > 2) = (2^-2 - 32^-2) / (1 - 32^-2)."""
  r = dead_leaves.radii(np.random.default_rng(0), 200_000, 1.0, 32.0, 3.0)
  assert r.min() >= 1.0 and r.max() <= 32.0
  expected = (2.0**-2 - 32.0**-2) / (1 - 32.0**-2)
  assert np.mean(r > 2.0) == pytest.approx(expected, abs=0.005)


def test_dead_leaves_are_covered_discs_drawn_by_seed():
  params = dict(r_min=1.0, r_max=8.0, exponent=3.0)
  a = dead_leaves.draw(np.random.default_rng(0), 32, **params)
  assert a.shape == (32, 32) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, dead_leaves.draw(np.random.default_rng(0), 32, **params))
  assert not np.array_equal(a, dead_leaves.draw(np.random.default_rng(1), 32, **params))
  # Occlusion makes flat regions: most pixels equal a neighbour.
  assert np.mean(a[:, 1:] == a[:, :-1]) > 0.5 and len(np.unique(a)) > 10


def test_dead_leaves_examples_are_tiles_of_fresh_draws():
  config = runs.config("dead_leaves", 'tiny')
  dataset = registry.get("dead_leaves").load_data(config)
  train = dataset.train
  assert train.tiles == 4 and train.example_shape == (16, 16, 1)
  draw = train.image(0)
  np.testing.assert_array_equal(train[1][:, :, 0], draw[:16, 16:])
  np.testing.assert_array_equal(train.tiles_of(2), train[8:12])
  stream = data.train_batches(train, 8, 0, 3)
  np.testing.assert_array_equal(next(stream), train[24:32])  # step 3: examples 24..31
  assert not np.array_equal(dataset.test[0], train[0])  # other draws


def test_crops_the_final_report_takes_are_checked_before_training(tmp_path):
  """Images large enough for training crops but not for the final report's: one line
  naming the setting, before any step is trained."""
  for i in range(3):
    write(tmp_path / "images", f"{i}.png", np.full((50, 50), 40 * i, np.uint8))
  config = runs.config("texture", "tiny")
  config.data.dir = str(tmp_path / "images")
  config.model.spatial_width = 16  # crops of 16 fit, Figure 5's 48 fit; 64 does not
  config.final_eval.image_size = 64
  with pytest.raises(errors.UserError, match=r"smaller than the 64 x 64 crop of "
                                             r"final_eval.image_size: use larger images"):
    runs.train(config, str(tmp_path / "run"))
  assert not list((tmp_path / "run").glob("checkpoints/*"))
  config.final_eval.image_size = 32
  config.model.spatial_width = 24
  with pytest.raises(errors.UserError, match=r"72 x 72 crop of Figure 5's region"):
    runs.train(config, str(tmp_path / "run"))


def test_a_data_dir_that_the_source_does_not_read_is_an_error():
  config = runs.config("mnist", "tiny")
  config.data.dir = "/tmp/myimgs"
  with pytest.raises(errors.UserError, match=r"data.dir='/tmp/myimgs' is read by "
                                             r"data.source='folder'.* not by "
                                             r"data.source='embedded'"):
    registry.get("mnist").validate(config)
