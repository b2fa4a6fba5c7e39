# syntax=docker/dockerfile:1
# The gateway as a container: configuration from the environment, secrets from files (*_FILE)
# or the environment (see the README).
# The base image is pinned to an exact version tag; pinning its digest too (python:3.12.8-slim-
# bookworm@sha256:...) needs registry access these machines do not have: do it where you build.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /venv
# Dependencies first, in a layer of their own: source changes don't reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir gateway && echo '__version__ = "0.0.0"' > gateway/__init__.py \
    && /venv/bin/pip install . && /venv/bin/pip uninstall -y better-auth-gateway
COPY gateway ./gateway
RUN /venv/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE}
# The version label: `docker build --build-arg VERSION=$(python -c 'import gateway; print(gateway.__version__)')`.
ARG VERSION=0.1.0
# The repository the image is built from: pass --build-arg SOURCE=<its URL> (no default: we don't
# guess where your copy lives).
ARG SOURCE=""
LABEL org.opencontainers.image.title="better-auth-gateway" \
      org.opencontainers.image.description="A high-throughput, cache-backed validation service for Better Auth sessions." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
