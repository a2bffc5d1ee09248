"""Command line: ``python -m ttt <command>``."""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

# torch and moshi are imported inside the commands that compute: `submit` (the Snakemake driver,
# one per cell in flight on a login node) must stay light (tests/test_workflow_checks.py).


def no_compile():
    from moshi.utils.compile import no_compile as upstream
    return upstream()


def selfcheck(args: argparse.Namespace) -> int:
    """Run In-Place TTT on the embedded tiny model in every CPU execution mode and compare."""
    with no_compile():  # a CPU inductor compile of RMSNorm costs more than the whole check
        return _selfcheck(args)


def _selfcheck(args: argparse.Namespace) -> int:
    import torch

    from ttt.config import TTTConfig
    from ttt.moshi.surgery import apply_ttt, ttt_layers
    from ttt.session.telemetry import ttt_state
    from ttt.moshi.tiny import tiny_lm

    cfg = TTTConfig(start_layer=1, layer_frequency=2, chunk_size=args.chunk, lr=args.lr,
                        delta_clip_fro_norm=args.clip, init_std=0.5)
    upstream = tiny_lm(args.seed)
    lm = apply_ttt(tiny_lm(args.seed), cfg)
    g = torch.Generator().manual_seed(args.seed)
    seq = torch.randint(0, 24, (1, 17, args.tokens), generator=g)
    t0 = time.perf_counter()
    with torch.no_grad():
        parallel = lm.forward_text(seq)[1]
        off = upstream.forward_text(seq)[1]
        with lm.streaming(1):
            streamed = torch.cat([lm.forward_text(seq[:, :, t:t + 1])[1] for t in range(args.tokens)], 2)
            stats = ttt_state(lm)
    elapsed = time.perf_counter() - t0

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    C = cfg.chunk_size
    first = rel(parallel[:, :, :C], off[:, :, :C])
    stream_err = rel(streamed, parallel)
    print(f"ttt selfcheck: tiny moshi, TTT layers {sorted(ttt_layers(lm))}, chunk {C}, "
          f"lr {cfg.lr}, tau {cfg.clip}, {args.tokens} tokens ({elapsed:.2f} s)")
    print(f"  first chunk, TTT on vs off       max rel err {first:.2e}  (expect 0)")
    print(f"  streaming 1 token vs parallel    max rel err {stream_err:.2e}  (expect <= 1e-5)")
    print(f"  after first chunk, on vs off     max rel err {rel(parallel[:, :, C:], off[:, :, C:]):.2e}"
          "  (TTT at work)")
    for i, s in stats.items():
        print(f"  layer {i}: updates {int(s['updates'])}, clip events {int(s['clip_events'])}, "
              f"|W| {float(s['w_norm']):.4f}, |W - W0| {float(s['w_drift']):.3e}")
    ok = first == 0.0 and stream_err <= 1e-5
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def run_cell_command(args: argparse.Namespace) -> int:
    """Exit 0 for a completed or diverged cell, 2 for bad input, anything else is a crash."""
    import sys
    from ttt.eval.cell import load_cell_config, run_cell
    from ttt.eval.data import DataError
    from ttt.moshi.model import CheckpointError

    try:
        cfg = load_cell_config(args.config)
        if args.device:
            cfg = type(cfg).from_dict({**cfg.to_dict(), "device": args.device})
        with no_compile() if cfg.device == "cpu" else nullcontext():
            metrics = run_cell(cfg, args.out, log=lambda m: print(m, file=sys.stderr, flush=True),
                               fresh=args.fresh)
    except (ValueError, FileExistsError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ppl, wer = metrics["perplexity"], metrics["wer"]
    parts = [f"text ppl {ppl['text']:.3f}, audio ppl {ppl['audio']:.3f}" if ppl else None,
             f"WER {wer['wer']:.3f}" if wer and wer["wer"] is not None else None,
             f"{metrics['throughput']['ms_per_step_p50']:.1f} ms/step",
             f"diverged={metrics['diverged']}"]
    print(f"{cfg.cell}: " + ", ".join(p for p in parts if p) + f" → {args.out}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    """Exit 0 trained (or already at its last step), 2 bad config, data or checkpoint."""
    import sys
    from ttt.eval.data import DataError
    from ttt.moshi.model import CheckpointError
    from ttt.eval.train import load_train_config, train

    try:
        cfg = load_train_config(args.config)
        if args.device:
            cfg = type(cfg).from_dict({**cfg.to_dict(), "device": args.device})
        with no_compile():
            summary = train(cfg, args.out, log=lambda m: print(m, flush=True))
    except (ValueError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    final = summary["final"] or {}
    print(f"trained {summary['steps']} steps in {summary['train_time_s']:.0f} s on "
          f"{summary['device']}: text loss {final.get('text_loss', float('nan')):.4f}, audio loss "
          f"{final.get('audio_loss', float('nan')):.4f} → {args.out}/checkpoint")
    return 0


def submit_command(args: argparse.Namespace) -> int:
    """The Snakemake driver: submit one cell, wait, write status.json. A failed cell exits 0 (its
    status says why) so the matrix goes on; a bad launcher config exits 2."""
    from pathlib import Path
    from ttt.launch.launcher import read_launcher, submit_and_wait

    try:
        launcher = read_launcher(args.launcher)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    status = submit_and_wait(Path(args.config), Path(args.out), Path(args.status), launcher,
                             Path(args.log_dir))
    print(f"{args.out}: {status['status']}" + (f" ({status['error']})" if status.get("error") else ""))
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    """Tokenise a cell's inputs once (Mimi codes cache) before its cells run: Mimi alone, never
    the LM, on the CPU where the configured GPU is absent (ttt/eval/prepare.py)."""
    import json
    from pathlib import Path
    from ttt.eval.cell import load_cell_config
    from ttt.eval.data import DataError
    from ttt.moshi.model import CheckpointError
    from ttt.eval.prepare import preparation_device, prepare

    try:
        cfg = load_cell_config(args.config)
        with no_compile() if preparation_device(cfg.device) == "cpu" else nullcontext():
            marker = prepare(cfg)
    except (ValueError, DataError, CheckpointError) as exc:
        # Not fatal for the matrix: the cells reading these inputs fail with this same error in
        # their own status rows, and every other cell goes on.
        print(f"error: {exc}")
        Path(args.out).write_text(json.dumps({"error": str(exc)}) + "\n")
        return 0
    Path(args.out).write_text(json.dumps(marker, indent=1) + "\n")
    print(f"prepared {len(marker['items'])} input(s), {sum(marker['frames'])} frames "
          f"on {marker['device']}")
    return 0


def aggregate_command(args: argparse.Namespace) -> int:
    from ttt.report.aggregate import aggregate
    rows = aggregate(args.cells, args.tables, args.plots, args.families)
    failed = [r["cell"] for r in rows if r.get("status") not in ("ok", "diverged")]
    print(f"{len(rows)} cells → {args.tables}/cells.csv" + (f"; not ok: {failed}" if failed else ""))
    for row in rows:
        if row.get("status") == "corrupt":
            print(f"  corrupt: {row['cell']}: {row.get('error')}")
    return 0


def panel_build_command(args: argparse.Namespace) -> int:
    """Build a blind listening page; exit 2 with one line naming the file or key on bad input."""
    import sys
    from ttt.panel.page import build_panel, parse_system
    from ttt.panel.ratings import PanelError

    try:
        key = build_panel(args.name, [parse_system(s) for s in args.system], args.offsets,
                          args.clip, args.seed, args.out, raters=args.rater)
    except PanelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"panel {key['panel']}: {len(key['clips'])} clips, {len(key['items'])} items per rater "
          f"→ {args.out}/index.html (key: {args.out}/key.json, never send it to raters)"
          + (f"; each rater's link (with the token `panel serve` requires): {args.out}/rater-links.txt"
             if key.get("tokens") else ""))
    return 0


def panel_collect_command(args: argparse.Namespace) -> int:
    """Unblind and table returned ratings; nothing is written when any file is malformed."""
    import sys
    from ttt.panel.ratings import PanelError, collect_ratings

    try:
        done = collect_ratings(args.ratings, args.out, args.preference, args.plot, args.key,
                               args.listening)
    except PanelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{done['files']} ratings file(s) → {args.out}, "
          f"{args.preference or 'preference.csv beside it'}" + (f", {args.plot}" if args.plot else ""))
    return 0


def panel_serve_command(args: argparse.Namespace) -> int:
    """Serve one panel on this machine; raters' Save posts their ratings into ratings/."""
    import sys
    from ttt.panel.page import make_server
    from ttt.panel.ratings import PanelError

    try:
        server = make_server(args.panel_dir, args.host, args.port)
    except (PanelError, OSError, OverflowError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    if not _loopback(args.host):
        print(f"warning: --host {args.host}: anyone who can reach port {port} can load the page "
              "and clips; ratings still need a rater's token, but traffic is plain HTTP (tokens "
              "and ratings can be read on the network). See README 'Listening panel server'.",
              file=sys.stderr, flush=True)
    print(f"serving {args.panel_dir} on http://{host}:{port}/ ; send each rater their line of "
          f"{args.panel_dir}/rater-links.txt appended to that address (Ctrl-C stops)", flush=True)
    try:
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


def add_panel_parser(sub) -> None:
    panel = sub.add_parser("panel", help="human listening panel: build a blind page, collect ratings",
                           description="Blind A/B listening panel (seed 000 item 11). Exit codes: "
                                       "0 done, 2 bad input (one line naming the file or key).")
    ps = panel.add_subparsers(dest="panel_command", required=True)
    b = ps.add_parser("build", help="cut clips from paired audio and write the blind page")
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
    c = ps.add_parser("collect", help="unblind returned ratings: MOS and preference tables, plot")
    c.add_argument("ratings", nargs="+", metavar="RATINGS",
                   help="ratings JSON files, or folders of them")
    c.add_argument("--out", required=True, help="MOS table (csv), e.g. results/tables/mos.csv")
    c.add_argument("--preference", default=None, help="preference table (default: beside --out)")
    c.add_argument("--plot", default=None, help="MOS vs conversation time plot (png)")
    c.add_argument("--key", action="append", default=[],
                   help="key.json of a panel (default: LISTENING/<panel>/key.json)")
    c.add_argument("--listening", default="results/listening", help="where panels live")
    c.set_defaults(func=panel_collect_command)
    v = ps.add_parser("serve", help="serve a panel locally; Save posts ratings into ratings/")
    v.add_argument("panel_dir", help="panel folder (holding index.html and key.json)")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default loopback only; anything else is warned about)")
    v.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    v.set_defaults(func=panel_serve_command)


def speech_command(args: argparse.Namespace) -> int:
    """Exit 0 written, 2 for bad settings or a missing synthesiser/text package (one line)."""
    from ttt.eval.speech import SpeechError, write_conversations
    try:
        manifest = write_conversations(args.out, count=args.count, duration_s=args.duration,
                                       recurrence=args.recurrence, seed=args.seed,
                                       recur_after_s=args.recur_after,
                                       recur_fraction=args.recur_fraction,
                                       text_part=args.text_part, cache_dir=args.cache)
    except SpeechError as exc:
        print(f"error: {exc}")
        return 2
    print(manifest)
    return 0


def add_speech_parser(sub) -> None:
    s = sub.add_parser(
        "speech", help="synthesise two-speaker conversations (Festival voices, public-domain text)",
        description="Write COUNT stereo 24 kHz conversations with word alignments in "
                    "moshi-finetune's layout (OUT/manifest.jsonl); see README 'Speech data'. "
                    "Exit codes: 0 written, 2 bad settings or missing Debian packages.")
    s.add_argument("--out", required=True, help="output folder (manifest.jsonl, wavs, alignments)")
    s.add_argument("--count", type=int, required=True, help="number of conversations")
    s.add_argument("--duration", type=float, required=True, help="length of each (s)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--recurrence", action="store_true",
                   help="repeat earlier turns verbatim more than --recur-after seconds later")
    s.add_argument("--recur-after", type=float, default=10.0, help="minimum recurrence distance (s)")
    s.add_argument("--recur-fraction", type=float, default=0.5,
                   help="probability that a turn past --recur-after is a repeat")
    s.add_argument("--text-part", choices=["all", "train", "heldout"], default="all",
                   help="dictionary entries used: all, or the disjoint train / heldout parts")
    s.add_argument("--cache", default=None, help="sentence cache (default OUT/sentences)")
    s.set_defaults(func=speech_command)


def _lazy(module: str, name: str):
    """``module`` relative to the package ``ttt`` (e.g. ``report.verdicts``), imported on use."""
    import importlib
    return getattr(importlib.import_module(f"ttt.{module}"), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run-cell", help="run one matrix cell (see examples/cells/*.yaml)",
        description="Run one cell: load the model (a checkpoint directory or the embedded 'tiny' "
                    "default), tokenise the data once (cached), run the mode, and write "
                    "metrics.json, timeseries.csv, telemetry.csv and plots into --out, atomically. "
                    "Exit codes: 0 completed or diverged (recorded), 2 bad input, other = crash.")
    r.add_argument("--config", required=True, help="cell YAML (keys: see README 'Cell config')")
    r.add_argument("--out", required=True, help="output directory (must not exist)")
    r.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    r.add_argument("--fresh", action="store_true",
                   help="discard the snapshots an interrupted run of this --out left, instead of "
                        "resuming from them (a snapshot of another config, model or input is "
                        "refused without this flag)")
    r.set_defaults(func=run_cell_command)
    t = sub.add_parser(
        "train", help="train a Moshi-architecture LM with TTT layers (teacher forcing)",
        description="Train from scratch or only the TTT parameters of a checkpoint on "
                    "moshi-finetune manifests; writes OUT/checkpoint (run-cell loads it), "
                    "OUT/train_log.csv and OUT/summary.json; rerun with the same --out to resume. "
                    "Exit codes: 0 trained, 2 bad config, data or checkpoint.")
    t.add_argument("--config", required=True, help="training YAML (keys: README 'Training')")
    t.add_argument("--out", required=True, help="output directory (resumed when it holds a run)")
    t.add_argument("--device", default=None, help="override the config's device (cpu, cuda)")
    t.set_defaults(func=train_command)
    s = sub.add_parser("submit", help="submit one cell through submitit and wait (Snakemake driver)")
    s.add_argument("--config", required=True, help="cell YAML")
    s.add_argument("--out", required=True, help="cell output directory")
    s.add_argument("--status", required=True, help="status.json to write")
    s.add_argument("--launcher", default=None, help="launcher YAML (profiles/*/submitit.yaml)")
    s.add_argument("--log-dir", required=True, help="submitit log folder (shared filesystem on SLURM)")
    s.set_defaults(func=submit_command)
    p2 = sub.add_parser("prepare", help="tokenise a cell's inputs once (Mimi codes cache)")
    p2.add_argument("--config", required=True)
    p2.add_argument("--out", required=True, help="marker JSON to write")
    p2.set_defaults(func=prepare_command)
    a = sub.add_parser("aggregate", help="tables and plots over results/cells")
    a.add_argument("--cells", default="results/cells")
    a.add_argument("--tables", default="results/tables")
    a.add_argument("--plots", default="results/plots")
    a.add_argument("--families", nargs="*", default=[])
    a.set_defaults(func=aggregate_command)
    v = sub.add_parser(
        "verdicts", help="test-plan gates over a results folder → tables/verdicts.csv",
        description="Evaluate the success signals (stability, correctness, responsiveness, "
                    "observability, cost) over RESULTS/tables/cells.csv and the cell folders; write "
                    "verdicts.csv (one row per signal) and verdicts_cells.csv (every check). Exit "
                    "codes: 0 written, 1 with --strict when a gate fails, 2 bad input.")
    v.add_argument("--results", default="results", help="results folder (tables/, cells/)")
    v.add_argument("--tables", default=None, help="where to write (default RESULTS/tables)")
    v.add_argument("--thresholds", default=None,
                   help="YAML of gate settings (the config's verdicts: section); default: built-in")
    v.add_argument("--strict", action="store_true", help="exit 1 when any gate fails (CI)")
    v.add_argument("--rst", default=None, help="also write the summary as reStructuredText")
    v.add_argument("--rst-intro", default=None, help="text appended after the --rst summary")
    v.set_defaults(func=lambda args: _lazy("report.verdicts", "verdicts_command")(args))
    c = sub.add_parser(
        "compare", help="diff two runs' tables cell by cell (matched by parameters)",
        description="Match the cells of two runs by their parameters and write OUT/diff.csv (every "
                    "metric, regressions flagged), OUT/unmatched.csv and OUT/summary.txt. Exit "
                    "codes: 0 written, 1 with --strict when a regression is flagged, 2 bad input.")
    c.add_argument("a", metavar="RESULTS_A", help="earlier run: results folder or its cells.csv")
    c.add_argument("b", metavar="RESULTS_B", help="later run: results folder or its cells.csv")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--thresholds", default=None,
                   help="YAML metric: relative threshold (the config's compare: section)")
    c.add_argument("--strict", action="store_true", help="exit 1 when a regression is flagged")
    c.set_defaults(func=lambda args: _lazy("report.compare", "compare_command")(args))
    t = sub.add_parser(
        "asr", help="transcribe a generate cell's audio with faster-whisper and score it",
        description="Transcribe a generate cell's out.wav with a real offline recogniser "
                    "(faster-whisper, word timestamps) and write OUT/asr.json, asr.jsonl (per window: "
                    "Moshi's text beside what was heard, consistency WER, collapse indicators, "
                    "silence fraction) and words.jsonl; or --wav FILE prints one transcript. The "
                    "recogniser's output is cached by the audio's sha256, model and settings. "
                    "Exit codes: 0 written, 2 bad input.")
    t.add_argument("--cell", default=None, help="the cell's output directory (holding out.wav)")
    t.add_argument("--out", default=None, help="ASR output directory (replaced atomically)")
    t.add_argument("--wav", default=None, help="transcribe this audio file only (print the text)")
    t.add_argument("--config", default=None, help="YAML of the config's asr: section (default: built-in)")
    t.add_argument("--cache", default=None, help="cache folder of recogniser outputs (none = no cache)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads of the recogniser (0 = all)")
    t.add_argument("--launcher", default=None,
                   help="launcher YAML: with executor slurm the stage is its own SLURM job (the "
                        "launcher's GPUs); otherwise it runs in this process")
    t.set_defaults(func=lambda args: _lazy("launch.asr_job", "asr_command")(args))
    p = sub.add_parser("selfcheck", help="run TTT on the embedded tiny model and compare modes")
    p.add_argument("--tokens", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--chunk", type=int, default=16, help="TTT chunk size (default 16)")
    p.add_argument("--lr", type=float, default=0.5, help="TTT learning rate (default 0.5)")
    p.add_argument("--clip", type=float, default=1.0, help="Frobenius clip τ, <= 0 for off")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=selfcheck)
    add_panel_parser(sub)
    add_speech_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
