"""The `tuneboard` command: `up` serves the app, `inventory` computes a model's module inventory."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys

from app.settings import get_settings


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def cmd_up(args: argparse.Namespace) -> int:
    """Serve the web app on this machine."""
    import uvicorn

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    if not _port_free(host, port):
        print(f"tuneboard: port {port} on {host} is already in use; pick another with --port.", file=sys.stderr)
        return 2
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"tuneboard: cannot create data directory {settings.data_dir}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"Tuneboard is running at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run("app.main:app", host=host, port=port, log_level="warning")
    return 0


def cmd_inventory(args: argparse.Namespace) -> int:
    """Compute and cache the module inventory of a model outside the catalog (needs the worker extra)."""
    from app.model_inventories import resolve_source, worker_stack_installed

    if not worker_stack_installed():
        print("tuneboard: computing inventories needs the worker extra: pip install 'tuneboard[worker]'",
              file=sys.stderr)
        return 2
    source = resolve_source(args.model)
    out = get_settings().inventory_cache_dir / f"{source.cache_name}.json"
    result = subprocess.run([sys.executable, "-m", "workers.inventory", source.model_id, "--out", str(out)])
    if result.returncode == 0:
        print(f"wrote {out}")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tuneboard` console script."""
    parser = argparse.ArgumentParser(prog="tuneboard", description="Self-hosted LoRA fine-tuning dashboard.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="serve the web app")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.set_defaults(func=cmd_up)
    inventory = commands.add_parser("inventory", help="compute a model's module inventory (needs torch)")
    inventory.add_argument("model", help="Hugging Face id or local directory with config.json")
    inventory.set_defaults(func=cmd_inventory)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
