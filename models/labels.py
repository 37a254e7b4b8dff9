"""The findings the node reports, in output order."""

from __future__ import annotations

#: The five abnormalities the classifier scores (sigmoid outputs, in this order).
FINDINGS: tuple[str, ...] = ("Mass", "Nodule", "Pneumonia", "Edema", "Fibrosis")

#: The derived score (see models.classifier.no_finding_score for the formula).
NO_FINDING = "No Finding"

#: Lung sides, in segment order of the DICOM SEG (segment 1 = left lung, 2 = right lung).
LUNG_SIDES: tuple[str, ...] = ("left", "right")
