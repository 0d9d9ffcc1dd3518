# Ingot images, built from the repository root.
#
#   docker build -t ingot/gateway:0.1.0 .                      the gateway (default target)
#   docker build -t ingot/portable:0.1.0 --target portable .   gateway + portable engine + Triton (dev overlay)
#
# The gateway image installs Ingot with --no-deps plus deploy/docker/requirements-gateway.txt: the
# gateway never imports torch or nvidia-pytriton, and leaving them out makes the image a few hundred MB
# instead of several GB. The portable image installs every dependency of pyproject.toml (torch from the
# CPU wheel index) and carries a ready Python-backend folder for the tritonserver of nvidia-pytriton.
# Both run as the unprivileged user 10001 and keep nothing writable outside /tmp.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ingot_cli.py ./
COPY engines ./engines
COPY server ./server
COPY benchmarks ./benchmarks
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS gateway-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/docker/requirements-gateway.txt /tmp/requirements-gateway.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements-gateway.txt
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-deps /wheels/*.whl

FROM gateway-venv AS portable-venv
# torch==2.13.0 as pyproject pins it, from the CPU index: the dev overlay runs without a GPU.
RUN /opt/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu /wheels/*.whl
# The Python backend with the stub for this interpreter, prepared once here rather than at every start.
RUN /opt/venv/bin/python -c "from pathlib import Path; from engines.triton.launcher import prepare_backends; \
prepare_backends(Path('/opt/ingot'))"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 ingot \
 && useradd --system --uid 10001 --gid ingot --home-dir /tmp --shell /usr/sbin/nologin ingot
# HOME and the Hugging Face cache point at /tmp, the one writable mount under a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface
WORKDIR /tmp
EXPOSE 8080
USER 10001:10001

FROM runtime AS portable
ENV SITE_PACKAGES=/opt/venv/lib/python3.11/site-packages
ENV PATH=$SITE_PACKAGES/pytriton/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=$SITE_PACKAGES/nvidia_pytriton.libs \
    TRITON_BACKEND_DIR=/opt/ingot/backends
COPY --from=portable-venv /opt/venv /opt/venv
COPY --from=portable-venv /opt/ingot /opt/ingot
CMD ["python", "-m", "server.cli", "gateway", "--host", "0.0.0.0", "--port", "8080"]

# Last, so that a plain `docker build .` gives the gateway.
FROM runtime AS gateway
COPY --from=gateway-venv /opt/venv /opt/venv
CMD ["python", "-m", "server.cli", "gateway", "--host", "0.0.0.0", "--port", "8080"]
