"""``comfyfleet gateway``: the token-checking reverse proxy in front of an instance's ComfyUI.

Runs :class:`comfyfleet.fleet.gateway.Gateway` under uvicorn until interrupted. The token
comes from ``$COMFYFLEET_GATEWAY_TOKEN`` only (an argument would show in ``ps``); the on-start
script of a rented instance gets it from ``instances up``. Where it listens: ``--listen``,
else ``$COMFYFLEET_GATEWAY_LISTEN`` (``instances up`` sets it to the published port), else
every interface on the fleet's gateway port.
"""

from __future__ import annotations

import argparse
import logging
import sys

from comfyfleet.cli.common import positive_float
from comfyfleet.config import env
from comfyfleet.errors import ConfigError
from comfyfleet.fleet.access import GATEWAY_LISTEN_ENV, GATEWAY_PORT
from comfyfleet.fleet.access import GATEWAY_TOKEN_ENV as TOKEN_ENV

DEFAULT_UPSTREAM = "http://127.0.0.1:8188"
DEFAULT_LISTEN = f"0.0.0.0:{GATEWAY_PORT}"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "gateway",
        help="serve ComfyUI behind a bearer token (the instance's one public port)",
        description="A reverse proxy that forwards HTTP and the /ws WebSocket to ComfyUI "
        f"for requests with 'Authorization: Bearer <token>' (token: ${TOKEN_ENV}). "
        "GET /healthz answers 'ok' without a token.",
    )
    p.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help=f"where to listen (default ${GATEWAY_LISTEN_ENV}, else {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--upstream",
        default=DEFAULT_UPSTREAM,
        metavar="URL",
        help=f"ComfyUI's address, on loopback (default {DEFAULT_UPSTREAM})",
    )
    p.add_argument(
        "--read-timeout",
        type=positive_float,
        default=600.0,
        metavar="S",
        help="longest silence allowed from ComfyUI within one answer (default 600)",
    )
    p.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    # uvicorn is imported only by the command that serves (every other command starts faster).
    from comfyfleet.fleet.gateway import Gateway, bind, parse_listen, server

    token = env(TOKEN_ENV)
    if not token:
        raise ConfigError(
            f"${TOKEN_ENV} is not set; the gateway refuses to run without a token",
            hint=f"export {TOKEN_ENV}=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')",
        )
    from_env = None if args.listen else env(GATEWAY_LISTEN_ENV)
    try:
        host, port = parse_listen(args.listen or from_env or DEFAULT_LISTEN)
    except ConfigError as exc:
        if from_env is None:
            raise
        raise ConfigError(
            f"${GATEWAY_LISTEN_ENV}={from_env!r} is not HOST:PORT",
            hint=f"fix or unset it, or pass --listen HOST:PORT ({exc.hint})",
        ) from None
    gateway = Gateway(args.upstream, token, read_timeout=args.read_timeout)
    sock = bind(host, port)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"gateway on {host}:{sock.getsockname()[1]} -> {gateway.upstream} (bearer token required)",
        file=sys.stderr,
        flush=True,
    )
    server(gateway).run(sockets=[sock])
    return 0
