"""Framework integrations: torchvision classification, Detectron2, webdataset."""
