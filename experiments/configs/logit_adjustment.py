"""CIFAR-10/100-LT rho = 100 presets of the logit-adjustment paper (Menon et al., ICLR 2021): CE, CE + post-hoc
adjustment and the logit-adjusted loss, ResNet-32.

python -m experiments.train --config=cifar10_lt_exp100_la_loss --data_dir=TFDS_DATA_DIR

The paper's figures (google-research/logit_adjustment README, ResNet-32, rho = 100, top-1 accuracy %): CIFAR-10-LT
CE 71.36, logit-adjusted loss 77.89; CIFAR-100-LT CE 39.87, logit-adjusted loss 44.06 (REFERENCE.md section 8).
Protocol, from the released code (`logit_adjustment/main.py`, `utils.py`, `models.py` of google-research): batch
128, SGD with Nesterov momentum 0.9, lr 0.1 with a linear warm-up over the first 20 (CIFAR-10) / 22 (CIFAR-100)
epochs, then x0.1, x0.01, x0.001 from epochs 604, 926, 1128 (CIFAR-10, 1241 epochs) or 691, 1059, 1290 (CIFAR-100,
1419 epochs); Keras L2 regularisation 1e-4 (`1e-4 * sum w^2`, i.e. coupled weight decay 2e-4); crop with 4-pixel
padding + flip; tau = 1; the test set evaluated every epoch with no model selection (here: the last epoch).

Deliberate deviations (also in docs/presets_vs_authors.md): the ResNet-32 is LDAM-DRW's (option-A shortcuts, two
3x3 convs per block; the released LA model has three convs per block, projection shortcuts and a final BN), so that
every CIFAR row of this project uses one network; weight decay also applies to BatchNorm parameters (LA decays only
conv and dense weights); the warm-up is per epoch, not per step; images are normalised with the CIFAR mean/std of
the other CIFAR presets instead of `x / 255 - 0.5`; the long-tailed subset is LDAM-DRW's exp profile (the LA code
reads a prepared subset of the same sizes, 12,406 / 10,847 images).
"""
from experiments import config as config_lib

# dataset -> (epochs, warm-up epochs, decay epochs, paper top-1 % of (CE, LA loss)).
PROTOCOL = {
    "cifar10_lt": (1241, 20, (604, 926, 1128), (71.36, 77.89)),
    "cifar100_lt": (1419, 22, (691, 1059, 1290), (39.87, 44.06)),
}
METHODS = {
    "la_ce": ("cross-entropy (the paper's baseline)", dict(loss="ce")),
    "la_ce_posthoc": ("cross-entropy + post-hoc logit adjustment, tau 1", dict(loss="ce", posthoc_tau=1.0)),
    "la_loss": ("logit-adjusted loss, tau 1", dict(loss="logit_adjusted", tau=1.0)),
}


def base_config(dataset) -> config_lib.Config:
  epochs, warmup, decays, _ = PROTOCOL[dataset]
  return config_lib.Config(
      dataset=dataset, imbalance_profile="exp", imbalance_ratio=100.0, model="resnet32", normalized_head=False,
      epochs=epochs, batch_size=128, eval_batch_size=500, learning_rate=0.1, momentum=0.9, nesterov=True,
      weight_decay=2e-4, warmup_epochs=warmup, lr_decay_epochs=decays, lr_decay_factor=0.1, eval_ks=(1, 5),
      model_selection="last_epoch", eval_every_epochs=10, checkpoint_every_epochs=10, log_every_steps=100)


def presets():
  out = {}
  for dataset, (_, _, _, paper) in PROTOCOL.items():
    for method, (label, changes) in METHODS.items():
      figure = {"la_ce": paper[0], "la_loss": paper[1]}.get(method)
      note = f" (paper top-1 {figure:.2f}%)" if figure else ""
      out[f"{dataset}_exp100_{method}"] = (
          f"Logit-adjustment paper, {dataset} exp rho=100, ResNet-32: {label}{note}.",
          base_config(dataset).replace(**changes), "--data_dir=TFDS_DATA_DIR")
  return out
