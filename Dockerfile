# syntax=docker/dockerfile:1
# crmsyncd's image. The build stage builds wheels of the dependencies and of the project and
# installs them into a virtualenv; the last stage is the bare base with that virtualenv alone (no
# pip, no wheels, no build tools), run as a non-root user.
# BASE_IMAGE: any Debian-based image whose python3 is 3.11+ with its venv module; CI passes a
# local debootstrap base (no image can be pulled there), see .ci/container.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The dependency list alone, out of pyproject.toml: the build stage copies this file, so an edit
# elsewhere in pyproject.toml (the version, the dev extra) keeps the dependencies' layer cached.
FROM ${BASE_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt

FROM ${BASE_IMAGE} AS build
# PIP_CERT: the standard bundle path. A build behind a TLS-intercepting proxy mounts its own
# bundle over it read-only for the RUN steps (podman build --volume ...): never part of a layer.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/crmsyncd
# The dependencies first, so that a source change reuses this layer.
COPY --from=requirements /src/requirements.txt ./
RUN /opt/crmsyncd/bin/pip wheel --wheel-dir /wheels -r requirements.txt \
 && /opt/crmsyncd/bin/pip install --no-index --find-links /wheels -r requirements.txt
COPY pyproject.toml README.md ./
COPY crmsyncd ./crmsyncd
RUN /opt/crmsyncd/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/crmsyncd/bin/pip install --no-index --no-deps /wheels/crmsyncd-*.whl \
 && /opt/crmsyncd/bin/pip check \
 && /opt/crmsyncd/bin/pip uninstall --yes pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="crmsyncd" \
      org.opencontainers.image.description="Two-way ECOSIRE <-> CRM sync daemon" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid, so that Kubernetes' runAsUser and a volume's owner can name it. The data
# directory is the embedded PostgreSQL's (crmsyncd demo; run without CRMSYNCD_DATABASE_URL).
RUN groupadd --gid 10001 crmsyncd \
 && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/crmsyncd --shell /usr/sbin/nologin crmsyncd \
 && mkdir -p /var/lib/crmsyncd \
 && chown crmsyncd:crmsyncd /var/lib/crmsyncd
COPY --from=build /opt/crmsyncd /opt/crmsyncd
# CRMSYNCD_HTTP_HOST: all interfaces, or no probe or scrape from outside the container reaches it.
ENV PATH=/opt/crmsyncd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CRMSYNCD_DATA_DIR=/var/lib/crmsyncd \
    CRMSYNCD_HTTP_HOST=0.0.0.0 \
    CRMSYNCD_HTTP_PORT=8080
USER 10001:10001
WORKDIR /home/crmsyncd
EXPOSE 8080
# The daemon's own liveness endpoint, asked with Python's urllib (the image has no curl). It
# follows CRMSYNCD_HTTP_PORT when a deployment moves the port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CRMSYNCD_HTTP_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["crmsyncd"]
CMD ["run"]
