"""PyTorch implementation of the published noised top-K algorithm, the reference of `bench_noised_topk.py`.

Written for the benchmark from the algorithm's description (Garcin et al., ICML 2022; Berthet et al., NeurIPS 2020),
in the form of the authors' public code: the noise is drawn as `[N, L, B]`, the (K+1)-th largest perturbed score of
every sample is selected along the class axis with `torch.kthvalue` (or `torch.topk`), the forward value is the mean
over the B samples, and a `torch.autograd.Function` backward scatters the one-hot vectors of the selected indices,
averaged over B. Only the selected indices are saved for the backward pass.

PyTorch is a benchmark-only dependency (`benchmarks/requirements.txt`); the library never imports it.
"""
import torch

METHODS = ("kthvalue", "topk")


class NoisedKthLargest(torch.autograd.Function):
  """`mean_b kth_largest(s + eps Z_b)` over the class axis of `s [N, L]`; gradient `mean_b onehot(argkth(...))`."""

  @staticmethod
  def forward(ctx, scores, k, epsilon, num_samples, method):
    n, num_classes = scores.shape
    noise = torch.randn(n, num_classes, num_samples, device=scores.device, dtype=scores.dtype)
    perturbed = scores.unsqueeze(-1) + epsilon * noise  # [N, L, B]
    if method == "kthvalue":
      # The k-th largest of L entries is the (L - k + 1)-th smallest.
      values, indices = torch.kthvalue(perturbed, num_classes - k + 1, dim=1)  # [N, B]
    elif method == "topk":
      values, indices = torch.topk(perturbed, k, dim=1)  # [N, k, B]
      values, indices = values[:, k - 1], indices[:, k - 1]
    else:
      raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    ctx.save_for_backward(indices)
    ctx.num_classes = num_classes
    return values.mean(dim=1)

  @staticmethod
  def backward(ctx, grad_output):
    (indices,) = ctx.saved_tensors  # [N, B]
    n, num_samples = indices.shape
    ones = torch.full(indices.shape, 1.0 / num_samples, device=indices.device, dtype=grad_output.dtype)
    # Sum over b of onehot(indices[:, b]) / B, scattered into [N, L].
    mean_onehots = torch.zeros(n, ctx.num_classes, device=indices.device, dtype=grad_output.dtype)
    mean_onehots.scatter_add_(1, indices, ones)
    return grad_output.unsqueeze(-1) * mean_onehots, None, None, None, None


def noised_topk_loss(logits, labels, *, k, epsilon, num_samples, margins, scale, method="kthvalue"):
  """Per-example imbalanced noised top-K loss `scale * relu(m_y + top_{K+1,eps,B}(s) - s_y)`."""
  top = NoisedKthLargest.apply(logits, k + 1, epsilon, num_samples, method)
  true_score = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
  return scale * torch.relu(margins[labels] + top - true_score)
