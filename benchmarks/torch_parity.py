"""PyTorch side of `parity_fashion_mnist_lt.py`: the published losses, NormedLinear and a twin of our FashionCNN.

Written for the benchmark from the papers and the behaviour of the authors' released PyTorch code (REFERENCE.md):

- LDAM (Cao et al., NeurIPS 2019; LDAM-DRW's `LDAMLoss`): margins `m_y = max_m * n_y^(-1/4) / max(n^(-1/4))`,
  the margin subtracted from the true-class score only, times `s`, then cross-entropy.
- Noised top-K (Garcin et al., ICML 2022; the noised-topk repository's `_NoisedTopK`): noise `Z` of shape `[N, L, B]`,
  the (K+1)-th largest of `s + eps Z` along the class axis with `torch.kthvalue` on the negated scores, the mean over
  the B samples as the value, and a backward pass that scatters the one-hot vectors of the selected indices averaged
  over B (the perturbed-optimizer gradient). Imbalanced form `relu(scale * (m_y + top - s_y))`, balanced form
  `relu(1 + top - s_y)`.
- Hard top-K calibrated hinge (Yang & Koyejo, ICML 2020): `relu(1 + top_{K+1}(s) - s_y)` with `torch.topk` (its
  autograd gradient is the one-hot vector at the selected index).
- `NormedLinear` (LDAM-DRW): weight `[in, out]` drawn `uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)` (unit-norm
  columns), output `normalize(x, dim=1) @ normalize(W, dim=0)`, no bias.

Every loss returns the unreduced per-example loss, like the JAX library; the trainer takes the batch mean. The
trainer is a plain PyTorch loop (eager mode, NCHW, `torch.optim.SGD`), as the authors' scripts train.

PyTorch is a benchmark-only dependency (`benchmarks/requirements.txt`); the library never imports it, and this module
imports neither JAX nor the library.
"""
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# Losses of `experiments.config.LOSSES` implemented here; others raise.
LOSSES = ("ce", "ldam", "topk_hinge", "noised_balanced", "noised_imbalanced")


# ----------------------------------------------------------------------------------------------------------------
# Losses.


def class_margins(class_counts, *, max_margin, power=0.25):
  """`m_j = max_margin * n_j^-power / max(n^-power)` (float64 numpy), as LDAMLoss and ImbalNoisedTopK compute it."""
  m = 1.0 / np.power(np.asarray(class_counts, np.float64), power)
  return m * (max_margin / np.max(m))


def cross_entropy_loss(logits, labels):
  return F.cross_entropy(logits, labels, reduction="none")


def ldam_loss(logits, labels, *, margins, scale):
  """`CE(scale * (s - m_y e_y), y)` per example; `margins` a tensor `[L]`."""
  onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
  return F.cross_entropy(scale * (logits - margins[labels, None] * onehot), labels, reduction="none")


def topk_hinge_loss(logits, labels, *, k):
  """`relu(1 + top_{k+1}(s) - s_y)` per example; the (k+1)-th largest over all scores, the true class included."""
  top = torch.topk(logits, k + 1, dim=1).values[:, k]
  true_score = logits.gather(1, labels[:, None])[:, 0]
  return F.relu(1.0 + top - true_score)


class NoisedKthLargest(torch.autograd.Function):
  """`mean_b kth_largest(s + eps Z[..., b])` over the class axis; backward `mean_b onehot(argkth(s + eps Z[..., b]))`.

  `scores [N, L]`, `noise [N, L, B]` (the released code's layout). Only the selected indices are kept for backward.
  """

  @staticmethod
  def forward(ctx, scores, noise, k, epsilon):  # pylint: disable=arguments-differ
    perturbed = scores.unsqueeze(-1) + epsilon * noise  # [N, L, B]
    # The k-th largest is the k-th smallest of the negated scores.
    values, indices = torch.kthvalue(-perturbed, k, dim=1)  # [N, B]
    ctx.save_for_backward(indices)
    ctx.num_classes = scores.shape[1]
    return (-values).mean(dim=1)

  @staticmethod
  def backward(ctx, grad_output):  # pylint: disable=arguments-differ
    (indices,) = ctx.saved_tensors
    n, num_samples = indices.shape
    mean_onehots = torch.zeros(n, ctx.num_classes, dtype=grad_output.dtype, device=grad_output.device)
    mean_onehots.scatter_add_(1, indices, torch.full(indices.shape, 1.0 / num_samples, dtype=grad_output.dtype,
                                                     device=grad_output.device))
    return grad_output[:, None] * mean_onehots, None, None, None


def noised_topk_loss(logits, labels, *, k, epsilon, num_samples=None, margins=None, scale=1.0, noise=None,
                     generator=None):
  """`relu(scale * (m_y + top_{k+1,eps,B}(s) - s_y))` per example; `margins=None` is the balanced form (m = 1).

  `noise [N, L, B]` standard normal; drawn here (B = `num_samples`, from `generator`) when not given.
  """
  if noise is None:
    noise = torch.randn(logits.shape + (num_samples,), dtype=logits.dtype, device=logits.device,
                        generator=generator)
  top = NoisedKthLargest.apply(logits, noise, k + 1, epsilon)
  true_score = logits.gather(1, labels[:, None])[:, 0]
  margin = 1.0 if margins is None else margins[labels]
  return F.relu(scale * (margin + top - true_score))


def make_loss_fn(config, class_counts, *, generator=None):
  """`loss_fn(logits, labels) -> per-example losses` for `config.loss`, mirroring `train_lib.make_loss_fn`."""
  name = config.loss
  if name == "ce":
    return cross_entropy_loss
  if name in ("ldam", "noised_imbalanced"):
    margins = torch.tensor(class_margins(class_counts, max_margin=config.max_margin), dtype=torch.float32)
  if name == "ldam":
    return lambda logits, labels: ldam_loss(logits, labels, margins=margins.to(logits.dtype), scale=config.scale)
  if name == "topk_hinge":
    return lambda logits, labels: topk_hinge_loss(logits, labels, k=config.k)
  if name == "noised_balanced":
    return lambda logits, labels: noised_topk_loss(logits, labels, k=config.k, epsilon=config.epsilon,
                                                   num_samples=config.num_samples, generator=generator)
  if name == "noised_imbalanced":
    return lambda logits, labels: noised_topk_loss(
        logits, labels, k=config.k, epsilon=config.epsilon, num_samples=config.num_samples,
        margins=margins.to(logits.dtype), scale=config.scale, generator=generator)
  raise NotImplementedError(f"The PyTorch twin implements the losses {LOSSES}, not {name!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Model.


class NormedLinear(nn.Module):
  """LDAM-DRW's cosine classifier: unit-norm U(-1, 1) columns, `normalize(x) @ normalize(W)`, no bias."""

  def __init__(self, in_features, out_features):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(in_features, out_features))
    with torch.no_grad():
      self.weight.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

  def forward(self, x):
    return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


def space_to_depth(x, block=2):
  """[B, C, H, W] -> [B, block * block * C, H / block, W / block]; channel `(dy * block + dx) * C + c`, the order
  of `experiments.models.space_to_depth` on NHWC."""
  b, c, h, w = x.shape
  x = x.reshape(b, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
  return x.reshape(b, block * block * c, h // block, w // block)


class FashionCNN(nn.Module):
  """Twin of `experiments.models.FashionCNN`: space-to-depth 2x2 - conv3x3 16 - BN - relu - max pool 2x2 -
  2 x (conv3x3 32 - BN - relu) - flatten - head.

  Same initial distributions: Kaiming-normal (fan_in, untruncated) convolutions without bias, BatchNorm scale 1 and
  bias 0 (momentum 0.1, eps 1e-5), and as head either a linear layer with a Kaiming-normal (fan_in) weight and a
  U(+-1/sqrt(fan_in)) bias (nn.Linear's default bias) or `NormedLinear`. The flatten is PyTorch's (C, H, W) order,
  ours is (H, W, C): a permutation of the head's input rows, which does not change any distribution.
  """

  def __init__(self, num_classes, *, in_channels=1, image_size=28, normalized_head=False, stem_width=16,
               widths=(32, 32)):
    super().__init__()
    convs, norms = [], []
    channels = 4 * in_channels
    for width in (stem_width,) + tuple(widths):
      convs.append(nn.Conv2d(channels, width, 3, padding=1, bias=False))
      norms.append(nn.BatchNorm2d(width, momentum=0.1, eps=1e-5))
      channels = width
    self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
    features = channels * (image_size // 4)**2
    if normalized_head:
      self.head = NormedLinear(features, num_classes)
    else:
      self.head = nn.Linear(features, num_classes)  # default bias init: U(+-1/sqrt(fan_in))
      nn.init.kaiming_normal_(self.head.weight)
    for conv in self.convs:
      nn.init.kaiming_normal_(conv.weight)  # fan_in, gain sqrt(2): std sqrt(2 / fan_in)

  def forward(self, x):
    x = space_to_depth(x, 2)
    x = F.relu(self.norms[0](self.convs[0](x)))
    x = F.max_pool2d(x, 2)
    for conv, norm in zip(self.convs[1:], self.norms[1:]):
      x = F.relu(norm(conv(x)))
    return self.head(x.flatten(1))


# ----------------------------------------------------------------------------------------------------------------
# Training.


def learning_rate_at_epoch(config, epoch):
  """`experiments.train_lib.learning_rate_at_epoch` in Python: linear warm-up over `warmup_epochs`, step decay."""
  if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
    return config.learning_rate * (epoch + 1) / config.warmup_epochs
  decays = sum(epoch >= e for e in config.lr_decay_epochs)
  return config.learning_rate * config.lr_decay_factor**decays


def nchw(images):
  """NHWC float32 numpy batch -> NCHW tensor (a view; the first convolution reads it)."""
  return torch.from_numpy(images).permute(0, 3, 1, 2)


def evaluate(model, dataset, split, *, batch_size, ks):
  """Top-k accuracies (fractions) over `split`, padding (`mask` 0) excluded."""
  model.eval()
  correct = {k: 0.0 for k in ks}
  total = 0.0
  with torch.no_grad():
    for batch in dataset.eval_batches(split, batch_size=batch_size, process_index=0, process_count=1):
      logits = model(nchw(batch["image"]))
      labels = torch.from_numpy(batch["label"].astype(np.int64))
      mask = torch.from_numpy(batch["mask"]).to(torch.float64)
      ranked = torch.topk(logits, max(ks), dim=1).indices
      for k in ks:
        hit = (ranked[:, :k] == labels[:, None]).any(dim=1).to(torch.float64)
        correct[k] += float((hit * mask).sum())
      total += float(mask.sum())
  return {f"top{k}_accuracy": correct[k] / total for k in ks}


def train_and_evaluate(config, dataset, *, steps_per_epoch, channels_last=False, progress=None):
  """Trains the twin on `dataset` with `config`'s loss and schedule, the batches of `train_lib.train_and_evaluate`.

  `channels_last` stores the convolutions' weights (and so their activations) channels-last, a PyTorch CPU speed-up
  the authors' scripts do not use; the default is their NCHW layout.

  Returns `{"test": {topK_accuracy}, "epoch_seconds": [...], "epoch_images": [...], "train_loss": [...]}`, where an
  epoch's seconds run from the `train_batches` call to the end of its last optimizer step (batch generation and
  training steps; no evaluation).
  """
  if config.train_rule != "none":
    raise NotImplementedError(f"The PyTorch twin trains with train_rule=none only, got {config.train_rule!r}.")
  if config.model != "cnn":
    raise NotImplementedError(f"The PyTorch twin has the `cnn` model only, got {config.model!r}.")
  adjusted = [f for f in ("logit_adjustment_tau", "posthoc_tau") if getattr(config, f, 0.0)]
  if adjusted:
    raise NotImplementedError(f"The PyTorch twin has no logit adjustment; got nonzero {adjusted}.")
  torch.manual_seed(config.seed)
  generator = torch.Generator().manual_seed(config.seed + 1)
  height, _, channels = dataset.image_shape
  model = FashionCNN(dataset.num_classes, in_channels=channels, image_size=height,
                     normalized_head=config.normalized_head)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  loss_fn = make_loss_fn(config, np.asarray(dataset.train_class_counts), generator=generator)
  optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=config.nesterov)
  out = {"epoch_seconds": [], "epoch_images": [], "train_loss": []}
  for epoch in range(config.epochs):
    for group in optimizer.param_groups:
      group["lr"] = learning_rate_at_epoch(config, epoch)
    model.train()
    start = time.perf_counter()
    batches = dataset.train_batches(epoch=epoch, batch_size=config.batch_size, seed=config.seed,
                                    resample=config.train_rule == "resample", augment=config.augment,
                                    process_index=0, process_count=1)
    loss_sum, steps = torch.zeros((), dtype=torch.float64), 0
    for i, batch in enumerate(batches):
      if i >= steps_per_epoch:
        break
      labels = torch.from_numpy(batch["label"].astype(np.int64))
      loss = loss_fn(model(nchw(batch["image"])), labels).mean()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      loss_sum += loss.detach()
      steps += 1
    out["epoch_seconds"].append(time.perf_counter() - start)
    out["epoch_images"].append(steps * config.batch_size)
    out["train_loss"].append(float(loss_sum) / steps)
    if not np.isfinite(out["train_loss"][-1]):
      raise FloatingPointError(f"The PyTorch training loss became {out['train_loss'][-1]} in epoch {epoch + 1}.")
    if progress:
      progress(f"torch epoch {epoch + 1}/{config.epochs}: {out['epoch_seconds'][-1]:.1f} s, "
               f"train loss {out['train_loss'][-1]:.4f}")
  out["test"] = evaluate(model, dataset, "test", batch_size=config.eval_batch_size, ks=tuple(config.eval_ks))
  out["model"] = model
  return out
