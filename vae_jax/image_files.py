"""The user's own images: a folder of PNG/JPEG files, or an .npz of uint8 arrays.

    config.data.name='folder', config.data.path=DIR   one sub-folder per class gives labels
                                                      (classes in sorted folder order); a
                                                      flat folder gives none
    config.data.name='npz', config.data.path=FILE     `images` uint8 (N, H, W, C) and
                                                      optional `labels` (N,) integers

Either becomes one uint8 array (N, H, W, C) in a fixed order, split by input_pipeline into
train / validation / test. Every check runs before anything is compiled or written, and
each refusal names the file or key and the fix.
"""

import os

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RESIZE_METHODS = ("center_crop", "stretch")


class ImageDataError(ValueError):
  """The user's images cannot be used as configured; the message says why and what to do."""


def _image_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory)
                if f.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(directory, f)))


def resize(image: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
  """To size (height, width). 'center_crop' first cuts the largest centred region of the
  target's aspect ratio (no distortion; CelebA's usual), 'stretch' does not."""
  height, width = size
  if method == "center_crop":
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = round(width * scale), round(height * scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    image = image.crop((left, top, left + crop_w, top + crop_h))
  elif method != "stretch":
    raise ValueError(f"Unknown resize method {method!r}; use one of {RESIZE_METHODS}.")
  if image.size == (width, height):
    return image
  return image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)


def resize_array(image: np.ndarray, size, method: str) -> np.ndarray:
  """resize() of one uint8 (H, W, C) array, keeping its channels."""
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(resize(pil, tuple(size), method), np.uint8)
  return out.reshape(out.shape[:2] + (channels,))


def read_folder(path: str, image_size=(), resize_method: str = "center_crop"
                ) -> tuple[np.ndarray, np.ndarray | None, int]:
  """(images uint8 (N, H, W, C), labels int32 or None, number of classes) of a folder.

  Grayscale images give C = 1; if any image has colour, all are converted to RGB (C = 3);
  alpha is dropped. Images of different sizes need `image_size`.
  """
  if not os.path.isdir(path):
    raise ImageDataError(f"config.data.path={path!r} is not a folder: with "
                         "config.data.name='folder' it must name a folder of images.")
  subfolders = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                      and not d.startswith("."))
  top_files = _image_files(path)
  if subfolders and top_files:
    raise ImageDataError(
        f"{path} holds both images ({top_files[0]}, ...) and sub-folders ({subfolders[0]}, "
        "...): put every image in a class sub-folder (labelled data), or all in the folder "
        "itself (unlabelled).")
  if subfolders:
    files, labels = [], []
    for label, folder in enumerate(subfolders):
      names = _image_files(os.path.join(path, folder))
      if not names:
        raise ImageDataError(
            f"Class folder {os.path.join(path, folder)} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
            "add its images or remove the folder.")
      files += [os.path.join(path, folder, n) for n in names]
      labels += [label] * len(names)
    num_classes = len(subfolders)
  else:
    files = [os.path.join(path, n) for n in top_files]
    labels, num_classes = None, 0
  if not files:
    raise ImageDataError(f"{path} has no images ({', '.join(IMAGE_EXTENSIONS)}), neither "
                         "directly nor in class sub-folders.")

  decoded, colour = [], False
  for file in files:
    try:
      with Image.open(file) as image:
        image.load()  # Decodes now: a truncated file fails here, not later.
        colour |= image.mode not in ("1", "L", "I", "I;16", "F", "LA")
        decoded.append(image.copy())
    except (OSError, SyntaxError, ValueError) as error:
      raise ImageDataError(f"Cannot read the image {file}: {error}. Replace or remove it."
                           ) from None
  mode = "RGB" if colour else "L"
  arrays, sizes = [], {}
  for file, image in zip(files, decoded):
    image = image.convert(mode)
    if image_size:
      image = resize(image, tuple(image_size), resize_method)
    sizes.setdefault((image.height, image.width), file)
    arrays.append(np.asarray(image, np.uint8))
  if len(sizes) > 1:
    (size_a, file_a), (size_b, file_b) = list(sizes.items())[:2]
    raise ImageDataError(
        f"The images in {path} have different sizes ({file_a} is {size_a[0]}x{size_a[1]}, "
        f"{file_b} is {size_b[0]}x{size_b[1]}, height x width): set "
        "config.data.image_size=(height, width) to resize them all (and "
        f"config.data.resize_method, one of {RESIZE_METHODS}).")
  images = np.stack(arrays)
  if images.ndim == 3:
    images = images[..., None]
  return images, None if labels is None else np.asarray(labels, np.int32), num_classes


def read_npz(path: str, image_size=(), resize_method: str = "center_crop"
             ) -> tuple[np.ndarray, np.ndarray | None, int]:
  """(images, labels or None, number of classes) of an .npz with `images` and `labels`."""
  if not os.path.isfile(path):
    raise ImageDataError(f"config.data.path={path!r} is not a file: with "
                         "config.data.name='npz' it must name an .npz file.")
  try:
    with np.load(path, allow_pickle=False) as arrays:
      content = {key: arrays[key] for key in arrays.files}
  except Exception as error:  # pylint: disable=broad-except  # Any damage is the same fault.
    raise ImageDataError(f"Cannot read {path} as an .npz file ({type(error).__name__}: "
                         f"{error}). Write it with numpy.savez(path, images=..., labels=...)."
                         ) from None
  if "images" not in content:
    raise ImageDataError(f"{path} has no array named 'images' (it has: "
                         f"{', '.join(content) or 'none'}). Save the images as "
                         "numpy.savez(path, images=uint8 array (N, H, W, C), labels=...).")
  images = content["images"]
  if images.dtype != np.uint8:
    raise ImageDataError(
        f"{path}: 'images' is {images.dtype}, but 8-bit pixels are expected (uint8 in "
        "0..255): convert it, e.g. (images * 255).round().astype(numpy.uint8) for floats "
        "in [0, 1].")
  if images.ndim == 3:
    images = images[..., None]  # (N, H, W): grayscale.
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
    raise ImageDataError(f"{path}: 'images' has shape {images.shape}; it must be (N, H, W, C) "
                         "with N >= 1 and C = 1 (grayscale) or 3 (RGB).")
  labels, num_classes = content.get("labels"), 0
  if labels is not None:
    if (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)
        or len(labels) != len(images)):
      raise ImageDataError(
          f"{path}: 'labels' has shape {labels.shape} and dtype {labels.dtype}; it must be "
          f"one integer per image, shape ({len(images)},).")
    if labels.min() < 0:
      raise ImageDataError(f"{path}: 'labels' has negative values; use 0 .. classes - 1.")
    labels = labels.astype(np.int32)
    num_classes = int(labels.max()) + 1
  if image_size and tuple(images.shape[1:3]) != tuple(image_size):
    images = np.stack([resize_array(image, image_size, resize_method) for image in images])
  return images, labels, num_classes
