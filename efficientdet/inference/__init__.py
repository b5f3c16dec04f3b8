"""Inference: the in-graph detector (resize/pad -> model -> NMS -> original pixels), model
runners for artifacts, SavedModels and ONNX files, predict and benchmark."""
