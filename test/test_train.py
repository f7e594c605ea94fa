"""The trainer: config files and overrides, optimizer groups and schedule, exact resume, 2-process DDP on CPU."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from m2a_perception.model import M2AConfig, Mask2Anomaly
from m2a_perception.model.checkpoint import build_model_from_checkpoint
from m2a_perception.model.scoring import ScoringConfig
from m2a_training.solver import PolyLambda, SolverConfig, build_optimizer, build_scheduler, param_groups
from m2a_training.train import main
from m2a_training.train_config import ConfigError, deep_merge, load_stages, stages_from_dict

ROOT = Path(__file__).resolve().parents[1]

# Two tiny stages on generated 64x128 scenes: stage 2 with Anomaly Mix (generated "train" objects) + L_CL.
TINY = {
    "model": {"preset": "small"},
    "data": {"dataset": "synthroad", "num_workers": 0, "synthroad": {"num_images": 6, "height": 64, "width": 128}},
    "augment": {"min_sizes": [64, 80], "max_size": 512, "crop_size": [64, 96]},
    "loss": {"num_points": 64},
    "solver": {"max_iter": 2, "batch_size": 2, "base_lr": 1.0e-3, "clip_norm": 1.0},
    "train": {"checkpoint_period": 2, "log_period": 1, "eval_period": 0, "threads": 1},
    "stages": [
        {"name": "s1"},
        {
            "name": "s2",
            "anomaly_mix": {"enabled": True, "probability": 0.7, "source": "synthroad"},
            "loss": {"contrastive": True},
            "solver": {"max_iter": 3, "base_lr": 1.0e-4},
        },
    ],
}


def _write_config(path: Path, output_dir: Path, **extra: object) -> Path:
    config = {**TINY, "train": {**TINY["train"], "output_dir": str(output_dir), **extra}}
    path.write_text(yaml.safe_dump(config))
    return path


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------------------------------------------
# Configuration


def test_shipped_configs_follow_the_recipe():
    (s1,) = load_stages(ROOT / "configs" / "stage1_cityscapes.yaml")
    assert (s1.solver.max_iter, s1.solver.batch_size, s1.solver.base_lr) == (90000, 16, 1e-4)
    assert (s1.solver.weight_decay, s1.solver.poly_power, s1.solver.clip_norm, s1.solver.amp) == (0.05, 0.9, 0.01, True)
    assert s1.augment.crop_size == (380, 760) and not s1.model.train_backbone
    assert not s1.anomaly_mix.enabled and not s1.loss.contrastive
    (s2,) = load_stages(ROOT / "configs" / "stage2_cityscapes.yaml")
    assert (s2.solver.max_iter, s2.solver.batch_size, s2.solver.base_lr) == (5000, 8, 1e-5)
    assert s2.anomaly_mix.enabled and s2.anomaly_mix.probability == 0.2 and s2.anomaly_mix.source == "coco"
    assert s2.loss.contrastive and s2.loss.contrastive_margin == 1.0 and s2.augment.crop_size == (380, 760)
    cpu = load_stages(ROOT / "configs" / "synthroad_cpu.yaml")
    assert [s.name for s in cpu] == ["stage1", "stage2"]
    assert cpu[1].anomaly_mix.enabled and cpu[1].anomaly_mix.source == "synthroad" and cpu[1].loss.contrastive
    assert cpu[1].model.init_checkpoint == str(Path(cpu[0].train.output_dir) / "model_final.pt")


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match=r"solver: unknown keys \['base_rl'\]"):
        stages_from_dict({"solver": {"base_rl": 1.0}})
    with pytest.raises(ConfigError, match=r"\.augment\.crop_size: expected 2 values"):
        stages_from_dict({"augment": {"crop_size": [1, 2, 3]}})
    with pytest.raises(ConfigError, match=r"\.data\.dataset: expected one of"):
        stages_from_dict({"data": {"dataset": "kitti"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        stages_from_dict({}, ["solver.nope=1"])
    with pytest.raises(ConfigError, match="unknown stages"):
        stages_from_dict(TINY, ["stages.s3.solver.max_iter=1"])
    with pytest.raises(ConfigError, match=r"unknown keys \['queries'\] in model config 'decoder'"):
        stages_from_dict({"model": {"preset": "small", "changes": {"decoder": {"queries": 5}}}})
    (changed,) = stages_from_dict({"model": {"preset": "small"}}, ["model.changes={decoder: {num_queries: 7}}"])
    small = M2AConfig.preset("small")
    assert changed.model.network_config() == small.replace(decoder=dataclasses.replace(small.decoder, num_queries=7))


def test_overrides_apply_to_all_stages_or_one():
    s1, s2 = stages_from_dict(TINY, ["solver.batch_size=4", "stages.s2.solver.base_lr=3e-5", "train.output_dir=o"])
    assert s1.solver.batch_size == s2.solver.batch_size == 4
    assert s1.solver.base_lr == 1e-3 and s2.solver.base_lr == 3e-5
    assert (s1.train.output_dir, s2.train.output_dir) == (str(Path("o/s1")), str(Path("o/s2")))
    assert s2.model.init_checkpoint == str(Path("o/s1/model_final.pt")) and s1.model.init_checkpoint is None


# ---------------------------------------------------------------------------------------------------------
# Solver


def test_param_groups_skip_decay_for_norms_and_embeddings_only():
    model = Mask2Anomaly(M2AConfig.preset("small"))
    groups = param_groups(model, SolverConfig())
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert not any(name.startswith("backbone.") for name in decay)  # frozen: not optimised
    assert decay["transformer_decoder.query_feat.weight"] == 0.0
    assert decay["transformer_decoder.level_embed.weight"] == 0.0
    assert decay["transformer_decoder.decoder_norm.weight"] == 0.0
    assert decay["pixel_decoder.input_proj.0.1.weight"] == 0.0  # GroupNorm
    assert decay["pixel_decoder.level_embed"] == 0.05  # a plain Parameter, as in the release
    assert decay["transformer_decoder.class_embed.bias"] == 0.05
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(decay) == trainable


def test_poly_schedule_without_warmup():
    model = torch.nn.Linear(2, 2)
    config = SolverConfig(base_lr=0.1, max_iter=10, poly_power=0.9)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * 0.5**0.9)
    assert PolyLambda(10, 0.9)(10) == 0.0


# ---------------------------------------------------------------------------------------------------------
# Training runs


def test_training_saves_resumes_and_matches_an_uninterrupted_run(tmp_path):
    # Uninterrupted: stage s1 (2 iterations), then s2 (3 iterations, checkpoint after 2).
    config = _write_config(tmp_path / "tiny.yaml", tmp_path / "full")
    assert main(["train", "--config", str(config)]) == 0
    s2 = tmp_path / "full" / "s2"
    assert (s2 / "last_checkpoint").read_text().strip() == "model_0000002.pt"
    final = _state(s2 / "model_final.pt")
    start = _state(tmp_path / "full" / "s1" / "model_final.pt")
    assert any(not torch.equal(final[k], start[k]) for k in final)  # stage 2 trained

    # Interrupted after iteration 2 of s2: the same tree without s2's later files, resumed with --resume.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    (tmp_path / "cut" / "s2" / "model_final.pt").unlink()
    (tmp_path / "cut" / "s2" / "metrics.jsonl").unlink()
    cut_config = _write_config(tmp_path / "cut.yaml", tmp_path / "cut")
    assert main(["train", "--config", str(cut_config)]) == 2  # refuses to overwrite without --resume
    assert main(["train", "--config", str(cut_config), "--resume"]) == 0
    resumed = _state(tmp_path / "cut" / "s2" / "model_final.pt")
    assert set(resumed) == set(final)
    for key in final:
        assert torch.equal(resumed[key], final[key]), key
    lines = (tmp_path / "cut" / "s2" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"iteration": 3' in lines[0]  # only iteration 3 was trained again

    # The checkpoint carries everything a resume needs, and is a model file like any other.
    checkpoint = torch.load(s2 / "model_0000002.pt", map_location="cpu", weights_only=True)
    state = checkpoint["extra"]["train_state"]
    assert state["iteration"] == 2 and state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 2
    assert len(state["rng"]) == 1 and set(state["rng"][0]) >= {"torch", "numpy", "python"}
    model, report = build_model_from_checkpoint(s2 / "model_final.pt")
    assert report.ok and model.config == M2AConfig.preset("small")


@pytest.mark.parametrize("backbone", ["frozen", "batch_norm"])
def test_two_process_ddp_on_cpu(tmp_path, backbone):
    # One stage-2-like stage (Anomaly Mix + L_CL), global batch 2 = 1 image per rank, 3 iterations; with
    # "batch_norm" the backbone trains with batch norm, whose running statistics DDP then syncs from rank 0.
    single = deep_merge({k: v for k, v in TINY.items() if k != "stages"}, TINY["stages"][1])
    single = deep_merge(single, {"name": "ddp", "train": {"output_dir": str(tmp_path / "ddp")}})
    if backbone == "batch_norm":
        single = deep_merge(single, {"model": {"train_backbone": True, "backbone_norm": "batch"}})
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(single))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "m2a_training.train", "train", "--config", str(tmp_path / "ddp.yaml"),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on cpu, batch 2" in result.stdout
    out = tmp_path / "ddp"
    assert (out / "model_final.pt").is_file() and (out / "model_0000002.pt").is_file()
    state = torch.load(out / "model_0000002.pt", map_location="cpu", weights_only=True)["extra"]["train_state"]
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    logged = [yaml.safe_load(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in logged)
    assert all("loss/loss_ood" in r for r in logged)


def test_validation_reports_miou_and_each_score(tmp_path):
    from m2a_training.train_config import SynthRoadSection, ValidationSetSection
    from m2a_training.validation import predict, validate

    torch.manual_seed(0)
    model = Mask2Anomaly(M2AConfig.preset("small"))
    synth = SynthRoadSection(num_images=2, height=64, width=128, first_seed=5, num_anomalies=2)
    section = ValidationSetSection(dataset="synthroad", synthroad=synth)
    results = validate(model, None, section, num_classes=19)
    assert set(results) == {"miou", "miou_present", "m2a/auprc", "m2a/fpr95", "max_softmax/auprc", "max_softmax/fpr95"}
    assert all(0.0 <= v <= 1.0 for v in results.values())
    assert model.training  # validation leaves the model as it found it
    image = np.zeros((60, 100, 3), np.uint8)
    semantic, maps = predict(model.eval(), image, {"m2a": ScoringConfig()}, short_edge=96)
    assert semantic.shape == (60, 100) and maps["m2a"].shape == (60, 100) and maps["m2a"].dtype == np.float32
    with pytest.raises(ValueError, match="needs a root"):
        validate(model, ValidationSetSection(dataset="fs_laf"), None, num_classes=19)


def test_backbone_learned_with_batch_norm_saves_into_the_inference_network(tmp_path):
    from m2a_perception.model.checkpoint import save_checkpoint
    from m2a_training.train import build_model
    from m2a_training.train_config import stages_from_dict

    config = stages_from_dict(deep_merge(TINY, {"model": {"train_backbone": True, "backbone_norm": "batch"}}))[0]
    torch.manual_seed(0)
    model = build_model(config, log=lambda _: None)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 1 + 5 * 3 + 1 * 4  # stem + 5 blocks x 3 convs + one projection shortcut per stage
    assert all(p.requires_grad for p in model.backbone.parameters())
    model.train()
    for _ in range(3):  # the running statistics move towards the batches' statistics
        model(torch.rand(2, 3, 64, 128) * 255)
    assert not torch.allclose(norms[0].running_mean, torch.zeros_like(norms[0].running_mean))

    path = save_checkpoint(model, tmp_path / "bn.pt", extra={})
    inference, report = build_model_from_checkpoint(path)
    assert report.ok and not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference.modules())
    model.eval()
    image = torch.rand(1, 3, 64, 128) * 255
    with torch.no_grad():
        expected, got = model(image), inference(image)
    torch.testing.assert_close(got["pred_masks"], expected["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pred_logits"], expected["pred_logits"], rtol=1e-4, atol=1e-4)


def test_batch_norm_needs_a_trained_backbone(tmp_path):
    from m2a_training.train import build_model

    config = stages_from_dict(deep_merge(TINY, {"model": {"backbone_norm": "batch"}}))[0]
    with pytest.raises(ConfigError, match="backbone_norm 'batch' needs model.train_backbone"):
        build_model(config, log=lambda _: None)


def test_data_workers_start_after_opencv_has_run_threads(tmp_path):
    # A trainer that has already used OpenCV's thread pool (validation, an earlier stage) must still start its
    # data workers: forked ones deadlocked in cv2.setNumThreads. Run in a child so a hang is a timeout here.
    config = deep_merge(TINY, {"data": {"num_workers": 1}, "train": {"output_dir": str(tmp_path / "out")}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    script = (
        "import cv2, numpy as np, sys\n"
        "cv2.setNumThreads(2)\n"
        "for _ in range(3): cv2.resize(np.zeros((1024, 2048, 3), np.uint8), (4096, 2048))  # pool threads run\n"
        "from m2a_training.train import main\n"
        f"sys.exit(main(['train', '--config', {str(tmp_path / 'c.yaml')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "out" / "s2" / "model_final.pt").is_file()
