"""Inputs: COCO files, pools, images, torch datasets, segmentations, the synthetic generator, atomic files."""
