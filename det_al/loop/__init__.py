"""Training, COCO evaluation, and the simulated train -> select -> label loop with its tables."""
