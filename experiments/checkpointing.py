"""Orbax checkpoints of a training run: the train state, the best model so far, and the run's bookkeeping.

A checkpoint is written at the end of an epoch. Restarting the same command resumes after the last saved epoch;
since the data order and the loss noise are functions of (seed, epoch, step), the resumed run ends with the same
results as an uninterrupted one.
"""
import json
import os

import jax
import orbax.checkpoint as ocp

from experiments import config as config_lib

# Fields that may change between an interrupted run and its restart without changing what is trained.
_RESTART_SAFE_FIELDS = ("log_every_steps", "eval_batch_size", "data_dir", "tfds_download", "distributed",
                        "coordinator_address", "num_processes", "process_id", "checkpoint_every_epochs")


def _state_tree(state):
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


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
      with open(path) as f:
        saved = json.load(f)
      changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
      if changed:
        raise ValueError(
            f"The checkpoints in {self.directory} belong to a run with a different configuration (fields "
            f"{changed} differ). Use another --workdir, or delete that directory to start over.")
    elif jax.process_index() == 0:
      with open(path, "w") as f:
        json.dump(current, f, indent=2)

  def save(self, epoch, state, best_variables, meta):
    # Host NumPy copies: identical on every process, written once (Orbax refuses host-local pmap arrays in a
    # multi-process job).
    self.manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(_state_tree(state))),
        best=ocp.args.StandardSave(jax.device_get(best_variables)),
        meta=ocp.args.JsonSave(meta)))

  def restore_latest(self, state, best_variables):
    """Returns `(state, best_variables, meta)` from the newest checkpoint, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.device_get(_state_tree(state))),
        best=ocp.args.StandardRestore(jax.device_get(best_variables)),
        meta=ocp.args.JsonRestore()))
    tree = restored["state"]
    state = state.replace(step=tree["step"], params=tree["params"], batch_stats=tree["batch_stats"],
                          opt_state=tree["opt_state"])
    return state, restored["best"], restored["meta"]

  def wait(self):
    self.manager.wait_until_finished()
