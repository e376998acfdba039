"""Set-valued evaluation of a trained model: average-K accuracy (Pl@ntNet-300K), beside the top-K of `evaluate`.

Top-K returns K classes for every image; average-K returns `{j : p_j >= lambda_K}`, with one threshold for all
images chosen on the validation split so that the sets hold K classes on average there (ambiguous images get
larger sets, easy ones smaller). For every K of `eval_ks`, `average_k_metrics`:

1. computes the probabilities of the model whose test metrics are reported (the same model selection) on the
   whole validation split, and `lambda_K = ntk.average_k_threshold(val_probs, k=K)`;
2. applies `lambda_K` to the test split's probabilities: average-K and macro average-K accuracy and the realised
   mean set size, added to `results["test"]` as `avg{K}_accuracy`, `macro_avg{K}_accuracy` and
   `avg{K}_mean_set_size`; the thresholds go to `results["average_k"]`.

Probabilities are the softmax of the evaluated logits (after post-hoc logit adjustment, if any) in the loss's units:
times the loss's scale for the cosine-head losses, whose logits the loss scales (LDAM, MM, imbalanced noised). The
dataset's released code applies a softmax to the model's outputs whatever the loss; so does this, also for the
hinge losses (top-K hinge, smooth SVM, both noised losses), whose outputs were not trained as log-probabilities:
their average-K thresholds a softmax the loss never saw.

Without a validation split (CIFAR-LT, Fashion-MNIST with `validation_per_class=0`) nothing is computed and
`results["average_k"]` says why: a threshold chosen on the test split would be scored on the examples it was
chosen on.

Memory: both splits' probabilities are held on the host, `N * L` float32 each (Pl@ntNet-300K: about 31,000 x 1,081,
135 MB per split); every device gathers the global batch (`lax.all_gather`), so several hosts see the same arrays
and compute the same thresholds. The threshold is `jax.lax.top_k` of `N * K + 1` entries of the flattened array on
the default device: measured 11-22 s per K at [30,000, 1,081] with XLA:CPU on a shared 2-core machine (NumPy's
`np.partition` took 0.2-0.8 s there); not measured on a GPU.
"""
import functools
import time

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

import noised_topk_jax as ntk
from experiments import config as config_lib
from experiments import input_pipeline


def probabilities_step(state, batch, scale, offsets, *, axis_name):
  """`softmax(scale * (logits - offsets))` (`offsets`: the post-hoc logit adjustment, or zeros), with the labels and
  mask, of the whole global batch on every device (`lax.all_gather` over `axis_name`); call under
  `pmap(axis_name=axis_name)`."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
  logits = logits.astype(jnp.float32) - offsets
  out = {"probs": jax.nn.softmax(scale * logits, axis=-1), "label": batch["label"], "mask": batch["mask"]}
  return jax.tree.map(lambda x: lax.all_gather(x, axis_name, tiled=True), out)


def collect_probabilities(p_step, rstate, dataset, split, *, config, num_local_devices, posthoc_offsets=None):
  """`(probs [N, L] float32, labels [N])` of every example of `split` (padding dropped), on the host; `p_step` is
  `probabilities_step` pmapped with `in_axes=(0, 0, None, None)`."""
  scale = jnp.float32(config_lib.logit_scale(config))
  offsets = jnp.zeros((dataset.num_classes,), jnp.float32) if posthoc_offsets is None else posthoc_offsets
  probs, labels = [], []
  for batch in dataset.eval_batches(split, batch_size=config.eval_batch_size, process_index=jax.process_index(),
                                    process_count=jax.process_count()):
    input_pipeline.check_labels(batch["label"][batch["mask"] > 0], dataset.num_classes)
    out = p_step(rstate, input_pipeline.shard(batch, num_local_devices), scale, offsets)
    out = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], out)  # the first device's copy
    keep = out["mask"] > 0
    probs.append(out["probs"][keep])
    labels.append(out["label"][keep])
  return np.concatenate(probs), np.concatenate(labels)


def _mean_set_size(probs, threshold):
  return float(np.mean(np.asarray(ntk.average_k_set_sizes(probs, threshold=threshold)), dtype=np.float64))


# Losses whose outputs are scores of a hinge, not log-probabilities: average-K still takes their softmax.
HINGE_LOSSES = ("topk_hinge", "smooth_svm", "noised_balanced", "noised_imbalanced")


def describe_probabilities(config: config_lib.Config) -> str:
  """What `results["average_k"]["probabilities"]` says the thresholded probabilities are."""
  scale = config_lib.logit_scale(config)
  text = "softmax of the evaluated logits" + (f" times the loss's scale {scale:g}" if scale != 1 else "")
  if config.loss in HINGE_LOSSES:
    text += " (a hinge loss: its outputs are not trained as log-probabilities; softmax as in the released code)"
  return text


def average_k_metrics(rstate, dataset, *, config, num_local_devices, posthoc_offsets=None, axis_name):
  """`(record, test_metrics)`: `results["average_k"]` (thresholds, where they came from) and the test metrics
  `avg{K}_accuracy`, `macro_avg{K}_accuracy`, `avg{K}_mean_set_size` for every K of `config.eval_ks` (empty
  without a validation split)."""
  if not dataset.has_validation:
    note = (f"not computed: {dataset.name} has no validation split in this run, and a threshold estimated on the "
            "test split would be scored on the examples it was chosen on")
    logging.info("Average-K %s.", note)
    return {"threshold_split": None, "thresholds": None, "note": note}, {}
  t0 = time.time()
  p_step = jax.pmap(functools.partial(probabilities_step, axis_name=axis_name), axis_name=axis_name,
                    in_axes=(0, 0, None, None))
  collect = lambda split: collect_probabilities(p_step, rstate, dataset, split, config=config,
                                                num_local_devices=num_local_devices, posthoc_offsets=posthoc_offsets)
  # On the default device once, not at every call below.
  val_probs = jnp.asarray(collect("val")[0])
  test_probs, test_labels = map(jnp.asarray, collect("test"))
  thresholds, val_sizes, metrics = {}, {}, {}
  for k in config.eval_ks:
    threshold = ntk.average_k_threshold(val_probs, k=k)
    thresholds[str(k)] = float(threshold)
    val_sizes[str(k)] = _mean_set_size(val_probs, threshold)
    metrics[f"avg{k}_accuracy"] = float(ntk.average_k_accuracy(test_probs, test_labels, threshold=threshold))
    metrics[f"macro_avg{k}_accuracy"] = float(ntk.macro_average_k_accuracy(
        test_probs, test_labels, threshold=threshold, num_classes=dataset.num_classes))
    metrics[f"avg{k}_mean_set_size"] = _mean_set_size(test_probs, threshold)
  record = {"threshold_split": "val", "probabilities": describe_probabilities(config), "thresholds": thresholds,
            "val_mean_set_size": val_sizes, "num_val_examples": int(len(val_probs))}
  logging.info("Average-K on %d validation and %d test examples in %.1fs: thresholds %s, test mean set sizes %s.",
               len(val_probs), len(test_probs), time.time() - t0, thresholds,
               {k: round(metrics[f"avg{k}_mean_set_size"], 3) for k in config.eval_ks})
  return record, metrics
