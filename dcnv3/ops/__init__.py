"""Layer 0, the operators: DCNv3's functional core and its formulations (``core``), the compiled CPU
kernel (``native``), the modules ``DCNv3`` (``dcnv3``), ``DCNv4`` (``dcnv4``) and ``DCNv2``
(``dcnv2``, on torchvision's ``deform_conv2d``), the protocol every deformable module follows
(``sampling_hooks``) and capturing what they sampled with (``capture``). torch only.

``dcnv3.ops`` itself is the functional API, as ``torchvision.ops`` is: ``dcnv3_core`` and its four
formulations, ``output_size`` and the formulation choice.
"""

from dcnv3.ops.core import (
    FORMULATIONS,
    dcnv3_core,
    dcnv3_core_gather,
    dcnv3_core_grid_sample,
    dcnv3_core_native,
    dcnv3_core_sparse,
    default_formulation,
    formulation,
    output_size,
    set_default_formulation,
    square_geometry,
)

__all__ = [
    "dcnv3_core",
    "dcnv3_core_grid_sample",
    "dcnv3_core_gather",
    "dcnv3_core_sparse",
    "dcnv3_core_native",
    "output_size",
    "square_geometry",
    "set_default_formulation",
    "default_formulation",
    "formulation",
    "FORMULATIONS",
]
