"""The trainer: learns user matrix A and item matrix B and publishes model versions.

Importing ``train`` (or ``mcrecall.train.versions`` / ``mcrecall.train.foldin``) does not import torch, so serve can
read versions and fold users in cheaply. ``train.train_once`` loads the trainer on first use.

Modules: ``als`` (squared / implicit ALS), ``sgd`` (bce), ``evaluate``, ``split``, ``versions``
(ModelRegistry), ``publish``, ``foldin``, ``synthetic``, ``trainer`` (train_once), ``cli``.
"""

__all__ = ["train_once", "train_run"]


def __getattr__(name):
    if name in ("train_once", "train_run"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
