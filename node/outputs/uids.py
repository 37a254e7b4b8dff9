"""Deterministic UIDs for everything the node writes.

A retry of the same work must re-send the *same* objects (a PACS then sees a duplicate it can
ignore, never a second SEG), so no output UID is random. Each is derived from what the
object depends on:

* the SEG holds the masks: source image + segmenter version;
* the SR holds the findings: source image + segmenter + classifier + mask policy;
* series UIDs use the source *series* instead of the source image, so the outputs of all
  images of one source series land in one output series per kind;
* tracking UIDs (segments, measurement groups) are derived from their object's UID.

UIDs are ``2.25.<decimal of a 128-bit UUID>`` (ITU-T X.667 / PS3.5 B.2), the UUID being a
version-5 (SHA-1, name based) UUID of the fields joined with a separator, so every field
change gives a different UID and the same fields always give the same one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from models.result import AnalysisResult, ModelVersionInfo

#: Namespace of all cxr-node names (a fixed, random UUID; never change it).
_NAMESPACE = uuid.UUID("7d3f5a0e-5f83-4b1c-9d8a-0c2b6f1e9a47")
_SEPARATOR = "\x1f"  # unit separator: cannot appear in a UID, a version or a policy name


def derived_uid(*fields: str) -> str:
    """Return the ``2.25.`` UID named by ``fields`` (same fields, same UID; at most 44 chars)."""
    if not fields or any(not isinstance(field, str) for field in fields):
        raise ValueError(f"derived_uid needs one or more str fields; got {fields!r}")
    return f"2.25.{uuid.uuid5(_NAMESPACE, _SEPARATOR.join(fields)).int}"


def _model_key(model: ModelVersionInfo) -> str:
    return f"{model.role}:{model.name}:{model.version}:{model.sha256}"


@dataclass(frozen=True)
class OutputUIDs:
    """Every UID of the SEG and SR made from one source image under one policy.

    Build it with :meth:`for_result`; the same inputs always give equal objects.
    """

    seg_series: str
    seg_instance: str
    sr_series: str
    sr_instance: str

    @classmethod
    def for_result(
        cls,
        *,
        source_series_uid: str,
        source_instance_uid: str,
        analysis: AnalysisResult,
    ) -> "OutputUIDs":
        """UIDs for the outputs of ``analysis`` made from one source image.

        Parameters
        ----------
        source_series_uid, source_instance_uid:
            Series Instance UID and SOP Instance UID of the source radiograph.
        analysis:
            The result; its segmenter, classifier (version and weights sha256) and policy
            enter the UIDs as described in the module docstring.
        """
        for name, value in (("source_series_uid", source_series_uid), ("source_instance_uid", source_instance_uid)):
            if not value:
                raise ValueError(f"{name} is empty; outputs need the source's UIDs to derive their own")
        seg_key = _model_key(analysis.segmenter)
        sr_key = f"{seg_key}|{_model_key(analysis.classifier)}|policy:{analysis.policy}"
        return cls(
            seg_series=derived_uid("seg-series", source_series_uid, seg_key),
            seg_instance=derived_uid("seg-instance", source_instance_uid, seg_key),
            sr_series=derived_uid("sr-series", source_series_uid, sr_key),
            sr_instance=derived_uid("sr-instance", source_instance_uid, sr_key),
        )

    def segment_tracking_uid(self, side: str) -> str:
        """Tracking UID of the ``"left"`` or ``"right"`` lung segment of the SEG."""
        return derived_uid("segment", self.seg_instance, side)

    def group_tracking_uid(self, name: str) -> str:
        """Tracking Unique Identifier of the SR measurement group called ``name``."""
        return derived_uid("group", self.sr_instance, name)
