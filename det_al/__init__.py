"""det_al: active learning for torchvision detectors.

Stochastic passes (MC dropout in the heads, test-time augmentation) over each pool image,
matched by IoU into objects, scored into one informativeness value per image.
"""

__version__ = "0.1.0"
