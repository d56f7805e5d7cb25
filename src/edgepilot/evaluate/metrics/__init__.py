"""Agreement metrics, one task per module: classification, detection, segmentation, generic tensors."""
