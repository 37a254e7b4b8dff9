"""Datasets, the phantom generator, training and fine-tuning loops, evaluation.

:mod:`training.recipes` holds what ``cxr-node train`` and ``cxr-node evaluate`` do, as functions of
a frozen parameter object, for the command line and a task on the ``training`` queue alike.

Depends on :mod:`models` (architectures, policies, the model store), never on :mod:`node`.
"""
