"""The annotation round trip: Label Studio and CVAT export/import, and merging labels into a training set."""
