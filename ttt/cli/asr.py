"""``ttt asr``: the ASR stage's parser; the command is :func:`ttt.launch.asr_job.asr_command`
(a SLURM job of its own or this process), imported when it runs."""
from __future__ import annotations

from ttt.cli.common import command, example


def add_parser(sub) -> None:
    t = sub.add_parser(
        "asr", help="transcribe a generate cell's audio with faster-whisper and score it",
        description="Transcribe a generate cell's out.wav with a real offline recogniser "
                    "(faster-whisper, word timestamps) and write OUT/asr.json, asr.jsonl (per window: "
                    "Moshi's text beside what was heard, consistency WER, collapse indicators, "
                    "silence fraction) and words.jsonl; or --wav FILE prints one transcript. The "
                    "recogniser's output is cached by the audio's sha256, model and settings. "
                    "Exit codes: 0 written, 2 bad input.",
        epilog=example("python -m ttt asr --cell results/cells/short_form/duration~8/ttt~on/cell "
                       "--out results/cells/short_form/duration~8/ttt~on/asr",
                       "python -m ttt asr --wav ttt/assets/playback/librivox-sense.flac"))
    t.add_argument("--cell", default=None, help="the cell's output directory (holding out.wav)")
    t.add_argument("--out", default=None, help="ASR output directory (replaced atomically)")
    t.add_argument("--wav", default=None, help="transcribe this audio file only (print the text)")
    t.add_argument("--config", default=None, help="YAML of the config's asr: section (default: built-in)")
    t.add_argument("--cache", default=None, help="cache folder of recogniser outputs (none = no cache)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads of the recogniser (0 = all)")
    t.add_argument("--launcher", default=None,
                   help="launcher YAML: with executor slurm the stage is its own SLURM job (the "
                        "launcher's GPUs); otherwise it runs in this process")
    t.set_defaults(func=command("launch.asr_job", "asr_command"))
