"""`dataset=image_folder`: your own long-tailed images, `DIR/{train,val,test}/<class>/*.{jpg,jpeg,png}`, on generated
trees (experiments/image_folder.py, input_pipeline, config, train_lib)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import image_folder
from experiments import input_pipeline as ip
from tests import fake_data
from tests import optional
from tests import shared_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imbalanced like a long tail; the names sort differently from their insertion order (upper case first).
TRAIN_COUNTS = {"zebra": 3, "cat": 10, "Ant": 6, "dog": 20}
CLASSES = ["Ant", "cat", "dog", "zebra"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """A tree with val/, plus files the loader must ignore."""
  root = str(tmp_path_factory.mktemp("image_folder"))
  written = fake_data.write_image_folder(root, train_counts=TRAIN_COUNTS, val_per_class=2, test_per_class=3)
  with open(os.path.join(root, "train", ".DS_Store"), "wb") as f:
    f.write(b"\0\0\0\1Bud1")
  with open(os.path.join(root, "train", "cat", "._0000.png"), "wb") as f:  # a macOS AppleDouble file
    f.write(b"\0\5\26\7")
  with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
    f.write("not an image")
  os.makedirs(os.path.join(root, "train", ".ipynb_checkpoints"))
  return root, written


def test_classes_are_the_sorted_train_folders_and_extensions_any_case(tree):
  root, written = tree
  assert written["classes"] == CLASSES
  dataset = ip.get_dataset("image_folder", data_dir=root)
  assert dataset.name == "image_folder"
  assert dataset.class_names == CLASSES and dataset.num_classes == 4
  np.testing.assert_array_equal(dataset.train_class_counts, [6, 10, 20, 3])
  assert dataset.num_train_examples == 39
  assert dataset.image_shape == (32, 32, 3)  # config.DEFAULT_IMAGE_SIZE
  assert dataset.eval_splits == ("val", "test") and dataset.has_validation
  assert dataset.num_eval_examples("val") == 8 and dataset.num_eval_examples("test") == 12
  # Labels follow the sorted folders: "Ant" is 0 whatever the order the folders were made in.
  np.testing.assert_array_equal(np.bincount(dataset._train.labels), [6, 10, 20, 3])  # pylint: disable=protected-access
  suffixes = {os.path.splitext(p)[1] for p in dataset._train._paths}  # pylint: disable=protected-access
  assert suffixes == set(fake_data.IMAGE_FOLDER_EXTENSIONS)
  assert ip.get_dataset("image_folder", data_dir=root, image_size=48).image_shape == (48, 48, 3)


@optional.needs_tensorflow
def test_batches_carry_each_class_colour(tree):
  root, _ = tree
  dataset = ip.get_dataset("image_folder", data_dir=root)
  test, = [b for b in dataset.eval_batches("test", batch_size=12)]
  assert test["image"].shape == (12, 32, 32, 3) and test["image"].dtype == np.float32
  pixels = test["image"] * np.asarray(ip.IMAGENET_STD) + np.asarray(ip.IMAGENET_MEAN)
  colours = np.stack([fake_data._class_colour(c) for c in range(4)]) / 255.0  # pylint: disable=protected-access
  np.testing.assert_allclose(pixels.mean(axis=(1, 2)), colours[test["label"]], atol=0.04)
  np.testing.assert_array_equal(test["label"], np.repeat(np.arange(4), 3))
  batch = next(dataset.train_batches(epoch=0, batch_size=16, seed=0))
  assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].dtype == np.int32


def test_without_val_there_is_no_validation_split(tmp_path):
  fake_data.write_image_folder(str(tmp_path), train_counts=TRAIN_COUNTS, test_per_class=2)
  dataset = ip.get_dataset("image_folder", data_dir=str(tmp_path))
  assert dataset.eval_splits == ("test",) and not dataset.has_validation
  config = config_lib.validate(config_lib.Config(dataset="image_folder", data_dir=str(tmp_path)))
  assert config.model_selection == "last_epoch"
  with pytest.raises(ValueError, match=r"no val/ folder in data_dir=.*add val/<class>/ folders"):
    config_lib.validate(config_lib.Config(dataset="image_folder", data_dir=str(tmp_path),
                                          model_selection="val_macro_topk"))
  os.makedirs(tmp_path / "val" / "cat")
  fake_data.write_image_folder(str(tmp_path / "more"), train_counts={"cat": 1, "dog": 1})
  os.rename(tmp_path / "more" / "train" / "cat" / "0000.png", tmp_path / "val" / "cat" / "0000.png")
  config = config_lib.validate(config_lib.Config(dataset="image_folder", data_dir=str(tmp_path)))
  assert config.model_selection == "val_macro_topk"
  assert ip.get_dataset("image_folder", data_dir=str(tmp_path)).eval_splits == ("val", "test")


def test_config_rejects_what_image_folder_ignores():
  base = dict(dataset="image_folder", data_dir="somewhere")
  for field, value in (("imbalance_ratio", 10.0), ("imbalance_profile", "step"), ("subset_seed", 1)):
    with pytest.raises(ValueError, match=f"`{field}` is not used by dataset=image_folder"):
      config_lib.validate(config_lib.Config(**base, **{field: value}), explicitly_set={field})
  with pytest.raises(ValueError, match="`tfds_download` is only used by"):
    config_lib.validate(config_lib.Config(**base, tfds_download=False), explicitly_set={"tfds_download"})
  with pytest.raises(ValueError, match="`image_size` must be a multiple of 4 for model=cnn"):
    config_lib.validate(config_lib.Config(**base, image_size=30))
  config_lib.validate(config_lib.Config(**base, image_size=30, model="resnet32"))
  with pytest.raises(ValueError, match="`validation_per_class` is only supported by fashion_mnist_lt"):
    ip.get_dataset("image_folder", data_dir="somewhere", validation_per_class=5)


# ---- bad trees: one line naming the path ------------------------------------------------------------------------


def _bad_tree(root, *, break_it):
  fake_data.write_image_folder(str(root), train_counts={"cat": 3, "dog": 2}, val_per_class=1, test_per_class=1)
  return break_it(root)


def _empty_training_class(root):
  os.makedirs(root / "train" / "emu")
  return str(root / "train" / "emu") + ": this training class holds no .jpg, .jpeg, .png image"


def _test_class_not_in_train(root):
  os.makedirs(root / "test" / "yak")
  image = next((root / "test" / "cat").iterdir())
  (root / "test" / "yak" / image.name).write_bytes(image.read_bytes())
  return str(root / "test" / "yak") + ": not a class of " + str(root / "train")


def _val_class_not_in_train(root):
  os.makedirs(root / "val" / "Yak")
  return str(root / "val" / "Yak") + ": not a class of " + str(root / "train")


def _text_named_jpg(root):
  (root / "train" / "dog" / "x.JPG").write_text("<html>not found</html>")
  return str(root / "train" / "dog" / "x.JPG") + ": not a readable JPEG or PNG image (neither JPEG nor PNG"


def _empty_file(root):
  (root / "test" / "dog" / "y.png").write_bytes(b"")
  return str(root / "test" / "dog" / "y.png") + ": not a readable JPEG or PNG image (an empty file)"


def _no_test(root):
  os.rename(root / "test", root / "testing")
  return str(root / "test") + ": missing; the test split is required"


def _val_without_images(root):
  for path in (root / "val").rglob("*.*"):
    path.unlink()
  return str(root / "val") + ": holds no .jpg, .jpeg, .png image in a class folder; remove it"


def _one_class(root):
  for path in (root / "train" / "dog").iterdir():
    path.unlink()
  (root / "train" / "dog").rmdir()
  return str(root / "train") + ": needs at least two class folders"


@pytest.mark.parametrize("break_it", [_empty_training_class, _test_class_not_in_train, _val_class_not_in_train,
                                      _text_named_jpg, _empty_file, _no_test, _val_without_images, _one_class])
def test_a_bad_tree_is_one_line_naming_the_path(tmp_path, break_it):
  expected = _bad_tree(tmp_path, break_it=break_it)
  with pytest.raises(ValueError) as info:
    ip.get_dataset("image_folder", data_dir=str(tmp_path))
  message = str(info.value)
  assert message.startswith(expected), message
  assert "\n" not in message


def test_no_tree_explains_the_layout(tmp_path):
  for data_dir in (None, str(tmp_path)):
    with pytest.raises(ip.DatasetNotFoundError, match=r"DIR/train/<class>/\*\.jpg"):
      ip.get_dataset("image_folder", data_dir=data_dir)


@optional.needs_tensorflow
def test_an_image_that_fails_to_decode_is_named_when_read(tmp_path):
  fake_data.write_image_folder(str(tmp_path), train_counts={"cat": 3, "dog": 2}, test_per_class=2)
  broken = tmp_path / "test" / "dog" / "0001.jpg"
  jpeg = (tmp_path / "train" / "cat" / "0001.jpg").read_bytes()
  broken.write_bytes(jpeg[:len(jpeg) // 2])  # a JPEG signature, then truncated
  dataset = ip.get_dataset("image_folder", data_dir=str(tmp_path))
  with pytest.raises(ValueError) as info:
    list(dataset.eval_batches("test", batch_size=2))
  assert str(info.value).startswith(f"{broken}: TensorFlow cannot read this image (")
  assert "\n" not in str(info.value)


# ---- end to end -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@optional.needs_tensorflow
@pytest.mark.parametrize("loss,train_rule,with_val", [("ce", "none", True), ("noised_imbalanced", "drw", False)])
def test_image_folder_trains_end_to_end_and_names_its_classes(tmp_path, loss, train_rule, with_val):
  from experiments import train_lib  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "images")
  fake_data.write_image_folder(root, train_counts=TRAIN_COUNTS, val_per_class=2 if with_val else 0,
                               test_per_class=3)
  rule = {"drw_start_epoch": 0} if train_rule == "drw" else {}
  config = config_lib.Config(dataset="image_folder", data_dir=root, loss=loss, train_rule=train_rule, epochs=1,
                             batch_size=16, eval_batch_size=8, lr_decay_epochs=(), **rule)
  workdir = str(tmp_path / "workdir")
  results = train_lib.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  assert written["class_names"] == CLASSES
  assert list(written["per_class"]) == CLASSES
  assert [row["train_count"] for row in written["per_class"].values()] == [6, 10, 20, 3]
  assert [row["test_count"] for row in written["per_class"].values()] == [3] * 4
  assert written["train_class_counts"] == [6, 10, 20, 3]
  assert written["config"]["image_size"] is None and written["config"]["model"] == "cnn"
  for k in (1, 2, 3):
    assert 0 <= written["test"][f"macro_top{k}_accuracy"] <= 1
  assert len(written["history"]) == 1 and np.isfinite(written["history"][0]["train"]["loss"])
  if with_val:
    assert written["model_selection"].startswith("best validation macro top-")
    assert written["validation"] is not None and written["average_k"]["threshold_split"] == "val"
    assert "avg1_accuracy" in written["test"]
  else:
    assert written["model_selection"] == "last epoch: no validation split, so no model selection on validation"
    assert written["validation"] is None and written["average_k"]["thresholds"] is None
    assert written["average_k"]["note"].startswith("not computed: image_folder has no validation split")
    assert "avg1_accuracy" not in written["test"]
  assert results["class_names"] == CLASSES
  if optional.available("matplotlib"):
    assert os.path.getsize(os.path.join(workdir, "per_class_accuracy.png")) > 0


@pytest.mark.slow
def test_the_binary_reports_a_bad_tree_in_one_line(tmp_path):
  expected = _bad_tree(tmp_path / "images", break_it=_empty_training_class)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run([sys.executable, "-m", "experiments.train", "--dataset=image_folder",
                        f"--data_dir={tmp_path / 'images'}", f"--workdir={tmp_path / 'workdir'}"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S,
                       check=False)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("experiments.train: error:")]
  assert len(errors) == 1 and errors[0].startswith("experiments.train: error: " + expected), out.stderr[-3000:]
