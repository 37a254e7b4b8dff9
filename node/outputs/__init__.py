"""What the node writes back into the study: a DICOM SEG and a TID 1500 SR per image.

:mod:`node.outputs.seg` builds the lung Segmentation, :mod:`node.outputs.sr` the
Comprehensive 3D SR measurement report, :mod:`node.outputs.uids` their deterministic UIDs,
:mod:`node.outputs.codes` every coded concept they use, and :mod:`node.outputs.files`
writes them under the data directory.
"""
