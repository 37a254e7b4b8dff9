"""The five-finding chest classifier: backbones, network, scoring and finding regions.

Public API::

    build_backbone(name) / BACKBONES / DEFAULT_BACKBONE
    ChestNet, ClassifierConfig, ChestClassifier, resize_images
    no_finding_score(probs), decide(probs, thresholds), select_thresholds(y_true, y_score)
    ChestClassifier.predict_with_maps(images) -> (probs, cams), regions_from_maps(cams, ...)
    finding_regions(classifier, image, findings=None, fraction=0.5), region_from_map(...)
"""

from models.classifier.backbones import BACKBONES, DEFAULT_BACKBONE, build_backbone
from models.classifier.network import ChestClassifier, ChestNet, ClassifierConfig, resize_images
from models.classifier.regions import finding_regions, region_from_map, regions_from_maps
from models.classifier.scoring import decide, no_finding_score, select_thresholds, youden_threshold

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "ChestClassifier",
    "ChestNet",
    "ClassifierConfig",
    "build_backbone",
    "decide",
    "finding_regions",
    "no_finding_score",
    "region_from_map",
    "regions_from_maps",
    "resize_images",
    "select_thresholds",
    "youden_threshold",
]
