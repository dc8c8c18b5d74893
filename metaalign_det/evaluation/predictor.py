"""Detection on arbitrary images (not a registered dataset): detectron2's ``DefaultPredictor`` preprocessing for
a batch of images per forward, the class names a config's model predicts, and COCO results rows.

Used by ``tools/predict.py``; usable from Python::

    model = build_model(cfg); load_eval_weights(model, cfg, "model_final.pth")
    predictor = BatchPredictor(cfg, model)
    instances = predictor([read_image(p, format=cfg.INPUT.FORMAT) for p in paths])
"""
import json
from typing import Dict, List, NamedTuple, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

__all__ = ["BatchPredictor", "ModelClasses", "model_classes", "coco_results"]


class BatchPredictor:
    """``DefaultPredictor``'s per-image preprocessing (ResizeShortestEdge to INPUT.MIN_SIZE_TEST, at most
    INPUT.MAX_SIZE_TEST; MIN_SIZE_TEST 0 = no resize), for a list of images in one forward under ``no_grad``.

    ``model`` is put in eval mode; its weights are the caller's (e.g. :func:`load_eval_weights`). Unlike
    DefaultPredictor, images are given in the config's ``INPUT.FORMAT`` (what
    ``detection_utils.read_image(path, format=cfg.INPUT.FORMAT)`` returns), not always BGR.
    """

    def __init__(self, cfg, model):
        self.model = model.eval()
        self.min_size = int(cfg.INPUT.MIN_SIZE_TEST)
        self.aug = T.ResizeShortestEdge([self.min_size, self.min_size], cfg.INPUT.MAX_SIZE_TEST)

    def _input(self, image: np.ndarray) -> Dict:
        height, width = image.shape[:2]
        if self.min_size > 0:
            image = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, images: Sequence[np.ndarray]) -> List:
        """images: uint8 [H_i, W_i, C] arrays. Returns one detectron2 ``Instances`` per image, on the CPU, with
        ``pred_boxes`` (XYXY, pixels of the *original* image, clipped to it), ``scores``, ``pred_classes``."""
        if not images:
            return []
        with torch.no_grad():
            outputs = self.model([self._input(im) for im in images])
        return [out["instances"].to("cpu") for out in outputs]


class ModelClasses(NamedTuple):
    """What :func:`model_classes` found: ``names`` and ``ids`` (one per model class), ``source`` (where the
    names come from, one line) and ``fallback`` (True: no usable metadata, names are ``class_<index>``)."""

    names: List[str]
    ids: List[int]
    source: str
    fallback: bool


def model_classes(cfg) -> ModelClasses:
    """Names and category ids of the model's ROI_HEADS.NUM_CLASSES classes.

    Names: the ``thing_classes`` metadata of DATASETS.TEST[0] (else DATASETS.TRAIN[0]) -- for a dataset
    registered with ``register_coco_instances`` and not loaded yet, its JSON's categories; ids: the dataset's own
    ids where its metadata maps them (``thing_dataset_id_to_contiguous_id``, COCO JSON datasets), else
    index + 1 (the COCO convention: ids start at 1). Without metadata, or with a class count that differs from
    the model's, the names are ``class_<index>`` and ``source`` says why.
    """
    num = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    datasets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    generic, plain_ids = [f"class_{i}" for i in range(num)], list(range(1, num + 1))
    if not datasets:
        return ModelClasses(generic, plain_ids, "no dataset in DATASETS.TEST / TRAIN: classes named class_<index>",
                            True)
    name = datasets[0]
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    to_contiguous = meta.get("thing_dataset_id_to_contiguous_id", None)
    if not classes and meta.get("json_file", None):
        # register_coco_instances sets thing_classes only when the dataset is first loaded: read its categories
        from_json = _coco_json_categories(meta.json_file)
        if isinstance(from_json, str):
            return ModelClasses(generic, plain_ids, f"dataset '{name}': {from_json}: classes named class_<index>",
                                True)
        classes, to_contiguous = from_json
    if not classes:
        return ModelClasses(generic, plain_ids,
                            f"dataset '{name}' has no thing_classes metadata: classes named class_<index>", True)
    if len(classes) != num:
        return ModelClasses(generic, plain_ids, f"dataset '{name}' has {len(classes)} classes but the model "
                            f"predicts {num} (MODEL.ROI_HEADS.NUM_CLASSES): classes named class_<index>", True)
    ids = plain_ids
    if to_contiguous and sorted(to_contiguous.values()) == list(range(num)):
        by_index = {v: k for k, v in to_contiguous.items()}
        ids = [int(by_index[i]) for i in range(num)]
    return ModelClasses(list(classes), ids, f"thing_classes of dataset '{name}'", False)


def _coco_json_categories(path: str):
    """(names, {dataset id: contiguous index}) of a COCO JSON's ``categories`` sorted by id, as detectron2's
    ``load_coco_json`` sets them as metadata; or one line saying why they could not be read."""
    try:
        with open(path) as f:
            cats = json.load(f).get("categories")
        cats = sorted(cats, key=lambda c: int(c["id"]))
        return [str(c["name"]) for c in cats], {int(c["id"]): i for i, c in enumerate(cats)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return f"cannot read the categories of {path} ({type(e).__name__}: {e})"


def coco_results(instances, image_id: int, category_ids: Sequence[int]) -> List[Dict]:
    """COCO results rows (what ``pycocotools.COCO.loadRes`` reads) of one image's ``instances``:
    ``image_id``, ``category_id`` (``category_ids[pred_class]``), ``bbox`` [x, y, w, h] in pixels, ``score``."""
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[int(c)]),
         "bbox": [round(float(v), 3) for v in b], "score": round(float(s), 5)}
        for b, c, s in zip(xywh, instances.pred_classes.tolist(), instances.scores.tolist())
    ]  # fmt: skip
