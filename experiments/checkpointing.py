"""Orbax checkpoints of a training run: the train state, the best model so far, and the run's bookkeeping.

A checkpoint is written at the end of an epoch. Restarting the same command resumes after the last saved epoch;
since the data order and the loss noise are functions of (seed, epoch, step), the resumed run ends with the same
results as an uninterrupted one.

Layout of `directory` (`<workdir>/checkpoints`): `config.json` (the configuration the checkpoints belong to) and
one folder per kept checkpoint, named by its 0-based epoch (`0/`, `1/`, ...), each holding the Orbax items
`state/`, `best/` and `meta/`.

A checkpoint whose files are damaged (random bytes, a truncated or missing file, a `meta` that does not parse)
does not stop the run: `restore_latest` resumes from the newest checkpoint that restores, and renames each
unreadable newer folder `<epoch>.corrupt` with a warning naming it. Renamed rather than deleted, because a folder
that fails to restore may still hold what a person can recover (the `meta` history, the best weights), and
because a transient read error would otherwise cost a good checkpoint; moved out of Orbax's way, because a
folder named like a step would make the manager skip re-saving that epoch and count it in `max_to_keep`. When no
checkpoint restores, nothing is moved and `UnreadableCheckpointError` says which directory to delete.
"""
import json
import logging as std_logging
import os
import sys
import traceback

from absl import logging
import jax
import orbax.checkpoint as ocp

from experiments import config as config_lib

# Fields that may change between an interrupted run and its restart without changing what is trained.
_RESTART_SAFE_FIELDS = ("log_every_steps", "eval_batch_size", "data_dir", "tfds_download", "distributed",
                        "coordinator_address", "num_processes", "process_id", "checkpoint_every_epochs",
                        "pretrain_cache_dir")
CORRUPT_SUFFIX = ".corrupt"


class UnreadableCheckpointError(ValueError):
  """The checkpoints of a work directory exist but cannot be read; the message names the directory and the way out.

  A ValueError, as a work directory of another configuration is: the binaries print its one-line message.
  """


def _state_tree(state):
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


def _one_line(error, limit=300):
  """`error` as `Type: message` on one line, cut to `limit` characters (TensorStore's messages run to paragraphs)."""
  text = f"{type(error).__name__}: {' '.join(str(error).split())}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _drop_closed_loop_callbacks():
  """Silences the late callbacks of a failed Orbax restore (process-wide, installed once).

  When one read of a restore fails, Orbax closes its event loop while TensorStore still completes the other reads;
  each completion then calls `call_soon_threadsafe` on the closed loop and Python prints the resulting
  `RuntimeError: Event loop is closed` with its traceback, a dozen of them around the one warning that matters.
  Every other unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and any(
        frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(unraisable.exc_traceback))):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook
  # The reads that failed on their own can also end as tasks nobody awaits: asyncio then logs "Task exception was
  # never retrieved" with the reading error's traceback when the task is collected (seen under load). The restore
  # has already reported that error in its one-line warning; other asyncio records pass.
  std_logging.getLogger("asyncio").addFilter(_UnretrievedRestoreErrors())


class _UnretrievedRestoreErrors(std_logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" records of TensorStore reading errors."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    return not (record.getMessage().startswith("Task exception was never retrieved")
                and isinstance(error, ValueError) and "tensorstore" in str(error).lower())


class Checkpointer:
  """Saves and restores `(train state, best variables, metadata)` under `directory`."""

  def __init__(self, directory, config, *, max_to_keep=2):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._check_config(config)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=("state", "best", "meta"))

  def _check_config(self, config):
    path = os.path.join(self.directory, "config.json")
    # Compared after validation, which resolves model_selection="auto" and selection_k=None.
    current = {k: v for k, v in config_lib.validate(config).to_dict().items() if k not in _RESTART_SAFE_FIELDS}
    if os.path.exists(path):
      try:
        with open(path) as f:
          saved = json.load(f)
        if not isinstance(saved, dict):
          raise TypeError(f"a JSON {type(saved).__name__}, not an object")
      except (OSError, ValueError, TypeError) as e:
        raise UnreadableCheckpointError(
            f"{path} cannot be read ({_one_line(e)}); it records the configuration of the checkpoints beside it. "
            f"Delete {self.directory} to start over, or use another --workdir.") from e
      # A field added to Config after these checkpoints were written is absent from config.json: at its default
      # value it changes nothing that was trained, and the run resumes.
      defaults = config_lib.Config().to_dict()
      changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k)
                       and not (k not in saved and k in defaults and current.get(k) == defaults[k]))
      if changed:
        raise ValueError(
            f"The checkpoints in {self.directory} belong to a run with a different configuration (fields "
            f"{changed} differ). Use another --workdir, or delete that directory to start over.")
    elif jax.process_index() == 0:
      with open(path, "w") as f:
        json.dump(current, f, indent=2)

  def step_directory(self, step):
    return os.path.join(self.directory, str(step))

  def save(self, epoch, state, best_variables, meta):
    # Host NumPy copies: identical on every process, written once (Orbax refuses host-local pmap arrays in a
    # multi-process job).
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(_state_tree(state))),
        best=ocp.args.StandardSave(jax.device_get(best_variables)),
        meta=ocp.args.JsonSave(meta)))

  def _restore(self, step, state, best_variables):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.device_get(_state_tree(state))),
        best=ocp.args.StandardRestore(jax.device_get(best_variables)),
        meta=ocp.args.JsonRestore()))
    meta = restored["meta"]
    # A `meta` that parses but is not this checkpoint's would only fail later, outside this fallback.
    if not isinstance(meta, dict) or meta.get("epoch") != step:
      raise ValueError(f"meta/ is not this checkpoint's bookkeeping (no 'epoch': {step}): {str(meta)[:100]}")
    tree = restored["state"]
    state = state.replace(step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
                          opt_state=tree["opt_state"])
    return state, restored["best"], meta

  def _set_aside(self, steps):
    """Renames the step folders `steps` to `<step>.corrupt` (`.corrupt.2`, ... if taken); returns the new paths."""
    moved = []
    for step in steps:
      target = self.step_directory(step) + CORRUPT_SUFFIX
      n = 1
      while os.path.exists(target):
        n += 1
        target = f"{self.step_directory(step)}{CORRUPT_SUFFIX}.{n}"
      if jax.process_index() == 0:
        os.rename(self.step_directory(step), target)
      moved.append(target)
    # Every process reads the same folders, so all reach this point with the same `steps`.
    ocp.multihost.sync_global_processes("experiments.checkpointing:set_aside")
    self.manager.reload()
    return moved

  def restore_latest(self, state, best_variables):
    """Returns `(state, best_variables, meta)` from the newest checkpoint that restores, or None when there is none.

    Newer checkpoints that fail to restore are renamed `<step>.corrupt`, with a warning. Raises
    `UnreadableCheckpointError` (and moves nothing) when there are checkpoints but none restores.
    """
    failed = []
    steps = sorted(self.manager.all_steps(), reverse=True)
    if steps:
      _drop_closed_loop_callbacks()  # before the first attempt: the callbacks come as soon as a read fails
    for step in steps:
      try:
        restored = self._restore(step, state, best_variables)
      except Exception as e:  # pylint: disable=broad-except
        # Damaged files surface as any of UnicodeDecodeError, JSONDecodeError, FileNotFoundError, KeyError,
        # TensorStore's ValueErrors, a pytree structure error, ...: whatever fails, the next older one may restore.
        logging.warning("Checkpoint %s cannot be restored: %s", self.step_directory(step), _one_line(e))
        failed.append((step, _one_line(e, limit=200)))
        continue
      if failed:
        moved = self._set_aside([s for s, _ in failed])
        logging.warning("Resuming from the checkpoint %s instead; the unreadable one%s moved to %s.",
                        self.step_directory(step), " was" if len(moved) == 1 else "s were", ", ".join(moved))
      return restored
    if failed:
      newest_step, newest_error = failed[0]
      raise UnreadableCheckpointError(
          f"No checkpoint in {self.directory} can be restored (tried {', '.join(f'{s}/' for s, _ in failed)}; "
          f"{newest_step}/ fails with {newest_error}). Delete that directory to start the run over, or use another "
          "--workdir.")
    return None

  def wait(self):
    self.manager.wait_until_finished()
