"Embedded data: digits, Fashion-MNIST from Debian, ImageFolder directories; nothing downloaded."
import os
import numpy as np
import pytest
from PIL import Image

from fastai_cnntricks.core import CnnTricksError
from fastai_cnntricks.data import (digits_dls, digits_arrays, fashion_mnist_dls, folder_dls, few_shot_idxs,
                                   FASHION_MNIST_DIR)

has_fashion = (FASHION_MNIST_DIR/'train-images-idx3-ubyte.gz').exists()
needs_fashion = pytest.mark.skipif(not has_fashion and not os.environ.get('CI'),
                                   reason='apt-get install dataset-fashion-mnist')


def test_digits_dls():
    dls = digits_dls(size=32, bs=16, valid_pct=0.25)
    assert len(dls.train_ds) + len(dls.valid_ds) == 1797
    assert len(dls.valid_ds) == round(1797 * 0.25) or abs(len(dls.valid_ds) - 449) <= 1
    assert dls.vocab == [str(i) for i in range(10)]
    x, y = dls.one_batch()
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
    assert 0 <= float(x.min()) and float(x.max()) <= 1


def test_digits_arrays_match_sklearn():
    from sklearn.datasets import load_digits
    x, y = digits_arrays()
    d = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 255
    assert np.array_equal(y, d.target)


def test_few_shot():
    _, y = digits_arrays()
    idx = few_shot_idxs(y, 5, seed=1)
    assert np.bincount(y[idx]).tolist() == [5] * 10
    dls = digits_dls(size=16, n_per_class=3, bs=8)
    assert len(dls.train_ds) == 30 and len(dls.valid_ds) == 449  # the same validation set as the full data
    full = digits_dls(size=16, bs=8)
    for i in range(0, 449, 50):
        assert np.array_equal(np.array(dls.valid_ds[i][0]), np.array(full.valid_ds[i][0]))
        assert dls.valid_ds[i][1] == full.valid_ds[i][1]


@needs_fashion
def test_fashion_mnist():
    dls = fashion_mnist_dls(size=28, n_per_class=10, n_valid=100, bs=20)
    assert len(dls.train_ds) == 100 and len(dls.valid_ds) == 100
    assert dls.vocab[0] == 'T-shirt/top' and len(dls.vocab) == 10
    x, y = dls.one_batch()
    assert x.shape == (20, 3, 28, 28)


def test_fashion_mnist_missing_says_how_to_install(tmp_path):
    with pytest.raises(CnnTricksError, match='apt-get install dataset-fashion-mnist'):
        fashion_mnist_dls(path=tmp_path)


def make_folder(root, n=4, classes=('cat', 'dog')):
    for c in classes:
        (root/c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.random.randint(0, 255, (20, 20, 3), np.uint8)).save(root/c/f'{i}.png')
    return root


def test_folder_dls(tmp_path):
    dls = folder_dls(make_folder(tmp_path/'imgs', n=10), size=16, valid_pct=0.2, bs=4)
    assert dls.vocab == ['cat', 'dog'] and len(dls.valid_ds) == 4 and len(dls.train_ds) == 16


def test_folder_errors(tmp_path):
    with pytest.raises(CnnTricksError, match='does not exist'): folder_dls(tmp_path/'nope')
    (tmp_path/'empty').mkdir()
    with pytest.raises(CnnTricksError, match='no images'): folder_dls(tmp_path/'empty')
    root = make_folder(tmp_path/'bad')
    (root/'cat'/'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(CnnTricksError, match='unreadable'): folder_dls(root)
    with pytest.raises(CnnTricksError, match='at least 2'): folder_dls(make_folder(tmp_path/'one', classes=('a',)))
