"""Package discovery: `jaxslu/` is the library; the top-level `kernels/` folder ships as
`jaxslu.kernels` (never as a top-level `kernels` import, a name taken on PyPI)."""
from setuptools import find_packages, setup

kernel_packages = ["jaxslu.kernels"] + [f"jaxslu.kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["jaxslu", "jaxslu.*"]) + kernel_packages,
    package_dir={"jaxslu.kernels": "kernels"},
)
