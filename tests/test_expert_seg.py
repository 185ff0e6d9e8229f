"""`seg`: the transformers backend (Mask2Former) and the segment-anything + CLIP backend, each
loaded offline from tiny saved models through the expert's own code, on a photo."""

from __future__ import annotations

import numpy as np
import pytest

import expert_models
from prismer_core.runner import ExpertRunner
from prismer_core.registry import load_registry
from prismer_experts.seg import Segmentation
from prismer_experts.seg_common import masks_to_map
from prismer_experts.vocabularies import ADE20K_CLASSES, SEGMENTATION_VOCABULARY

IMAGES = [expert_models.photo((120, 160)), expert_models.photo((70, 50))]


def run_seg(**settings):
    runner = ExpertRunner(["seg"], registry=load_registry(), settings={"seg": settings})
    outputs = runner(IMAGES, ["bus", "small"])["seg"]  # validated against the contract
    for image, output in zip(IMAGES, outputs):
        assert output.labels.shape == image.shape[:2] and output.names
        shown = set(np.unique(output.labels).tolist()) - {0}
        assert shown == set(range(1, len(output.names) + 1))  # every name labels some pixels
    return outputs


def test_mask2former_backend_names_regions_with_its_classes(tmp_path):
    model = expert_models.mask2former_ade(tmp_path / "seg")
    for output in run_seg(model=str(model)):
        assert set(output.names) <= set(ADE20K_CLASSES)  # "bed " of the label file is read as "bed"


def test_padding_is_cropped_before_labels_are_resized():
    """A processor pads the input to a multiple of 32; labels must come from the unpadded part."""
    from prismer_experts.seg_transformers import TransformersSegmenter

    segmenter = TransformersSegmenter.__new__(TransformersSegmenter)
    segmenter.names = ["sky", "road", "wall"]
    scores = np.zeros((3, 16, 16), np.float32)  # model output for a 64×64 padded input
    scores[0, :6], scores[1, 6:12], scores[2, 12:] = 1, 1, 1  # sky | road | padding ("wall")
    output = segmenter._label_map(scores, padded=(64, 64), valid=(48, 64), size=(96, 128))
    assert output.names == ["sky", "road"]  # the padded rows are gone
    assert (output.labels[:46] == 1).all() and (output.labels[50:] == 2).all()  # the border at 6/12 of the height


def test_sam_backend_names_masks_from_the_vocabulary(tmp_path):
    checkpoint = expert_models.sam_checkpoint(tmp_path / "sam_vit_tiny.pth")
    clip = expert_models.open_clip_dir(tmp_path / "clip")
    outputs = run_seg(
        backend="sam", sam_checkpoint=str(checkpoint), clip_model=clip,
        points_per_side="4", pred_iou_thresh="0", stability_score_thresh="0",  # random weights: keep every mask
    )
    for output in outputs:
        assert set(output.names) <= set(SEGMENTATION_VOCABULARY)
        assert output.instances is None


def test_sam_architecture_is_read_from_an_official_checkpoint():
    from segment_anything import sam_model_registry

    from prismer_experts.seg_sam import build_sam

    official = sam_model_registry["vit_b"]()  # the architecture of sam_vit_b_01ec64.pth, random weights
    rebuilt = build_sam(official.state_dict())  # strict load: every tensor has its place and shape
    encoder = rebuilt.image_encoder
    assert encoder.img_size == 1024 and len(encoder.blocks) == 12
    assert [i for i, block in enumerate(encoder.blocks) if block.window_size == 0] == [2, 5, 8, 11]
    assert encoder.blocks[0].attn.num_heads == 12 and encoder.blocks[0].window_size == 14


def test_largest_masks_are_painted_first_and_hidden_names_dropped():
    floor, cat, top, bottom = np.zeros((4, 10, 10), bool)
    floor[:, :] = True
    cat[2:4, 2:4] = True  # covered entirely by the two smaller masks below
    top[2:3, 2:4] = True
    bottom[3:4, 2:4] = True
    output = masks_to_map(10, 10, [cat, floor, top, bottom], ["cat", "floor", "dog", "bird"])
    assert output.names == ["floor", "dog", "bird"]  # 'cat' shows nowhere, so it is not named
    assert output.labels[0, 0] == 1 and output.labels[2, 2] == 2 and output.labels[3, 3] == 3
    assert set(np.unique(output.labels).tolist()) == {1, 2, 3}


def test_not_ready_reasons_per_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMER_WEIGHTS_DIR", str(tmp_path))
    readiness = Segmentation().readiness()
    assert f"nothing at {tmp_path / 'seg'}" in readiness.reason and "PRISMER_SEG_MODEL=" in readiness.fix
    readiness = Segmentation(backend="sam").readiness()
    assert "no segment-anything checkpoint found" in readiness.reason and "sam_vit_b_01ec64.pth" in readiness.fix
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"")
    readiness = Segmentation(backend="sam", clip_pretrained="no-such-tag").readiness()
    assert readiness.reason.startswith("CLIP for naming masks:") and "no-such-tag" in readiness.reason
    assert "seg.clip_pretrained" in readiness.fix
