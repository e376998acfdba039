"""Tests of experiments/input_pipeline.py on small generated data (and on the real Fashion-MNIST when installed)."""
import json
import os

import numpy as np
import pytest

import noised_topk_jax as ntk
from experiments import data_files
from experiments import input_pipeline as ip
from tests import fake_data
from tests import optional

TRAIN_PER_CLASS = (200, 190, 210, 200, 205, 200, 195, 200, 220, 200)  # max_count = 190 - validation_per_class
TEST_PER_CLASS = 30
VALIDATION_PER_CLASS = 20
RATIO = 10.0


def _pixels(images, mean, std):
  """Inverts the normalization: float32 images -> the uint8 pixels they were made from."""
  restored = (images * np.asarray(std) + np.asarray(mean)) * 255.0
  np.testing.assert_allclose(restored, np.round(restored), atol=1e-3)
  return np.round(restored).astype(np.uint8)


def _keys(images_uint8):
  return [image.tobytes() for image in images_uint8]


def _collect(batches):
  """Concatenates an iterator of batches key by key; returns (arrays, number of batches)."""
  batches = list(batches)
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  return out, len(batches)


def _chi_square_vs_uniform(labels, num_classes):
  observed = np.bincount(labels, minlength=num_classes)
  expected = len(labels) / num_classes
  return float(((observed - expected)**2 / expected).sum())


# ---- Fashion-MNIST from generated IDX files -------------------------------------------------------------------


def _write_and_load_fashion(directory, compress):
  written = fake_data.write_fashion_mnist_idx(directory, train_per_class=TRAIN_PER_CLASS,
                                              test_per_class=TEST_PER_CLASS, compress=compress)
  dataset = ip.get_dataset("fashion_mnist_lt", data_dir=directory, imbalance_ratio=RATIO, subset_seed=3,
                           validation_per_class=VALIDATION_PER_CLASS)
  return dataset, written, directory


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
  """Generated gzipped IDX files (as distributed) and the dataset loaded from them."""
  return _write_and_load_fashion(str(tmp_path_factory.mktemp("fashion")), compress=True)


def _fashion_pixels(images):
  return _pixels(images, ip.FASHION_MNIST_MEAN, ip.FASHION_MNIST_STD)[..., 0]


def test_fashion_raw_idx_files_give_the_same_dataset(fashion, tmp_path):
  raw, _, _ = _write_and_load_fashion(str(tmp_path), compress=False)
  assert not any(name.endswith(".gz") for name in os.listdir(tmp_path))
  np.testing.assert_array_equal(raw.train_class_counts, fashion[0].train_class_counts)
  for split in ("val", "test"):
    a, b = (next(d.eval_batches(split, batch_size=100)) for d in (raw, fashion[0]))
    np.testing.assert_array_equal(a["image"], b["image"])


def test_fashion_metadata(fashion):
  dataset, _, _ = fashion
  assert dataset.name == "fashion_mnist_lt"
  assert dataset.num_classes == 10 and len(dataset.class_names) == 10
  assert dataset.class_names[0] == "T-shirt/top"
  assert dataset.image_shape == (28, 28, 1)
  assert dataset.eval_splits == ("val", "test") and dataset.has_validation
  assert dataset.num_eval_examples("val") == 10 * VALIDATION_PER_CLASS
  assert dataset.num_eval_examples("test") == 10 * TEST_PER_CLASS


def test_fashion_long_tailed_counts_use_derived_max_count(fashion):
  dataset, _, _ = fashion
  max_count = min(TRAIN_PER_CLASS) - VALIDATION_PER_CLASS
  expected = ntk.long_tailed_counts(10, max_count=max_count, imbalance_ratio=RATIO, profile="exp")
  assert dataset.train_class_counts.dtype == np.int64
  np.testing.assert_array_equal(dataset.train_class_counts, expected)
  assert dataset.num_train_examples == expected.sum()
  assert dataset.train_class_counts[0] / dataset.train_class_counts[-1] == pytest.approx(RATIO, rel=0.1)


def test_fashion_subset_follows_the_protocol_and_splits_are_disjoint(fashion):
  """Train = REFERENCE.md §4 subset; val = balanced, disjoint from it; test = the whole test file."""
  dataset, written, _ = fashion
  images, labels = written["train"]
  # Independent re-implementation of the selection: one RandomState, per class shuffle and keep the first n_c.
  rng = np.random.RandomState(3)
  expected_train, expected_val = [], []
  for c in range(10):
    indices = np.flatnonzero(labels == c)
    rng.shuffle(indices)
    expected_train += list(indices[:dataset.train_class_counts[c]])
    expected_val += list(indices[-VALIDATION_PER_CLASS:])

  train, _ = _collect(dataset.train_batches(epoch=0, batch_size=dataset.num_train_examples, seed=0, augment=False))
  train_keys = _keys(_fashion_pixels(train["image"]))
  assert sorted(train_keys) == sorted(_keys(images[expected_train]))
  np.testing.assert_array_equal(np.bincount(train["label"], minlength=10), dataset.train_class_counts)

  val, _ = _collect(dataset.eval_batches("val", batch_size=64))
  val_real = val["mask"] == 1
  val_keys = _keys(_fashion_pixels(val["image"][val_real]))
  assert sorted(val_keys) == sorted(_keys(images[expected_val]))
  np.testing.assert_array_equal(np.bincount(val["label"][val_real], minlength=10), [VALIDATION_PER_CLASS] * 10)
  assert not set(val_keys) & set(train_keys)

  test, _ = _collect(dataset.eval_batches("test", batch_size=64))
  test_real = test["mask"] == 1
  test_images, test_labels = written["test"]
  np.testing.assert_array_equal(_fashion_pixels(test["image"][test_real]), test_images)  # complete and in order
  np.testing.assert_array_equal(test["label"][test_real], test_labels)


def test_fashion_batch_format_and_normalization(fashion):
  dataset, written, _ = fashion
  batch = next(dataset.train_batches(epoch=0, batch_size=32, seed=0))
  assert batch["image"].shape == (32, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  test, _ = _collect(dataset.eval_batches("test", batch_size=300))
  assert test["mask"].dtype == np.float32
  raw = written["test"][0].astype(np.float64) / 255.0
  np.testing.assert_allclose(test["image"][..., 0], (raw - 0.2860) / 0.3530, atol=1e-5)


def test_fashion_train_batches_are_deterministic_and_vary_with_epoch_and_seed(fashion):
  dataset, _, _ = fashion
  steps = dataset.steps_per_epoch(64)
  assert steps == dataset.num_train_examples // 64
  run = lambda **kw: _collect(dataset.train_batches(batch_size=64, **kw))
  first, num_batches = run(epoch=2, seed=7)
  again, _ = run(epoch=2, seed=7)
  assert num_batches == steps
  np.testing.assert_array_equal(first["image"], again["image"])
  np.testing.assert_array_equal(first["label"], again["label"])
  other_epoch, _ = run(epoch=3, seed=7)
  other_seed, _ = run(epoch=2, seed=8)
  assert not np.array_equal(first["label"], other_epoch["label"])
  assert not np.array_equal(first["label"], other_seed["label"])
  # A permutation: each example once per epoch (up to the dropped remainder).
  plain, _ = run(epoch=2, seed=7, augment=False)
  keys = _keys(_fashion_pixels(plain["image"]))
  assert len(set(keys)) == len(keys) == steps * 64


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("resample", [False, True])
def test_fashion_shards_concatenate_to_the_global_batch(fashion, augment, resample):
  dataset, _, _ = fashion
  kwargs = dict(epoch=1, batch_size=64, seed=5, augment=augment, resample=resample)
  global_batches = list(dataset.train_batches(**kwargs))
  shards = [list(dataset.train_batches(**kwargs, process_index=p, process_count=2)) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(global_batches) == dataset.steps_per_epoch(64)
  for step, batch in enumerate(global_batches):
    assert shards[0][step]["image"].shape == (32, 28, 28, 1)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([shards[0][step][key], shards[1][step][key]]), batch[key])
    if not augment and not resample:  # disjoint shards of a permutation
      keys = [set(_keys(_fashion_pixels(s[step]["image"]))) for s in shards]
      assert not keys[0] & keys[1] and len(keys[0]) == len(keys[1]) == 32


def test_fashion_sharding_arguments_are_validated(fashion):
  dataset, _, _ = fashion
  with pytest.raises(ValueError, match="batch_size"):
    dataset.train_batches(epoch=0, batch_size=63, seed=0, process_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    dataset.steps_per_epoch(dataset.num_train_examples + 1)
  with pytest.raises(ValueError, match="batch_size"):
    dataset.train_batches(epoch=0, batch_size=dataset.num_train_examples + 2, seed=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    dataset.train_batches(epoch=0, batch_size=64, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    dataset.eval_batches("test", batch_size=63, process_count=2)
  with pytest.raises(ValueError, match="split"):
    dataset.eval_batches("train", batch_size=64)
  with pytest.raises(ValueError, match="split"):
    dataset.num_eval_examples("validation")


@pytest.mark.parametrize("process_count", [1, 2])
def test_fashion_eval_batches_pad_and_mask_every_example_once(fashion, process_count):
  dataset, written, _ = fashion
  batch_size = 64  # 300 test examples: 5 global batches, the last one 44/64 real
  per_process = [_collect(dataset.eval_batches("test", batch_size=batch_size, process_index=p,
                                               process_count=process_count)) for p in range(process_count)]
  for collected, num_batches in per_process:
    assert num_batches == 5
    assert collected["image"].shape == (5 * batch_size // process_count, 28, 28, 1)
    assert set(np.unique(collected["mask"])) <= {0.0, 1.0}
  # Re-assemble the global batches: process p holds columns [p * b, (p + 1) * b) of each.
  b = batch_size // process_count
  glued = {k: np.concatenate([np.concatenate([per_process[p][0][k][i * b:(i + 1) * b] for p in range(process_count)])
                              for i in range(5)]) for k in ("image", "label", "mask")}
  np.testing.assert_array_equal(glued["mask"], np.arange(5 * batch_size) < 300)
  real = glued["mask"] == 1
  np.testing.assert_array_equal(_fashion_pixels(glued["image"][real]), written["test"][0])
  np.testing.assert_array_equal(glued["label"][real], written["test"][1])


def test_fashion_resampling_balances_the_class_histogram(fashion):
  dataset, _, _ = fashion
  plain, resampled = [], []
  for epoch in range(6):
    for labels, resample in ((plain, False), (resampled, True)):
      labels += [b["label"] for b in dataset.train_batches(epoch=epoch, batch_size=50, seed=0, augment=False,
                                                            resample=resample)]
  plain, resampled = np.concatenate(plain), np.concatenate(resampled)
  # 3.9k draws: chi-square (9 dof) of a truly uniform histogram exceeds 35 with probability < 1e-4, while the
  # long-tailed histogram (ratio 10) scores in the thousands.
  assert _chi_square_vs_uniform(plain, 10) > 1000
  assert _chi_square_vs_uniform(resampled, 10) < 35
  assert np.bincount(resampled, minlength=10).min() > 0.6 * len(resampled) / 10
  # Draws with replacement: examples repeat within an epoch.
  one_epoch = dataset.epoch_indices(epoch=0, seed=0, resample=True)
  assert len(one_epoch) == dataset.num_train_examples and len(np.unique(one_epoch)) < len(one_epoch)


def test_fashion_resampling_with_beta_follows_the_class_balanced_weights(fashion):
  # CB-RS (LDAM-DRW's sampler): P(class c) proportional to n_c (1 - beta) / (1 - beta^n_c). beta = 0.99 with the
  # test's small counts (ratio 10) is far from uniform, so this distinguishes it from the 1 / n_c sampler.
  dataset, _, _ = fashion
  counts = np.asarray(dataset.train_class_counts, np.float64)
  draws = np.concatenate([dataset._train.labels[dataset.epoch_indices(epoch=e, seed=3, resample=True,
                                                                       resample_beta=0.99)] for e in range(8)])
  w = counts * (1 - 0.99) / (1 - 0.99**counts)
  expected = len(draws) * w / w.sum()
  observed = np.bincount(draws, minlength=len(counts))
  # Chi-square with 9 dof exceeds 35 with probability < 1e-4 under the model; the uniform sampler is far from it.
  assert float(((observed - expected)**2 / expected).sum()) < 35
  assert _chi_square_vs_uniform(draws, len(counts)) > 100
  assert not np.allclose(expected, expected.mean(), rtol=0.2)


def test_fashion_augmentation_is_a_padded_crop_and_flip(fashion):
  dataset, _, _ = fashion
  kwargs = dict(epoch=0, batch_size=128, seed=1)
  plain = next(dataset.train_batches(**kwargs, augment=False))
  augmented = next(dataset.train_batches(**kwargs, augment=True))
  assert augmented["image"].shape == plain["image"].shape and augmented["image"].dtype == np.float32
  np.testing.assert_array_equal(augmented["label"], plain["label"])  # same order, transformed images
  assert not np.array_equal(augmented["image"], plain["image"])
  originals = np.pad(_fashion_pixels(plain["image"]), ((0, 0), (2, 2), (2, 2)))  # zero padding in pixel space
  results = _fashion_pixels(augmented["image"])
  seen = set()
  for original, result in zip(originals, results):
    crops = {(dy, dx): original[dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)}
    matches = [(dy, dx, flip) for (dy, dx), crop in crops.items() for flip in (False, True)
               if np.array_equal(result, crop[:, ::-1] if flip else crop)]
    assert matches, "an augmented image is not a 28x28 crop (optionally flipped) of the 2-pixel-padded original"
    seen.add(matches[0])
  assert len({(dy, dx) for dy, dx, _ in seen}) > 15 and {flip for _, _, flip in seen} == {False, True}


def test_fashion_step_profile_and_no_validation(fashion):
  _, _, directory = fashion
  dataset = ip.get_dataset("fashion_mnist_lt", data_dir=directory, imbalance_profile="step", imbalance_ratio=5,
                           validation_per_class=0)
  np.testing.assert_array_equal(dataset.train_class_counts, [190] * 5 + [38] * 5)
  assert dataset.eval_splits == ("test",) and not dataset.has_validation
  with pytest.raises(ValueError, match="split"):
    dataset.num_eval_examples("val")


def test_fashion_subset_depends_on_subset_seed_only(fashion):
  _, _, directory = fashion
  load = lambda seed: ip.get_dataset("fashion_mnist_lt", data_dir=directory, subset_seed=seed, imbalance_ratio=RATIO,
                                    validation_per_class=0)
  first = lambda d: next(d.train_batches(epoch=0, batch_size=64, seed=0, augment=False))["image"]
  np.testing.assert_array_equal(first(load(0)), first(load(0)))
  assert not np.array_equal(first(load(0)), first(load(1)))


def test_fashion_labels_out_of_range_are_rejected(tmp_path):
  fake_data.write_fashion_mnist_idx(str(tmp_path), train_per_class=20, test_per_class=2)
  labels = ip.read_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz")).copy()
  labels[3] = 10
  fake_data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
    ip.get_dataset("fashion_mnist_lt", data_dir=str(tmp_path), imbalance_ratio=2, validation_per_class=0)


def test_shard_gives_each_device_a_consecutive_block_and_labels_are_checked_on_the_host():
  batch = {"image": np.arange(48, dtype=np.float32).reshape(6, 2, 2, 2), "label": np.arange(6, dtype=np.int32)}
  sharded = ip.shard(batch, 3)
  assert sharded["image"].shape == (3, 2, 2, 2, 2)
  np.testing.assert_array_equal(sharded["label"], [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_array_equal(sharded["image"].reshape(batch["image"].shape), batch["image"])
  with pytest.raises(ValueError, match=r"this batch: labels must lie in \[0, 10\), found 2 outside, e\.g\. \[-1 10\]"):
    ip.check_labels(np.array([0, -1, 3, 10]), 10)
  assert ip.check_labels(np.array([0, 9], np.int64), 10).dtype == np.int32


def test_get_dataset_validates_arguments(fashion):
  _, _, directory = fashion
  cases = [
      (dict(name="mnist_lt"), "name"),
      (dict(imbalance_profile="linear"), "imbalance_profile"),
      (dict(imbalance_ratio=0.5), "imbalance_ratio"),
      (dict(imbalance_ratio=float("inf")), "imbalance_ratio"),
      (dict(subset_seed=-1), "subset_seed"),
      (dict(validation_per_class=-1), "validation_per_class"),
      (dict(validation_per_class=191), "validation_per_class"),
      (dict(image_size=32), "image_size"),
      (dict(name="cifar10_lt", validation_per_class=10), "validation_per_class"),
  ]
  for overrides, parameter in cases:
    kwargs = {"name": "fashion_mnist_lt", "data_dir": directory, **overrides}
    with pytest.raises(ValueError, match=parameter):
      ip.get_dataset(kwargs.pop("name"), **kwargs)


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path):
  bogus = str(tmp_path / "no_such_dir")
  with pytest.raises(ip.DatasetNotFoundError) as info:
    ip.get_dataset("fashion_mnist_lt", data_dir=bogus, download=False)
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert bogus in message and "TFDS" in message
  assert "apt-get install dataset-fashion-mnist" in message and "tfds build fashion_mnist" in message


def test_missing_cifar_and_plantnet_explain_how_to_get_them(tmp_path):
  with pytest.raises(ip.DatasetNotFoundError, match="tfds build cifar10"):
    ip.get_dataset("cifar10_lt", data_dir=str(tmp_path), download=False)
  for data_dir in (None, str(tmp_path)):
    with pytest.raises(ip.DatasetNotFoundError, match="zenodo"):
      ip.get_dataset("plantnet300k", data_dir=data_dir)


# ---- the real Fashion-MNIST (Debian package dataset-fashion-mnist) ---------------------------------------------


@pytest.mark.skipif(data_files.find_idx_files(data_files.fashion_mnist_default_dir()) is None,
                    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
  dataset = ip.get_dataset("fashion_mnist_lt", imbalance_ratio=100, validation_per_class=0)
  counts = dataset.train_class_counts
  np.testing.assert_array_equal(counts, ntk.long_tailed_counts(10, max_count=6000, imbalance_ratio=100))
  assert counts[0] == 6000 and counts[-1] == 60 and dataset.num_train_examples == counts.sum()
  assert dataset.num_classes == 10 and dataset.num_eval_examples("test") == 10_000
  test, _ = _collect(dataset.eval_batches("test", batch_size=1000))
  np.testing.assert_array_equal(np.bincount(test["label"], minlength=10), [1000] * 10)
  # The normalization constants are the real data's statistics.
  assert abs(test["image"].mean()) < 0.05 and abs(test["image"].std() - 1) < 0.05

  with_val = ip.get_dataset("fashion_mnist_lt", imbalance_ratio=100)  # default: 500 per class held out
  np.testing.assert_array_equal(with_val.train_class_counts,
                                ntk.long_tailed_counts(10, max_count=5500, imbalance_ratio=100))
  assert with_val.num_eval_examples("val") == 5000


# ---- CIFAR-LT through mocked TFDS ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,tfds_name,num_classes,num_examples,ratio",
                         [("cifar10_lt", "cifar10", 10, 500, 10.0), ("cifar100_lt", "cifar100", 100, 1500, 4.0)])
@optional.needs_tensorflow
def test_cifar_long_tailed_from_mocked_tfds(tmp_path, name, tfds_name, num_classes, num_examples, ratio):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with fake_data.mock_cifar(num_examples=num_examples):
    dataset = ip.get_dataset(name, data_dir=str(tmp_path), imbalance_ratio=ratio)
    raw = tfds.as_numpy(tfds.load(tfds_name, split="test", data_dir=str(tmp_path), batch_size=num_examples))
    raw = next(iter(raw))
  max_count = np.bincount(raw["label"], minlength=num_classes).min()  # mocked train == mocked test
  np.testing.assert_array_equal(dataset.train_class_counts,
                                ntk.long_tailed_counts(num_classes, max_count=max_count, imbalance_ratio=ratio))
  assert dataset.num_classes == num_classes and len(dataset.class_names) == num_classes
  assert dataset.image_shape == (32, 32, 3)
  assert dataset.eval_splits == ("test",) and not dataset.has_validation
  assert dataset.num_eval_examples("test") == num_examples

  test, _ = _collect(dataset.eval_batches("test", batch_size=128))
  real = test["mask"] == 1
  np.testing.assert_array_equal(_pixels(test["image"][real], ip.CIFAR_MEAN, ip.CIFAR_STD), raw["image"])
  np.testing.assert_array_equal(test["label"][real], raw["label"])

  batch_size = min(64, dataset.num_train_examples // 2 * 2)
  plain = next(dataset.train_batches(epoch=0, batch_size=batch_size, seed=0, augment=False))
  augmented = next(dataset.train_batches(epoch=0, batch_size=batch_size, seed=0))
  assert augmented["image"].shape == (batch_size, 32, 32, 3) and augmented["image"].dtype == np.float32
  assert not np.array_equal(plain["image"], augmented["image"])
  # 4-pixel zero padding: in pixel space some augmented borders are exactly 0.
  assert (_pixels(augmented["image"], ip.CIFAR_MEAN, ip.CIFAR_STD) == 0).all(axis=-1).any()
  halves = [next(dataset.train_batches(epoch=0, batch_size=batch_size, seed=0, process_index=p, process_count=2))
            for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), augmented["image"])


# ---- Pl@ntNet-300K from a generated JPEG tree ------------------------------------------------------------------


@pytest.fixture(scope="module")
def plantnet(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("plantnet"))
  written = fake_data.write_plantnet_tree(root)
  return ip.get_dataset("plantnet300k", data_dir=root, image_size=32), written, root


def test_plantnet_metadata(plantnet):
  dataset, written, _ = plantnet
  assert dataset.num_classes == 5 and dataset.class_names == sorted(written["class_ids"])
  np.testing.assert_array_equal(dataset.train_class_counts, written["train"])
  assert dataset.num_train_examples == sum(written["train"])
  assert dataset.image_shape == (32, 32, 3)
  assert dataset.eval_splits == ("val", "test") and dataset.has_validation
  assert dataset.num_eval_examples("val") == sum(written["val"]) == 12  # one class has no val folder
  assert dataset.num_eval_examples("test") == sum(written["test"])


@optional.needs_tensorflow
def test_plantnet_train_batches(plantnet):
  dataset, _, _ = plantnet
  kwargs = dict(epoch=0, batch_size=16, seed=0)
  batches = list(dataset.train_batches(**kwargs))
  assert len(batches) == dataset.steps_per_epoch(16) == 80 // 16
  assert batches[0]["image"].shape == (16, 32, 32, 3) and batches[0]["image"].dtype == np.float32
  assert batches[0]["label"].dtype == np.int32
  again = list(dataset.train_batches(**kwargs))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  shards = [list(dataset.train_batches(**kwargs, process_index=p, process_count=2)) for p in range(2)]
  for step, batch in enumerate(batches):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([shards[0][step][key], shards[1][step][key]]), batch[key])
  plain = next(dataset.train_batches(**kwargs, augment=False))
  np.testing.assert_array_equal(plain["label"], batches[0]["label"])
  assert not np.array_equal(plain["image"], batches[0]["image"])  # random vs center crops
  labels = np.concatenate([b["label"] for e in range(4) for b in dataset.train_batches(
      epoch=e, batch_size=16, seed=0, resample=True, augment=False)])
  assert _chi_square_vs_uniform(labels, 5) < 20  # 320 draws, 4 dof: P(chi2 > 20) < 1e-3; plain: > 50
  assert _chi_square_vs_uniform(np.repeat(np.arange(5), dataset.train_class_counts), 5) > 50


@optional.needs_tensorflow
def test_plantnet_eval_batches_cover_each_image_once_with_its_colour(plantnet):
  dataset, written, _ = plantnet
  batch_size = 8  # 20 test images: 3 global batches, 4 padded slots
  shards = [_collect(dataset.eval_batches("test", batch_size=batch_size, process_index=p, process_count=2))
            for p in range(2)]
  assert shards[0][1] == shards[1][1] == 3
  labels = np.concatenate([s[0]["label"][s[0]["mask"] == 1] for s in shards])
  np.testing.assert_array_equal(np.sort(labels), np.repeat(np.arange(5), written["test"]))
  assert sum(s[0]["mask"].sum() for s in shards) == 20
  # Center crops of flat colour patches: the mean pixel of each image recovers its class colour.
  test, _ = _collect(dataset.eval_batches("test", batch_size=batch_size))
  real = test["mask"] == 1
  pixels = test["image"][real] * np.asarray(ip.IMAGENET_STD) + np.asarray(ip.IMAGENET_MEAN)
  colours = np.stack([fake_data._class_colour(c) for c in range(5)]) / 255.0
  np.testing.assert_allclose(pixels.mean(axis=(1, 2)), colours[test["label"][real]], atol=0.04)


@optional.needs_tensorflow
def test_plantnet_resizes_the_shorter_side_then_center_crops(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  # 40x120 image, left third black: shorter side -> 37 gives 37x111, whose center 32x32 crop (columns 40..71)
  # is all white. Squashing to 37x37 instead would put the black third inside the crop.
  pixels = np.full((40, 120, 3), 255, np.uint8)
  pixels[:, :40] = 0
  for split in ("train", "test"):
    for class_id in ("7", "8"):  # two classes, the same image
      os.makedirs(tmp_path / split / class_id)
      Image.fromarray(pixels).save(tmp_path / split / class_id / "a.png")
  dataset = ip.get_dataset("plantnet300k", data_dir=str(tmp_path), image_size=32)
  assert dataset.eval_splits == ("test",) and not dataset.has_validation
  image = next(dataset.eval_batches("test", batch_size=1))["image"][0]
  restored = image * np.asarray(ip.IMAGENET_STD) + np.asarray(ip.IMAGENET_MEAN)
  assert restored.min() > 0.95
  crops = [next(dataset.train_batches(epoch=0, batch_size=1, seed=s))["image"][0] for s in range(8)]
  assert len({c.tobytes() for c in crops}) > 1


def test_plantnet_archive_layout_names_and_label_check(tmp_path):
  root = tmp_path / "plantnet_300K"
  written = fake_data.write_plantnet_tree(str(root / "images"), train_counts=(3, 2), val_per_class=1,
                                          test_per_class=1, missing_in_val=())
  with open(root / "plantnet300K_species_id_2_name.json", "w") as f:
    json.dump({written["class_ids"][0]: "Acer campestre L."}, f)
  dataset = ip.get_dataset("plantnet300k", data_dir=str(root), image_size=16)
  assert dataset.class_names == ["Acer campestre L.", written["class_ids"][1]]
  assert dataset.num_eval_examples("val") == 2
  os.makedirs(root / "images" / "val" / "9999999")
  (root / "images" / "val" / "9999999" / "x.jpg").write_bytes((root / "images" / "val").joinpath(
      written["class_ids"][0], "00000.jpg").read_bytes())
  with pytest.raises(ValueError, match="not a class of") as info:
    ip.get_dataset("plantnet300k", data_dir=str(root), image_size=16)
  assert str(info.value).startswith(str(root / "images" / "val" / "9999999") + ":")
