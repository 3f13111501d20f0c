"""mutualnet_video: MutualNet (adaptive width x frames x crop) on PyTorchVideo."""

from . import compat as _compat

_compat.apply()

from .core import ConfigSpace, SubnetConfig, set_config, use_config  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ConfigSpace", "SubnetConfig", "set_config", "use_config", "__version__"]
