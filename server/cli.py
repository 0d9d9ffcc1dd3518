"""Command line: `gateway` runs the HTTP gateway; `serve` runs the whole stack on one machine."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("ingot")


def _gateway_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (INGOT_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (INGOT_PORT, default 8000)")
    parser.add_argument("--served-model-name", default=None, help="model id clients use (INGOT_SERVED_MODEL_NAME)")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length cap (INGOT_MAX_MODEL_LEN)")
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS with this PEM certificate chain "
                        "(INGOT_SSL_CERTFILE; needs --ssl-keyfile)")
    parser.add_argument("--ssl-keyfile", default=None, help="the certificate's PEM private key (INGOT_SSL_KEYFILE)")
    parser.add_argument("--request-timeout", type=float, default=None, metavar="S",
                        help="deadline of one request toward Triton, 0 for none (INGOT_REQUEST_TIMEOUT, default 600)")
    parser.add_argument("--first-token-timeout", type=float, default=None, metavar="S",
                        help="time allowed until the engine's first token, 0 for none "
                             "(INGOT_FIRST_TOKEN_TIMEOUT, default 60)")
    parser.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                        help="on SIGTERM/SIGINT, how long running requests may go on while new ones get 503 "
                             "(INGOT_DRAIN_TIMEOUT, default 30)")
    parser.add_argument("--http-keepalive", type=float, default=None, metavar="S",
                        help="how long an idle client connection stays open (INGOT_HTTP_KEEPALIVE, default 75)")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                        help="serve a PEFT LoRA adapter (a folder or s3:// prefix) as model NAME; repeatable "
                             "(INGOT_LORA_MODULES=NAME=PATH,...)")
    parser.add_argument("--admin-key-file", default=None, help="file whose first line is the admin key of "
                        "/v1/load_lora_adapter and /v1/unload_lora_adapter (INGOT_ADMIN_KEY_FILE, or INGOT_ADMIN_KEY)")


def tls_overrides(args: argparse.Namespace) -> dict:
    return {name: Path(getattr(args, name)) for name in ("ssl_certfile", "ssl_keyfile") if getattr(args, name, None)}


WORKERS_HELP = ("gateway processes sharing the port, each with its own Triton client (INGOT_GATEWAY_WORKERS; "
                "default: half the cores this process may use, 1 to 8)")


def gateway_overrides(args: argparse.Namespace) -> dict:
    """Settings given as flags of `ingot gateway` and `ingot serve` alike (None: from INGOT_* or the default)."""
    return {"request_timeout_s": args.request_timeout, "first_token_timeout_s": args.first_token_timeout,
            "drain_timeout_s": args.drain_timeout, "http_keepalive_s": args.http_keepalive,
            "workers": getattr(args, "workers", None) or getattr(args, "gateway_workers", None)}


def lora_overrides(args: argparse.Namespace) -> dict:
    """--lora and --admin-key-file as Settings fields (flags win over INGOT_LORA_MODULES / INGOT_ADMIN_KEY_FILE)."""
    from server.lora import parse_lora_modules

    overrides = {}
    if getattr(args, "lora", None):
        overrides["lora_modules"] = tuple(parse_lora_modules(args.lora).items())
    if getattr(args, "admin_key_file", None):
        overrides["admin_key_file"] = Path(args.admin_key_file)
    return overrides


def run_gateway(settings) -> None:
    import uvicorn

    from server.app import create_app
    from server.drain import UVICORN_GRACE_S
    from server.workers import default_workers, run_workers

    # The drain (server/drain.py) runs before uvicorn's shutdown, whose grace is for what is left.
    options = {"log_level": "info", "timeout_graceful_shutdown": UVICORN_GRACE_S,
               "timeout_keep_alive": settings.http_keepalive_s,
               "ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}
    workers = settings.workers or default_workers()
    if workers > 1:
        run_workers(settings, workers, options)
        return
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, **options)


def cmd_gateway(args: argparse.Namespace) -> int:
    from server.settings import Settings

    settings = Settings.from_env(artifact_dir=Path(args.artifact) if args.artifact else None,
                                 triton_url=args.triton_url, host=args.host, port=args.port,
                                 served_model_name=args.served_model_name, max_model_len=args.max_model_len,
                                 **tls_overrides(args), **gateway_overrides(args), **lora_overrides(args))
    run_gateway(settings)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.stack import serve_stack

    return serve_stack(args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="ingot", description="Ingot: OpenAI-compatible LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)

    gateway = sub.add_parser("gateway", help="run the OpenAI gateway in front of a Triton server")
    gateway.add_argument("--artifact", default=None, help="engine artifact dir with manifest.json (INGOT_ARTIFACT_DIR)")
    gateway.add_argument("--triton-url", default=None, help="Triton gRPC host:port (INGOT_TRITON_URL)")
    gateway.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    _gateway_args(gateway)
    gateway.set_defaults(func=cmd_gateway)

    serve = sub.add_parser("serve", help="run Triton (portable engine) and the gateway together, on CPU or GPU")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--demo", choices=["llama", "mistral"], default=None, help="serve a built-in demo model")
    source.add_argument("--checkpoint", default=None, help="Hugging Face checkpoint directory or .gguf file to serve")
    source.add_argument("--artifact", default=None, help="an artifact built with `ingot build --target portable`")
    serve.add_argument("--work-dir", default=".cache/serve", help="where artifacts and logs go")
    serve.add_argument("--triton-grpc-port", type=int, default=0, help="0: a free port")
    serve.add_argument("--embedding-model", default=None,
                       help="also serve /v1/embeddings: a sentence-transformers folder or all-MiniLM-L6-v2")
    serve.add_argument("--gateway-workers", type=int, default=None, metavar="N", help=WORKERS_HELP)


    serve.add_argument("--max-loras", type=int, default=None,
                       help="LoRA adapters the engine holds on the device at once (default: 4 with --lora or an "
                            "admin key, else 0: no adapters)")
    serve.add_argument("--max-lora-rank", type=int, default=16, help="the largest adapter rank served (default 16)")
    _gateway_args(serve)
    serve.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
