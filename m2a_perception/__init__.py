"""m2a_perception: Mask2Anomaly road-scene anomaly segmentation on the vehicle.

The network lives in `m2a_perception.model` (shared with the offline `m2a_training` package); the synthetic
road scenes used by the demo and the tests in `m2a_perception.synthroad`. This package never imports
`m2a_training`, so a vehicle installs nothing of the training side.

Importing this package is cheap: it does not import torch or any other heavy dependency.
"""

__version__ = "0.1.0"
