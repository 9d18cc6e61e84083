"""Scanning an ImageFolder tree: ``SRC/<class>/**/<file>``, classes in sorted order."""

from pathlib import Path


class DatasetError(ValueError):
    """The source cannot give a dataset (missing, empty, no classes)."""


def scan_image_folder(src: Path | str) -> tuple[list[str], list[tuple[str, int]]]:
    """Return ``(class_names, items)`` with items ``(path relative to src, class id)``.

    Every sub-folder of ``src`` is a class, ids by sorted folder name (ImageNet's
    synsets get the standard order); every regular file below it is an item, sorted
    by path, so the result is independent of the file system's listing order.
    Whether a file is a readable image is decided later, when it is converted.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"source folder {src} does not exist or is not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders under {src} (expected {src}/<class>/<image>)")
    items = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (src / name).rglob("*") if p.is_file())
        items.extend((str(p.relative_to(src)), label) for p in files)
    if not items:
        raise DatasetError(f"no files under the {len(classes)} class folders of {src}")
    return classes, items
