# flowyard: one image for the server, NATS workers and database workers (compose.yaml).
#
#   docker build -t flowyard .             # CPU torch
#   docker build -t flowyard:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# The CUDA wheels bring their own CUDA runtime; the host needs only the NVIDIA driver
# and the container toolkit (docs/deploy.md, "A GPU worker on another machine").
#
# The install steps are the README's (torch pinned first, then the package with the
# `flows` extra); tests/unit/test_deploy_files.py keeps the two the same.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first, from the index that picks its build (CPU here), so nothing pulls CUDA wheels
RUN pip install torch==2.13.0 --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md ./
COPY core ./core
COPY bus ./bus
COPY adapters ./adapters
COPY services ./services
COPY flows ./flows
RUN pip install '.[flows,text]'

RUN useradd --create-home --uid 10001 flowyard \
    && mkdir -p /var/lib/flowyard/tasks /var/lib/flowyard/data /etc/nats/auth \
    && chown -R flowyard /var/lib/flowyard /etc/nats/auth
USER flowyard
EXPOSE 8288

CMD ["flowyard", "serve", "--mode", "server", "--host", "0.0.0.0"]
