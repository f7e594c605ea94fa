"""The small model shipped in `m2a_perception/weights/` (trained by `bench/learning_check.py`): it is there,
loads without a single mismatched key, segments generated scenes and finds anomalies of a family it never saw."""

from __future__ import annotations

import numpy as np
import torch

from m2a_perception.model import M2AConfig
from m2a_perception.model.checkpoint import build_model_from_checkpoint
from m2a_perception.weights import bundled_checkpoint
from m2a_training.train_config import SynthRoadSection, ValidationSetSection
from m2a_training.validation import DEFAULT_SCORES, evaluate_frames, validation_frames


def test_the_bundled_model_ships_and_loads():
    path = bundled_checkpoint()
    assert path is not None, "m2a_perception/weights/m2a_small_synthroad.pt is missing"
    assert path.stat().st_size <= 15 * 1024 * 1024
    model, report = build_model_from_checkpoint(path)
    assert report.ok and report.class_names is not None and len(report.class_names) == 19
    assert model.config.backbone == M2AConfig.preset("small").backbone
    produced_by = report.metadata["extra"]["produced_by"]
    assert "bench/learning_check.py" in produced_by  # the README gives this command


def test_the_bundled_model_segments_and_finds_unseen_anomalies():
    torch.set_num_threads(1)
    model, _ = build_model_from_checkpoint(bundled_checkpoint())
    # Held-out scenes (seeds far from the training ones) with anomalies of the "eval" family only.
    section = ValidationSetSection(
        dataset="synthroad",
        synthroad=SynthRoadSection(
            num_images=4, height=256, width=512, first_seed=3_000_000, num_anomalies=2, anomaly_family="eval"
        ),
    )
    frames = list(validation_frames(section))
    results = evaluate_frames(model, frames, 19, {"m2a": DEFAULT_SCORES["m2a"]}, per_class=True)
    # road, sidewalk, building, vegetation, sky: the large classes every scene has
    large = {name: results[f"iou/{name}"] for name in ("road", "sidewalk", "building", "vegetation", "sky")}
    assert all(iou > 0.7 for iou in large.values()), large
    # A score that knew nothing would have an AuPRC equal to the anomaly pixel fraction (~0.002 here); the
    # bundled model reaches about 0.37 on these four scenes.
    fraction = np.mean([(f.anomaly[f.anomaly != 255] == 1).mean() for f in frames])
    assert results["m2a/auprc"] > max(0.15, 20 * fraction), (results["m2a/auprc"], fraction)
