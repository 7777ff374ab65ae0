# The service image (README, "Running"): `docker run -p 8080:80 --env-file .env IMAGE` serves the API on the embedded
# default, or on Bitable and a real broker when .env says so. tests/test_dockerfile.py checks this file.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data

WORKDIR /srv

# Runtime requirements only: the same file CI's venv installs (requirements-dev.txt starts with `-r requirements.txt`).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# A fixed uid, so a host directory mounted on /data can be chowned to it ahead of time.
# /srv/data points at the volume too: a .env copied from .env.example says DATA_DIR=data, relative to WORKDIR.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app \
    && mkdir /data \
    && chown app:app /data \
    && ln -s /data /srv/data

COPY pyproject.toml ./
COPY app/ app/
COPY examples/ examples/
# the project itself (its dependencies are in already): the `task-manager` command, as `make` installs it
RUN pip install --no-cache-dir --no-deps . && rm -rf build ./*.egg-info

USER 10001:10001
VOLUME /data

# A non-root user may bind port 80: Docker >= 20.10 sets net.ipv4.ip_unprivileged_port_start=0 in containers.
EXPOSE 80
# No curl in a slim image: the standard library asks /healthz (urlopen raises, so exits 1, on refusal or non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:80/healthz', timeout=3)"]
# serve, not bare uvicorn: the SERVER_* limits and timeouts, and the open-file soft limit raised to the hard one
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "80"]
