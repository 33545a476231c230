"""Frame -> network input: the image augmentation matrix and the pixels it moves agree."""
import numpy as np

from perception.data.batch import resize_crop_matrix, warp_image


def test_flip_lands_on_the_mirrored_pixel():
    img = np.zeros((90, 160, 3), np.uint8)
    img[10, 20] = 255
    out = warp_image(img, resize_crop_matrix(160, 90, (90, 160), flip=True), (90, 160))
    assert [tuple(p) for p in np.argwhere(out[0] > 0.5)] == [(10, 160 - 1 - 20)]


def test_resize_and_crop_move_a_pixel_where_the_matrix_says():
    img = np.zeros((900, 1600, 3), np.uint8)
    img[700:710, 800:810] = 255  # a 10 x 10 block, centre (805, 705) in continuous coordinates
    A = resize_crop_matrix(1600, 900, (128, 352))
    out = warp_image(img, A, (128, 352))[0]
    u, v, _ = A @ np.array([805.0, 705.0, 1.0])
    ys, xs = np.nonzero(out > 0.2)
    w = out[ys, xs]
    # the bright block's centroid (pixel centres at +0.5) is where A sends its centre
    assert abs((xs + 0.5) @ w / w.sum() - u) < 0.3 and abs((ys + 0.5) @ w / w.sum() - v) < 0.3
