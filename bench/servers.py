"""Starting the reference servers: the nginx backend, nginx and haproxy proxies, hypercorn hello.

Each function writes its own config into a fresh directory under ``workdir`` (never the system
config), starts the server in the foreground in its own process group, waits until every port
accepts connections and returns a ``RunningServer``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.process import RunningServer, free_port, kill_group, spawn, wait_for_ports
from bench.tls import TLSFiles
from bench.tools import Toolbox

REPO_ROOT = Path(__file__).resolve().parent.parent

_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000000;
    keepalive_timeout 120s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{body}
}}
"""

_NGINX_BACKEND = """\
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{tls} ssl http2;
        location / {{ return 200 "hello"; }}
    }}
"""

_NGINX_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 1024;
        keepalive_requests 1000000000;
    }}
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2c} http2;
        listen 127.0.0.1:{tls} ssl http2;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""

HAPROXY_DEFAULTS = """\
global
    nbthread 1
    maxconn 4096
    tune.ssl.default-dh-param 2048

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
"""

_HAPROXY = (
    HAPROXY_DEFAULTS
    + """
frontend fe
    bind 127.0.0.1:{h1}
    bind 127.0.0.1:{h2c} proto h2
    bind 127.0.0.1:{tls} ssl crt {combined} alpn h2,http/1.1
    default_backend be

backend be
    http-reuse always
    server s1 127.0.0.1:{backend} maxconn 1000
"""
)


def _fresh_dir(workdir: Path, name: str) -> Path:
    """A new empty directory ``workdir/name-N`` for one server's files."""
    n = 0
    while (workdir / f"{name}-{n}").exists():
        n += 1
    path = workdir / f"{name}-{n}"
    path.mkdir(parents=True)
    return path


def _start_nginx(
    tools: Toolbox,
    workdir: Path,
    name: str,
    tls: TLSFiles,
    body: str,
    cpu: int | None,
    backend_port: int = 0,
) -> RunningServer:
    """Write an nginx config around ``body`` (server blocks), start nginx and wait for it."""
    directory = _fresh_dir(workdir, name)
    ports = {"h1": free_port(), "h2c": free_port(), "tls": free_port()}
    # As root, keep the worker root too: the temp dir is private (0700) to us.
    user = "user root root;" if os.geteuid() == 0 else ""
    text = _NGINX_MAIN.format(
        dir=directory,
        user=user,
        cert=tls.cert,
        key=tls.key,
        body=body.format(**ports, backend=backend_port),
    )
    conf = directory / "nginx.conf"
    conf.write_text(text)
    log = directory / "stdout.log"
    argv = [tools.path("nginx"), "-p", str(directory), "-e", str(directory / "error.log")]
    proc = spawn([*argv, "-c", str(conf)], cpu=cpu, log_path=log)
    try:
        wait_for_ports(proc, list(ports.values()), log_path=directory / "error.log")
    except BaseException:
        kill_group(proc)
        raise
    return RunningServer(
        name=name,
        process=proc,
        h1_port=ports["h1"],
        h2c_port=ports["h2c"],
        tls_port=ports["tls"],
        workdir=directory,
    )


def start_backend(tools: Toolbox, workdir: Path, tls: TLSFiles, cpu: int | None) -> RunningServer:
    """The fast backend: nginx answering 200 "hello" on h1, h2c and TLS h2 ports."""
    return _start_nginx(tools, workdir, "backend", tls, _NGINX_BACKEND, cpu)


def start_nginx_proxy(
    tools: Toolbox, workdir: Path, tls: TLSFiles, backend_port: int, cpu: int | None
) -> RunningServer:
    """nginx as reverse proxy (keepalive upstream pool, HTTP/1.1 upstream) to ``backend_port``."""
    return _start_nginx(tools, workdir, "nginx-proxy", tls, _NGINX_PROXY, cpu, backend_port)


def start_haproxy(
    tools: Toolbox, workdir: Path, tls: TLSFiles, backend_port: int, cpu: int | None
) -> RunningServer:
    """haproxy (one thread) as reverse proxy to ``backend_port``; h1, h2c and TLS h2 binds."""
    directory = _fresh_dir(workdir, "haproxy")
    ports = {"h1": free_port(), "h2c": free_port(), "tls": free_port()}
    conf = directory / "haproxy.cfg"
    conf.write_text(_HAPROXY.format(**ports, combined=tls.combined, backend=backend_port))
    log = directory / "stdout.log"
    proc = spawn([tools.path("haproxy"), "-db", "-f", str(conf)], cpu=cpu, log_path=log)
    try:
        wait_for_ports(proc, list(ports.values()), log_path=log)
    except BaseException:
        kill_group(proc)
        raise
    return RunningServer(
        name="haproxy",
        process=proc,
        h1_port=ports["h1"],
        h2c_port=ports["h2c"],
        tls_port=ports["tls"],
        workdir=directory,
    )


def start_hypercorn_hello(workdir: Path, tls: TLSFiles, cpu: int | None) -> RunningServer:
    """``bench.hello_app`` on hypercorn: h1 + h2c on one port, TLS h2 on another."""
    return _start_hypercorn_row("hypercorn-hello", ["bench.hello_app"], workdir, tls, cpu)


def start_naive_proxy(
    workdir: Path, tls: TLSFiles, backend_port: int, cpu: int | None
) -> RunningServer:
    """``bench.naive_proxy`` (hypercorn + aiohttp) in front of the backend."""
    module = ["bench.naive_proxy", "--upstream", str(backend_port)]
    return _start_hypercorn_row("naive-proxy", module, workdir, tls, cpu)


def _start_hypercorn_row(
    name: str, module: list[str], workdir: Path, tls: TLSFiles, cpu: int | None
) -> RunningServer:
    directory = _fresh_dir(workdir, name)
    port, tls_port = free_port(), free_port()
    argv = [sys.executable, "-m", *module, "--port", str(port)]
    argv += ["--tls-port", str(tls_port), "--cert", str(tls.cert), "--key", str(tls.key)]
    log = directory / "stdout.log"
    proc = spawn(argv, cpu=cpu, log_path=log, cwd=REPO_ROOT)
    try:
        wait_for_ports(proc, [port, tls_port], log_path=log)
    except BaseException:
        kill_group(proc)
        raise
    return RunningServer(
        name=name,
        process=proc,
        h1_port=port,
        h2c_port=port,
        tls_port=tls_port,
        workdir=directory,
    )
