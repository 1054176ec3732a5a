"""The event-driven front: nginx before the gunicorn app, run and configured by `cargohold serve`.

Why a front at all (measured, docs/performance.md "Serving architecture"):
a site is many slow clients at once, and a gunicorn thread held by each
connection runs out long before a site's edge hosts do. nginx holds every
connection in an event loop, so the app only sees a request once its
headers (and, for small bodies, its body) have fully arrived, and is freed
as soon as it has answered:

* **Blob bodies** never pass through Python. The app authorizes the pull,
  finds the blob and answers with ``X-Accel-Redirect`` to an internal
  location; nginx sends the file with sendfile(2) (or kernel TLS), honours
  ``Range``, and copes with a client reading at 500 KB/s for an hour.
* **Small request bodies** (manifests, JSON, forms) are buffered by nginx,
  capped at the largest body those endpoints accept.
* **Upload bodies** (``/v2/…/blobs/uploads/``, tus, bundle and cluster
  definition uploads) stream straight through unbuffered, so the app checks
  credentials before a byte is stored, a dropped connection keeps what
  arrived, and nothing is written twice; a global cap on concurrent uploads
  keeps gunicorn threads free for everything else.
* **Idle, half-open and trickling connections** cost nginx a few hundred
  bytes each and reach the app never; timeouts end them.
* **TLS** terminates here (OpenSSL, kernel TLS where the kernel offers it).

The front runs as a child of the gunicorn master with a parent-death signal,
so killing the master takes it down at once and the port is free for a
restart. Its files live in a private runtime directory (``nginx.conf``, the
app's unix socket, the pid file, a lock its owner holds); request bodies it
buffers go to ``<data>/front`` on the data volume.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from registry.blobserve import ACCEL_OBJECT_PREFIX
from registry.s3store import StorageURL
from web import frontlog
from web.config import Config

# Where nginx serves blob bodies from after the app's X-Accel-Redirect; `internal`,
# so no client can request it.
ACCEL_PREFIX = "/_cargohold/blobs/"
# Bodies of these requests stream to the app unbuffered (see the module docstring).
UPLOAD_LOCATIONS = (
    "~ ^/v2/.+/blobs/uploads/",
    "^~ /api/v1/uploads",
    "= /api/v1/bundles",
    "= /api/cargohold/v1/cluster-definitions",
)
# Of those, the ones whose app handler needs a Content-Length (411 otherwise). nginx must refuse a chunked
# body there itself: when it has already read a small chunked body whole, it forwards it with a
# Content-Length, so the app alone would answer 411 or parse the body depending on timing.
LENGTH_REQUIRED_LOCATIONS = ("= /api/cargohold/v1/cluster-definitions",)
_PR_SET_PDEATHSIG = 1
_UNSAFE_PATH = re.compile(r'["\\$;{}\n\r]')


class FrontError(RuntimeError):
    """The front cannot start: nginx is missing, its configuration is refused, or it cannot listen."""


def find_nginx(configured: str = "") -> str:
    """The nginx binary to run: `configured` if set, else from PATH or /usr/sbin. Raises FrontError."""
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise FrontError(f"CARGOHOLD_NGINX={configured!r} is not an executable file")
        return configured
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if found is None:
        raise FrontError("nginx is not installed: cargohold serves through Debian's nginx "
                         "(`apt-get install nginx`, see README.md); `--front none` runs gunicorn alone, "
                         "which slow or idle clients can starve (docs/operations.md)")
    return found


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


@dataclass(frozen=True)
class FrontLayout:
    """The front's files: a private runtime directory, and body scratch space on the data volume."""

    runtime: Path
    scratch: Path
    owner: int = field(default_factory=os.getpid)  # the process that made it: only it removes it

    @property
    def conf(self) -> Path:
        return self.runtime / "nginx.conf"

    @property
    def app_socket(self) -> Path:
        return self.runtime / "app.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime / "nginx.pid"

    @classmethod
    def create(cls, config: Config) -> FrontLayout:
        """A fresh 0700 runtime directory (short: a unix socket path is at most 107 bytes) and the scratch dir.

        Runtime directories left by a killed appliance (nobody holds their lock) are removed first.
        """
        parent = config.runtime_dir or Path(os.environ.get("RUNTIME_DIRECTORY") or tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(parent)
        runtime = Path(tempfile.mkdtemp(prefix="cargohold-", dir=parent))
        # Held for this process's life (and its workers'): while it is, no other start takes the directory as stale.
        lock = os.open(runtime / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        scratch = config.paths.front_scratch
        for sub in ("body", "proxy"):
            (scratch / sub).mkdir(parents=True, exist_ok=True)
        layout = cls(runtime, scratch)
        for path in (config.paths.blobs, scratch, runtime):
            if _UNSAFE_PATH.search(str(path.resolve())):
                raise FrontError(f"the path {path} has a character nginx configuration cannot hold (\" \\ $ ; {{ }})")
        return layout

    def remove(self) -> None:
        # gunicorn forks its workers inside Arbiter.run(), so a worker that exits gracefully (SIGTERM, as
        # systemd sends to the whole service; a HUP reload; a recycle) unwinds through the master's own
        # `finally` blocks: without this check it deleted the runtime directory, the app's socket with it,
        # and the front answered 502 until a restart.
        if os.getpid() == self.owner:
            shutil.rmtree(self.runtime, ignore_errors=True)


def _remove_stale(parent: Path) -> None:
    # A directory is stale once nobody holds its lock: its appliance is gone, whatever its pid now names
    # (pids are reused, and appliances in other pid namespaces may share this parent).
    for candidate in parent.glob("cargohold-*"):
        try:
            fd = os.open(candidate / _LOCK, os.O_RDWR)
        except OSError:  # not ours, or a directory being made this instant: leave it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a live appliance
        finally:
            os.close(fd)
        shutil.rmtree(candidate, ignore_errors=True)


_LOCK = "owner.lock"


def split_bind(bind: str) -> tuple[str, int]:
    """(host, port) of a ``host:port`` bind address (IPv6 in brackets). Raises FrontError."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise FrontError(f"--bind {bind!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def _listen_directive(bind: str, tls: bool) -> str:
    host, port = split_bind(bind)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"listen {address}{' ssl' if tls else ''} backlog=4096;"


def upload_slots(config: Config) -> int:
    """How many upload bodies may stream to the app at once: three quarters of one worker's threads (at least 1).

    nginx cannot choose the gunicorn worker a connection lands on, so every
    upload may go to one (seen: 36 of 48 on one 32-thread worker, whose
    manifest requests then waited): the cap is per worker, not per app.
    """
    threads = config.threads if config.worker_class == "gthread" else 1
    return max(1, threads * 3 // 4)


def uploads_per_address(config: Config) -> int:
    """Upload bodies one client address may stream at once: a third of the slots, so one client cannot take all."""
    return max(1, upload_slots(config) // 3)


def buffered_body_limit(config: Config) -> int:
    """The largest body nginx buffers for the app: a manifest, with room for headers of multipart forms."""
    return max(config.max_manifest_bytes, 1 << 20) + (64 << 10)


def _open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 16
    return max(soft, min(hard, 1 << 16))


def render_config(config: Config, layout: FrontLayout, access_log: str = "/dev/stdout") -> str:
    """nginx.conf for `config` (the listening address, TLS pair, timeouts and limits)."""
    c = config
    files = _open_files_limit()
    error_level = _NGINX_LEVELS.get(str(c.log_level).upper(), "warn")
    # Every proxied request takes two connections (client and app); leave room for files.
    connections = max(512, min(16384, (files - 64) // 2))
    user = ""
    if os.geteuid() == 0:
        # As root nginx would hand its workers to an unprivileged user that cannot read the data
        # directory (0700); they run as the appliance does, like the gunicorn workers.
        entry = pwd.getpwuid(os.geteuid())
        user = f"user {entry.pw_name};"
    blobs = f"{c.paths.blobs.resolve()}/"
    sock = layout.app_socket
    tls = ""
    if c.tls:
        tls = f"""
        ssl_certificate "{Path(str(c.tls_cert)).resolve()}";
        ssl_certificate_key "{Path(str(c.tls_key)).resolve()}";
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:cargohold_tls:4m;
        ssl_session_timeout 1h;
        # Kernel TLS where the kernel and OpenSSL offer it: blob bodies keep sendfile over HTTPS.
        ssl_conf_command Options KTLS;"""
    proxy = """
            proxy_pass http://cargohold_app;"""
    per_address = f"limit_conn cargohold_per_address {c.max_requests_per_address};" \
        if c.max_requests_per_address > 0 else ""
    length_required = """
            if ($http_transfer_encoding) {
                return 411;
            }"""
    uploads = "\n".join(f"""
        location {where} {{
            client_max_body_size 0;
            proxy_request_buffering off;
            limit_conn cargohold_uploads {upload_slots(c)};
            limit_conn cargohold_uploads_per_address {uploads_per_address(c)};
            # A refused client's body is read and dropped for a few seconds at most, then the connection closes.
            lingering_time 3s;
            lingering_timeout 1s;
            # When the app answers before it has read the body (a 401 before credentials), nginx cannot
            # reuse the connection and may close it after an answer that said keep-alive: a client sending
            # its next request on it then gets no answer at all. Upload answers say Connection: close.
            keepalive_timeout 0;{length_required if where in LENGTH_REQUIRED_LOCATIONS else ""}
            {per_address}{proxy}
        }}""" for where in UPLOAD_LOCATIONS)
    errors = "\n".join(f"""
        location = /_cargohold/error/{status} {{
            internal;
            default_type application/json;
            add_header X-Content-Type-Options nosniff always;  # as web/hardening.py sets on the app's answers
            add_header X-Request-Id $request_id always;
            return {status} '{{"errors":[{{"code":"{code}","message":"{message}","detail":{{}}}}]}}';
        }}""" for status, code, message in _ERRORS)
    error_pages = "\n".join(f"        error_page {status} /_cargohold/error/{status};" for status, _, _ in _ERRORS)
    # A header line over the buffers' size is nginx's 494, answered as a plain 400 (in the JSON shape).
    error_pages += "\n        error_page 494 =400 /_cargohold/error/400;"
    return f"""# Written by `cargohold serve` at each start (web/front.py); edits are lost.
{user}
worker_processes {c.front_workers or 'auto'};
worker_rlimit_nofile {files};
pid "{layout.pid_file}";
daemon off;
error_log stderr {error_level};
# Blob sends and TLS run in the workers; on shutdown, requests in flight get the grace period.
worker_shutdown_timeout {c.graceful_timeout}s;

events {{
    worker_connections {connections};
    multi_accept on;
}}

http {{
    # The app logs every request it answers (web/requestlog.py). nginx logs, for web/frontlog.py to relay
    # into the appliance's log, only the requests whose client did not get the app's whole answer: those
    # it answered itself (429, 413, 400...), those the app did not answer (502, 504), and those the client
    # left before the end (a blob body cut short). The path only: a query string is never logged.
    map $request_uri $cargohold_log_path {{
        "~^(?<path>[^?]*)" $path;
        default "";
    }}
    # The client's method ($request_method says GET once an error_page has answered).
    map $request $cargohold_log_method {{
        "~^(?<method>[A-Za-z]+) " $method;
        default "";
    }}
    map "$upstream_status:$request_completion" $cargohold_front_log {{
        default 1;
        "~^50[24]" 1;
        "~^[0-9].*:OK$" 0;
    }}
    log_format cargohold escape=json '{{"request_id":"$request_id","client":"$remote_addr",'
        '"method":"$cargohold_log_method","path":"$cargohold_log_path","status":"$status",'
        '"bytes_in":"$request_length","bytes_out":"$body_bytes_sent","request_time":"$request_time",'
        '"upstream_status":"$upstream_status","completion":"$request_completion"}}';
    access_log {access_log} cargohold if=$cargohold_front_log;
    server_tokens off;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    client_body_temp_path "{layout.scratch / 'body'}";
    proxy_temp_path "{layout.scratch / 'proxy'}";
    fastcgi_temp_path "{layout.runtime / 'fastcgi'}";
    uwsgi_temp_path "{layout.runtime / 'uwsgi'}";
    scgi_temp_path "{layout.runtime / 'scgi'}";

    # Slow and idle clients (docs/operations.md, "Slow and hostile clients").
    client_header_timeout {c.client_header_timeout}s;
    client_body_timeout {c.client_body_timeout}s;
    send_timeout {c.send_timeout}s;
    keepalive_timeout {c.keepalive_timeout}s;
    keepalive_requests 10000;
    reset_timedout_connection on;
    large_client_header_buffers 4 16k;
    client_max_body_size {buffered_body_limit(c)};
    client_body_buffer_size 128k;

    limit_conn_zone $binary_remote_addr zone=cargohold_per_address:4m;
    limit_conn_zone $server_name zone=cargohold_uploads:64k;
    limit_conn_zone $binary_remote_addr zone=cargohold_uploads_per_address:4m;
    limit_conn_status 429;

    upstream cargohold_app {{
        server unix:{sock} max_fails=0;
        keepalive 64;
        keepalive_timeout 30s;
    }}

    server {{
        {_listen_directive(c.bind, c.tls)}
        server_name cargohold;{tls}
        {per_address}

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $request_id;
        proxy_buffering on;
        proxy_buffers 16 64k;
        proxy_busy_buffers_size 128k;
        proxy_read_timeout {c.app_timeout}s;
        proxy_send_timeout {c.app_timeout}s;
        proxy_connect_timeout 10s;
        # A request the app never answered is not retried elsewhere: there is no elsewhere.
        proxy_next_upstream off;
        # A client that half-closes after its request (shutdown(SHUT_WR)) still gets the answer, and
        # the app finishes what it started rather than being cut mid-write.
        proxy_ignore_client_abort on;
        proxy_intercept_errors off;
{error_pages}

        location / {{{proxy}
        }}
{uploads}

        location ^~ {ACCEL_PREFIX} {{
            internal;
            alias "{blobs}";
            etag off;
            # The app's headers for the blob go out with the file's bytes (nginx itself carries over
            # only a few, Cache-Control among them).
            add_header Docker-Content-Digest $upstream_http_docker_content_digest always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
            add_header ETag $upstream_http_etag always;
            # File downloads (bundles/files_api.py): the RFC 3230 digest (Content-Disposition nginx carries over).
            add_header Digest $upstream_http_digest always;
            # And the security headers the app set (web/hardening.py); an empty one (HSTS over HTTP) is skipped.
            add_header X-Content-Type-Options $upstream_http_x_content_type_options always;
            add_header X-Frame-Options $upstream_http_x_frame_options always;
            add_header Content-Security-Policy $upstream_http_content_security_policy always;
            add_header Referrer-Policy $upstream_http_referrer_policy always;
            add_header Strict-Transport-Security $upstream_http_strict_transport_security always;
            # The app's X-Request-Id does not survive the redirect: the same id, from nginx.
            add_header X-Request-Id $request_id always;
        }}
{_object_location(c)}{errors}
    }}
}}
"""


def _object_location(c: Config) -> str:
    """With an object store: the internal location that proxies a presigned GET to it (registry/blobserve.py).

    The app's X-Accel-Redirect names ``<ACCEL_OBJECT_PREFIX><bucket>/<key>?<signature>``; nginx strips the
    prefix and sends the request to the store's endpoint with the client's Range (and nothing that carries
    the client's credentials), then passes the store's answer on as it arrives, so a slow client holds
    no gunicorn thread. The app's headers are saved before the store's response replaces them.
    """
    if not c.storage_url.strip():
        return ""
    url = StorageURL.parse(c.storage_url)
    endpoint = url.endpoint or f"https://s3.{url.region}.amazonaws.com"
    if _UNSAFE_PATH.search(endpoint):
        raise FrontError(f"the storage endpoint {endpoint} has a character nginx configuration cannot hold")
    host = urllib.parse.urlsplit(endpoint).netloc
    tls = "\n            proxy_ssl_server_name on;" if endpoint.startswith("https://") else ""
    return f"""
        location ^~ {ACCEL_OBJECT_PREFIX} {{
            internal;
            set $cargohold_digest $upstream_http_docker_content_digest;
            set $cargohold_etag $upstream_http_etag;
            set $cargohold_digest_rfc $upstream_http_digest;
            set $cargohold_nosniff $upstream_http_x_content_type_options;
            set $cargohold_frame $upstream_http_x_frame_options;
            set $cargohold_csp $upstream_http_content_security_policy;
            set $cargohold_referrer $upstream_http_referrer_policy;
            set $cargohold_hsts $upstream_http_strict_transport_security;
            rewrite ^{ACCEL_OBJECT_PREFIX}(.*)$ /$1 break;
            proxy_pass {endpoint};{tls}
            # The presigned signature covers the Host header; the client's credentials and cookies stay here.
            proxy_set_header Host "{host}";
            proxy_set_header Authorization "";
            proxy_set_header Cookie "";
            proxy_set_header X-Forwarded-For "";
            proxy_set_header X-Forwarded-Proto "";
            proxy_set_header X-Request-ID "";
            proxy_set_header Range $http_range;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_intercept_errors on;
            # A large blob streams through: no temporary file on the data volume, a few buffers per client.
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_read_timeout {c.app_timeout}s;
            # The store's own headers (its ETag is an MD5, its ids are its business) give way to the app's.
            proxy_hide_header ETag;
            proxy_hide_header Cache-Control;
            proxy_hide_header Last-Modified;
            proxy_hide_header x-amz-request-id;
            proxy_hide_header x-amz-id-2;
            proxy_hide_header x-rgw-object-type;
            proxy_hide_header Server;
            add_header Docker-Content-Digest $cargohold_digest always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
            add_header ETag $cargohold_etag always;
            # File downloads' RFC 3230 digest (Content-Disposition and Cache-Control nginx carries over from the
            # redirecting answer itself).
            add_header Digest $cargohold_digest_rfc always;
            # The security headers the app set (web/hardening.py), as the file location carries them over.
            add_header X-Content-Type-Options $cargohold_nosniff always;
            add_header X-Frame-Options $cargohold_frame always;
            add_header Content-Security-Policy $cargohold_csp always;
            add_header Referrer-Policy $cargohold_referrer always;
            add_header Strict-Transport-Security $cargohold_hsts always;
            add_header X-Request-Id $request_id always;
        }}
"""


# nginx's error_log level for CARGOHOLD_LOG_LEVEL: its notices (start-up chatter) only at DEBUG.
_NGINX_LEVELS = {"DEBUG": "info", "INFO": "warn", "WARNING": "warn", "ERROR": "error", "CRITICAL": "crit"}

# nginx's own refusals, in the registry's error shape (it answers before the app sees the request).
_ERRORS = (
    (400, "UNSUPPORTED", "malformed request"),
    (405, "UNSUPPORTED", "method not allowed"),
    (411, "LENGTH_REQUIRED", "send the upload with a Content-Length header"),
    (413, "SIZE_INVALID", "request body too large for this endpoint"),
    (429, "TOOMANYREQUESTS", "too many requests in flight from this address, or uploads at once; retry later"),
    (414, "UNSUPPORTED", "request line too long"),
    (502, "UNAVAILABLE", "the appliance is starting or restarting; retry"),
    (504, "UNAVAILABLE", "the appliance did not answer in time; retry"),
)


class Front:
    """One nginx master process in front of the app; started and stopped by the gunicorn master.

    nginx opens its access log by path, and /dev/stdout cannot be opened when
    standard output is a socket (journald under systemd): the access log goes
    into a pipe, its error log (standard error) into another, and threads of
    this process log their lines in the appliance's format (web/frontlog.py).
    """

    def __init__(self, config: Config, layout: FrontLayout, nginx: str) -> None:
        self.config = config
        self.layout = layout
        self.nginx = nginx
        self.process: subprocess.Popen[bytes] | None = None
        self._relays: list[threading.Thread] = []
        self._log_read, self._log_write = os.pipe()

    def _command(self, *extra: str) -> list[str]:
        return [self.nginx, *extra, "-e", "stderr", "-p", str(self.layout.runtime), "-c", str(self.layout.conf)]

    def write_config(self) -> None:
        """Write nginx.conf and check it with `nginx -t`. Raises FrontError with nginx's words."""
        self.layout.conf.write_text(render_config(self.config, self.layout, f"/dev/fd/{self._log_write}"))
        check = subprocess.run(self._command("-t", "-q"), capture_output=True, text=True, check=False,
                               pass_fds=(self._log_write,))
        if check.returncode != 0:
            raise FrontError(f"nginx refused its configuration: {check.stderr.strip()}")

    def start(self, timeout: float = 15.0) -> None:
        """Start nginx and wait until it accepts connections. Raises FrontError if it exits first."""
        errors_read, errors_write = os.pipe()
        self._relays.append(frontlog.relay(self._log_read, frontlog.access_line, "front-access-log"))
        self._relays.append(frontlog.relay(errors_read, frontlog.error_line, "front-error-log"))
        try:
            self.process = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stderr=errors_write, pass_fds=(self._log_write,),
                preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        finally:
            # Only nginx writes the pipes now: when it exits, the relays read EOF and end too.
            os.close(self._log_write)
            os.close(errors_write)
        host, port = split_bind(self.config.bind)
        probe = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._join_relays()  # nginx's own words first, then ours
                raise FrontError(f"nginx exited with status {self.process.returncode} at start "
                                 f"(is {self.config.bind} in use? see the messages above)")
            try:
                with socket.create_connection((probe, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise FrontError(f"nginx did not listen on {self.config.bind} within {timeout:.0f} s")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, graceful: bool) -> None:
        """Graceful: stop accepting and let requests in flight finish (up to the grace period); else at once."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGQUIT if graceful else signal.SIGTERM)
            try:
                proc.wait(timeout=self.config.graceful_timeout + 5 if graceful else 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._join_relays()

    def _join_relays(self) -> None:
        for thread in self._relays:
            thread.join(timeout=5)
