"""Evaluation: COCO box metrics, top-k accuracy, reports, and evaluating a model end to end."""
