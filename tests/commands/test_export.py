"""``fewlabels export`` (issue 18, item 1): every method family that predicts, in every format, run back with the
format's own loader (onnxruntime, ``torch.jit.load``, safetensors into the rebuilt module) on inputs of another size
than the export's example, and compared with the run's own predictor; bad inputs are one ``error:`` line.

The runs are tiny and untrained (config + random weights, with non-trivial BatchNorm statistics, AC's cluster ->
class matching and RelBitFit's relative tables filled in), so the whole file costs a few exports, not training.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from fewlabels.cli import main
from fewlabels.config import write_yaml
from fewlabels.engine import load_run
from fewlabels.export import FORMATS, read_metadata
from fewlabels.methods.scl.fewshot_eval import embed
from fewlabels.models.segmentation import exportable_pad_to_multiple, reflect_pad_to_multiple
from fewlabels.registry import config_from_dict, get_method

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
#: the largest |artefact - run's predictor| accepted, relative to max(1, max |predictor|)
TOLERANCE = 1e-4

SEG_DATA = {"dataset": "scenes", "crop_size": 32, "scenes_train": 4, "scenes_val": 2, "scenes_size": 32}
CONFIGS = {
    "cct": {"method": "cct", "model": {"encoder": "small_cnn"}, "data": SEG_DATA},
    "ac": {
        "method": "ac",
        "model": {"widths": [8, 16]},
        "data": {"dataset": "scenes", "input_size": 24, "scenes_n": 4, "scenes_size": 24},
    },
    "scl": {
        "method": "scl",
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
    },
}
#: the RelBitFit variants: relbitfit (the patch, with the mean head's mask hook) in every format, the others in the
#: formats that need no ONNX export (the same classifier path)
TEXT_VARIANTS = {"relbitfit": {"head": "mean"}, "bitfit": {}, "full": {}}


def _randomise(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, relative tables and trained tensors, so a lost tensor shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        for name, param in model.named_parameters():
            if "relative_attention" in name or (param.requires_grad and "bias" in name):
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
        matching = getattr(model, "cluster_to_class", None)
        if matching is not None:  # AC: as after an evaluation, clusters matched to classes (a permutation)
            matching.copy_(torch.randperm(len(matching), generator=generator))


def _make_run(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    cfg = config_from_dict(config)
    write_yaml(cfg, folder / "config.yaml")
    torch.manual_seed(0)
    method = get_method(cfg.method)(cfg)
    model = method.build_model()
    _randomise(model)
    state = method.saved_state(model)
    if state is None:
        save_model(model, str(folder / "model.safetensors"))
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {name: _make_run(root / name, config) for name, config in CONFIGS.items()}


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """RelBitFit runs of the three variants on a 2-layer BERT (hidden 32) with the MiniLM WordPiece tokenizer."""
    from tiny_bert import save_tiny_bert

    root = tmp_path_factory.mktemp("export-text")
    bert = save_tiny_bert(root / "tiny-bert")
    good = ["a great film", "lovely and warm", "superb acting", "I loved it"]
    bad = ["dull and long", "a waste of time", "boring plot", "awful script"]
    rows = [f"{t},pos" for t in good] + [f"{t},neg" for t in bad]
    (root / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    data = {
        "dataset": "csv",
        "train_file": str(root / "train.csv"),
        "eval_file": str(root / "train.csv"),
        "label_names": ["neg", "pos"],
        "n_train": 8,
        "dev_size": 0,
        "max_length": 16,
    }
    return {
        variant: _make_run(
            root / variant,
            {"method": "relbitfit", "model": {"path": str(bert), "variant": variant, **extra}, "data": data},
        )
        for variant, extra in TEXT_VARIANTS.items()
    }


# --- the run's own predictor and the artefact, on inputs of another size than the export's example -----------------
def _other_inputs(family: str, run) -> dict[str, torch.Tensor]:
    """Inputs whose every dynamic axis differs from the export example (segmentation 2 x 32 x 32 / 2 x 24 x 24,
    few-shot batch 2, text 2 x 12)."""
    generator = torch.Generator().manual_seed(7)
    if family in ("cct", "ac"):
        return {"images": torch.rand(3, 3, 45, 29, generator=generator)}
    if family == "scl":
        return {"images": torch.rand(5, 3, 32, 32, generator=generator)}
    encoded = run.method.tokenizer(
        ["a moving and wise film", "dull", "fine"],
        ["it was great", "awful", "so so"],
        padding="longest",
        return_tensors="pt",
    )
    inputs = {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert inputs["input_ids"].shape[1] not in (12,) and (inputs["attention_mask"] == 0).any()
    return inputs


def _reference(family: str, run, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        if family in ("cct", "ac"):
            return (run.method.predictor(run.model)(inputs["images"]),)
        if family == "scl":
            features = embed(*run.model(inputs["images"], mode="features"))
            return features["pooled"], features["spatial"]
        return (run.model(**inputs).logits,)


def _run_artefact(fmt: str, path: Path, run_dir: Path, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The artefact run by its format's own loader; safetensors: loaded into the export module of a freshly loaded
    run whose every saved tensor was zeroed first."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(inputs)
        outputs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        return tuple(torch.from_numpy(o) for o in outputs)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
            module = torch.jit.load(str(path))
    else:
        fresh = load_run(run_dir, device="cpu")
        module = fresh.method.export_module(fresh.model).module
        with torch.no_grad():
            for tensor in module.state_dict().values():
                tensor.zero_()
        load_model(module, str(path), strict=True)
    with torch.no_grad():
        out = module(*inputs.values())
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _export_and_compare(family: str, fmt: str, run_dir: Path, tmp_path: Path, capsys, label: str = "") -> dict:
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model{SUFFIX[fmt]}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith("exported ") and f"as {fmt} to {out} (" in printed[0]
    assert printed[1].startswith("check: max abs diff ")
    run = load_run(run_dir, device="cpu")
    inputs = _other_inputs(family, run)
    expected = _reference(family, run, inputs)
    got = _run_artefact(fmt, out, run_dir, inputs)
    assert len(got) == len(expected)
    worst = 0.0
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    scale = max(1.0, *(float(b.abs().max()) for b in expected))
    with capsys.disabled():
        shapes = [tuple(v.shape) for v in inputs.values()]
        print(f"\n{label or family} {fmt}: max abs diff {worst:.3g} on inputs {shapes}")
    assert worst < TOLERANCE * scale
    return read_metadata(out)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("family", list(CONFIGS))
def test_an_exported_image_model_matches_the_run_on_another_size(family, fmt, runs, tmp_path, capsys):
    meta = _export_and_compare(family, fmt, runs[family], tmp_path, capsys)
    assert meta["method"] == family and meta["format"] == fmt
    if family == "scl":
        assert meta["output_names"] == ["pooled", "spatial"] and meta["image_size"] == 32
        assert meta["normalisation"]["inside"] and len(meta["normalisation"]["mean"]) == 3
    else:
        assert meta["input_names"] == ["images"] and meta["dynamic_axes"]["images"] == {
            "0": "batch",
            "2": "height",
            "3": "width",
        }
        assert len(meta["classes"]) == 6  # the scenes classes (AC: matched clusters)
    if family == "ac":
        assert meta["matched"] and meta["inference"] == "plain" and meta["output_names"] == ["probabilities"]


@pytest.mark.parametrize(
    ("variant", "fmt"),
    [("relbitfit", f) for f in FORMATS] + [(v, f) for v in ("bitfit", "full") for f in ("torchscript", "safetensors")],
)
def test_an_exported_text_classifier_matches_the_run_on_another_length(variant, fmt, text_runs, tmp_path, capsys):
    meta = _export_and_compare("relbitfit", fmt, text_runs[variant], tmp_path, capsys, f"relbitfit ({variant})")
    assert meta["variant"] == variant and meta["label_names"] == ["neg", "pos"] and meta["max_length"] == 16
    assert meta["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]


def test_onnx_axes_are_named_and_the_description_travels_with_every_format(runs, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    out = tmp_path / "cct.onnx"
    assert main(["export", str(runs["cct"]), "--out", str(out), "--no-check"]) == 0  # the format from the suffix
    assert len(capsys.readouterr().out.splitlines()) == 1  # no check line
    model = onnx.load(str(out))
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output]
    assert dims == [["batch", 6, "height", "width"]]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["fewlabels"])
    assert meta["method"] == "cct" and meta["normalisation"]["mean"] == [0.485, 0.456, 0.406]


def test_the_safetensors_artefact_is_the_export_module_state_with_its_description(runs, tmp_path, capsys):
    out = tmp_path / "ac.safetensors"
    assert main(["export", str(runs["ac"]), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as fh:
        meta = json.loads(fh.metadata()["fewlabels"])
        keys = set(fh.keys())
    run = load_run(runs["ac"], device="cpu")
    assert keys == set(run.method.export_module(run.model).module.state_dict())
    assert "order" in keys and meta["clusters"] == 6  # the cluster -> class matching travels with the weights


def test_the_pad_of_the_exported_segmenters_is_the_models_pad():
    for shape in [(1, 2, 13, 21), (2, 2, 3, 5), (1, 2, 16, 9), (1, 2, 1, 1), (1, 2, 8, 8)]:
        x = torch.rand(*shape)
        assert torch.equal(exportable_pad_to_multiple(x, 8), reflect_pad_to_multiple(x, 8))


def test_the_psp_pooling_exports_for_every_size():
    """torch.export records adaptive pooling for the example's size only; the PSP module exports its pooling as
    averaging matrices computed from the size (the same values)."""
    from torch.export import Dim

    from fewlabels.models.heads import PSPModule, exportable_adaptive_avg_pool2d

    for shape in [(2, 3, 5, 7), (1, 2, 13, 4), (1, 1, 1, 1), (2, 2, 6, 6)]:
        x = torch.randn(*shape)
        for bins in (1, 2, 3, 6):
            expected = torch.nn.functional.adaptive_avg_pool2d(x, bins)
            assert torch.allclose(exportable_adaptive_avg_pool2d(x, bins), expected, atol=1e-6)
    psp = PSPModule(8, 4).eval()
    program = torch.export.export(psp, (torch.randn(2, 8, 12, 10),), dynamic_shapes=({2: Dim.DYNAMIC, 3: Dim.DYNAMIC},))
    for size in [(7, 9), (13, 6)]:
        x = torch.randn(2, 8, *size)
        with torch.no_grad():
            assert torch.allclose(program.module()(x), psp(x), atol=1e-5)


def test_the_few_shot_features_are_the_episode_classifiers_features_for_any_map_size():
    from fewlabels.methods.scl.method import FewShotFeatures

    class Maps(nn.Module):  # stands in for SCLNet.features: a fixed map of the given size
        def __init__(self, h: int, w: int) -> None:
            super().__init__()
            self.h, self.w = h, w

        def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            spatial = torch.randn(x.shape[0], 4, self.h, self.w, generator=torch.Generator().manual_seed(1))
            return spatial, spatial.mean(dim=(2, 3))

    for h, w in [(5, 5), (2, 2), (1, 1), (3, 4)]:  # 5 x 5: ResNet-12 at 84 x 84
        module = FewShotFeatures(Maps(h, w))  # type: ignore[arg-type]
        x = torch.rand(2, 3, 8, 8)
        pooled, spatial = module(x)
        expected = embed(*module.net.features(x))
        assert torch.equal(pooled, expected["pooled"]) and torch.equal(spatial, expected["spatial"])


# --- bad inputs: one error line, nothing written ------------------------------------------------------------------
def _cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            err.write(traceback.format_exc())
            code = 1
    return code, out.getvalue(), err.getvalue()


def _one_error_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs_are_one_error_line_and_write_nothing(runs, tmp_path, monkeypatch):
    import toy_method  # noqa: F401 - registers the "toy" method (it does not predict)

    run = runs["cct"]
    before = _digests(run)
    toy = tmp_path / "toyrun"
    toy.mkdir()
    write_yaml(toy_method.ToyConfig(), toy / "config.yaml")
    (tmp_path / "afolder").mkdir()
    cases = [
        (["--format", "onnx", "--out", str(tmp_path / "afolder")], ["--out", "is a directory"]),
        (["--format", "safetensors", "--out", str(run / "model.safetensors")], ["--out", "file of the run directory"]),
        (["--format", "torchscript", "--out", str(run / "config.yaml")], ["--out", "file of the run directory"]),
        (["--format", "tflite", "--out", str(tmp_path / "m.tflite")], ["--format", "unknown format 'tflite'"]),
        (["--out", str(tmp_path / "model.bin")], ["--format", "does not name one"]),
        (["--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--tolerance", "-1"], ["--tolerance"]),
    ]
    for args, fragments in cases:
        code, _, err = _cli(["export", str(run), *args])
        _one_error_line(code, err, *fragments)
    code, _, err = _cli(["export", str(toy), "--format", "onnx", "--out", str(tmp_path / "toy.onnx")])
    _one_error_line(code, err, "'toy' runs do not predict")
    code, _, err = _cli(["export", str(tmp_path / "afolder"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    _one_error_line(code, err, "not a run directory")

    import importlib.util

    from fewlabels.export import missing_packages

    find_spec = importlib.util.find_spec
    hidden_packages = [
        ("onnxscript", ["pip install onnxscript"]),
        ("onnxruntime", ["pip install onnxruntime", "--no-check"]),  # only the check needs it
    ]
    if missing_packages("onnx"):  # without the export extra, hiding one package would not be the only one missing
        hidden_packages = []
    for hidden, fragments in hidden_packages:
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a, hidden=hidden: None if name == hidden else find_spec(name, *a)
        )
        code, _, err = _cli(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
        _one_error_line(code, err, *fragments)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert _digests(run) == before
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".pt", ".bin", ".tflite")]


def test_a_failed_check_leaves_no_file_and_keeps_an_existing_one(runs, tmp_path, monkeypatch):
    from fewlabels import export

    out = tmp_path / "cct.pt"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(export.CheckResult, "passed", property(lambda self: False))
    code, _, err = _cli(["export", str(runs["cct"]), "--out", str(out)])
    _one_error_line(code, err, "differs from the run's predictor", "nothing was written")
    assert out.read_bytes() == b"an earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["cct.pt"]  # no partial file left behind
