# cxr-node image: the listener, the workers and the admin CLI share it.
# torch 2.14.1 from PyPI bundles its CUDA runtime; GPU hosts need only the NVIDIA driver and
# the NVIDIA container toolkit.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CXR_NODE_DATA_DIR=/var/lib/cxr-node

RUN useradd --system --uid 10001 --home-dir /var/lib/cxr-node --create-home cxrnode
WORKDIR /opt/cxr-node
COPY pyproject.toml README.md ./
COPY node ./node
COPY models ./models
COPY training ./training
RUN pip install .

USER cxrnode
EXPOSE 11112
ENTRYPOINT ["cxr-node"]
CMD ["serve"]
