# The cargohold appliance as a container image.
#
#   docker build -t cargohold .
#   docker run -d --name cargohold -p 5000:5000 -v cargohold-data:/data \
#       -e CARGOHOLD_ADMIN_PASSWORD=... cargohold
#
# Serve HTTPS with the generated local CA by adding `-e CARGOHOLD_TLS=1` and
# `-e CARGOHOLD_TLS_SAN=<host IP>,<cluster VIP>` (the container cannot see the
# host's addresses). See docs/operations.md.

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

# Liveness of the appliance's own listener on loopback (the nginx front, and
# the app behind it): GET / answers 200 without credentials. Over TLS the
# probe skips verification on purpose (it talks to itself on 127.0.0.1, and
# an operator's own certificate may not name 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; tls = os.environ.get('CARGOHOLD_TLS', '').strip().lower() in ('1', 'true', 'yes', 'on'); urllib.request.urlopen(('https' if tls else 'http') + '://127.0.0.1:5000/', timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# SIGTERM drains requests in flight for CARGOHOLD_GRACEFUL_TIMEOUT (30 s): give
# `docker stop` longer than that (docker stop -t 45).
STOPSIGNAL SIGTERM
CMD ["cargohold", "serve", "--bind", "0.0.0.0:5000", "--data-dir", "/data"]
