# The cargohold appliance as a container image.
#
#   docker build -t cargohold .
#   docker run -d --name cargohold --stop-timeout 45 -p 5000:5000 -v cargohold-data:/data \
#       -e CARGOHOLD_ADMIN_PASSWORD=... cargohold
#
# --stop-timeout 45: on `docker stop` the appliance drains requests in flight
# for CARGOHOLD_GRACEFUL_TIMEOUT (30 s) before it exits, and Docker's own
# default (10 s) would kill it mid-drain. Keep it above the graceful timeout
# (compose: `stop_grace_period: 45s`; Kubernetes: terminationGracePeriodSeconds: 45).
#
# Serve HTTPS with the generated local CA by adding `-e CARGOHOLD_TLS=1` and
# `-e CARGOHOLD_TLS_SAN=<host IP>,<cluster VIP>` (the container cannot see the
# host's addresses). See docs/operations.md.
#
# Settings from a config file (docs/cargohold.example.toml): mount it read-only
# and name it; the command line below still sets bind and data_dir.
#   docker run ... -v /etc/cargohold/cargohold.toml:/etc/cargohold/cargohold.toml:ro \
#       -e CARGOHOLD_CONFIG=/etc/cargohold/cargohold.toml cargohold
# Keep `tls` in the environment (CARGOHOLD_TLS) rather than the file: the
# HEALTHCHECK below reads it to choose http or https. A file holding
# admin_password must be readable by its owner alone, and that owner must be
# the container's user: chown 10001 and chmod 600 it on the host.

# Build stage: turn the source tree into a wheel, so no source or build
# tooling ends up in the runtime image.
FROM python:3.12-slim AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CARGOHOLD_DATA_DIR=/data
COPY --from=build /wheels /wheels
# Debian's nginx is the serving front `cargohold serve` starts (web/front.py);
# the stock site and its service are not used.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default
RUN python -m pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
           --shell /usr/sbin/nologin cargohold \
    && mkdir -p /data \
    && chown cargohold:cargohold /data \
    && chmod 0750 /data
USER cargohold
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5000

# Readiness of the appliance, asked on its own listener on loopback: GET /readyz
# answers 200 without credentials when the database takes a write, the blob
# store can be read and free space is above the reserve, 503 (naming the
# failing check; `docker inspect` shows it) otherwise. Over TLS the probe skips
# verification on purpose (it talks to itself on 127.0.0.1, and an operator's
# own certificate may not name 127.0.0.1). The database check waits up to 3 s
# for another writer, hence the timeouts.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.error, urllib.request; tls = os.environ.get('CARGOHOLD_TLS', '').strip().lower() in ('1', 'true', 'yes', 'on'); req = urllib.request.Request(('https' if tls else 'http') + '://127.0.0.1:5000/readyz', headers={'Accept': 'text/plain'}); ok = True\ntry:\n    print(urllib.request.urlopen(req, timeout=8, context=ssl._create_unverified_context() if tls else None).read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.read().decode()); ok = False\nsys.exit(0 if ok else 1)"]

# SIGTERM drains requests in flight for CARGOHOLD_GRACEFUL_TIMEOUT (30 s): give
# the container longer than that before Docker kills it (docker run
# --stop-timeout 45, compose stop_grace_period: 45s, or docker stop -t 45).
STOPSIGNAL SIGTERM
CMD ["cargohold", "serve", "--bind", "0.0.0.0:5000", "--data-dir", "/data"]
