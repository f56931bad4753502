"""Readers of user inputs other than rasters: labels (boxes, polygons) from GIS files."""

from geors.io.box_labels import MIN_VISIBLE, LabelSet, clip_boxes, is_pixel_csv, read_labels

__all__ = ["LabelSet", "MIN_VISIBLE", "read_labels", "clip_boxes", "is_pixel_csv"]
