"""Layer 3, the lesson network: a small network whose DCNv3 sampling visibly follows the object
(``network``), its scenes and targets (``data``), training (``train``: ``python -m
dcnv3.lesson.train``), its card's figures (``measure``) and "watch it learn" (``watch``)."""
