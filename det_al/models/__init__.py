"""Building torchvision detectors from configs, their checkpoints, family detection, BatchNorm at train time."""
