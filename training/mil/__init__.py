"""The Django-free PyTorch engine of TumorMap: (alpha, beta) multiple-instance learning.

Modules, one per concept:

- ``config``: the frozen :class:`~training.mil.config.RunConfig` and the paper's sweep grid.
- ``model``: fully convolutional ResNet (18/34/50) producing one logit map per patch.
- ``proxy_labels``: the (alpha, beta) proxy-label rule and the masked BCE loss.
- ``presets``: batched tensor augmentation and channel-wise standardisation.
- ``dataset``: one item = one slide's bag of patches.
- ``loop``: ``train_one_epoch``, ``evaluate`` and ``fit``.
- ``checkpoint``: atomic, resumable checkpoints.
- ``device``: CUDA/CPU selection, bf16 autocast, channels-last, compile, DDP helpers.
- ``infer`` / ``export``: whole-slide inference and map export (built on the modules above).

Nothing here imports Django or the apps; importing this package does not import torch (only
the submodules that need it do), so ``training.mil.config`` stays cheap for the web layer.
"""
