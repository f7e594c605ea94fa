"""`m2a-eval` end to end: `scores` on a small folder (JSON against the metrics computed directly, figures, errors)
and `model` on generated scenes with a small random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_training.evaluate import _scoring_config, build_parser, main
from m2a_training.metrics import ComponentAccumulator, PixelAccumulator

KEYS = ("AuPRC", "FPR95", "AUROC", "sIoU", "PPV", "mean_F1", "mIoU", "mode", "track", "threshold")
H, W = 48, 64


def _frames(seed: int = 0, count: int = 3) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        label = np.zeros((H, W), np.uint8)
        label[10 + i : 30 + i, 20:44] = 1  # one 20 x 24 anomaly per frame
        label[:4] = 255
        score = (rng.random((H, W)) * 0.6 + 0.4 * (label == 1)).astype(np.float32)
        out.append((f"frame_{i}", score, label))
    return out


def _write(folder: Path, frames: list[tuple[str, np.ndarray, np.ndarray]]) -> tuple[Path, Path, Path]:
    scores, labels, images = folder / "scores", folder / "labels", folder / "images"
    for d in (scores, labels, images):
        d.mkdir(parents=True)
    for i, (name, score, label) in enumerate(frames):
        if i == 2:
            Image.fromarray(score).save(scores / f"{name}.tif")  # a float TIFF among the .npy files
        else:
            np.save(scores / f"{name}.npy", score)
        Image.fromarray(label).save(labels / f"{name}.png")
        Image.fromarray(np.full((H, W, 3), 90 * i, np.uint8)).save(images / f"{name}.png")
    return scores, labels, images


def test_scores_end_to_end(tmp_path, capsys):
    frames = _frames()
    scores, labels, images = _write(tmp_path, frames)
    out = tmp_path / "out" / "metrics.json"
    argv = ["scores", "--scores", str(scores), "--labels", str(labels), "--images", str(images)]
    assert main([*argv, "--track", "obstacle", "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert all(key in doc for key in KEYS)
    pixel = PixelAccumulator()
    for _, score, label in frames:
        pixel.update(score, label)
    p = pixel.compute()
    assert (doc["AuPRC"], doc["FPR95"], doc["AUROC"]) == (p.auprc, p.fpr95, p.auroc)
    assert doc["FPR95_interpolated"] == p.fpr95_interpolated
    assert doc["threshold"] == doc["best_F1_threshold"] == p.best_f1_threshold
    assert (doc["mode"], doc["track"], doc["threshold_source"]) == ("exact", "obstacle", "best pixel F1")
    components = ComponentAccumulator(p.best_f1_threshold, "obstacle")
    for _, score, label in frames:
        components.update(score, label)
    c = components.compute()
    assert (doc["sIoU"], doc["PPV"], doc["mean_F1"]) == (c.siou, c.ppv, c.mean_f1)
    assert doc["components"]["TP"] == list(c.tp) and doc["components"]["gt_components"] == 3
    assert doc["mIoU"] is None and doc["data"]["anomaly_pixels"] == 3 * 20 * 24
    assert len(doc["frames"]["worst"]) == 2 and doc["frames"]["worst"][0]["name"].startswith("frame_")
    for figure in ("pr_curve", "roc_curve", "f1_per_tau", "qualitative"):
        path = Path(doc["figures"][figure])
        assert path.parent == out.parent and path.stat().st_size > 1000
        assert Image.open(path).size[0] > 200
    printed = capsys.readouterr().out
    assert "| data set | mode | frames | AuPRC |" in printed and f"{100 * p.auprc:.2f}" in printed


def test_scores_mode_track_and_threshold_are_recorded(tmp_path):
    frames = _frames(1)
    scores, labels, _ = _write(tmp_path, frames)
    out = tmp_path / "m.json"
    argv = ["scores", "--scores", str(scores), "--labels", str(labels), "--json", str(out)]
    assert main([*argv, "--mode", "smiyc", "--track", "none", "--threshold", "0.7", "--no-figures", "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert (doc["mode"], doc["track"], doc["threshold"], doc["threshold_source"]) == (
        "smiyc",
        "none",
        0.7,
        "given (--threshold)",
    )
    assert doc["track_filters"] == {"min_pred_size": 0, "min_gt_size": 0} and "figures" not in doc
    smiyc = PixelAccumulator("smiyc")
    components = ComponentAccumulator(0.7, "none")
    for _, score, label in frames:
        smiyc.update(score, label)
        components.update(score, label)
    assert doc["AuPRC"] == smiyc.compute().auprc and doc["sIoU"] == components.compute().siou


def test_scores_missing_partner_is_an_error_naming_it(tmp_path, capsys):
    scores, labels, _ = _write(tmp_path, _frames())
    (labels / "frame_1.png").unlink()
    argv = ["scores", "--scores", str(scores), "--labels", str(labels), "--json", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "frame_1.npy has no label map" in err and str(labels / "frame_1.png") in err
    (scores / "frame_0.npy").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(labels / "frame_1.png")
    assert main(argv) == 2
    assert f"label map {labels / 'frame_0.png'} has no score map" in capsys.readouterr().err


def test_scores_bad_labels_and_shapes_name_the_files(tmp_path, capsys):
    scores, labels, _ = _write(tmp_path, _frames())
    argv = ["scores", "--scores", str(scores), "--labels", str(labels), "--json", str(tmp_path / "m.json")]
    Image.fromarray(np.full((H, W), 3, np.uint8)).save(labels / "frame_0.png")
    assert main(argv) == 2
    assert "frame_0.png: anomaly labels must be 0, 1 or 255" in capsys.readouterr().err
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(labels / "frame_0.png")
    assert main(argv) == 2
    assert "score map shape (48, 64) does not match the label map shape (48, 65)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    import torch

    from m2a_perception.model import M2AConfig, Mask2Anomaly
    from m2a_perception.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    return save_checkpoint(Mask2Anomaly(M2AConfig.preset("small")).eval(), path)


def test_model_on_generated_scenes_end_to_end(tmp_path, small_checkpoint):
    out = tmp_path / "model" / "metrics.json"
    saved = tmp_path / "saved"
    argv = ["model", "--checkpoint", str(small_checkpoint), "--dataset", "synthroad", "--num-frames", "2"]
    argv += ["--height", "128", "--width", "256", "--flip-tta", "--save-scores", str(saved), "--json", str(out)]
    assert main([*argv, "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert all(key in doc for key in KEYS)
    for key in ("AuPRC", "FPR95", "FPR95_interpolated", "AUROC", "best_F1", "sIoU", "mean_F1", "mIoU"):
        assert doc[key] is not None and 0.0 <= doc[key] <= 1.0, key
    assert doc["PPV"] is None or 0.0 <= doc["PPV"] <= 1.0
    assert len(doc["IoU_per_class"]) == 19 and doc["data"]["frames"] == 2 and doc["data"]["anomaly_pixels"] > 0
    assert doc["scoring"]["flip_tta"] is True and doc["dataset"]["name"] == "synthroad"
    assert doc["checkpoint_report"].startswith("m2a checkpoint") and doc["model_seconds"] > 0
    assert (out.parent / "qualitative.png").is_file()
    # the saved scores are a folder `m2a-eval scores` reads, and give the same figures
    again = tmp_path / "again.json"
    assert (
        main(
            [
                "scores",
                "--scores",
                str(saved / "scores"),
                "--labels",
                str(saved / "labels"),
                "--json",
                str(again),
                "--no-figures",
                "--quiet",
            ]
        )
        == 0
    )
    redo = json.loads(again.read_text())
    assert (redo["AuPRC"], redo["FPR95"], redo["sIoU"]) == (doc["AuPRC"], doc["FPR95"], doc["sIoU"])


def test_model_needs_a_root_for_folder_data_sets(tmp_path, small_checkpoint, capsys):
    argv = ["model", "--checkpoint", str(small_checkpoint), "--dataset", "ra21", "--json", str(tmp_path / "m.json")]
    assert main(argv) == 2
    assert "--root is required for --dataset ra21" in capsys.readouterr().err
    assert main([*argv, "--root", str(tmp_path / "absent")]) == 2
    assert "root folder" in capsys.readouterr().err


def test_scoring_options_select_table3_rows_and_baselines():
    parse = build_parser().parse_args
    base = ["model", "--checkpoint", "x.pt", "--dataset", "synthroad"]
    cfg = _scoring_config(parse([*base, "--table3-row", "2"]))
    assert (cfg.class_fn, cfg.mask_fn, cfg.post_fn, cfg.refine) == ("sigmoid", "sigmoid", "identity", True)
    cfg = _scoring_config(parse([*base, "--table3-row", "5", "--mask-fn", "softmax"]))
    assert (cfg.class_fn, cfg.mask_fn, cfg.post_fn) == ("softmax", "softmax", "softmax")
    cfg = _scoring_config(parse([*base, "--score", "max_logit"]))
    assert cfg.score == "max_logit" and cfg.refine is False  # refinement zeroes scores: off for negative ones
    cfg = _scoring_config(parse([*base, "--score", "energy", "--refine", "--resolution", "quarter"]))
    assert cfg.refine is True and cfg.resolution == "quarter"
    with pytest.raises(ValueError, match=r"--table3-row must be 0..5, got 6"):
        _scoring_config(parse([*base, "--table3-row", "6"]))


def test_model_on_cityscapes_gives_miou_and_no_anomaly_figures(tmp_path, small_checkpoint):
    city = tmp_path / "cityscapes"
    (city / "leftImg8bit" / "val" / "ulm").mkdir(parents=True)
    (city / "gtFine" / "val" / "ulm").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(
        city / "leftImg8bit" / "val" / "ulm" / "ulm_000000_000019_leftImg8bit.png"
    )
    Image.fromarray(np.resize(np.array([7, 8, 26, 0], np.uint8), (64, 128))).save(
        city / "gtFine" / "val" / "ulm" / "ulm_000000_000019_gtFine_labelIds.png"
    )
    out = tmp_path / "m.json"
    argv = ["model", "--checkpoint", str(small_checkpoint), "--dataset", "cityscapes", "--root", str(city)]
    assert main([*argv, "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert 0.0 <= doc["mIoU"] <= 1.0 and doc["pixel_accuracy"] is not None
    assert doc["AuPRC"] is None and doc["sIoU"] is None and doc["frames"] == {"worst": [], "best": []}
    assert {"road", "sidewalk", "car"} <= {k for k, v in doc["IoU_per_class"].items() if v is not None}
