"""The clip / drop rule for boxes that do not fit their image (metaalign_det.data.datasets.box_rules)."""
import logging
import math

from detectron2.structures import BoxMode

from metaalign_det.data.datasets.box_rules import apply_box_rule


def _rec(boxes, mode=BoxMode.XYWH_ABS, w=100, h=50):
    return {"file_name": "a.png", "width": w, "height": h,
            "annotations": [{"bbox": b, "bbox_mode": mode, "category_id": 0} for b in boxes]}


def test_clip_drop_and_one_warning(caplog):
    recs = [_rec([[10, 10, 20, 20],        # inside: kept as is
                  [90, 40, 30, 30],        # past the corner: clipped to [90, 40, 10, 10]
                  [-5, 0, 10, 10],         # past the left edge: clipped to [0, 0, 5, 10]
                  [5, 5, 0, 10],           # zero width: dropped
                  [200, 10, 10, 10],       # wholly outside: dropped
                  [10, 10, 0.5, 20],       # under 1 px wide: dropped
                  [float("nan"), 1, 2, 3]]),  # not finite: dropped
            {"file_name": "b.png", "width": 10, "height": 10}]  # unlabelled: untouched
    before = [dict(a) for a in recs[0]["annotations"]]
    with caplog.at_level(logging.WARNING):
        out = apply_box_rule(recs, "set X")
        apply_box_rule(recs, "set X")  # the same set loaded again: no second warning
    boxes = [a["bbox"] for a in out[0]["annotations"]]
    assert boxes == [[10, 10, 20, 20], [90.0, 40.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0]]
    assert out[1] is recs[1]
    assert [dict(a) for a in recs[0]["annotations"]] == before or math.isnan(before[-1]["bbox"][0])  # not modified
    lines = [r.getMessage() for r in caplog.records if "set X" in r.getMessage()]
    assert len(lines) == 1
    assert "2 box(es) reaching outside the image clipped" in lines[0] and "4 box(es) without 1 px" in lines[0]


def test_xyxy_boxes_clip_in_their_mode():
    out = apply_box_rule([_rec([[-3, 5, 120, 60]], mode=BoxMode.XYXY_ABS)], "xyxy set")
    assert out[0]["annotations"][0]["bbox"] == [0.0, 5.0, 100.0, 50.0]
