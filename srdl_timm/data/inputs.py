"""Image files to predict on: expand files, folders and glob patterns, and read each image without failing the rest
(every unusable input becomes its own failed item with the reason)."""
import dataclasses
import errno
import glob
import logging
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import open_image

__all__ = ['IMAGE_EXTENSIONS', 'InputItem', 'collect_inputs', 'ImageFiles', 'os_error_reason']

_logger = logging.getLogger(__name__)

#: extensions taken from folders (case-insensitive); explicit files and glob matches are tried whatever they are
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm')

_GLOB_CHARS = set('*?[')


@dataclasses.dataclass
class InputItem:
    """One input to predict: an image path, or an input spec that failed before any image was read."""
    path: str
    error: Optional[str] = None


def os_error_reason(e: OSError) -> str:
    """A short reason for an ``OSError`` on a path: symbolic link loop, permission denied, no such file, …"""
    if e.errno == errno.ELOOP:
        return 'symbolic link loop (the link points back to itself)'
    if e.errno in (errno.EACCES, errno.EPERM):
        return 'permission denied: the file is not readable'
    if e.errno == errno.ENOENT:
        return 'no such file or folder'
    return e.strerror or str(e)


def _is_image_name(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(extensions)) and not os.path.basename(name).startswith('.')


def _folder_files(folder: str, recursive: bool, extensions: Sequence[str]) -> Tuple[List[str], int, List[InputItem]]:
    """Image files of a folder (sorted), the number of other files skipped, and failed items (an unreadable
    sub-folder, a file whose symbolic link loops or points nowhere), each naming its own path."""
    images: List[str] = []
    skipped = 0
    failed: List[InputItem] = []

    def take(path: str, name: str) -> None:
        nonlocal skipped
        if name.startswith('.'):
            return
        if not _is_image_name(name, extensions):
            skipped += 1
            return
        try:
            os.stat(path)  # follows links: a looping or dangling link fails here, naming this file only
        except OSError as e:
            failed.append(InputItem(path, os_error_reason(e) if e.errno != errno.ENOENT
                                    else 'broken symbolic link (its target does not exist)'))
            return
        images.append(path)

    if recursive:
        def onerror(e: OSError) -> None:
            failed.append(InputItem(e.filename or folder, f'cannot read folder ({os_error_reason(e)})'))
        for root, dirs, files in os.walk(folder, onerror=onerror):
            dirs.sort()
            dirs[:] = [d for d in dirs if not d.startswith('.')]
            for name in sorted(files):
                take(os.path.join(root, name), name)
        return images, skipped, failed
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False  # a looping link: reported by take()
        if not is_dir:
            take(entry.path, entry.name)
    return images, skipped, failed


def collect_inputs(
        inputs: Iterable[str], recursive: bool = False, extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> List[InputItem]:
    """Expand files, folders and glob patterns into the images to predict, sorted and without duplicates; a path
    that gives no image is one failed item."""
    items: List[InputItem] = []
    seen = set()

    def add(path: str) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            items.append(InputItem(path))

    def add_folder(folder: str) -> None:
        try:
            files, skipped, failed = _folder_files(folder, recursive, extensions)
        except OSError as e:
            items.append(InputItem(folder, f'cannot read folder: {os_error_reason(e)}'))
            return
        items.extend(failed)
        if skipped:
            _logger.info('%s: skipped %d files without an image extension', folder, skipped)
        if not files and not failed:
            where = ' or its sub-folders' if recursive else ''
            extra = f' ({skipped} files without an image extension skipped)' if skipped else ''
            items.append(InputItem(folder, f'no image files in this folder{where}{extra}'))
            return
        for path in files:
            add(path)

    for spec in inputs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            add_folder(spec)
        elif os.path.isfile(spec):
            add(spec)
        elif _GLOB_CHARS & set(spec):
            matches = sorted(glob.glob(spec, recursive=recursive))
            if not matches:
                items.append(InputItem(spec, 'no files match this pattern'))
            for match in matches:
                if os.path.isdir(match):
                    add_folder(match)
                else:
                    add(match)
        elif os.path.islink(spec):
            try:
                os.stat(spec)
                reason = 'not a regular file or folder'
            except OSError as e:
                reason = (os_error_reason(e) if e.errno != errno.ENOENT
                          else 'broken symbolic link (its target does not exist)')
            items.append(InputItem(spec, reason))
        elif os.path.exists(spec):
            items.append(InputItem(spec, 'not a regular file or folder'))
        else:
            items.append(InputItem(spec, 'no such file or folder'))
    return items


class ImageFiles(Dataset):
    """Reads and transforms one image per index, returning ``{'index', 'tensor', 'size', 'image', 'error'}``
    with the error (a short reason) instead of raising it."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Image.Image], torch.Tensor], keep_image: bool):
        self.paths = list(paths)
        self.transform = transform
        self.keep_image = keep_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.paths[index]
        item: Dict[str, Any] = dict(index=index, tensor=None, size=None, image=None, error=None)
        try:
            with open(path, 'rb'):
                pass
        except OSError as e:
            item['error'] = os_error_reason(e)
            return item
        try:
            image = open_image(path)
            item['tensor'] = self.transform(image)
            item['size'] = image.size
            if self.keep_image:
                item['image'] = image
        except Exception as e:  # noqa: BLE001 - any unreadable input is reported per file, never fatal for the others
            message = str(e) or type(e).__name__
            # open_image's messages start with the path, which the report already shows
            item['error'] = message[len(path) + 2:] if message.startswith(path + ': ') else message
        return item


def collate_items(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """DataLoader ``collate_fn`` for :class:`ImageFiles`: keep the list of dicts as is."""
    return items
