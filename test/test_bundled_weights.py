"""The small model shipped in `m2a_perception/weights/` (trained by `bench/learning_check.py`): it is there,
loads without a single mismatched key, segments generated scenes and finds anomalies of a family it never saw."""

from __future__ import annotations

import numpy as np
import torch

from m2a_perception.model import M2AConfig
from m2a_perception.model.checkpoint import build_model_from_checkpoint
from m2a_perception.synthroad import SceneConfig, generate_scene
from m2a_perception.weights import bundled_checkpoint
from m2a_training.metrics import ConfusionAccumulator, PixelAccumulator
from m2a_training.validation import DEFAULT_SCORES, predict


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
    config = SceneConfig(height=256, width=512, num_anomalies=2, anomaly_family="eval")
    confusion = ConfusionAccumulator(19, ignore=255)
    anomaly = PixelAccumulator("exact")
    fractions = []
    for seed in range(3_000_000, 3_000_004):
        scene = generate_scene(seed, config)
        semantic, scores = predict(model, scene.image, {"m2a": DEFAULT_SCORES["m2a"]})
        confusion.update(semantic, scene.semantic)
        anomaly.update(scores["m2a"], scene.anomaly)
        valid = scene.anomaly != 255
        fractions.append(float((scene.anomaly[valid] == 1).mean()))
    semantic_result = confusion.compute()
    iou = np.asarray(semantic_result.iou)
    # road, sidewalk, building, vegetation, sky: the large classes every scene has
    assert (iou[[0, 1, 2, 8, 10]] > 0.7).all(), iou
    # A score that knew nothing would have an AuPRC equal to the anomaly pixel fraction (~0.002 here); the
    # bundled model reaches about 0.37 on these four scenes.
    result = anomaly.compute()
    assert result.auprc > max(0.15, 20 * np.mean(fractions)), (result.auprc, np.mean(fractions))
