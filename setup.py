"""pip install -e .  -- detectron2 is deliberately not in install_requires: it is not on the package
registry (build it from source, or run tools/install_detectron2.py). Importing metaalign_det without it
fails with one line saying how to get it."""
from setuptools import find_packages, setup

setup(
    name="metaalign_det",
    version="0.1.0",
    description="Unsupervised domain-adaptive object detection (DA-Faster R-CNN, MetaAlign) for detectron2",
    packages=find_packages(include=["metaalign_det", "metaalign_det.*"]),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "pillow",
        "opencv-python-headless",
        "pycocotools",
        "fvcore",
        "iopath",
        "cityscapesscripts",
        "tensorboard",
        "matplotlib",
        "tqdm",
        "pyyaml",
    ],
)
