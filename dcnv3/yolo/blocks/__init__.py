"""The YAML blocks ultralytics builds: DCNv3's (``dcnv3``), the extra_modules family's DCNv4
(``dcnv4``) and DCNv2 (``dcnv2``) blocks. Checkpoints pickle these class paths; those of earlier
versions (``dcnv3.blocks``, ``dcnv3.blocks_dcnv4``, ``dcnv3.blocks_dcnv2``) are mapped here by the
restricted unpickler (``dcnv3.yolo.checkpoints``)."""
