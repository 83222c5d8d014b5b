"""The code that runs a model for scoring: dropout hooks, TTA views, the shared prefix and batched passes,
per-family postprocessing, and the detections of one pass."""
