"""Training: labels from GIS files, augmentation, anchors, training loops."""
