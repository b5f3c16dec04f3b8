"""Everything around the pure detector: anchors, target assignment, box coding, losses and
post-processing (NMS, rescaling to the original image).

Submodules import TensorFlow; import them directly (``from efficientdet.detection import
anchors``) so that importing this package stays cheap.
"""
