"""The names feature extractors are stored under, apart from the extractors: a folder target names its extractor
when it loads, and importing the extractors imports torch-fidelity and torchvision (seconds)."""

GENERIC_EXTRACTOR = "autoaccel-random-cnn-v1"  # the generic random CNN (autoaccel.metrics.features)
