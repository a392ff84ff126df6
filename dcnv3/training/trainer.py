"""Training YOLO detectors with deformable layers (DCNv2, DCNv3, DCNv4) with ultralytics' own trainer.

``DeformableDetectionTrainer`` is ultralytics' ``DetectionTrainer`` living in this package: for
multi-GPU training ultralytics pickles the trainer class into a generated script that each DDP
worker runs; the trainer registers the ultralytics integration (``dcnv3.yolo.register()``) and
prepares the runtime (offline, plot fonts, all cores) when it is constructed, so each worker has
the deformable blocks before the model is rebuilt. It also registers a ``HealthMonitor``
(``dcnv3.training.monitor``): after every epoch, the deformable layers' health on a few validation
images goes to ``health.csv`` / ``health.json`` in the run folder. Importing this module changes nothing.
"""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import LOGGER

from dcnv3 import yolo
from dcnv3.ops.sampling_hooks import is_deformable
from dcnv3.training.monitor import HealthMonitor, stop_rule

__all__ = ["DeformableDetectionTrainer", "configured_trainer", "train"]


class DeformableDetectionTrainer(DetectionTrainer):
    """ultralytics' DetectionTrainer, importable from ``dcnv3`` (see the module docstring).

    ``offset_lr_scale`` multiplies the learning rate of every deformable layer's offset and
    weight projections (``sampling_head_parameters``: DCNv3's ``offset``/``mask``, DCNv4's
    ``offset_mask``, DCNv2's ``conv_offset_mask``), and ``offset_weight_decay=False`` exempts them from
    weight decay: both start
    at zero and decide where the layer samples, so they may need a push to move within a short
    CPU budget. Set them through ``configured_trainer``.
    """

    offset_lr_scale: float = 1.0
    offset_weight_decay: bool = True
    # The health monitor's settings (``HealthMonitor``): images probed per epoch, stop on a flag.
    health_images: int = 4
    health_stop_on_flag: bool | frozenset[str] = False  # True: any flag; a set: only those

    def __init__(self, *args, **kwargs):
        yolo.prepare_runtime()
        yolo.register()
        super().__init__(*args, **kwargs)
        self.health_monitor = HealthMonitor(count=self.health_images, stop_on_flag=self.health_stop_on_flag)
        self.add_callback("on_fit_epoch_end", self.health_monitor)

    def build_optimizer(self, model, *args, **kwargs):
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.offset_lr_scale == 1.0 and self.offset_weight_decay:
            return optimizer
        from ultralytics.utils.torch_utils import unwrap_model

        heads = {id(p) for m in unwrap_model(model).modules() if is_deformable(m) for p in m.sampling_head_parameters()}
        moved_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in heads]
            if not moved:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in heads]
            settings = {k: v for k, v in group.items() if k != "params"}
            settings.update(
                lr=group["lr"] * self.offset_lr_scale, param_group=f"dcnv3-{group.get('param_group', 'heads')}"
            )
            if not self.offset_weight_decay:
                settings["weight_decay"] = 0.0
            moved_groups.append({"params": moved, **settings})
        for group in moved_groups:
            optimizer.add_param_group(group)
        LOGGER.info(
            f"DCNv3 offset/mask projections: {sum(len(g['params']) for g in moved_groups)} tensors, "
            f"lr x{self.offset_lr_scale}, weight decay {'on' if self.offset_weight_decay else 'off'}"
        )
        return optimizer


def configured_trainer(
    offset_lr_scale: float = 1.0, offset_weight_decay: bool = True, health_stop_on_flag=False
) -> type:
    """A DeformableDetectionTrainer subclass with these settings (a class, as ultralytics wants).
    ``health_stop_on_flag``: False, True (stop on any flag) or flag names (stop only on those)."""
    if offset_lr_scale == 1.0 and offset_weight_decay and not health_stop_on_flag:
        return DeformableDetectionTrainer
    return type(
        "ConfiguredDeformableTrainer",
        (DeformableDetectionTrainer,),
        {
            "offset_lr_scale": float(offset_lr_scale),
            "offset_weight_decay": bool(offset_weight_decay),
            "health_stop_on_flag": stop_rule(health_stop_on_flag),
            "__module__": __name__,
        },
    )


def train(
    model: str,
    data: str,
    offset_lr_scale: float = 1.0,
    offset_weight_decay: bool = True,
    health_stop_on_flag=False,
    **overrides,
):
    """Train ``model`` (a YAML such as ``dcnv3-yolov8n.yaml`` or a ``.pt`` to fine-tune) on ``data``
    with ultralytics' trainer; returns the ``YOLO`` whose ``trainer.best`` is the best checkpoint.
    ``health_stop_on_flag``: stop after an epoch in which a deformable layer is flagged (True: any
    flag; flag names: only those)."""
    from ultralytics import YOLO

    yolo.prepare_runtime()
    yolo.register()  # YOLO("dcnv3-yolov8n.yaml") needs the blocks before the trainer exists
    detector = YOLO(model)
    detector.train(
        data=data, trainer=configured_trainer(offset_lr_scale, offset_weight_decay, health_stop_on_flag), **overrides
    )
    return detector
