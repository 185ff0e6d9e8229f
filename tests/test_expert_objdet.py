"""`objdet`: a YOLO checkpoint saved from its yaml loads offline and labels a photo by boxes."""

from __future__ import annotations

import numpy as np
import pytest

import expert_models
from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry
from prismer_experts.objdet import ObjectDetection, boxes_to_map
from prismer_experts.vocabularies import COCO_CLASSES


@pytest.fixture(scope="module", autouse=True)
def offline_ultralytics(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("YOLO_OFFLINE", "1")
        patch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return expert_models.yolo_checkpoint(tmp_path_factory.mktemp("weights") / "yolov8n.pt")


def test_yolo_labels_boxes_with_coco_names_and_instances(checkpoint):
    # random weights find nothing with confidence: accept every box to exercise the path
    settings = {"objdet": {"model": str(checkpoint), "min_score": "0", "image_size": "160", "max_boxes": "5"}}
    runner = ExpertRunner(["objdet"], registry=load_registry(), settings=settings)
    images = [expert_models.photo((160, 216)), expert_models.photo((100, 80))]
    for image, output in zip(images, runner(images, ["bus", "small"])["objdet"]):  # validated
        assert output.labels.shape == image.shape[:2]
        assert output.names and set(output.names) <= set(COCO_CLASSES)
        ids = set(np.unique(output.instances)) - {0}
        assert 1 <= len(ids) <= 5 and ids <= set(range(1, 6))
        assert np.array_equal(output.labels > 0, output.instances > 0)


def test_small_boxes_stay_visible_over_large_ones():
    boxes = np.array([[10, 10, 20, 20], [0, 0, 40, 30], [35, 25, 60, 50]], dtype=np.float32)
    output = boxes_to_map(40, 50, boxes, ["cup", "dining table", "cup"])
    assert output.names == ["dining table", "cup"]  # the largest is painted first
    assert output.labels[15, 15] == 2 and output.instances[15, 15] == 3  # the cup on the table
    assert output.labels[5, 5] == 1 and output.instances[5, 5] == 1
    assert output.labels[39, 49] == 2 and output.instances[39, 49] == 2  # the other cup, clipped to the image
    assert output.labels[35, 5] == 0


def test_a_detector_with_other_classes_is_refused(checkpoint, tmp_path):
    from prismer_experts.objdet import import_yolo

    YOLO = import_yolo()

    model = YOLO(str(checkpoint))
    model.model.names = {i: f"part {i}" for i in range(80)}
    model.save(str(tmp_path / "parts.pt"))
    expert = ObjectDetection(model=str(tmp_path / "parts.pt"))
    with pytest.raises(ValueError, match="detects classes outside COCO .*part 0"):
        expert.load()


def test_missing_checkpoint_says_where_to_put_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(tmp_path))
    readiness = ObjectDetection().readiness()
    assert not readiness.ready and f"no YOLO checkpoint found in {tmp_path}" in readiness.reason
    assert "PRISMER_OBJDET_MODEL=" in readiness.fix and "yolo11x.pt" in readiness.fix
    (tmp_path / "yolov8n.pt").write_bytes(b"")
    assert ObjectDetection().readiness().ready


def test_loading_yolo_leaves_pillow_alone(checkpoint, tmp_path):
    """ultralytics patches Image.open on import; a corrupt image must still be a clean error."""
    from PIL import Image

    from prismer_core.data.images import BadImageError, read_rgb
    from prismer_experts.objdet import import_yolo

    original_open = Image.open
    import_yolo()
    assert Image.open is original_open
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadImageError, match="bad.png"):
        read_rgb(bad)
