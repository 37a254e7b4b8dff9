"""From received instances to model input: which images to read and how to read them.

:mod:`node.processing.selection` picks the frontal chest radiographs (with a reason for
every other instance); :mod:`node.processing.pixels` turns a dataset into the models'
``(H, W) float32`` input and its pixel spacing.
"""
