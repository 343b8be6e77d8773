"""Box conversions at the model boundary, flip TTA and the RSNA dataset (no TensorFlow)."""
import numpy as np
import pytest

from kit.train.dataset import RSNADataset, boxes_to_masks
from kit.data.prepare import as_rgb
from kit.infer.predict import detect_raw, unflip, xyxy_to_raw


def test_model_boxes_map_back_to_the_1024_frame():
    # y1, x1, y2, x2 in a 256-px cache image -> x, y, w, h in 1024 px (x4)
    raw = xyxy_to_raw(np.array([[10, 20, 50, 100]]), side=256)
    np.testing.assert_array_equal(raw, [[80, 40, 320, 160]])
    assert xyxy_to_raw(np.zeros((0, 4)), 256).shape == (0, 4)


def test_unflip_is_an_involution_and_mirrors_x():
    rois = np.array([[10.0, 20.0, 50.0, 100.0]])
    np.testing.assert_array_equal(unflip(rois, 128), [[10, 28, 50, 108]])
    np.testing.assert_array_equal(unflip(unflip(rois, 128), 128), rois)


class _FakeModel:
    """detect() as Matterport's: the plain pass finds ``a`` on image "p", the flipped pass finds
    (on the flipped image) the mirror of ``b``; image "q" has nothing in either pass."""

    class config:
        BATCH_SIZE = 2

    def __init__(self, a, b):
        self.a, self.b, self.calls = a, b, 0

    def detect(self, images, masks=False):
        flipped = self.calls % 2 == 1
        self.calls += 1
        hit = unflip(self.b, 128) if flipped else self.a
        return [{"rois": hit, "scores": np.array([0.9])} if i == 0 else
                {"rois": np.zeros((0, 4)), "scores": np.zeros(0)} for i in range(len(images))]


def test_flip_tta_fusion_of_agreeing_boxes_is_their_weighted_mean():
    a = np.array([[10.0, 10.0, 50.0, 50.0]])    # y1 x1 y2 x2, 128-px cache
    b = np.array([[12.0, 10.0, 52.0, 50.0]])
    images = [np.zeros((128, 128, 3), np.uint8)] * 2
    raw, _ = detect_raw(_FakeModel(a, b), images, ["p", "q"], side=128, tta="flip")
    assert raw.patientId.tolist() == ["p"]          # q: no box in either pass, no row
    # fused y1x1y2x2 = [11, 10, 51, 50] -> x, y, w, h in the 1024 frame (x8)
    np.testing.assert_allclose(raw[["x", "y", "w", "h"]].to_numpy()[0], [80, 88, 320, 320],
                               atol=0.05)
    np.testing.assert_allclose(raw.score, [0.9], atol=1e-6)
    plain, _ = detect_raw(_FakeModel(a, b), images, ["p", "q"], side=128, tta="none")
    np.testing.assert_allclose(plain[["x", "y", "w", "h"]].to_numpy()[0], [80, 80, 320, 320])


def test_boxes_become_filled_rectangles_in_cache_pixels():
    masks = boxes_to_masks(np.array([[256.0, 512.0, 128.0, 256.0]]), side=128)
    assert masks.shape == (128, 128, 1)
    ys, xs = np.nonzero(masks[..., 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (64, 95, 32, 47)
    assert boxes_to_masks(np.zeros((0, 4)), 64).shape == (64, 64, 0)


def test_rsna_dataset_serves_rgb_images_and_masks():
    images = {"a": np.full((64, 64), 7, np.uint8), "b": np.zeros((64, 64), np.uint8)}
    ds = RSNADataset(images.__getitem__, 64, ["a", "b"],
                     {"a": np.array([[0.0, 0.0, 512.0, 512.0]])})
    assert ds.num_classes == 2 and len(ds.image_ids) == 2
    assert ds.load_image(0).shape == (64, 64, 3) and ds.load_image(0)[0, 0, 2] == 7
    mask, class_ids = ds.load_mask(0)
    assert mask.shape == (64, 64, 1) and mask[:32, :32].all() and class_ids.tolist() == [1]
    mask, class_ids = ds.load_mask(1)
    assert mask.shape == (64, 64, 0) and class_ids.shape == (0,)
    assert as_rgb(images["a"]).shape == (64, 64, 3)


def test_a_folder_of_dicoms_is_prepared_with_its_damaged_file_named(in_tmp):
    import shutil

    from kit import paths
    from kit.data.demo import make_dataset
    from kit.errors import KitError
    from kit.infer.predict import images_cache_dir, images_name, predict_images, prepare_folder

    make_dataset(in_tmp / "d", n_train=4, n_test=2, size=64, seed=1)
    films = in_tmp / "my films"
    films.mkdir()
    good = sorted((in_tmp / "d" / paths.TEST_IMAGES).glob("*.dcm"))
    for src in good:
        shutil.copy(src, films / src.name)
    (films / "broken.dcm").write_bytes(b"DICM" * 10)
    cache, ids, sides, errors = prepare_folder(films, 64)
    assert images_name(films) == "my-films" and cache == images_cache_dir(films, 64)
    assert ids == sorted([s.stem for s in good] + ["broken"])
    assert set(sides) == {s.stem for s in good} and all(v == 64 for v in sides.values())
    assert len(errors) == 1 and "broken.dcm" in errors[0]
    assert all((cache / f"{s.stem}.npy").is_file() for s in good)
    assert prepare_folder(films, 64)[2] == sides          # a rerun reuses the cache
    assert images_name(in_tmp / "test") == "images-test"  # never clobbers raw_test.csv
    run = in_tmp / "run"
    run.mkdir()
    with pytest.raises(KitError, match="postprocess.json"):   # before any work
        predict_images(run, films)
