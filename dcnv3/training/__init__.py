"""Layer 3, training with ultralytics' own trainer: ``DeformableDetectionTrainer`` and
``configured_trainer`` (``trainer``), and the per-epoch health monitor (``monitor``).

``from dcnv3.training import DeformableDetectionTrainer`` is the public path (as before the move).
"""

from dcnv3.training.trainer import DeformableDetectionTrainer, configured_trainer, train

__all__ = ["DeformableDetectionTrainer", "configured_trainer", "train"]


# The trainer's old name, from when it served DCNv3 alone: kept for one version, with a warning.
def __getattr__(name: str):
    if name == "DCNv3DetectionTrainer":
        import warnings

        warnings.warn(
            "dcnv3.training.DCNv3DetectionTrainer is deprecated (it trains DCNv2, DCNv3 and DCNv4 models); "
            "use DeformableDetectionTrainer",
            DeprecationWarning,
            stacklevel=2,
        )
        return DeformableDetectionTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
