"""Pl@ntNet-300K presets: the six losses of the noised top-K paper's macro-average top-K table (ResNet-50).

python -m experiments.train --config=plantnet_noised_imbalanced --data_dir=PLANTNET_300K_DIR \
    --pretrained_weights=resnet50_imagenet.npz

Protocol (REFERENCE.md section 5): ResNet-50 pretrained on ImageNet, 30 epochs, batch 32, SGD momentum 0.9 with
Nesterov, weight decay 1e-4, lr 0.002 divided by 10 at epochs 20 and 25, resize 256 + random crop 224 (no flip),
model selection on validation macro-average top-K, test once; K = 5, reported K = 1, 3, 5. Paper figures (macro
top-1/3/5 %): CE 36.3/58.8/68.7, smooth SVM 35.7/50.3/50.9, balanced noised 35.8/58.7/66.4, focal 37.6/60.4/69.7,
LDAM 40.6/63.3/71.9, imbalanced noised 42.4/64.9/73.2.
ImageNet weights cannot be downloaded by the binary: convert a torchvision file with
`python -m experiments.convert_torchvision_weights` and pass it with --pretrained_weights. Without it a run refuses
to start (the authors always fine-tune: `--pretrained` in every released command); `--require_pretrained=false`
trains from scratch on purpose.
"""
from experiments import config as config_lib

_EXTRA = "--data_dir=PLANTNET_300K_DIR --pretrained_weights=resnet50_imagenet.npz"


def _base(**changes) -> config_lib.Config:
  base = config_lib.Config(
      dataset="plantnet300k", model="resnet50", normalized_head=False, epochs=30, batch_size=32,
      eval_batch_size=64, learning_rate=0.002, momentum=0.9, nesterov=True, weight_decay=1e-4, warmup_epochs=0,
      lr_decay_epochs=(20, 25), lr_decay_factor=0.1, eval_ks=(1, 3, 5), selection_k=5,
      model_selection="val_macro_topk", k=5, log_every_steps=200, require_pretrained=True)
  return base.replace(**changes)


def presets():
  rows = {
      "plantnet_ce": ("Cross-entropy (paper: 36.3/58.8/68.7).", _base(loss="ce")),
      "plantnet_smooth_svm": ("Smooth top-5 SVM, tau 0.1 (paper: 35.7/50.3/50.9).",
                              _base(loss="smooth_svm", tau=0.1)),
      "plantnet_noised_balanced": ("Balanced noised top-5, eps 1, B 5, linear head (paper: 35.8/58.7/66.4).",
                                   _base(loss="noised_balanced", epsilon=1.0, num_samples=5)),
      "plantnet_focal": ("Focal loss, gamma 2 (paper: 37.6/60.4/69.7).", _base(loss="focal", gamma=2.0)),
      "plantnet_ldam": ("LDAM, max margin 0.2, scale 40, cosine head (paper: 40.6/63.3/71.9).",
                        _base(loss="ldam", max_margin=0.2, scale=40.0, normalized_head=True)),
      "plantnet_noised_imbalanced": (
          "Imbalanced noised top-5, eps 0.01, B 5, max margin 0.2, scale 60, cosine head (paper: 42.4/64.9/73.2).",
          _base(loss="noised_imbalanced", epsilon=0.01, num_samples=5, max_margin=0.2, scale=60.0,
                normalized_head=True)),
  }
  return {name: (desc, cfg, _EXTRA) for name, (desc, cfg) in rows.items()}
