"""Tests for diffusion_jax/data/input_pipeline.py and diffusion_jax/data/sources.py."""

import itertools
import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from diffusion_jax.data import input_pipeline as ip
from diffusion_jax.data import preprocess, sources


def _data_cfg(**overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      name='digits',
      image_size=16,
      num_channels=1,
      num_classes=10,
      data_dir='',
      folder='',
      train_split='train',
      random_flip=False,
      shuffle_buffer=64,
      augment_prob=0.0,
      prefetch=2,
    )
  )
  cfg.update(overrides)
  return cfg


def _take(it, n):
  out = list(itertools.islice(it, n))
  it.close()
  return out


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_classes_and_range():
  images, labels = ip.load_digits_split('all', 16)
  assert images.shape == (1797, 16, 16, 1) and images.dtype == np.float32
  assert images.min() == -1.0 and images.max() == 1.0
  assert sorted(np.unique(labels)) == list(range(10))
  train = sources.digits_split_indices('train')
  test = sources.digits_split_indices('test')
  assert len(train) == 1437 and len(test) == 360
  assert not set(train) & set(test) and len(set(train) | set(test)) == 1797
  tr_images, tr_labels = ip.load_digits_split('train', 16)
  np.testing.assert_array_equal(tr_images, images[train])
  np.testing.assert_array_equal(tr_labels, labels[train])


def test_digits_match_sklearn_and_pil_bilinear():
  from sklearn.datasets import load_digits

  raw = load_digits().images  # [N, 8, 8] in 0..16
  images8, _ = ip.load_digits_split('all', 8)
  np.testing.assert_allclose(images8[..., 0], np.round(raw / 16 * 255) / 127.5 - 1, atol=1e-6)
  images32, _ = ip.load_digits_split('all', 32)
  for i in (0, 100):
    ref = Image.fromarray((raw[i] / 16).astype(np.float32), mode='F').resize(
      (32, 32), Image.BILINEAR
    )
    ref = np.asarray(ref, np.float64) * 2 - 1
    np.testing.assert_allclose(images32[i, :, :, 0], ref, atol=1 / 127.5 + 1e-5)


def test_digits_batches_shapes_and_epoch_coverage():
  batch = 479  # 3 * 479 = 1437: one epoch is exactly three batches
  batches = _take(ip.create_input_iter(_data_cfg(), batch, seed=1), 3)
  b = batches[0]
  assert set(b) == {'image', 'label'}
  assert b['image'].shape == (batch, 16, 16, 1) and b['image'].dtype == np.float32
  assert b['label'].shape == (batch,) and b['label'].dtype == np.int32
  images, labels = ip.load_digits_split('train', 16)
  got = np.concatenate([x['image'] for x in batches])
  got_labels = np.concatenate([x['label'] for x in batches])
  # The first epoch is a permutation of the split: same multiset of (image, label).
  key = lambda im, lb: sorted(zip(im.reshape(len(im), -1).sum(1).round(3), lb))
  assert key(got, got_labels) == key(images, labels)
  assert not np.array_equal(got_labels, labels)  # shuffled


def test_resume_gives_the_same_next_batch_indexed():
  cfg = _data_cfg(random_flip=True, augment_prob=0.5)
  full = _take(ip.create_input_iter(cfg, 600, seed=7), 5)  # crosses epoch boundaries
  resumed = _take(ip.create_input_iter(cfg, 600, seed=7, start_step=3), 2)
  for a, b in zip(full[3:], resumed):
    for k in ('image', 'label', 'augment'):
      np.testing.assert_array_equal(a[k], b[k])
  other = _take(ip.create_input_iter(cfg, 600, seed=8, start_step=3), 1)[0]
  assert not np.array_equal(other['label'], full[3]['label'])
  assert full[0]['augment'].shape == (600, 9)


def test_process_split_bounds_disjoint_and_cover():
  for n, count in [(10, 3), (1437, 2), (5, 8), (0, 2)]:
    parts = [range(*ip.process_split_bounds(n, i, count)) for i in range(count)]
    assert sorted(itertools.chain(*parts)) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
  with pytest.raises(ValueError, match='process_index'):
    ip.process_split_bounds(10, 2, 2)


def test_digits_hosts_read_disjoint_parts():
  cfg = _data_cfg()
  parts = []
  for index in range(2):
    it = ip.create_input_iter(cfg, 2, seed=0, process_index=index, process_count=2)
    assert it.num_examples in (718, 719)
    parts.append(it._source.images.reshape(it.num_examples, -1))
    it.close()
  all_images = sources.load_digits_uint8('train', 16)[0].reshape(1437, -1)
  np.testing.assert_array_equal(np.concatenate(parts), all_images)


def test_batches_laid_out_on_a_named_sharding():
  assert jax.device_count() == 8
  mesh = jax.make_mesh((8,), ('data',))
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  cfg = _data_cfg(augment_prob=0.3)
  batch = _take(ip.create_input_iter(cfg, 16, seed=3, sharding=sharding), 1)[0]
  host = _take(ip.create_input_iter(cfg, 16, seed=3), 1)[0]
  for key, shape in [('image', (2, 16, 16, 1)), ('label', (2,)), ('augment', (2, 9))]:
    arr = batch[key]
    assert isinstance(arr, jax.Array) and arr.shape == (16,) + shape[1:]
    assert arr.sharding.spec[0] == 'data'
    assert {s.data.shape for s in arr.addressable_shards} == {shape}
    np.testing.assert_array_equal(np.asarray(arr), host[key])
  with pytest.raises(ValueError, match='batch_size=12'):
    ip.create_input_iter(cfg, 12, seed=3, sharding=sharding)


def test_bad_config_values_name_the_key():
  with pytest.raises(ValueError, match='image_size'):
    ip.create_input_iter(_data_cfg(image_size=4), 8, seed=0)
  with pytest.raises(ValueError, match='num_channels'):
    ip.create_input_iter(_data_cfg(num_channels=2), 8, seed=0)
  with pytest.raises(ValueError, match='num_classes'):
    ip.create_input_iter(_data_cfg(num_classes=5), 8, seed=0)


# ----------------------------------------------------------------------------- preprocessing


def _three_bands(width=300, height=100):
  img = np.zeros((height, width, 3), np.uint8)
  img[:, : width // 3] = (255, 0, 0)
  img[:, width // 3 : 2 * width // 3] = (0, 255, 0)
  img[:, 2 * width // 3 :] = (0, 0, 255)
  return img


def test_center_crop_keeps_the_center_pil_and_tf():
  img = _three_bands()
  out = preprocess.center_crop_arr(Image.fromarray(img), 50)
  assert out.shape == (50, 50, 3)
  np.testing.assert_array_equal(out, np.broadcast_to([0, 255, 0], (50, 50, 3)))
  out_tf = preprocess.tf_center_crop_resize(img, 50, 3).numpy()
  np.testing.assert_array_equal(out_tf, out)
  up = preprocess.tf_center_crop_resize(img, 128, 1).numpy()  # upsampling path, luma
  assert up.shape == (128, 128, 1) and abs(int(up.mean()) - 150) <= 1  # 0.587 * 255


@pytest.mark.parametrize('size', [16, 64])  # DCT-scaled decode (1/4) and full crop decode
def test_tf_jpeg_path_matches_pil_path(tmp_path, size):
  import tensorflow as tf

  yy, xx = np.mgrid[0:150, 0:400]
  img = np.stack([xx * 255 / 400, yy * 255 / 150, (xx + yy) * 255 / 550], -1).astype(np.uint8)
  path = str(tmp_path / 'smooth.jpg')
  Image.fromarray(img).save(path, quality=95)
  pil = preprocess.load_image_file(path, size, 3).astype(np.float64)
  tf_out = preprocess.tf_decode_center_crop(tf.io.read_file(path), size, 3).numpy()
  assert tf_out.shape == (size, size, 3) and tf_out.dtype == np.uint8
  assert np.abs(tf_out - pil).mean() < 2.5  # same crop; the resampling filters differ slightly


# ----------------------------------------------------------------------------- folders


def _write_folder(root):
  rng = np.random.default_rng(0)
  for c, name in enumerate(['cat', 'dog']):
    os.makedirs(os.path.join(root, name))
    for i in range(3):
      h, w = 40 + 10 * i, 60 - 5 * i
      arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      ext = 'png' if i == 0 else 'jpg'
      Image.fromarray(arr).save(os.path.join(root, name, f'{c}_{i}.{ext}'))
  with open(os.path.join(root, 'dog', 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
  with open(os.path.join(root, 'cat', 'notes.txt'), 'w') as f:
    f.write('not an image')


def test_folder_skips_and_counts_bad_files(tmp_path, caplog):
  root = str(tmp_path / 'images')
  _write_folder(root)
  cfg = _data_cfg(name='folder', folder=root, image_size=32, num_channels=3, num_classes=2)
  it = ip.create_input_iter(cfg, 4, seed=0)
  assert it.num_examples == 6 and it.num_skipped == 2
  assert any('broken.jpg' in r.getMessage() for r in caplog.records)
  batches = _take(it, 3)  # 12 examples: every one of the 6 twice
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels) == [0] * 6 + [1] * 6
  image = batches[0]['image']
  assert image.shape == (4, 32, 32, 3) and image.min() >= -1 and image.max() <= 1
  path = os.path.join(root, 'cat', '0_1.jpg')
  ref = preprocess.load_image_file(path, 32, 3)
  got = np.concatenate([b['image'] for b in batches])
  assert np.any(np.all(np.abs(got - preprocess.to_float(ref[None])) < 1e-6, axis=(1, 2, 3)))


def test_folder_hosts_read_disjoint_files(tmp_path):
  root = str(tmp_path / 'images')
  _write_folder(root)
  paths = []
  for index in range(2):
    src = sources.create_folder_source(root, 16, 3, index, 2, num_workers=2)
    paths.append(set(src.paths))
    src.close()
  assert not paths[0] & paths[1]
  assert len(paths[0] | paths[1]) == 6


# ----------------------------------------------------------------------------- tfds


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """A real 10-example tfds data set on disk, example i has label i."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 20, 24, 3), dtype=np.uint8)
  ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': np.arange(10)})
  features = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': tfds.features.ClassLabel(num_classes=10),
    }
  )
  builder = tfds.dataset_builders.TfDataBuilder(
    name='tiny_test_images',
    version='1.0.0',
    split_datasets={'train': ds},
    features=features,
    data_dir=data_dir,
  )
  builder.download_and_prepare()
  return data_dir


@pytest.mark.parametrize('in_memory', [False, True])
def test_tfds_hosts_read_disjoint_parts(tiny_tfds, in_memory):
  cfg = _data_cfg(
    name='tiny_test_images',
    data_dir=tiny_tfds,
    image_size=16,
    num_channels=3,
    cache_in_memory=in_memory,
  )
  seen = []
  for index in range(2):
    it = ip.create_input_iter(cfg, 2, seed=0, process_index=index, process_count=2)
    assert it.num_examples == 5
    seen.append(sorted(np.concatenate([b['label'] for b in _take(it, 5)])))
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(10))


def test_imagenet_mock_shapes_and_resume(tmp_path):
  import tensorflow_datasets as tfds

  cfg = _data_cfg(
    name='imagenet2012',
    data_dir=str(tmp_path),
    image_size=64,
    num_channels=3,
    num_classes=1000,
    random_flip=True,
  )
  with tfds.testing.mock_data(num_examples=12):
    full = _take(ip.create_input_iter(cfg, 4, seed=2), 5)  # 3 steps per epoch
    resumed = _take(ip.create_input_iter(cfg, 4, seed=2, start_step=4), 1)[0]
  b = full[0]
  assert b['image'].shape == (4, 64, 64, 3) and b['image'].dtype == np.float32
  assert b['image'].min() >= -1 and b['image'].max() <= 1 and b['image'].std() > 0.1
  assert b['label'].dtype == np.int32 and np.all((b['label'] >= 0) & (b['label'] < 1000))
  np.testing.assert_array_equal(resumed['image'], full[4]['image'])
  np.testing.assert_array_equal(resumed['label'], full[4]['label'])
  # Each epoch visits all 12 examples once (3 full batches), in a new order.
  epoch0 = np.concatenate([x['label'] for x in full[:3]])
  epoch1 = np.concatenate([x['label'] for x in full[3:5]])
  with tfds.testing.mock_data(num_examples=12):
    plain = _take(ip.create_input_iter(cfg.copy_and_resolve_references(), 12, seed=0), 1)[0]
  assert sorted(epoch0) == sorted(plain['label'])
  assert set(epoch1) <= set(epoch0) and not np.array_equal(epoch0[:8], epoch1)


def test_cifar10_mock_shapes(tmp_path):
  import tensorflow_datasets as tfds

  cfg = _data_cfg(name='cifar10', data_dir=str(tmp_path), image_size=32, num_channels=3)
  with tfds.testing.mock_data(num_examples=8):
    b = _take(ip.create_input_iter(cfg, 4, seed=0), 1)[0]
  assert b['image'].shape == (4, 32, 32, 3) and b['image'].dtype == np.float32
  assert b['image'].min() >= -1 and b['image'].max() <= 1
  assert b['label'].dtype == np.int32 and np.all((b['label'] >= 0) & (b['label'] < 10))


def test_missing_imagenet_names_the_manual_directory(tmp_path):
  cfg = _data_cfg(name='imagenet2012', data_dir=str(tmp_path), image_size=64, num_channels=3)
  with pytest.raises(ip.DatasetMissingError) as info:
    ip.create_input_iter(cfg, 8, seed=0)
  message = str(info.value)
  assert os.path.join(str(tmp_path), 'downloads', 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert info.value.__suppress_context__  # raised `from None`: no tfds traceback chain


@pytest.mark.parametrize('folder', ['missing', 'empty'])
def test_bad_image_folder_is_a_dataset_missing_error(tmp_path, folder):
  # DatasetMissingError is a FileNotFoundError: main.py prints its one line, no traceback.
  root = tmp_path / folder
  if folder == 'empty':
    root.mkdir()
  cfg = _data_cfg(name='folder', folder=str(root), image_size=16, num_channels=3)
  with pytest.raises(ip.DatasetMissingError, match='config.data.folder'):
    ip.create_input_iter(cfg, 4, seed=0)


def test_offline_download_fails_fast(tmp_path, monkeypatch):
  import socket
  import time

  from tensorflow_datasets.core.download import downloader

  def offline(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, 'Name or service not known')

  monkeypatch.setattr(socket, 'getaddrinfo', offline)
  retries = downloader.MAX_RETRIES
  start = time.monotonic()
  with pytest.raises(ip.DatasetMissingError, match='no connection to ') as info:
    sources.get_tfds_builder('cifar10', str(tmp_path))
  # tfds's own 10 retries with backoff took 3.5 minutes to fail.
  assert time.monotonic() - start < 30
  assert 'config.data.data_dir' in str(info.value) and '\n' not in str(info.value)
  assert downloader.MAX_RETRIES == retries
