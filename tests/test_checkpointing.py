"""A damaged checkpoint costs one epoch, not the run: resuming falls back to the newest checkpoint that restores.

The checkpoint directory (`<workdir>/checkpoints`) holds `config.json` and one folder per kept epoch (`1/`, `2/`,
named by the 0-based epoch), each with the Orbax items `state/`, `best/` and `meta/`.
"""
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback

import jax
import numpy as np
import pytest

from experiments import checkpointing
from experiments import config as config_lib
from experiments import train_lib
from tests import shared_runs
from tests.shared_runs import finished_fashion_run  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir, **changes):
  """A 3-epoch CE run of 2 steps an epoch (the state of the unit-level tests below)."""
  base = config_lib.Config(
      dataset="fashion_mnist_lt", data_dir=data_dir, imbalance_ratio=10.0, validation_per_class=6, epochs=3,
      batch_size=32, eval_batch_size=40, learning_rate=0.05, warmup_epochs=1, lr_decay_epochs=(1,),
      log_every_steps=2, model="cnn", loss="ce", normalized_head=False, max_steps_per_epoch=2)
  return base.replace(**changes)


def _files(directory):
  return sorted(os.path.join(d, f) for d, _, names in os.walk(directory) for f in names)


def _random_bytes(path):
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(size).integers(0, 256, max(size, 16), dtype=np.uint8).tobytes())


def _data_files(step_dir, item="state"):
  """The OCDBT data files of one item (what holds the arrays' bytes)."""
  return [p for p in _files(os.path.join(step_dir, item)) if os.sep + "d" + os.sep in p]


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _without_timing(results):
  return {k: v for k, v in results.items() if k != "train_seconds"}


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one_with_the_same_results(finished_fashion_run,
                                                                                        tmp_path, caplog):
  # The shared default job (3 epochs), copied: its checkpoints of epochs 2 and 3 (folders 1/ and 2/).
  run = shared_runs.copy_run(finished_fashion_run, str(tmp_path / "run"))
  config, workdir, straight = run.config, run.workdir, run.results
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpt)) == ["1", "2", "config.json"]
  # The report of issue 18: three data files of the newest checkpoint overwritten with random bytes.
  for path in _files(os.path.join(ckpt, "2", "state"))[:3]:
    _random_bytes(path)
  damaged = {p: open(p, "rb").read() for p in _files(os.path.join(ckpt, "2"))}

  with caplog.at_level(logging.WARNING):
    resumed = train_lib.train_and_evaluate(config, workdir)
  # Epoch 3 trained again from the checkpoint of epoch 2: the same results as the uninterrupted run.
  assert _without_timing(resumed) == _without_timing(straight)
  with open(os.path.join(workdir, "results.json")) as f:
    assert _without_timing(json.load(f)) == _without_timing(json.loads(json.dumps(straight)))
  warnings = _warnings(caplog)
  assert any(f"{os.path.join(ckpt, '2')} cannot be restored" in w for w in warnings), warnings
  assert any(f"Resuming from the checkpoint {os.path.join(ckpt, '1')} instead" in w
             and os.path.join(ckpt, "2.corrupt") in w for w in warnings), warnings
  # Nothing lost: the damaged folder is kept, byte for byte, beside a fresh checkpoint of epoch 3.
  assert sorted(os.listdir(ckpt)) == ["1", "2", "2.corrupt", "config.json"]
  assert {p.replace(os.path.join(ckpt, "2.corrupt"), os.path.join(ckpt, "2")): open(p, "rb").read()
          for p in _files(os.path.join(ckpt, "2.corrupt"))} == damaged

  # The new checkpoint of epoch 3 is the one the next start restores, without a warning.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    again = train_lib.train_and_evaluate(config, workdir)
  assert not [w for w in _warnings(caplog) if "cannot be restored" in w]
  assert again["test"] == straight["test"] and again["history"] == straight["history"]


def _cli(*args, timeout=shared_runs.SUBPROCESS_TIMEOUT_S):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True, text=True,
                        env=env, timeout=timeout)


@pytest.mark.slow
def test_the_binary_fails_in_one_line_when_no_checkpoint_restores(finished_fashion_run, tmp_path):
  # The checkpoints of `python -m experiments.train <flags>`: the shared default job's, written in-process, copied.
  run = shared_runs.copy_run(finished_fashion_run, str(tmp_path / "run"))
  ckpt = os.path.join(run.workdir, "checkpoints")
  for step in ("1", "2"):
    for path in _data_files(os.path.join(ckpt, step)):
      _random_bytes(path)
  before = {p: open(p, "rb").read() for p in _files(ckpt)}

  out = _cli(*shared_runs.binary_flags(run.data_dir), f"--workdir={run.workdir}")
  assert out.returncode == 1, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("experiments.train: error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert f"No checkpoint in {ckpt} can be restored" in errors[0] and "Delete that directory" in errors[0]
  assert "--workdir" in errors[0]
  # The warnings name each folder; no traceback (the binary's or TensorStore's late callbacks) buries them.
  assert f"{os.path.join(ckpt, '2')} cannot be restored" in out.stderr
  assert f"{os.path.join(ckpt, '1')} cannot be restored" in out.stderr
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  # Nothing moved or changed.
  assert {p: open(p, "rb").read() for p in _files(ckpt)} == before


# Unit level: a Checkpointer holding the real train state of the tiny run, saved after epochs 0, 1 and 2.


@pytest.fixture(scope="module")
def tiny_state(fashion_dir):
  config = tiny_config(fashion_dir)
  state, _ = train_lib.create_train_state(config, train_lib.load_dataset(config), steps_per_epoch=2)
  return config, state


def _state_of_epoch(state, epoch):
  """A state told apart from the other epochs' by its step and every parameter."""
  return state.replace(step=state.step + 10 * epoch, params=jax.tree.map(lambda p: p + epoch, state.params))


def _meta(epoch):
  return {"epoch": epoch, "history": [{"epoch": e} for e in range(epoch + 1)], "best": None, "train_seconds": 1.0}


def _saved_checkpointer(directory, config, state, epochs=(0, 1, 2)):
  ckpt = checkpointing.Checkpointer(directory, config)
  for epoch in epochs:
    s = _state_of_epoch(state, epoch)
    ckpt.save(epoch, s, {"params": s.params, "batch_stats": s.batch_stats}, _meta(epoch))
  ckpt.wait()
  return ckpt


def _template(state):
  return state, {"params": state.params, "batch_stats": state.batch_stats}


def _assert_is_epoch(restored, state, epoch):
  got_state, got_best, meta = restored
  expected = _state_of_epoch(state, epoch)
  assert meta == _meta(epoch)
  assert int(got_state.step) == int(expected.step)
  jax.tree.map(np.testing.assert_array_equal, got_state.params, expected.params)
  jax.tree.map(np.testing.assert_array_equal, got_best["params"], expected.params)
  jax.tree.map(np.testing.assert_array_equal, got_state.opt_state, expected.opt_state)


def _write(text):
  def corrupt(path):
    with open(path, "w") as f:
      f.write(text)
  return corrupt


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete(path):
  if os.path.isdir(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


CORRUPTIONS = {
    # name: (which paths of the step folder, what is done to each)
    "random bytes in the state's data files": (lambda d: _data_files(d), _random_bytes),
    "random bytes in every file of state/": (lambda d: _files(os.path.join(d, "state")), _random_bytes),
    "random bytes in the best model's data files": (lambda d: _data_files(d, "best"), _random_bytes),
    "random bytes in state/_METADATA": (lambda d: [os.path.join(d, "state", "_METADATA")], _random_bytes),
    "random bytes in state/manifest.ocdbt": (lambda d: [os.path.join(d, "state", "manifest.ocdbt")], _random_bytes),
    "truncated data files": (lambda d: _data_files(d), _truncate),
    "a deleted data file": (lambda d: _data_files(d)[:1], _delete),
    "a deleted state/_METADATA": (lambda d: [os.path.join(d, "state", "_METADATA")], _delete),
    "a deleted meta": (lambda d: [os.path.join(d, "meta", "metadata")], _delete),
    "a deleted best/": (lambda d: [os.path.join(d, "best")], _delete),
    "random bytes in meta": (lambda d: [os.path.join(d, "meta", "metadata")], _random_bytes),
    "a meta that does not parse": (lambda d: [os.path.join(d, "meta", "metadata")], _write('{"epoch": 2, "hist')),
    "a meta that parses to something else": (lambda d: [os.path.join(d, "meta", "metadata")], _write("[]")),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_each_kind_of_damage_falls_back_to_the_previous_checkpoint(corruption, tiny_state, tmp_path, caplog):
  config, state = tiny_state
  directory = str(tmp_path / "checkpoints")
  _saved_checkpointer(directory, config, state)
  newest = os.path.join(directory, "2")
  paths, damage = CORRUPTIONS[corruption]
  assert paths(newest), "the corruption found nothing to damage"
  for path in paths(newest):
    damage(path)

  ckpt = checkpointing.Checkpointer(directory, config)
  with caplog.at_level(logging.WARNING):
    restored = ckpt.restore_latest(*_template(state))
  _assert_is_epoch(restored, state, 1)
  assert any(f"{newest} cannot be restored" in w for w in _warnings(caplog)), _warnings(caplog)
  assert sorted(os.listdir(directory)) == ["1", "2.corrupt", "config.json"]
  assert ckpt.manager.all_steps() == [1]


def test_the_set_aside_folder_does_not_confuse_the_manager(tiny_state, tmp_path, caplog):
  config, state = tiny_state
  directory = str(tmp_path / "checkpoints")
  _saved_checkpointer(directory, config, state)
  os.makedirs(os.path.join(directory, "2.corrupt"))  # set aside by an earlier start: kept as it is
  open(os.path.join(directory, "2.corrupt", "earlier"), "w").close()
  for path in _data_files(os.path.join(directory, "2")):
    _random_bytes(path)
  ckpt = checkpointing.Checkpointer(directory, config)
  _assert_is_epoch(ckpt.restore_latest(*_template(state)), state, 1)
  assert sorted(os.listdir(directory)) == ["1", "2.corrupt", "2.corrupt.2", "config.json"]
  assert os.listdir(os.path.join(directory, "2.corrupt")) == ["earlier"]
  # Epoch 2 is saved again (Orbax skips a step it believes it has), then 3; max_to_keep=2 prunes 1 only.
  for epoch in (2, 3):
    s = _state_of_epoch(state, epoch)
    ckpt.save(epoch, s, {"params": s.params, "batch_stats": s.batch_stats}, _meta(epoch))
  ckpt.wait()
  assert sorted(os.listdir(directory)) == ["2", "2.corrupt", "2.corrupt.2", "3", "config.json"]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _assert_is_epoch(checkpointing.Checkpointer(directory, config).restore_latest(*_template(state)), state, 3)
  assert not _warnings(caplog)


def test_no_checkpoint_restores_raises_one_line_and_moves_nothing(tiny_state, tmp_path):
  config, state = tiny_state
  directory = str(tmp_path / "checkpoints")
  _saved_checkpointer(directory, config, state)
  _random_bytes(os.path.join(directory, "1", "state", "_METADATA"))
  _write("{")(os.path.join(directory, "2", "meta", "metadata"))
  ckpt = checkpointing.Checkpointer(directory, config)
  with pytest.raises(checkpointing.UnreadableCheckpointError) as error:
    ckpt.restore_latest(*_template(state))
  message = str(error.value)
  assert "\n" not in message
  assert f"No checkpoint in {directory} can be restored (tried 2/, 1/; 2/ fails with JSONDecodeError" in message
  assert message.endswith("Delete that directory to start the run over, or use another --workdir.")
  assert isinstance(error.value, ValueError)  # what the binary prints as one line with exit status 1
  assert sorted(os.listdir(directory)) == ["1", "2", "config.json"]


def test_an_unreadable_config_json_is_named(tiny_state, tmp_path):
  config, state = tiny_state
  directory = str(tmp_path / "checkpoints")
  _saved_checkpointer(directory, config, state, epochs=(0,))
  _random_bytes(os.path.join(directory, "config.json"))
  with pytest.raises(checkpointing.UnreadableCheckpointError,
                     match=f"{os.path.join(directory, 'config.json')} cannot be read .* Delete {directory} "):
    checkpointing.Checkpointer(directory, config)


def test_a_field_added_since_the_checkpoints_resumes_at_its_default_only(tiny_state, tmp_path):
  # Checkpoints written before a Config field existed (vs_gamma came after the grids' runs): config.json lacks it.
  config, state = tiny_state
  directory = str(tmp_path / "checkpoints")
  _saved_checkpointer(directory, config, state, epochs=(0,))
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    saved = json.load(f)
  del saved["vs_gamma"]
  with open(path, "w") as f:
    json.dump(saved, f)
  restored = checkpointing.Checkpointer(directory, config).restore_latest(*_template(state))
  assert restored[2]["epoch"] == 0
  # The same field away from its default did change what is trained.
  with pytest.raises(ValueError, match=r"fields \['loss', 'vs_gamma'\] differ"):
    checkpointing.Checkpointer(directory, config.replace(loss="vs", vs_gamma=0.5))


def test_no_checkpoint_gives_none(tiny_state, tmp_path):
  config, state = tiny_state
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints"), config).restore_latest(*_template(state)) is None


def test_only_the_late_callbacks_of_a_closed_loop_are_silenced(monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpointing._drop_closed_loop_callbacks()  # pylint: disable=protected-access
  checkpointing._drop_closed_loop_callbacks()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()

  class LateCallback:
    def __del__(self):
      loop.call_soon_threadsafe(print)

  class OtherError:
    def __del__(self):
      raise RuntimeError("Event loop is closed")  # same message, not from call_soon_threadsafe

  LateCallback()
  OtherError()
  assert [str(u.exc_value) for u in seen] == ["Event loop is closed"]
  assert [f.name for f in traceback.extract_tb(seen[0].exc_traceback)] == ["__del__"]


def test_unretrieved_tensorstore_read_errors_are_dropped_from_asyncio_logs_and_nothing_else():
  from experiments import checkpointing  # pylint: disable=import-outside-toplevel
  keep = checkpointing._UnretrievedRestoreErrors()  # pylint: disable=protected-access

  def record(message, error):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, (),
                             (type(error), error, None) if error else None)

  read_error = ValueError("DATA_LOSS: Error reading ... [tensorstore_spec='{\"driver\":\"zarr\"}']")
  assert not keep.filter(record("Task exception was never retrieved\nfuture: <Task finished>", read_error))
  assert keep.filter(record("Task exception was never retrieved\nfuture: <Task finished>", ValueError("other")))
  assert keep.filter(record("Task exception was never retrieved", None))
  assert keep.filter(record("Unclosed client session", read_error))
