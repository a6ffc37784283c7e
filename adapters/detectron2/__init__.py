"""Detectron2 integration (VOC/YOLO datasets, AdaPruner for detection, pruned registrations)."""
