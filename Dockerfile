# The image `fgrpo launch --backend k8s` runs (k8s/README.md, "4. Build an image"):
#
#   docker build -t registry.example.com/fgrpo:1.0 . && docker push registry.example.com/fgrpo:1.0
#
# The CUDA build of torch comes from PyTorch's index: its wheels bring their CUDA libraries, the
# GPU nodes bring the driver. Another CUDA release: --build-arg TORCH_INDEX_URL=.../whl/cu126.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# torch alone, first: its layer (several GB) is reused while only fgrpo's sources change. The
# requirement is pyproject.toml's (tests/test_dockerfile.py compares them), so the `pip install .`
# below finds it satisfied and keeps this CUDA build.
RUN pip install --index-url "$TORCH_INDEX_URL" "torch>=2.13,<2.14"

# The pods' user: launch.k8s.run_as_user (and runAsGroup/fsGroup) default to 1000. Its home is
# writable (HF and fgrpo caches, ~/.cache); the code in /app stays root-owned and read-only.
RUN groupadd --gid 1000 fgrpo && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/fgrpo fgrpo

# The repository (less .dockerignore) is the working directory, so recipes' relative paths
# (`prompts/...`) resolve as they do in a checkout.
WORKDIR /app
COPY . /app
RUN pip install . && rm -rf build ./*.egg-info

USER 1000:1000
ENV HOME=/home/fgrpo
