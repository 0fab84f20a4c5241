import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from fewlabels.config import ConfigError, write_yaml
from fewlabels.methods.scl import ProtoNetMethod, SCLDistillMethod, SCLMethod
from fewlabels.methods.scl.protonet import prototype_logits
from fewlabels.registry import config_from_dict

# (name, views, lambda_cls, gc, sc, ss_gc, ss_sc): every row of the thesis table
ROWS = [
    ("CE", ["standard"], 1, 0, 0, 0, 0),
    ("CE+aug", ["standard", "simclr"], 1, 0, 0, 0, 0),
    ("CE+SS-GC", ["standard", "simclr"], 1, 0, 0, 1, 0),
    ("CE+SS-SC", ["standard", "simclr"], 1, 0, 0, 0, 1),
    ("CE+SS-GC+SS-SC", ["standard", "simclr"], 1, 0, 0, 1, 1),
    ("CE+GC", ["standard", "simclr"], 1, 1, 0, 0, 0),
    ("CE+SC", ["standard", "simclr"], 1, 0, 1, 0, 0),
    ("CE+GC+SC", ["standard", "simclr"], 1, 1, 1, 0, 0),
]

TINY = {
    "model": {"backbone": "conv4"},
    "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
    "eval": {"shots": [1], "queries": 2, "val_episodes": 3},
    "train": {"batch_size": 8},
}


def _config(method: str = "scl", **sections):
    data = {"method": method, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data)


def _batch(n: int = 8):
    gen = torch.Generator().manual_seed(0)
    return {
        "base": {
            "image": torch.rand(n, 3, 32, 32, generator=gen),
            "label": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
        }
    }


@pytest.fixture(scope="module")
def base_method():
    return SCLMethod(_config())


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_every_thesis_row_trains_with_exactly_its_loss_terms(row, base_method):
    name, views, cls, gc, sc, ss_gc, ss_sc = row
    cfg = _config(
        loss={
            "lambda_cls": cls,
            "lambda_gc": gc,
            "lambda_sc": sc,
            "lambda_ss_gc": ss_gc,
            "lambda_ss_sc": ss_sc,
        },
        augment={"views": views},
    )
    method = SCLMethod(cfg)
    method._splits = base_method._splits  # reuse the generated glyphs
    torch.manual_seed(0)
    model = method.build_model()
    assert (model.global_head is not None) == (gc + ss_gc > 0)
    assert (model.spatial_head is not None) == (sc + ss_sc > 0)
    out = method.training_step(model, _batch(), 0, 10)
    expected = {"ce", "train_acc"} | {k for k, w in (("gc", gc), ("sc", sc), ("ss_gc", ss_gc), ("ss_sc", ss_sc)) if w}
    assert set(out.logs) == expected
    total = sum(float(out.logs[k]) for k in expected - {"train_acc"})
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_contrastive_losses_need_two_views():
    with pytest.raises(ConfigError, match="augment.views"):
        _config(loss={"lambda_sc": 1.0}, augment={"views": ["standard"]})
    with pytest.raises(ConfigError, match="loss.lambda_cls"):
        _config(loss={"lambda_cls": 0.0, "lambda_sc": 0.0}, augment={"views": ["standard"]})


def test_unknown_dataset_and_missing_root_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="data.dataset"):
        _config(data={"dataset": "mini_imagenet"})
    with pytest.raises(ConfigError, match="data.root"):
        _config(data={"dataset": "mini-imagenet"})


def test_validation_reports_episode_accuracy_on_the_val_split(base_method):
    torch.manual_seed(0)
    model = base_method.build_model().eval()
    with torch.no_grad():
        metrics = base_method.evaluate(model, torch.device("cpu"))
    assert set(metrics) == {"acc", "acc_1shot", "ci95_1shot"}
    assert 0.0 <= metrics["acc"] <= 100.0 and metrics["acc"] == metrics["acc_1shot"]


def test_distillation_from_an_identical_teacher_costs_nothing(tmp_path, base_method):
    teacher_cfg = _config(loss={"lambda_sc": 0.0}, augment={"views": ["standard"]})
    torch.manual_seed(0)
    teacher_method = SCLMethod(teacher_cfg)
    teacher_method._splits = base_method._splits
    teacher = teacher_method.build_model()
    write_yaml(teacher_cfg, tmp_path / "config.yaml")
    save_model(teacher, str(tmp_path / "model.safetensors"))

    cfg = _config("scl-distill", distill={"teacher": str(tmp_path), "lambda_spatial": 1.0}, augment={"views": ["none"]})
    method = SCLDistillMethod(cfg)
    method._splits = base_method._splits
    student = method.build_model()
    student.load_state_dict(teacher.state_dict())
    student.eval()  # same BN statistics as the teacher
    out = method.training_step(student, _batch(), 0, 10)
    assert student.teacher is not None and "teacher.backbone" not in " ".join(student.state_dict())
    assert float(out.logs["kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.logs["feature_distill"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.logs["spatial_distill"]) == pytest.approx(0.0, abs=1e-6)
    # a different student is pulled towards the teacher
    torch.manual_seed(1)
    other = method.build_model().eval()
    out = method.training_step(other, _batch(), 0, 10)
    assert float(out.logs["kl"]) > 0 and float(out.logs["feature_distill"]) > 0
    assert all(not p.requires_grad for p in other.teacher.parameters())


def test_distillation_without_a_teacher_run_names_the_missing_file(tmp_path, base_method):
    method = SCLDistillMethod(_config("scl-distill", distill={"teacher": str(tmp_path)}, augment={"views": ["none"]}))
    method._splits = base_method._splits
    with pytest.raises(ValueError, match="config.yaml not found"):
        method.training_step(method.build_model(), _batch(), 0, 10)


def test_prototype_logits_are_negative_squared_distances_to_class_means():
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    query = torch.tensor([[[1.0, 1.0]]])
    logits = prototype_logits(support, labels, query, 2)
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -17.0]]]))


def test_protonet_step_is_cross_entropy_over_query_prototype_logits(base_method):
    cfg = _config("protonet", episodes={"ways": 3, "shots": 1, "queries": 2, "augment": False})
    method = ProtoNetMethod(cfg)
    method._splits = base_method._splits
    torch.manual_seed(0)
    model = method.build_model().eval()
    episode = method.train_sources()["episodes"].dataset.sample(0, __import__("numpy").random.default_rng(0))
    batch = {"episodes": {k: v[None] for k, v in episode.items()}}
    out = method.training_step(model, batch, 0, 10)
    with torch.no_grad():
        fs = model(episode["support"], mode="features")[1]
        fq = model(episode["query"], mode="features")[1]
    expected = F.cross_entropy(
        prototype_logits(fs[None], episode["support_labels"][None], fq[None], 3)[0], episode["query_labels"]
    )
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    assert model.classifier is None


def test_shipped_scl_configs_validate():
    from pathlib import Path

    from fewlabels.registry import load_config

    root = Path(__file__).resolve().parents[3] / "configs" / "scl"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {
        "mini_imagenet.yaml",
        "tiered_imagenet.yaml",
        "cifar_fs.yaml",
        "fc100.yaml",
        "glyphs.yaml",
    } <= set(names)
    for name in names:
        cfg = load_config(str(root / name))
        assert cfg.method in {"scl", "scl-distill", "protonet"}


def test_fewshot_eval_command_writes_accuracy_and_interval(tmp_path, base_method, capsys):
    import argparse
    import json

    from fewlabels.commands.fewshot import add_commands as add_cli

    cfg = _config()
    torch.manual_seed(0)
    write_yaml(cfg, tmp_path / "config.yaml")
    save_model(base_method.build_model(), str(tmp_path / "model.safetensors"))
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    args = parser.parse_args(
        [
            "fewshot-eval",
            str(tmp_path),
            "--shots",
            "1",
            "--queries",
            "2",
            "--episodes",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert args.func(args) == 0
    result = json.loads((tmp_path / "fewshot_eval_test.json").read_text())
    assert 0.0 <= result["acc_1shot"] <= 100.0 and result["episodes"] == 4 and result["split"] == "test"
    assert "5-way 1-shot" in capsys.readouterr().out
