"""The learning rate of a trained model's training phases (``prune(..., trained=True)``).

The methods' default SGD rate, 0.05, suits a model trained from scratch (the
warm-up). A trained network is fine-tuned at a smaller rate: with
``trained=True`` and no ``lr`` option, the CNN's phases and fine-tuning use
:data:`TRAINED_LR`. An explicit ``lr=`` (or ``finetune_lr=`` for fine-tuning)
wins, and a method trained with Adam keeps its rate.

Measurement (README, "The one call"): a ResNet-20 trained for 8 epochs on 2,000
Fashion-MNIST images, L1 one-shot removal, 2 fine-tuning epochs, accuracy on
1,000 test images for lr 0.05 / 0.01 / 0.005: 81.2 / 81.8 / 82.1% at ratio 0.3,
80.4 / 80.2 / 79.2% at ratio 0.5: differences within the noise of that test set
(about 1.2 points); 0.01 was never more than 0.2 points behind 0.05 and is the
conventional fine-tuning rate of a trained network.
"""

from __future__ import annotations

import dataclasses

__all__ = ["TRAINED_LR", "trained_lr"]

#: SGD learning rate of the CNN's phases and fine-tuning with ``trained=True``.
TRAINED_LR = 0.01


def trained_lr(config, options: dict, trained: bool):
    """``config`` with ``lr=TRAINED_LR`` when ``trained`` and no ``lr`` option was given (SGD only)."""
    if not trained or "lr" in options or getattr(config, "optimizer", None) != "sgd":
        return config
    if not any(f.name == "lr" for f in dataclasses.fields(config)):
        return config
    return dataclasses.replace(config, lr=TRAINED_LR)
