"""Image preprocessing: ADM center crop and resize, flips, and uint8 -> [-1, 1].

Two implementations of the same crop: `center_crop_arr` on PIL images (image folders;
ADM's exact procedure) and `tf_center_crop_resize` on tensors inside tf.data (tfds data
sets; the area-resize equivalent). TensorFlow is imported only inside the TF function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
  """Resizes so the short side is `image_size`, then crops the center square.

  While the short side is at least twice the target, halve with a BOX filter (cheap
  anti-aliasing); then one BICUBIC resize brings the short side to `image_size`.

  Source: Dhariwal & Nichol 2021 (ADM), guided_diffusion/image_datasets.py, center_crop_arr.

  Args:
    pil_image: a decoded PIL image in the wanted mode ('RGB' or 'L').
    image_size: side of the square output.

  Returns:
    uint8 array [image_size, image_size] ('L') or [image_size, image_size, 3] ('RGB').
  """
  while min(*pil_image.size) >= 2 * image_size:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = image_size / min(*pil_image.size)
  pil_image = pil_image.resize(
    tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
  )
  arr = np.asarray(pil_image)
  crop_y = (arr.shape[0] - image_size) // 2
  crop_x = (arr.shape[1] - image_size) // 2
  return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def load_image_file(path: str, image_size: int, num_channels: int) -> np.ndarray:
  """Decodes an image file and applies `center_crop_arr`.

  JPEG files are decoded at a reduced DCT scale (PIL's `draft`) no smaller than
  `image_size` on either side. That does the first halvings of ADM's BOX loop inside the
  decoder, which is several times faster for large images; the remaining halvings and
  the bicubic resize are ADM's.

  Args:
    path: image file.
    image_size: side of the square output.
    num_channels: 1 (grayscale) or 3 (RGB).

  Returns:
    uint8 array [image_size, image_size, num_channels].

  Raises:
    OSError, ValueError, etc. from PIL when the file is not a readable image.
  """
  mode = 'L' if num_channels == 1 else 'RGB'
  with Image.open(path) as img:
    img.draft(mode, (image_size, image_size))
    img = img.convert(mode)
    arr = center_crop_arr(img, image_size)
  if arr.ndim == 2:
    arr = arr[:, :, None]
  return arr


def tf_center_crop_resize(image, image_size: int, num_channels: int):
  """TF version of the ADM crop: center square, then area (down) or bicubic (up) resize.

  Cropping the central square before resizing equals ADM's resize-then-crop up to
  sub-pixel rounding; area resampling is the anti-aliased equivalent of the repeated BOX
  halvings. Works for any input size, e.g. ImageNet photos to 32..1024.

  Source: Dhariwal & Nichol 2021 (ADM), center_crop_arr; Chen et al. 2022 (RIN) use the
  same center-crop ImageNet preprocessing.

  Args:
    image: uint8 tensor [h, w, c] with c in {1, 3}.
    image_size: side of the square output.
    num_channels: channels of the output (1 converts RGB to luma, 3 tiles gray).

  Returns:
    uint8 tensor [image_size, image_size, num_channels].
  """
  import tensorflow as tf

  if num_channels == 1:
    image = tf.cond(
      tf.shape(image)[-1] == 3,
      lambda: tf.image.rgb_to_grayscale(image),
      lambda: image[:, :, :1],
    )
  else:
    image = tf.cond(
      tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[:, :, :3]
    )
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.minimum(h, w)
  image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)

  def resize(method):
    out = tf.image.resize(image, [image_size, image_size], method=method, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  image = tf.case(
    [
      (tf.equal(side, image_size), lambda: image),
      (side > image_size, lambda: resize('area')),
    ],
    default=lambda: resize('bicubic'),
  )
  return tf.ensure_shape(image, [image_size, image_size, num_channels])


def tf_decode_center_crop(encoded, image_size: int, num_channels: int):
  """Decodes an encoded image string and center-crops/resizes it (see tf_center_crop_resize).

  JPEGs (nearly all of ImageNet) are decoded at the smallest DCT scale 1/r, r in
  {1, 2, 4, 8}, that keeps the short side >= image_size (what PIL's `draft` does for
  image folders): the decoder then does the first halvings of ADM's BOX loop, several
  times faster at small sizes. At r = 1 only the central square's blocks are decoded.
  Other formats go through `decode_image`.

  Args:
    encoded: scalar tf.string with the file bytes.
    image_size: side of the square output.
    num_channels: 1 or 3.

  Returns:
    uint8 tensor [image_size, image_size, num_channels].
  """
  import tensorflow as tf

  def jpeg():
    shape = tf.io.extract_jpeg_shape(encoded)
    h, w = shape[0], shape[1]
    side = tf.minimum(h, w)

    def full_crop():
      window = tf.stack([(h - side) // 2, (w - side) // 2, side, side])
      return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method='INTEGER_ACCURATE')

    def scaled(ratio):
      return lambda: tf.io.decode_jpeg(
        encoded, channels=3, ratio=ratio, dct_method='INTEGER_ACCURATE'
      )

    return tf.case(
      [(side >= r * image_size, scaled(r)) for r in (8, 4, 2)], default=full_crop, exclusive=False
    )

  def other():
    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(img, [None, None, 3])

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  return tf_center_crop_resize(image, image_size, num_channels)


def to_float(images: np.ndarray) -> np.ndarray:
  """Maps uint8 images in [0, 255] to float32 in [-1, 1] (x / 127.5 - 1)."""
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def flip_where(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Mirrors images [B, H, W, C] horizontally where `flip` [B] is true."""
  return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)
