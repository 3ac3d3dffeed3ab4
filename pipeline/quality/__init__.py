"""Quality: segmentation metrics (VOI, adapted Rand, F1) and the synthetic EM phantom with ground truth."""
