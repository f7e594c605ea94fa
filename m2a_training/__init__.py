"""m2a_training: the offline half of m2a (data, losses, training, evaluation, export).

It imports the network from `m2a_perception.model`; the reverse never happens, so the vehicle side installs
without the training dependencies (install them with `pip install 'm2a[training]'`).
"""
