"""Data for training and evaluation: Cityscapes, outlier pasting and the training stream (see the modules), and
`benchmarks`, the evaluation data sets (SMIYC, Fishyscapes, Road Anomaly, the authors' bundle, Cityscapes val,
generated scenes) read from their own layouts into m2a's label conventions.

Nothing is imported here, so importing one module never pulls in the others' dependencies.
"""
