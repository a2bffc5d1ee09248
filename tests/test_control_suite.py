"""The control suite (issue 24): offset sets, step-budgeted reproducible training with a declared
checkpoint criterion, fitted Mimi codebooks and their statistics."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ttt.data.codebooks import code_statistics, entropy_bits, fit_codebooks, levels
from ttt.data.demo import write_control_conversation
from ttt.data.recurrence import add_repeats, build_offset_set, read_offset_set, write_offset_set
from ttt.training.train import TrainConfig, train
from ttt.training.batches import mixed_batch
from ttt.moshi.tiny import DEMO_WORDS


# ---- offset sets ----------------------------------------------------------------------------

def _conversations(n=3, frames=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2048, (17, frames + i), generator=g) for i in range(n)]


def test_offset_sets_place_their_repeats_where_the_manifest_says(tmp_path):
    originals = _conversations()
    rows, manifest = build_offset_set(originals, ["a", "b", "c"], [5, 12, 40], 8, seed=3)
    write_offset_set(tmp_path / "set", rows, manifest)
    rows, manifest = read_offset_set(tmp_path / "set")
    T = manifest["frames"]
    assert T == 60 and rows.shape == (3 * 3 * 3, 17, T)
    seen = set()
    for r in manifest["rows"]:
        row, conv = rows[r["row"]], originals[r["conversation"]][:, :T]
        (s0, s1), (c0, c1) = r["source"], r["copy"]
        assert (c0, c1) == (T - 8, T) and c0 - s0 == r["offset"] and s1 - s0 == 8
        assert torch.equal(row[:, :c0], conv[:, :c0])           # nothing else touched
        if r["kind"] == "exact":
            assert torch.equal(row[:, c0:c1], conv[:, s0:s1])
        elif r["kind"] == "shuffled":
            order = np.array(r["order"])
            assert sorted(order) == list(range(8)) and (order != np.arange(8)).any()
            assert torch.equal(row[:, c0:c1], conv[:, s0:s1][:, order])
            assert not torch.equal(row[:, c0:c1], conv[:, s0:s1])
        else:
            other = originals[r["other"]]
            assert r["other"] != r["conversation"]
            assert torch.equal(row[:, c0:c1], other[:, s0:s1])
        seen.add((r["conversation"], r["offset"], r["kind"]))
    assert len(seen) == 27
    # the codes must be the manifest's
    (tmp_path / "set" / "manifest.json").write_text(
        json.dumps({**manifest, "codes_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):
        read_offset_set(tmp_path / "set")
    with pytest.raises(ValueError, match="do not fit"):
        build_offset_set(originals, ["a", "b", "c"], [60], 8)


def test_training_repeats_copy_their_source():
    batch = torch.stack([c[:, :80] for c in _conversations(4, 80, seed=1)])
    spec = {"fraction": 1.0, "length": [6, 10], "offset": [20, 50]}
    out, spans = add_repeats(batch, spec, torch.Generator().manual_seed(0))
    for row, original, span in zip(out, batch, spans):
        start, end = span
        changed = (row != original).any(0).nonzero()[:, 0]
        assert changed.numel() and start <= int(changed.min()) and int(changed.max()) < end
        length = end - start
        assert 6 <= length <= 10
        # some offset in range reproduces the copy from the original frames
        assert any(torch.equal(row[:, start:end], original[:, start - o:start - o + length])
                   for o in range(20, 51))
    none, spans = add_repeats(batch, {**spec, "fraction": 0.0}, torch.Generator().manual_seed(0))
    assert torch.equal(none, batch) and spans == [None] * 4


def test_mixed_batches_are_spans_of_the_conversations():
    codes = _conversations(3, 50, seed=2)
    batch = mixed_batch(codes, 4, 40, 6, torch.Generator().manual_seed(0))
    again = mixed_batch(codes, 4, 40, 6, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 17, 40) and torch.equal(batch, again)
    sources = set()
    for row in batch:
        for b in range(0, 40, 6):
            piece = row[:, b:b + 6]
            hits = [(i, s) for i, c in enumerate(codes) for s in range(c.shape[-1] - piece.shape[-1] + 1)
                    if torch.equal(c[:, s:s + piece.shape[-1]], piece)]
            assert hits, (b, "a block that is no span of any conversation")
            sources.add(hits[0][0])
    assert len(sources) > 1  # drawn from several conversations


# ---- step-budgeted training: reproducible, selected by a declared criterion -----------------

@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    out = {}
    for name, seeds in (("train", (0, 1)), ("val", (2, 3))):
        lines = [write_control_conversation(root / name / f"c{i}.wav", duration=3.0, recurrent=False,
                                            part_s=1.0, gap_s=0.5, seed=i, words=DEMO_WORDS)
                 for i in seeds]
        out[name] = root / name / "manifest.jsonl"
        out[name].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root, out


def _config(root, m, **overrides):
    return {"train": str(m["train"]), "eval": str(m["val"]), "base": "tiny-random",
            "lm_kwargs": dict(dim=16, num_heads=2, num_layers=2, context=8, card=2048, text_card=64,
                              depformer_dim=8, depformer_dim_feedforward=16,
                              depformer_num_layers=1, depformer_num_heads=1),
            "ttt": dict(start_layer=1, layer_frequency=1, chunk_size=4, lr=0.3,
                        delta_clip_fro_norm=None, init_std=0.5),
            "steps": 8, "batch_size": 2, "segment_frames": 30, "lr": 0.02, "log_every": 2,
            "checkpoint_every": 4, "cache_dir": str(root / "cache"),
            "recurrence": {"fraction": 0.5, "length": [4, 6], "offset": [10, 20]},
            "select": "best_eval_loss", "mix_blocks": 6, **overrides}


def _log(path):
    return list(csv.DictReader(open(path)))


@pytest.mark.slow
def test_step_budgeted_training_reproduces_its_loss_curve_bit_for_bit(manifests):
    root, m = manifests
    # lr 0.5: held-out loss is lowest early (step 2, then it climbs), so "best" is not "last"
    cfg = TrainConfig.from_dict(_config(root, m, lr=0.5))
    runs = [train(cfg, root / f"run{k}", log=lambda msg: None) for k in range(2)]
    logs = [_log(root / f"run{k}" / "train_log.csv") for k in range(2)]
    assert len(logs[0]) == 4 and [r["step"] for r in logs[0]] == ["2", "4", "6", "8"]
    for a, b in zip(*logs):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == \
               {k: v for k, v in b.items() if k != "elapsed_s"}
    # the TTT gain on the held-out repeats is logged beside validation loss, at every row
    row = logs[0][-1]
    for key in ("eval_loss", "eval_text_loss_off", "eval_copy_text_loss", "eval_ttt_gain_copy_text"):
        assert math.isfinite(float(row[key])), key
    assert float(row["eval_ttt_gain_text"]) == pytest.approx(
        float(row["eval_text_loss_off"]) - float(row["eval_text_loss"]))
    # the evaluated checkpoint is the declared criterion's: the lowest logged eval_loss
    losses = [float(r["eval_loss"]) for r in logs[0]]
    best_step = int(logs[0][int(np.argmin(losses))]["step"])
    assert runs[0]["selected"]["step"] == best_step == runs[1]["selected"]["step"]
    best = load_file(str(root / "run0" / "best" / "model.safetensors"))
    again = load_file(str(root / "run1" / "best" / "model.safetensors"))
    assert all(torch.equal(best[k], again[k]) for k in best)
    last = load_file(str(root / "run0" / "checkpoint" / "model.safetensors"))
    assert best_step < 8 and not all(torch.equal(best[k], last[k]) for k in best)
    with pytest.raises(ValueError, match="select"):
        TrainConfig.from_dict(_config(root, m, eval=None))
    with pytest.raises(ValueError, match="recurrence.offset"):
        TrainConfig.from_dict(_config(root, m, recurrence={"fraction": 1, "length": [4, 6],
                                                           "offset": [0, 3]}))


# ---- fitted codebooks -----------------------------------------------------------------------

def _quantizer():
    from moshi.quantization.vq import SplitResidualVectorQuantizer
    torch.manual_seed(0)
    q = SplitResidualVectorQuantizer(dimension=8, input_dimension=12, output_dimension=12,
                                     n_q=4, bins=16)
    for _proj, codebook, _i in levels(q):  # random codebooks, as the random Mimi's
        codebook.embedding_sum.normal_(0, 0.01)
    return q


class _Mimi(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quantizer = _quantizer()


def _latents(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(24, 12, generator=g) * 3
    return centers[torch.randint(0, 24, (n,), generator=g)] + 0.3 * torch.randn(n, 12, generator=g)


def _codes(q, x):
    return q.encode(x.T[None])[0]  # [n_q, N]


def test_fitted_codebooks_are_deterministic_and_spread_the_codes():
    x = _latents()
    a, b, c = _Mimi(), _Mimi(), _Mimi()
    before = _codes(a.quantizer, x)
    fit_codebooks(a, x, iters=8, seed=0)
    fit_codebooks(b, x, iters=8, seed=0)
    fit_codebooks(c, x, iters=8, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)              # same seed: bit for bit
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if "embedding_sum" in k)
    after = _codes(a.quantizer, x)
    assert entropy_bits(after[0], 16) > entropy_bits(before[0], 16) + 1.0
    assert entropy_bits(after[0], 16) > 3.0                         # of log2(16) = 4
    # the fitted first level reconstructs the projected latents better than the random one
    proj, cb, _ = levels(a.quantizer)[0]
    with torch.no_grad():
        z = proj(x.T[None])[0].T
    err = float(((z - cb.embedding[after[0]]) ** 2).mean())
    assert err < 0.5 * float((z ** 2).mean())


def test_code_statistics_against_counts_by_hand():
    # two conversations, 4 frames; channel 0 speaks frames 0-1 (0.0-0.16 s), channel 1 frame 3
    a = torch.zeros(2, 8, 4, dtype=torch.long)
    a[0, 0] = torch.tensor([5, 1, 2, 3])
    b = a.clone()
    b[0, 0] = torch.tensor([5, 5, 0, 0])
    align = [["hi", [0.0, 0.16], "SPEAKER_MAIN"], ["yo", [0.24, 0.32], "SPEAKER_OTHER"]]
    stats = code_statistics([a, b], [align, align], torch.tensor(5), card=16)
    # speech frames: 2 (ch 0) + 1 (ch 1) per conversation; silence code 5 at a[0,0,0], b[0,0,0:2]
    assert stats["speech_frames"] == 6
    assert stats["speech_frames_with_silence_code0"] == pytest.approx(3 / 6)
    # level 0 codes over both conversations and channels: 16 values
    level0 = [5, 1, 2, 3] + [0] * 4 + [5, 5, 0, 0] + [0] * 4
    p = np.bincount(level0) / 16
    p = p[p > 0]
    assert stats["entropy_bits"][0] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert stats["entropy_bits"][1] == 0.0
    # shared: of 64 codes, frames 1-3 of a[0,0] differ from b's (3 differ)
    assert stats["codes_shared_by_two_conversations"] == pytest.approx(61 / 64)


# ---- the report: rows land in the right cells --------------------------------------------

def test_report_recovers_a_planted_recall(tmp_path):
    """Runs whose per-row scores are built by hand: TTT recalls exact copies at offset 5 only
    (0.3 nats), no-TTT never; the report must find exactly that, with a collapsed CI."""
    from ttt.control.suite_report import build_report, load_runs, seed_conversation_bootstrap

    _, manifest = build_offset_set(_conversations(), ["a", "b", "c"], [5, 10], 8)
    for variant, recall in (("ttt", {5: 0.3, 10: 0.0}), ("no_ttt", {5: 0.0, 10: 0.0})):
        for seed in (0, 1):
            values = [1 + 0.1 * r["conversation"] + 0.05 * seed
                      - (recall[r["offset"]] if r["kind"] == "exact" else 0.0)
                      for r in manifest["rows"]]
            run = tmp_path / f"{variant}-s{seed}"
            run.mkdir()
            conditions = {"on": {"text": values, "audio": values}}
            (run / "offsets.json").write_text(json.dumps(
                {"conditions": conditions, "context": 4, "num_layers": 2}))
    report = build_report(load_runs(tmp_path), manifest, resamples=200)
    text = report["streams"]["text"]
    assert text["recall_exact"]["TTT"][5]["mean"] == pytest.approx(0.3)
    assert text["recall_exact"]["TTT"][5]["ci95"] == pytest.approx([0.3, 0.3])
    assert text["recall_exact"]["TTT"][10]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert text["recall_exact"]["no-TTT"][5]["mean"] == pytest.approx(0.0, abs=1e-12)
    contrast = text["contrasts"]["no-TTT − TTT"]
    assert contrast["exact-fresh@5"]["mean"] == pytest.approx(0.3)
    assert contrast["exact-fresh@10"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert text["nll"]["TTT"]["fresh@5"]["sd"] == pytest.approx(np.std([1.1, 1.15], ddof=1))
    assert report["reach"] == {"context": 4, "layers": 2, "frames": 8}
    # the bootstrap resamples seeds too: a seed effect widens the interval
    spread = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    lo, hi = seed_conversation_bootstrap(spread, 400)
    assert lo == 0.0 and hi == 1.0


# ---- the reading: scenarios whose answer is known ----------------------------------------------

def _planted_report(tmp_path, effects, noise=0.05):
    """Runs of 3 seeds × {ttt, no_ttt, full} over 8 conversations, offsets 5 (inside the reach of
    2 layers × 4 frames) and 10, 20 (beyond). Each row's NLL: 1 + a conversation level + row noise
    − ``effects[variant](kind, offset)``. Returns the report."""
    from ttt.control.suite_report import build_report, load_runs

    _, manifest = build_offset_set(_conversations(8, 40), list("abcdefgh"), [5, 10, 20], 8)
    rng = np.random.default_rng(7)
    for variant, effect in effects.items():
        for seed in (0, 1, 2):
            values = [1 + 0.1 * r["conversation"] + rng.normal(0, noise) - effect(r["kind"], r["offset"])
                      for r in manifest["rows"]]
            run = tmp_path / f"{variant}-s{seed}"
            run.mkdir()
            (run / "offsets.json").write_text(json.dumps(
                {"conditions": {"on": {"text": values, "audio": values}}, "context": 4,
                 "num_layers": 2}))
    return build_report(load_runs(tmp_path), manifest, resamples=300)


def _copies(amount, kinds=("exact",), beyond_only=False):
    return lambda kind, offset: amount if kind in kinds and (offset > 8 or not beyond_only) else 0.0


def test_reading_is_inconclusive_when_the_ceiling_never_copies(tmp_path):
    """TTT 'recalls' 0.3 nats beyond the reach, but full attention recalls nothing: no answer."""
    report = _planted_report(tmp_path, {"ttt": _copies(0.3, beyond_only=True), "no_ttt": _copies(0.0),
                                        "full": _copies(0.0)})
    reading = report["reading"]["text"]
    assert reading["answer"] == "inconclusive" and "ceiling never learned to copy" in reading["why"]
    assert reading["offsets_beyond_reach"] == [10, 20]


@pytest.mark.parametrize("recall, said", [(0.5, ": it copies"), (0.0, ": it does not copy")])
def test_reading_of_the_ceiling_alone_says_whether_it_copies(tmp_path, recall, said):
    """A call that trained only the ceiling (VARIANTS=full) has no reach to pool beyond."""
    report = _planted_report(tmp_path, {"full": _copies(recall)})
    reading = report["reading"]["text"]
    assert reading["answer"] == "inconclusive" and reading["why"].endswith(said), reading["why"]
    assert reading["recall full attention"]["mean"] == pytest.approx(recall, abs=0.03)


def test_reading_says_recall_when_ttt_copies_beyond_the_reach_in_order(tmp_path):
    report = _planted_report(tmp_path, {"ttt": _copies(0.3, beyond_only=True), "no_ttt": _copies(0.0),
                                        "full": _copies(0.5)})
    reading = report["reading"]["text"]
    assert reading["answer"] == "recall", reading["why"]
    assert reading["share of the ceiling's recall"] == pytest.approx(0.6, abs=0.05)
    assert reading["owed to the repeat (exact − fresh)"]["mean"] == pytest.approx(0.3, abs=0.03)
    assert "**recall**" in __import__("ttt.control.suite_report", fromlist=["markdown"]).markdown(report)


@pytest.mark.parametrize("ttt_effect, said", [
    (_copies(0.2, kinds=("exact", "shuffled", "fresh"), beyond_only=True), "adaptation, not recall"),
    (_copies(0.3, kinds=("exact", "shuffled"), beyond_only=True), "changes nothing measurable"),
    (_copies(-0.2, kinds=("exact", "shuffled", "fresh"), beyond_only=True), "hurts"),
])
def test_reading_says_no_recall_when_the_gain_does_not_owe_to_the_repeat(tmp_path, ttt_effect, said):
    """A gain equal on every kind of copy is adaptation; one on exact and shuffled copies alike
    does not need the order; a loss everywhere hurts. The ceiling copies in each case."""
    report = _planted_report(tmp_path, {"ttt": ttt_effect, "no_ttt": _copies(0.0), "full": _copies(0.5)})
    reading = report["reading"]["text"]
    assert reading["answer"] == "no recall", reading["why"]
    assert said in reading["why"]


def test_report_names_the_runs_that_overfit_from_the_start(tmp_path):
    """The natural suite's first GPU run: held-out loss lowest at the first evaluation, then rising
    while training loss fell, so the scored checkpoint is that first one. The report must say so
    for that run, and not for a run whose held-out loss fell before it rose, nor for one that rose
    only a little (training logs written as ``ttt train`` writes them)."""
    from ttt.control.suite_report import markdown

    _planted_report(tmp_path, {"ttt": _copies(0.0), "no_ttt": _copies(0.0), "full": _copies(0.5)})
    evals = {"ttt-s0": [7.08, 8.41, 16.57], "no_ttt-s0": [7.09, 6.50, 6.90], "full-s0": [7.0, 7.2, 7.5],
             "ttt-s1": [7.0, 6.0, 8.0]}  # the last: rose far, but after a better checkpoint
    for run, losses in evals.items():
        d = tmp_path / run
        with open(d / "train_log.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["step", "loss", "eval_loss"])
            w.writeheader()
            for step, loss in zip((250, 500, 2000), losses):
                w.writerow({"step": step, "loss": 5.0 - step / 1000, "eval_loss": loss})
        best = min(zip(losses, (250, 500, 2000)))
        (d / "summary.json").write_text(json.dumps({"selected": {"criterion": "best_eval_loss",
                                                                 "step": best[1], "eval_loss": best[0]}}))
    from ttt.control.suite_report import build_report, load_runs
    _, manifest = build_offset_set(_conversations(8, 40), list("abcdefgh"), [5, 10, 20], 8)
    report = build_report(load_runs(tmp_path), manifest, resamples=50)
    assert len(report["warnings"]) == 1 and report["warnings"][0].startswith("ttt-s0:")
    assert "7.08 → 16.57 at step 2000" in report["warnings"][0]
    assert "Runs that overfit from the start" in markdown(report)
