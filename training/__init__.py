"""Datasets, the phantom generator, training and fine-tuning loops, evaluation.

Depends on :mod:`models` (architectures, policies, the model store), never on :mod:`node`.
"""
