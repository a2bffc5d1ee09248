"""``ttt panel build | collect | serve``: the blind listening panel (docs/listening-panel.md)."""
from __future__ import annotations

import argparse
import signal
import sys

from ttt.cli.common import bad_input, example


def panel_build_command(args: argparse.Namespace) -> int:
    """Build a blind listening page; exit 2 with one line naming the file or key on bad input."""
    from ttt.panel.page import build_panel, parse_system
    from ttt.panel.ratings import PanelError

    try:
        key = build_panel(args.name, [parse_system(s) for s in args.system], args.offsets,
                          args.clip, args.seed, args.out, raters=args.rater)
    except PanelError as exc:
        return bad_input(exc)
    print(f"panel {key['panel']}: {len(key['clips'])} clips, {len(key['items'])} items per rater "
          f"→ {args.out}/index.html (key: {args.out}/key.json, never send it to raters)"
          + (f"; each rater's link (with the token `panel serve` requires): {args.out}/rater-links.txt"
             if key.get("tokens") else ""))
    return 0


def panel_collect_command(args: argparse.Namespace) -> int:
    """Unblind and table returned ratings; nothing is written when any file is malformed."""
    from ttt.panel.ratings import PanelError, collect_ratings

    try:
        done = collect_ratings(args.ratings, args.out, args.preference, args.plot, args.key,
                               args.listening)
    except PanelError as exc:
        return bad_input(exc)
    print(f"{done['files']} ratings file(s) → {args.out}, "
          f"{args.preference or 'preference.csv beside it'}" + (f", {args.plot}" if args.plot else ""))
    return 0


def panel_serve_command(args: argparse.Namespace) -> int:
    """Serve one panel on this machine; raters' Save posts their ratings into ratings/."""
    from ttt.panel.ratings import PanelError
    from ttt.panel.server import make_server

    try:
        server = make_server(args.panel_dir, args.host, args.port)
    except (PanelError, OSError, OverflowError) as exc:
        return bad_input(exc)
    host, port = server.server_address[:2]
    if not _loopback(args.host):
        print(f"warning: --host {args.host}: anyone who can reach port {port} can load the page "
              "and clips; ratings still need a rater's token, but traffic is plain HTTP (tokens "
              "and ratings can be read on the network). See docs/reliability.md (the panel server).",
              file=sys.stderr, flush=True)
    # Ctrl-C (and SIGTERM) stop it cleanly even when a script started it in the background: the
    # shell then hands Python an ignored SIGINT, and Python never raises KeyboardInterrupt. Set
    # before the address is printed: a caller that signals as soon as it reads the address (CI
    # did, under load) must not find SIGINT still ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print(f"serving {args.panel_dir} on http://{host}:{port}/ ; send each rater their line of "
              f"{args.panel_dir}/rater-links.txt appended to that address (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(sub) -> None:
    panel = sub.add_parser("panel", help="human listening panel: build a blind page, collect ratings",
                           description="Blind A/B listening panel (seed 000 item 11). Exit codes: "
                                       "0 done, 2 bad input (one line naming the file or key). Guide: docs/listening-panel.md.",
                           epilog=example("python -m ttt panel serve results/listening/long_form"))
    ps = panel.add_subparsers(dest="panel_command", required=True)
    b = ps.add_parser("build", help="cut clips from paired audio and write the blind page",
                      description="Cut clips from two or more systems' audio and write a blind page "
                                  "(index.html, clips/, key.json) into --out.",
                      epilog=example("python -m ttt panel build --name demo --system on=results/a.wav "
                                     "--system off=results/b.wav --offsets 0 4 --clip 3 --out "
                                     "results/listening/demo"))
    b.add_argument("--name", required=True, help="panel name (folder and file names)")
    b.add_argument("--system", action="append", required=True, metavar="LABEL=PATH",
                   help="a system: its label (only in key.json) and a wav or generate cell "
                        "directory (out.wav); give two or more")
    b.add_argument("--offsets", type=float, nargs="+", required=True,
                   help="clip start times in the conversation (s)")
    b.add_argument("--clip", type=float, required=True, help="clip length (s)")
    b.add_argument("--seed", type=int, default=0, help="randomisation seed (with the rater id)")
    b.add_argument("--rater", action="append", default=[], help="a rater id to list (repeatable)")
    b.add_argument("--out", required=True, help="panel folder, e.g. results/listening/NAME")
    b.set_defaults(func=panel_build_command)
    c = ps.add_parser("collect", help="unblind returned ratings: MOS and preference tables, plot",
                      description="Check returned ratings files against their panel's key, unblind "
                                  "them and write the MOS and preference tables (and a plot). "
                                  "Nothing is written when any file is malformed.",
                      epilog=example("python -m ttt panel collect results/listening/demo/ratings "
                                     "--out results/tables/mos.csv --plot results/plots/mos.png"))
    c.add_argument("ratings", nargs="+", metavar="RATINGS",
                   help="ratings JSON files, or folders of them")
    c.add_argument("--out", required=True, help="MOS table (csv), e.g. results/tables/mos.csv")
    c.add_argument("--preference", default=None, help="preference table (default: beside --out)")
    c.add_argument("--plot", default=None, help="MOS vs conversation time plot (png)")
    c.add_argument("--key", action="append", default=[],
                   help="key.json of a panel (default: LISTENING/<panel>/key.json)")
    c.add_argument("--listening", default="results/listening", help="where panels live")
    c.set_defaults(func=panel_collect_command)
    v = ps.add_parser("serve", help="serve a panel locally; Save posts ratings into ratings/",
                      description="Serve a panel's page and clips over plain HTTP and store each "
                                  "rater's POSTed ratings (with that rater's token) in ratings/.",
                      epilog=example("python -m ttt panel serve results/listening/demo --port 8000"))
    v.add_argument("panel_dir", help="panel folder (holding index.html and key.json)")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback only; anything else is warned about)")
    v.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    v.set_defaults(func=panel_serve_command)
