"""noised_topk_jax: top-K and imbalanced classification losses in JAX.

`import noised_topk_jax as ntk`. Losses return the unreduced per-example loss; the caller reduces.
"""
from noised_topk_jax.heads import cosine_head_init
from noised_topk_jax.heads import cosine_logits
from noised_topk_jax.imbalance import PROFILES
from noised_topk_jax.imbalance import class_balanced_weights
from noised_topk_jax.imbalance import class_margins
from noised_topk_jax.imbalance import drw_class_weights
from noised_topk_jax.imbalance import logit_adjustment
from noised_topk_jax.imbalance import long_tailed_counts
from noised_topk_jax.losses import balanced_softmax_loss
from noised_topk_jax.losses import cross_entropy_loss
from noised_topk_jax.losses import focal_loss
from noised_topk_jax.losses import ldam_loss
from noised_topk_jax.losses import logit_adjusted_loss
from noised_topk_jax.losses import max_margin_loss
from noised_topk_jax.losses import noised_topk_loss
from noised_topk_jax.losses import smooth_topk_svm_loss
from noised_topk_jax.losses import topk_hinge_loss
from noised_topk_jax.losses import vs_loss
from noised_topk_jax.losses import weighted_mean
from noised_topk_jax.metrics import accuracies_from_counts
from noised_topk_jax.metrics import average_k_accuracy
from noised_topk_jax.metrics import average_k_set_sizes
from noised_topk_jax.metrics import average_k_threshold
from noised_topk_jax.metrics import macro_average_k_accuracy
from noised_topk_jax.metrics import macro_topk_accuracy
from noised_topk_jax.metrics import per_class_average_k_counts
from noised_topk_jax.metrics import per_class_topk_accuracy
from noised_topk_jax.metrics import per_class_topk_counts
from noised_topk_jax.metrics import topk_accuracy
from noised_topk_jax.metrics import topk_correct
from noised_topk_jax.topk import SELECTIONS
from noised_topk_jax.topk import kth_largest
from noised_topk_jax.topk import noised_kth_largest

__version__ = "0.2.0"

__all__ = (
    "PROFILES",
    "SELECTIONS",
    "accuracies_from_counts",
    "average_k_accuracy",
    "average_k_set_sizes",
    "average_k_threshold",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "class_margins",
    "cosine_head_init",
    "cosine_logits",
    "cross_entropy_loss",
    "drw_class_weights",
    "focal_loss",
    "kth_largest",
    "ldam_loss",
    "logit_adjusted_loss",
    "logit_adjustment",
    "long_tailed_counts",
    "macro_average_k_accuracy",
    "macro_topk_accuracy",
    "max_margin_loss",
    "noised_kth_largest",
    "noised_topk_loss",
    "per_class_average_k_counts",
    "per_class_topk_accuracy",
    "per_class_topk_counts",
    "smooth_topk_svm_loss",
    "topk_accuracy",
    "topk_correct",
    "topk_hinge_loss",
    "vs_loss",
    "weighted_mean",
)
