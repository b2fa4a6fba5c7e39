# syntax=docker/dockerfile:1
# The gateway as a container: configuration only from the environment (see the README).

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /venv
# Dependencies first, in a layer of their own: source changes don't reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir gateway && echo '__version__ = "0.0.0"' > gateway/__init__.py \
    && /venv/bin/pip install . && /venv/bin/pip uninstall -y better-auth-gateway
COPY gateway ./gateway
RUN /venv/bin/pip install --no-deps .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH PYTHONUNBUFFERED=1 GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["gateway"]
CMD ["serve"]
