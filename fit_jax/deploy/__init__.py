"""A trained generator for use: loading and folding it for inference, its
releases (compact weights and model card), SavedModel/TFLite export, and
running-statistics calibration."""
