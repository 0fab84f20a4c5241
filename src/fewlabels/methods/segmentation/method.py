"""The base of the segmentation methods: one class that the supervised baseline, CCT and AC subclass.

A segmentation method labels every pixel. What they share lives here, so that a difference between a method and its
baseline comes from the method only:

- data: :attr:`SegmentationMethod.data`, built once by :meth:`~SegmentationMethod.build_data` from the dataset
  registry (``data.dataset``); its ``val`` images, ``num_classes`` and ``class_names`` are what evaluation,
  prediction and figures read;
- model factory: :meth:`~SegmentationMethod.build_network`, the encoder-decoder of a :class:`SegModelConfig`, and
  :meth:`~SegmentationMethod.encoder_param_groups` (a pretrained encoder learns slower);
- predictor: :meth:`~SegmentationMethod.predictor` turns the trained model into ``images [B, C, H, W] -> class scores
  [B, K, H, W]``, the one function that evaluation, prediction and figures call;
- evaluation: mIoU, pixel accuracy and per-class IoU over the validation images (:func:`evaluate_segmentation`),
  optionally multi-scale and flipped (:class:`SegEvalConfig`);
- prediction I/O: ``predict`` finds the input images and writes one class-index PNG and one colour PNG per image;
- figures: a grid of validation images, their ground truth and the prediction (:func:`segmentation_figure`).

A subclass sets its config sections into :meth:`build_data`, :attr:`eval_settings` and ``build_model``, and overrides
only what differs: its training step, and for AC the predictor (clusters coloured by their matched class), the
Hungarian evaluation protocol and the files it predicts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fewlabels.config import RunConfig
from fewlabels.data.base import DataError, FewDataset
from fewlabels.data.common import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    InputFiles,
    plan_outputs,
    read_class_names,
    read_rgb,
)
from fewlabels.data.registry import get_dataset, load_segmentation
from fewlabels.data.segmentation import SegmentationData
from fewlabels.methods.base import ExportSpec, Method
from fewlabels.methods.segmentation.config import SegDataConfig, SegEvalConfig, SegModelConfig
from fewlabels.models import ExportableSegmenter, SegmentationNet, build_segmentation_model
from fewlabels.progress import Progress, track

__all__ = [
    "LabelSpace",
    "LogitsFn",
    "SegmentationDataView",
    "SegmentationMethod",
    "build_segmentation_data",
    "evaluate_segmentation",
    "infer_probs",
    "segmentation_figure",
    "to_uint8_image",
]

#: ``images [B, C, H, W] -> class scores [B, K, h, w]`` (logits or probabilities; only their argmax and, for
#: evaluation, their softmax are used).
LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class SegmentationDataView(Protocol):
    """What the shared code reads from a segmentation method's data: the validation images and the label space."""

    @property
    def val(self) -> FewDataset: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def ignore_index(self) -> int: ...


DataT = TypeVar("DataT", bound=SegmentationDataView)
#: the config class of a segmentation method (``SegmentationMethod[ConfigT, DataT]``)
ConfigT = TypeVar("ConfigT", bound=RunConfig)


@dataclass(frozen=True)
class LabelSpace:
    """The classes a segmentation model scores: all that building it and predicting with it need of the data."""

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int
    thing_classes: tuple[int, ...]


def saved_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a run's weights file (a safetensors header, or the ``model`` of a training
    checkpoint ``.pt``) by name; empty when the file cannot be read."""
    from safetensors import safe_open

    try:
        if weights.suffix == ".pt":  # a training checkpoint: the model's tensors are under "model"
            state = torch.load(weights, map_location="cpu", weights_only=True).get("model", {})
            return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        with safe_open(str(weights), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - not a mapping
    except Exception:  # noqa: BLE001 - an unreadable file is reported when the weights are loaded
        return {}


def classifier_outputs(weights: Path) -> int | None:
    """The number of classes of a saved segmentation network (rows of its ``decoder.classifier``), read from the
    file's header only; None when the file cannot tell."""
    shapes = saved_shapes(weights)
    found = [shape[0] for key, shape in shapes.items() if key.endswith("decoder.classifier.weight") and shape]
    return int(found[0]) if found else None


def label_space_without_data(cfg: SegDataConfig, weights: Path | None) -> LabelSpace | None:
    """The label space of a ``data`` section read without opening the dataset: the dataset's metadata, then
    ``data.num_classes``, then ``classes.txt`` in its root, then the saved classifier in ``weights``; None when none
    of these tells the number of classes."""
    try:
        meta = get_dataset(cfg.dataset, "segmentation").metadata
    except DataError:
        return None
    names = list(meta.class_names)
    n = len(names) or cfg.num_classes
    classes_file = Path(cfg.root) / "classes.txt" if cfg.root else None
    if not names and classes_file is not None and classes_file.is_file():
        try:
            names = read_class_names(classes_file)
        except (OSError, UnicodeDecodeError):
            names = []
        n = n or len(names)
    if not n and weights is not None:
        n = classifier_outputs(weights) or 0
    if not n:
        return None
    if len(names) != n:
        names = [f"class_{i}" for i in range(n)]
    ignore = IGNORE_INDEX if meta.ignore_index is None else meta.ignore_index
    if get_dataset(cfg.dataset, "segmentation").name == "seg-folder":
        from fewlabels.data.seg_folder import folder_metadata

        meta = folder_metadata(names)  # classes.txt may name the background
    return LabelSpace(n, tuple(names), ignore, tuple(meta.things(n)))


def build_segmentation_data(cfg: SegDataConfig) -> SegmentationData:
    """The labeled, unlabeled and validation datasets of a ``data`` section (one domain of a CCT run)."""
    return load_segmentation(cfg.dataset, cfg.options())


def infer_probs(logits_fn: LogitsFn, images: torch.Tensor, cfg: SegEvalConfig) -> torch.Tensor:
    """Class probabilities [B, K, H, W], averaged over ``cfg.scales`` and (optionally) horizontal flips."""
    h, w = images.shape[-2:]
    total = None
    for s in cfg.scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        views = [(x, False), (x.flip(-1), True)] if cfg.flip else [(x, False)]
        for v, flipped in views:
            logits = logits_fn(v)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.float().softmax(1)
            total = p if total is None else total + p
    assert total is not None
    return total / (len(cfg.scales) * (2 if cfg.flip else 1))


def evaluate_segmentation(
    logits_fn: LogitsFn,
    dataset: FewDataset,
    num_classes: int,
    cfg: SegEvalConfig,
    device: torch.device | str,
    class_names: Sequence[str] = (),
    label: str = "eval",
) -> dict[str, float]:
    """mIoU, pixel accuracy and per-class IoU (``iou/<class>``) on ``dataset`` (classes absent from both prediction
    and target in the whole evaluation are excluded from the mean); the images done are shown on stderr as
    ``label`` (:mod:`fewlabels.progress`)."""
    from fewlabels.metrics import SegmentationMeter

    meter = SegmentationMeter(num_classes)
    n = len(dataset) if not cfg.max_images else min(cfg.max_images, len(dataset))
    with Progress(n, label, "images") as progress:
        i = 0
        while i < n:
            first = dataset[i]
            items = [first]
            # Batch only images of the same size (VOC images differ in size).
            while len(items) < cfg.batch_size and i + len(items) < n:
                nxt = dataset[i + len(items)]
                if nxt["image"].shape != first["image"].shape:
                    break
                items.append(nxt)
            images = torch.stack([it["image"] for it in items]).to(device)
            masks = torch.stack([it["mask"] for it in items]).to(device)
            meter.update(infer_probs(logits_fn, images, cfg).argmax(1), masks)
            i += len(items)
            progress.update(len(items))
    result = meter.compute()
    out = {"miou": float(result["miou"]), "pixel_accuracy": float(result["pixel_accuracy"])}
    for c, v in enumerate(result["iou"]):
        if not np.isnan(v):
            out[f"iou/{class_names[c] if c < len(class_names) else c}"] = float(v)
    return out


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """The first three channels of a ``[C, H, W]`` image in [0, 1] as an HxWx3 uint8 array."""
    return (image[:3].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def segmentation_figure(
    predictors: Mapping[str, LogitsFn],
    dataset: FewDataset,
    num_classes: int,
    out_png: Path,
    device: torch.device,
    count: int = 4,
) -> Path:
    """Grid of image / ground truth / one column per predictor (its argmax), for the first ``count`` images."""
    from fewlabels.viz import colorize, save_image_grid

    rows = []
    shown = min(count, len(dataset))
    for i in track(range(shown), shown, "report figure", "images"):
        item = dataset[i]
        x = item["image"].unsqueeze(0).to(device)
        row = [to_uint8_image(item["image"]), colorize(item["mask"].numpy(), num_classes)]
        for fn in predictors.values():
            row.append(colorize(fn(x).argmax(1)[0].cpu().numpy(), num_classes))
        rows.append(row)
    return save_image_grid(out_png, rows, ["image", "ground truth", *predictors])


class SegmentationMethod(Method[ConfigT], Generic[ConfigT, DataT]):
    """A method that labels every pixel; see the module docstring for what it shares and what subclasses set."""

    metric = "miou"
    metric_mode = "max"
    #: the report figure: its file name, the title of the prediction column, and its caption
    figure_file: ClassVar[str] = "predictions.png"
    figure_column: ClassVar[str] = "prediction"
    figure_caption: ClassVar[str] = "validation images: image / ground truth / prediction"
    #: the files that ``predict`` reads from the folders it is given
    input_suffixes: ClassVar[tuple[str, ...]] = IMAGE_EXTENSIONS
    #: the files that ``predict`` writes per image (``{stem}``: the image's output name, see :meth:`output_stem`)
    output_names: ClassVar[tuple[str, ...]] = ("{stem}.png", "{stem}_overlay.png")
    #: the label space restored from the run by :meth:`prepare_inference` (then no dataset is read to build the model)
    restored_labels: LabelSpace | None = None
    #: the name of the exported predictor's output (:meth:`export_module`)
    export_output: ClassVar[str] = "logits"

    # --- data and model -------------------------------------------------------------------------------------
    def build_data(self) -> DataT:
        """The run's datasets, from its config (called once, by :attr:`data`)."""
        raise NotImplementedError(f"{type(self).__name__}.build_data")

    @cached_property
    def data(self) -> DataT:
        """The run's datasets (built on first use)."""
        return self.build_data()

    @property
    def label_space(self) -> LabelSpace:
        """The classes the model scores: restored from the run (:meth:`prepare_inference`), else the data's."""
        if self.restored_labels is not None:
            return self.restored_labels
        data = self.data
        n = data.num_classes
        things = getattr(data, "thing_classes", range(1, n))
        return LabelSpace(n, tuple(data.class_names), data.ignore_index, tuple(things))

    @property
    def num_classes(self) -> int:
        """Classes the predictor scores: the palette size of predictions and figures."""
        return self.label_space.num_classes

    def prepare_inference(self, run_dir: Path, weights: Path) -> None:
        """Before a trained run's model is built: take its label space from the dataset's metadata, the config,
        ``classes.txt`` or the weights, so that predicting needs no training data (evaluation still reads it)."""
        cfg = getattr(self.config, "data", None)
        if not isinstance(cfg, SegDataConfig):
            return
        # The classes are read from the header of any of the run's weight files (one may be damaged).
        for path in (weights, run_dir / "best.safetensors", run_dir / "model.safetensors"):
            self.restored_labels = label_space_without_data(cfg, path if path.is_file() else None)
            if self.restored_labels is not None:
                return

    def checked_data(self) -> DataT:
        """:attr:`data`, refused when its classes differ from those the trained model scores."""
        data = self.data
        restored = self.restored_labels
        if restored is not None and data.num_classes != restored.num_classes:
            raise DataError(
                f"the data has {data.num_classes} classes but the trained model scores {restored.num_classes}; "
                "evaluate on data with the classes it was trained on (check data.root and data.num_classes)"
            )
        return data

    @property
    def eval_settings(self) -> SegEvalConfig:
        """The inference protocol of evaluation and prediction (scales, flip, batch size, image count)."""
        raise NotImplementedError(f"{type(self).__name__}.eval_settings")

    def build_network(self, cfg: SegModelConfig) -> SegmentationNet:
        """The encoder-decoder of ``cfg`` with one output per class of the data."""
        return build_segmentation_model(
            cfg.encoder,
            self.num_classes,
            output_stride=cfg.output_stride,
            psp=cfg.psp,
            psp_channels=cfg.psp_channels,
            deep_stem=cfg.deep_stem,
            pretrained=cfg.pretrained,
        )

    @staticmethod
    def encoder_param_groups(model: nn.Module, lr_scale: float) -> list[dict[str, Any]]:
        """Encoder parameters at ``lr_scale`` x lr (pretrained backbones learn slower), everything else at lr."""
        encoder = getattr(model, "encoder", None)
        enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
        params = [p for p in model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if id(p) in enc_ids], "lr_scale": lr_scale},
            {"params": [p for p in params if id(p) not in enc_ids]},
        ]

    # --- evaluation and inference ---------------------------------------------------------------------------
    def predictor(self, model: nn.Module) -> LogitsFn:
        """The function that evaluation, prediction and figures call: ``images -> class scores`` (the model)."""
        return model

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """mIoU, pixel accuracy and per-class IoU of the predictor on the validation images."""
        data = self.checked_data()
        return evaluate_segmentation(
            self.predictor(model), data.val, data.num_classes, self.eval_settings, device, data.class_names
        )

    def output_stem(self, path: Path) -> str:
        """The name (without suffix) of the predictions of the image ``path`` (unique within its output folder)."""
        stems: dict[Path, str] = getattr(self, "_output_stems", {})
        return stems.get(path, path.stem)

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        """Predict every image among ``inputs`` into ``out_dir``: a folder's tree is mirrored (``a/x.png`` ->
        ``out/a/x.png``), names that would collide get the image's extension, and no input file is ever written
        (the same path, a symlink or a hard link to one: a DataError before anything is written)."""
        planned = plan_outputs(inputs, self.input_suffixes)
        sources = InputFiles([f for f, _ in planned] + [Path(p) for p in inputs if Path(p).is_file()])
        for f, rel in planned:
            for name in self.output_names:
                target = out_dir / rel.parent / name.format(stem=rel.name)
                source = sources.overwritten_by(target)
                if source is not None:
                    raise DataError(
                        f"predict would overwrite the input file {source} (writing {target}, the prediction of {f}); "
                        "choose an --out folder that holds none of the inputs"
                    )
        model.eval()
        written: list[Path] = []
        for f, rel in track(planned, len(planned), "predict", "images"):
            folder = out_dir / rel.parent
            folder.mkdir(parents=True, exist_ok=True)
            self._output_stems = {f: rel.name}
            with torch.no_grad():
                written += self.predict_image(model, f, folder, device)
        self._output_stems = {}
        return written

    def predict_image(self, model: nn.Module, path: Path, out_dir: Path, device: torch.device) -> list[Path]:
        """``<stem>.png`` (class indices) and ``<stem>_overlay.png`` (classes coloured over the image)."""
        from fewlabels.viz import overlay

        rgb = read_rgb(path)
        x = torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float().div(255).unsqueeze(0).to(device)
        pred = infer_probs(self.predictor(model), x, self.eval_settings).argmax(1)[0].cpu().numpy().astype(np.uint8)
        stem = self.output_stem(path)
        mask_path = out_dir / f"{stem}.png"
        Image.fromarray(pred).save(mask_path)
        overlay_path = out_dir / f"{stem}_overlay.png"
        Image.fromarray(overlay(rgb, pred, self.num_classes)).save(overlay_path)
        return [mask_path, overlay_path]

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        """The first validation images, their ground truth and the predictor's classes (:attr:`figure_file`)."""
        model.eval()
        path = segmentation_figure(
            {self.figure_column: self.predictor(model)},
            self.checked_data().val,
            self.num_classes,
            out_dir / self.figure_file,
            device,
        )
        return {self.figure_caption: path}

    # --- export ---------------------------------------------------------------------------------------------
    def export_network(self, model: nn.Module) -> nn.Module:
        """The predictor as a module, ``images [N, C, H, W]`` in ``[0, 1]`` -> class scores ``[N, K, H, W]``, for
        any N, H, W (default: the network, with its padding to the output stride in an exportable form)."""
        if not isinstance(model, SegmentationNet):
            raise TypeError(f"{self.name}: expected a SegmentationNet, got {type(model).__name__}")
        return ExportableSegmenter(model)

    def export_image_shape(self, model: nn.Module) -> tuple[int, int]:
        """``(channels, side)`` of the example images of an export: the image channels and the training crop."""
        cfg = getattr(self.config, "data", None)
        side = int(getattr(cfg, "crop_size", 0) or 64)
        return int(getattr(model, "in_channels", 3)), side

    def export_metadata(self, model: nn.Module) -> dict[str, Any]:
        """Facts about the exported predictor: its classes, the normalisation inside it, the training crop."""
        labels = self.label_space
        net = model if isinstance(model, SegmentationNet) else getattr(model, "net", None)
        meta: dict[str, Any] = {"classes": list(labels.class_names), "num_classes": labels.num_classes}
        if isinstance(net, SegmentationNet):
            meta["normalisation"] = {
                "inside": True,
                "mean": [round(float(v), 6) for v in net.mean.flatten()],
                "std": [round(float(v), 6) for v in net.std.flatten()],
            }
            meta["output_stride"] = net.output_stride
        settings = self.eval_settings
        if settings.flip or list(settings.scales) != [1.0]:
            meta["not_included"] = (
                f"the run's evaluation averages scales {list(settings.scales)}"
                + (" and flips" if settings.flip else "")
                + ": the artefact is one single-scale pass"
            )
        return meta

    def export_module(self, model: nn.Module) -> ExportSpec:
        """``images [N, C, H, W]`` (float32 in ``[0, 1]``, RGB order, normalised inside the module) -> class scores
        ``[N, K, H, W]`` at the input resolution, N, H and W dynamic: the run's :meth:`predictor`."""
        module = self.export_network(model).eval()
        channels, side = self.export_image_shape(model)
        generator = torch.Generator().manual_seed(0)
        device = next(iter(model.parameters())).device

        def images(n: int, h: int, w: int) -> dict[str, torch.Tensor]:
            return {"images": torch.rand(n, channels, h, w, generator=generator).to(device)}

        predictor = self.predictor(model)
        k = self.num_classes
        out = self.export_output
        return ExportSpec(
            module=module,
            inputs=images(2, side, side),
            outputs=(out,),
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                out: {0: "batch", 2: "height", 3: "width"},
            },
            reference=lambda x: (predictor(x),),
            check_inputs=[images(3, side + 7, max(3, side - 5)), images(1, max(3, side // 2 + 1), side + 3)],
            description=f"{self.name} predictor: images [N, {channels}, H, W] in [0, 1] -> {out} [N, {k}, H, W]",
            metadata={
                "inputs": {"images": f"float32 [N, {channels}, H, W], RGB in [0, 1] (normalised inside)"},
                "outputs": {out: f"float32 [N, {k}, H, W]; the argmax over axis 1 is the predicted class"},
                "crop_size": side,
                **self.export_metadata(model),
            },
        )
