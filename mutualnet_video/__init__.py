"""mutualnet_video: MutualNet (adaptive width x frames x crop) on PyTorchVideo."""

from .core import ConfigSpace, SubnetConfig, set_config, use_config

__version__ = "0.1.0"

__all__ = ["ConfigSpace", "SubnetConfig", "set_config", "use_config", "__version__"]
