"""tfsafe: compress Keras models for phones without making them easier to attack."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-model-optimization==0.8.1",
    "dm-tree",
    "tf2onnx==1.17.0",
    "onnx>=1.17",
    "onnxruntime>=1.20",
    "ai-edge-litert>=2.0",
    "ai-edge-quantizer==0.10.0",  # int4 / learned-bit .tflite (tflite_export.low_bit)
    "absl-py>=1.2",
    "numpy>=1.26",
    "scikit-learn>=1.4,<1.7",
    "pandas>=2.0",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "statsmodels>=0.14",
    "immutabledict>=4.0",
    # DP-SGD's accountant (tfsafe.methods.dp_sgd); tensorflow-privacy is installed --no-deps.
    "dp-accounting>=0.4",
]

# tensorflow-privacy's membership-inference code carries stale pins (numpy<2, TF estimator,
# tf-models-official) that the code tfsafe uses does not need; the Makefile installs it with
# `pip install --no-deps tensorflow-privacy==0.9.0 tensorflow-empirical-privacy==0.1.0`.

setup(
    name="tfsafe",
    version="0.1.0",
    description="Compress Keras models for edge devices while keeping them robust and private.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfsafe", "tfsafe.*", "tflite_export", "tflite_export.*", "tfsafe_cli"]),
    package_data={"tfsafe": ["recipes/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6"],
        # benchmarks/art_check.py: an independent AutoAttack / APGD to check tfsafe's robust accuracy
        # (ART's AutoAttack.generate imports multiprocess)
        "bench": ["adversarial-robustness-toolbox>=1.20", "multiprocess"],
    },
    entry_points={"console_scripts": ["tfsafe=tfsafe_cli:run"]},
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering :: Artificial Intelligence"],
)
