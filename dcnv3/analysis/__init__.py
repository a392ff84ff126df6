"""Layer 3, analyses built on one forward: the probe (``probe``: every deformable layer's offsets and
weights), ablations (``ablation``), calibrated health flags (``health``), receptive fields
(``receptive_field``) and the dataset analysis (``dataset``)."""
