"""The listening panel (seed 000 item 11): blind page, per-rater plan, ratings round trip in a real
headless browser (Debian's chromium), unblinding and the statistics against hand-computed values.

The browser tests install Debian's chromium + chromium-driver when missing and run as root, and
skip with the reason otherwise (no browser is ever downloaded from elsewhere).
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from ttt.cli.main import main
from ttt.panel.page import System, build_panel
from ttt.panel.server import make_server
from ttt.panel.ratings import (PanelError, collect_ratings, fnv1a32, mulberry32, pair_sides, rater_plan,
                         sign_test, t_quantile_975)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
RATE = 24000
# Distinctive labels and folder names: none of them may reach the page.
ON, OFF = "TTTonSystemX", "baselineSystemY"
OFFSETS, CLIP, SEED = [0.0, 4.0], 3.0, 7


def synth(kind: str, seconds: float = 9.0) -> np.ndarray:
    """A voiced-sounding signal (amplitude-modulated harmonics) or a noisy one: two 'systems'."""
    t = np.arange(int(seconds * RATE)) / RATE
    if kind == "voiced":
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
        return (0.3 * env * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t))).astype(np.float32)
    return (0.2 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("secretcells")
    paths = {}
    for label, kind in ((ON, "voiced"), (OFF, "noise")):
        cell = root / f"{label}-cell"
        cell.mkdir()
        sf.write(str(cell / "out.wav"), synth(kind), RATE)  # a generate cell's audio
        paths[label] = cell
    return paths


@pytest.fixture(scope="module")
def panel(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("listening") / "demo"
    build_panel("demo", [System(ON, sources[ON] / "out.wav"), System(OFF, sources[OFF] / "out.wav")],
                OFFSETS, CLIP, SEED, out, raters=["r1", "r2"])
    return out


def key_of(panel_dir) -> dict:
    return json.loads((Path(panel_dir) / "key.json").read_text())


def ratings_doc(key, rater, mos=None, pref=None):
    """A ratings file as the page writes it. ``mos[(system, offset)]`` = score or None;
    ``pref[offset]`` = winning system, "tie" or None (absent = unrated)."""
    plan = rater_plan(key["seed"], key["items"], rater)
    items = {it["id"]: it for it in key["items"]}
    ratings = []
    for iid in plan["order"]:
        it = items[iid]
        if it["kind"] == "mos":
            c = key["clips"][it["clip"]]
            ratings.append({"item": iid, "clip": it["clip"], "plays": 1,
                            "score": (mos or {}).get((c["system"], c["offset_s"]))})
        else:
            a, b = pair_sides(it, plan["swap"][iid])
            want = (pref or {}).get(key["clips"][a]["offset_s"])
            choice = None if want is None else "tie" if want == "tie" else \
                "A" if key["clips"][a]["system"] == want else "B"
            ratings.append({"item": iid, "a": a, "b": b, "choice": choice, "plays": 2})
    return {"format": "listening-panel-ratings", "version": 1, "panel": key["panel"],
            "panel_id": key["panel_id"], "seed": key["seed"], "rater": rater,
            "order": plan["order"], "ratings": ratings}


def write(path, doc):
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


# ---------------------------------------------------------------------------------------------
# Build and blinding.

def test_clips_are_cut_at_the_offsets(panel, sources):
    key = key_of(panel)
    assert len(key["clips"]) == 4 and len(key["items"]) == 4 + 2  # 2×2 MOS items, 1 pair per offset
    for cid, c in key["clips"].items():
        clip, rate = sf.read(str(panel / "clips" / f"{cid}.wav"), dtype="float32")
        src, _ = sf.read(str(sources[c["system"]] / "out.wav"), dtype="float32")
        start = int(c["offset_s"] * RATE)
        assert rate == RATE and len(clip) == int(CLIP * RATE)
        inner = slice(RATE // 50, -RATE // 50)  # outside the 10 ms fades
        np.testing.assert_allclose(clip[inner], src[start:start + len(clip)][inner], atol=1 / 2 ** 14)
        assert abs(clip[0]) < 1e-3 <= np.abs(clip[inner]).max()  # faded in, not silent
    for it in key["items"]:
        if it["kind"] == "pair":  # a pair compares the two systems at one offset
            a, b = (key["clips"][c] for c in it["clips"])
            assert a["offset_s"] == b["offset_s"] and {a["system"], b["system"]} == {ON, OFF}


def test_page_names_no_system_and_is_self_contained(panel, sources):
    html = (panel / "index.html").read_text()
    key = key_of(panel)
    secrets = [ON, OFF, "secretcells", str(sources[ON]), "out.wav", "key.json", "offset", "ttt"]
    for s in secrets:
        assert s.lower() not in html.lower(), f"page leaks {s!r}"
    for s in ("http://", "https://", "<script src", "<link", "@import"):
        assert s not in html  # no CDN, nothing fetched but the relative clips
    assert all(f"clips/{cid}.wav" in html for cid in key["clips"])
    bundle = zipfile.ZipFile(panel / "demo-raters.zip")
    assert sorted(bundle.namelist()) == sorted(["index.html"] + [f"clips/{c}.wav" for c in key["clips"]])
    for name in bundle.namelist():
        assert ON.encode() not in bundle.read(name) and OFF.encode() not in bundle.read(name)
    notes = (panel / "QA-notes.md").read_text()
    assert "[index.html](index.html)" in notes and "../../tables/mos.csv" in notes
    assert "index.html?rater=r1" in notes and ON in notes  # QA notes are for the experimenter


def test_sides_and_order_vary_by_rater_and_are_recoverable(panel):
    key = key_of(panel)
    plans = {f"rater{i}": rater_plan(key["seed"], key["items"], f"rater{i}") for i in range(40)}
    pairs = [it["id"] for it in key["items"] if it["kind"] == "pair"]
    for pid in pairs:
        assert {p["swap"][pid] for p in plans.values()} == {True, False}
    assert len({tuple(p["order"]) for p in plans.values()}) > 20
    assert {p["order"][0] for p in plans.values()} == {it["id"] for it in key["items"]}
    assert rater_plan(key["seed"], key["items"], "rater3") == plans["rater3"]  # from the seed alone
    assert key["plans"]["r1"] == rater_plan(SEED, key["items"], "r1")  # recorded in key.json
    assert rater_plan(SEED + 1, key["items"], "rater3") != plans["rater3"]


def test_build_errors_and_rebuild_guard(sources, tmp_path):
    systems = [System(ON, sources[ON] / "out.wav"), System(OFF, sources[OFF] / "out.wav")]
    with pytest.raises(PanelError, match=r"out\.wav: system 'TTTonSystemX' has 9\.00 s of audio, "
                                         r"too short for a 3 s clip at offset 7 s"):
        build_panel("p", systems, [0, 7], 3, 0, tmp_path / "p")
    assert not (tmp_path / "p" / "index.html").exists()
    assert not list((tmp_path / "p").glob(".build*"))  # nothing half-written
    with pytest.raises(PanelError, match="missing.wav: audio of system 'x' not found"):
        build_panel("p", [System("x", tmp_path / "missing.wav"), systems[1]], [0], 1, 0, tmp_path / "p")
    out = tmp_path / "q"
    key = build_panel("q", systems, [0, 4], 3, 0, out)
    (out / "QA-notes.md").write_text("my notes")
    (out / "ratings").mkdir()
    write(out / "ratings" / "a.json", ratings_doc(key, "a"))
    assert build_panel("q", systems, [0, 4], 3, 0, out)["panel_id"] == key["panel_id"]
    assert (out / "QA-notes.md").read_text() == "my notes"  # the QA person's notes survive
    with pytest.raises(PanelError, match=r"ratings/a\.json: ratings for another build"):
        build_panel("q", systems, [0, 4], 2.5, 0, out)  # other clips would orphan a's ratings
    assert key_of(out)["clip_s"] == 3.0


def test_cli_build_bad_input_exits_2(sources, tmp_path, capsys):
    rc = main(["panel", "build", "--name", "p", "--system", f"{ON}={sources[ON]}",
               "--system", "broken", "--offsets", "0", "--clip", "1", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--system 'broken': expected LABEL=PATH" in err


# ---------------------------------------------------------------------------------------------
# Statistics and unblinding against hand-computed values.

def test_t_quantile_and_sign_test_hand_values():
    for df, want in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452)):
        assert t_quantile_975(df) == pytest.approx(want, abs=1e-4)
    assert sign_test(0, 0) is None
    assert sign_test(3, 3) == 1.0
    assert sign_test(5, 0) == 2 / 32
    assert sign_test(2, 7) == 2 * (1 + 9 + 36) / 512
    assert sign_test(6, 4) == 2 * (1 + 10 + 45 + 120 + 210) / 1024


def test_mulberry32_and_fnv_known_values():
    assert fnv1a32("") == 0x811C9DC5 and fnv1a32("a") == 0xE40C292C  # FNV-1a test vectors
    # First outputs × 2^32 printed by V8 (node) running the page's mulberry32.
    g, h = mulberry32(0), mulberry32(0xFFFFFFFF)
    assert [next(g) * 2 ** 32 for _ in range(2)] == [1144304738, 1416247]
    assert next(h) * 2 ** 32 == 3850105811


def three_raters(key):
    """Hand-made ratings: ties, a missing MOS score and missing preferences included."""
    return [
        ratings_doc(key, "r1", {(ON, 0.0): 4, (OFF, 0.0): 2, (ON, 4.0): 5, (OFF, 4.0): 1},
                    {0.0: ON, 4.0: ON}),
        ratings_doc(key, "r2", {(ON, 0.0): 5, (OFF, 0.0): None, (ON, 4.0): 5, (OFF, 4.0): None},
                    {0.0: ON, 4.0: OFF}),
        ratings_doc(key, "r3", {(ON, 0.0): 3, (OFF, 0.0): 2, (ON, 4.0): 4},
                    {0.0: "tie"}),
    ]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_collect_matches_hand_computed_tables(panel, tmp_path):
    key = key_of(panel)
    files = [write(tmp_path / f"{d['rater']}.json", d) for d in three_raters(key)]
    rc = main(["panel", "collect", *map(str, files), "--key", str(panel / "key.json"),
               "--out", str(tmp_path / "tables/mos.csv"), "--plot", str(tmp_path / "plots/mos.png")])
    assert rc == 0
    mos = {(r["system"], float(r["offset_s"])): r for r in read_csv(tmp_path / "tables/mos.csv")}
    t2 = 4.302652729911275  # t(0.975, 2)
    on0 = mos[(ON, 0.0)]  # 4, 5, 3: mean 4, sd 1
    assert (on0["n"], on0["missing"], on0["raters"]) == ("3", "0", "3")
    assert float(on0["mos"]) == 4 and float(on0["sd"]) == pytest.approx(1)
    assert float(on0["ci95_low"]) == pytest.approx(4 - t2 / 3 ** 0.5)
    assert float(on0["ci95_high"]) == pytest.approx(4 + t2 / 3 ** 0.5)
    on4 = mos[(ON, 4.0)]  # 5, 5, 4: mean 14/3, sd sqrt(1/3)
    assert float(on4["mos"]) == pytest.approx(14 / 3)
    assert float(on4["ci95_high"]) - float(on4["mos"]) == pytest.approx(t2 * (1 / 3) ** 0.5 / 3 ** 0.5)
    off0 = mos[(OFF, 0.0)]  # 2, missing, 2
    assert (off0["n"], off0["missing"], float(off0["mos"]), float(off0["sd"])) == ("2", "1", 2.0, 0.0)
    assert float(off0["ci95_low"]) == float(off0["ci95_high"]) == 2.0
    off4 = mos[(OFF, 4.0)]  # 1, missing, missing: no spread, no interval
    assert (off4["n"], off4["missing"], float(off4["mos"]), off4["sd"], off4["ci95_low"]) == \
        ("1", "2", 1.0, "", "")
    pref = {r["offset_s"]: r for r in read_csv(tmp_path / "tables/preference.csv")}
    assert {(r["system_a"], r["system_b"]) for r in pref.values()} == {(ON, OFF)}
    p0, p4, pall = pref["0.0"], pref["4.0"], pref["all"]
    assert (p0["a_wins"], p0["b_wins"], p0["ties"], p0["missing"]) == ("2", "0", "1", "0")
    assert float(p0["sign_test_p"]) == 0.5 and float(p0["tie_rate"]) == pytest.approx(1 / 3)
    assert (p4["a_wins"], p4["b_wins"], p4["ties"], p4["missing"]) == ("1", "1", "0", "1")
    assert float(p4["sign_test_p"]) == 1.0 and float(p4["a_rate"]) == 0.5
    assert (pall["a_wins"], pall["b_wins"], pall["ties"], pall["n"]) == ("3", "1", "1", "5")
    assert float(pall["sign_test_p"]) == 2 * 5 / 16
    assert (tmp_path / "plots/mos.png").stat().st_size > 5000


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {**d, "format": "something-else"}, "not a listening-panel ratings file"),
    (lambda d: {**d, "version": 2}, "version 2 not supported"),
    (lambda d: {k: v for k, v in d.items() if k != "rater"}, "key 'rater' missing"),
    (lambda d: {**d, "panel_id": "0" * 16}, "rated build 0000000000000000"),
    (lambda d: {**d, "rater": "r9"}, "item order does not match seed 7 and rater 'r9'"),
    (lambda d: {**d, "order": d["order"][::-1]}, "item order does not match"),
    (lambda d: _set(d, "mos", score=6), "score 6 must be an integer 1-5 or null"),
    (lambda d: _set(d, "mos", score="4"), "score '4' must be an integer 1-5 or null"),
    (lambda d: _set(d, "mos", score=3.5), "score 3.5 must be an integer"),
    (lambda d: _set(d, "mos", score=True), "score True must be an integer"),
    (lambda d: _set(d, "pair", choice="C"), "choice 'C' must be one of"),
    (lambda d: _swap_sides(d), "A/B sides of item"),
    (lambda d: {**d, "ratings": d["ratings"][:-1]}, "1 item(s) absent"),
    (lambda d: {**d, "ratings": d["ratings"] + d["ratings"][:1]}, "rated twice"),
    (lambda d: {**d, "ratings": [{**d["ratings"][0], "item": "mdeadbeef00"}] + d["ratings"][1:]},
     "unknown or missing item id 'mdeadbeef00'"),
])
def test_malformed_ratings_rejected_with_clear_error(panel, tmp_path, capsys, mutate, message):
    good = three_raters(key_of(panel))[0]
    bad = write(tmp_path / "bad.json", mutate(json.loads(json.dumps(good))))
    ok = write(tmp_path / "ok.json", three_raters(key_of(panel))[1])
    out = tmp_path / "mos.csv"
    rc = main(["panel", "collect", str(ok), str(bad), "--key", str(panel / "key.json"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {bad}: ") and message in err, err
    assert not out.exists() and not (tmp_path / "preference.csv").exists()  # nothing half-written


def _set(doc, kind, **values):
    for r in doc["ratings"]:
        if ("score" in r) == (kind == "mos"):
            r.update(values)
            return doc


def _swap_sides(doc):
    for r in doc["ratings"]:
        if "choice" in r:
            r["a"], r["b"] = r["b"], r["a"]
            return doc


def test_collect_rejects_second_file_of_a_rater_and_missing_key(panel, tmp_path):
    doc = three_raters(key_of(panel))[0]
    a, b = write(tmp_path / "a.json", doc), write(tmp_path / "b.json", doc)
    with pytest.raises(PanelError, match=r"b\.json: rater 'r1' already rated panel 'demo' in .*a\.json"):
        collect_ratings([a, b], tmp_path / "mos.csv", keys=[panel / "key.json"])
    with pytest.raises(PanelError, match=r"nowhere/demo/key\.json: panel key not found"):
        collect_ratings([a], tmp_path / "mos.csv", listening=tmp_path / "nowhere")


def test_cli_exit_code_2_end_to_end(panel, tmp_path):
    """The real command line: one line on stderr, exit 2, no table."""
    bad = write(tmp_path / "bad.json", {"format": "listening-panel-ratings"})
    done = subprocess.run([sys.executable, "-m", "ttt", "panel", "collect", str(bad), "--key",
                           str(panel / "key.json"), "--out", str(tmp_path / "mos.csv")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {bad}: version None not supported (expected 1)"]
    assert not (tmp_path / "mos.csv").exists()


# ---------------------------------------------------------------------------------------------
# The page in a real headless browser.

@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium + chromedriver, installed here when missing (root only), like the SLURM
    lab; skipped with the reason where that cannot happen."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[test]')")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.geteuid() != 0:
            pytest.skip("Debian chromium/chromium-driver missing and not root to apt-get install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run("apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                              "chromium chromium-driver", shell=True, capture_output=True, text=True,
                              env=env, timeout=1200)
        if done.returncode != 0 or not CHROMEDRIVER.exists():
            pytest.skip(f"cannot install Debian chromium: {(done.stderr or done.stdout)[-300:]}")
    return CHROMIUM


@pytest.fixture
def browser(chromium, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def by_id(driver, id_):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, id_)


def play(driver, audio) -> dict:
    """Play a clip until its clock has visibly advanced (muted fake output is fine)."""
    return driver.execute_async_script("""
        const [a, done] = arguments;
        const t0 = performance.now();
        a.play().catch(e => done({error: String(e)}));
        (function poll() {
          if (a.currentTime > 0.2 || performance.now() - t0 > 8000) {
            a.pause(); done({currentTime: a.currentTime, played: a.played.length});
          } else setTimeout(poll, 50);
        })();""", audio)


def rate_all(driver, skip=()):
    """Rate every item in page order (a pattern the test can predict), playing each clip; returns
    {item id: (answer, [clip srcs shown])}."""
    from selenium.webdriver.common.by import By
    answers = {}
    total = int(driver.execute_script("return DATA.items.length"))
    for i in range(total):
        box = by_id(driver, "item")
        item, kind = box.get_attribute("data-item"), box.get_attribute("data-kind")
        audios = box.find_elements(By.TAG_NAME, "audio")
        heard = [play(driver, a) for a in audios]
        assert all(h.get("currentTime", 0) > 0.2 and h.get("played", 0) >= 1 for h in heard), heard
        srcs = [a.get_attribute("src").rsplit("/", 1)[-1][:-4] for a in audios]
        if i not in skip:
            answer = 1 + i % 5 if kind == "mos" else ["A", "tie", "B"][i % 3]
            by_id(driver, f"{'score' if kind == 'mos' else 'choice'}-{answer}").click()
            answers[item] = (answer, srcs)
        else:
            answers[item] = (None, srcs)
        assert by_id(driver, "progress-text").text == \
            f"Item {i + 1} of {total} · {len([a for a, _ in answers.values() if a is not None])} rated"
        if i < total - 1:
            by_id(driver, "next").click()
    return answers


def wait_for(predicate, seconds=10):
    t0 = time.time()
    while time.time() - t0 < seconds:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.browser
def test_rater_session_in_browser_downloads_ratings(browser, panel, tmp_path):
    key = key_of(panel)
    browser.get((panel / "index.html").as_uri())
    assert by_id(browser, "panel").get_attribute("hidden") is not None
    by_id(browser, "rater").send_keys("anna")
    by_id(browser, "start").click()
    answers = rate_all(browser)
    by_id(browser, "save").click()
    saved = wait_for(lambda: [p for p in browser.downloads.glob("*.json")])
    assert [p.name for p in saved] == ["ratings-demo-anna.json"]
    assert "Saved ratings-demo-anna.json" in by_id(browser, "status").text
    doc = json.loads(saved[0].read_text())
    plan = rater_plan(SEED, key["items"], "anna")
    assert doc["rater"] == "anna" and doc["panel_id"] == key["panel_id"]
    assert doc["order"] == plan["order"] == list(answers)  # the page showed the plan's order
    for r in doc["ratings"]:
        answer, shown = answers[r["item"]]
        assert r["plays"] >= 1
        if "score" in r:
            assert (r["score"], [r["clip"]]) == (answer, shown)
        else:
            assert (r["choice"], [r["a"], r["b"]]) == (answer, shown)  # A is the left player
    rc = main(["panel", "collect", str(saved[0]), "--key", str(panel / "key.json"),
               "--out", str(tmp_path / "mos.csv")])
    assert rc == 0
    rows = read_csv(tmp_path / "mos.csv")
    assert [r["n"] for r in rows] == ["1"] * 4 and {r["missing"] for r in rows} == {"0"}
    # Unblinded scores are those given to each system's clip.
    for r in rows:
        cid = next(c for c, v in key["clips"].items()
                   if v["system"] == r["system"] and v["offset_s"] == float(r["offset_s"]))
        item = next(it["id"] for it in key["items"] if it.get("clip") == cid)
        assert float(r["mos"]) == answers[item][0]


@pytest.mark.browser
def test_js_and_python_plans_agree(browser, panel):
    key = key_of(panel)
    browser.get((panel / "index.html").as_uri())
    raters = [f"r{i}" for i in range(30)] + ["anna", "Ö.ü-é", "日本", "x" * 64]
    js = browser.execute_script("return arguments[0].map(r => panelPlan(r))", raters)
    assert js == [rater_plan(SEED, key["items"], r) for r in raters]
    seeds = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789]
    js_streams = browser.execute_script(
        "return arguments[0].map(s => { const g = mulberry32(s); "
        "return Array.from({length: 50}, () => g()); })", seeds)
    for s, stream in zip(seeds, js_streams):
        g = mulberry32(s)
        assert stream == [next(g) for _ in range(50)]
    texts = ["", "a", "7:anna", "日本", "é" * 100]
    assert browser.execute_script("return arguments[0].map(fnv1a32)", texts) == list(map(fnv1a32, texts))


@pytest.mark.browser
def test_rater_id_from_url_and_progress_survives_reload(browser, panel):
    browser.get((panel / "index.html").as_uri() + "?rater=bob")
    assert by_id(browser, "rater").get_attribute("value") == "bob"
    by_id(browser, "start").click()
    kind = by_id(browser, "item").get_attribute("data-kind")
    by_id(browser, f"{'score-4' if kind == 'mos' else 'choice-B'}").click()
    browser.refresh()
    by_id(browser, "start").click()
    assert by_id(browser, "progress-text").text == "Item 1 of 6 · 1 rated"
    browser.get((panel / "index.html").as_uri())
    by_id(browser, "rater").send_keys("bad id!")
    by_id(browser, "start").click()
    assert "Enter a rater id" in by_id(browser, "intro-error").text


@pytest.fixture
def served(panel, tmp_path):
    """The panel copied and served by `ttt panel serve`'s server on a free port."""
    root = tmp_path / "served"
    shutil.copytree(panel, root)
    server = make_server(root, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def http(url, body=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_serves_page_and_clips_only(served):
    root, url = served
    cid = next(iter(key_of(root)["clips"]))
    assert http(f"{url}/?rater=x")[0] == 200 and http(f"{url}/clips/{cid}.wav")[0] == 200
    for secret in ("key.json", "QA-notes.md", "demo-raters.zip", "ratings/", "../key.json",
                   "rater-links.txt", f"clips/{cid}.wav%0a", f"clips/{cid}.wav/"):
        assert http(f"{url}/{secret}")[0] == 404, secret
    status, body = post(url, b'{"format": "nope"}', token=key_of(root)["tokens"]["r1"])
    assert status == 400 and "not a listening-panel ratings file" in json.loads(body)["message"]
    assert not (root / "ratings").exists() or not list((root / "ratings").iterdir())


def post(url, body, token=None, length=None, raw_headers=None):
    """A POST /ratings with exactly the headers given (http.client adds none of its own)."""
    import http.client
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.putrequest("POST", "/ratings", skip_accept_encoding=True)
        headers = dict(raw_headers or {})
        if length is not False:
            headers["Content-Length"] = str(len(body) if length is None else length)
        if token is not None:
            headers["X-Rater-Token"] = token
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(body)
        except OSError:  # the server answered and closed before reading the body
            pass
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def test_server_takes_each_raters_own_file_only(served):
    """Issue 16 item 5: tokens, Content-Length checks, exact rater ids, no temp files left."""
    root, url = served
    key = key_of(root)
    links = (root / "rater-links.txt").read_text().splitlines()
    assert links == [f"{r}\tindex.html?rater={r}&token={key['tokens'][r]}" for r in ("r1", "r2")]
    assert len(set(key["tokens"].values())) == 2 and all(len(t) >= 22 for t in key["tokens"].values())
    good = json.dumps(ratings_doc(key, "r1", {(ON, 0.0): 5})).encode()
    t1, t2 = key["tokens"]["r1"], key["tokens"]["r2"]
    assert post(url, good)[0] == 403                                  # no token
    wrong = t1[:-1] + ("y" if t1.endswith("x") else "x")              # differs from t1 always
    assert post(url, good, token=wrong)[0] == 403                     # a wrong one
    assert post(url, good, token=t2)[0] == 403                        # r2 cannot write r1's file
    assert post(url, good, token=t1)[0] == 200
    assert json.loads((root / "ratings" / "r1.json").read_text())["rater"] == "r1"
    newline = json.dumps({**ratings_doc(key, "r1"), "rater": "r1\n"}).encode()
    status, body = post(url, newline, token=t1)
    assert status in (400, 403) and not (root / "ratings" / "r1\n.json").exists()
    # Content-Length: missing 411, negative / non-integer 400, over the cap 413; never read.
    assert post(url, b"", token=t1, length=False)[0] == 411
    for bad in ("-1", "abc", "1e3", "+5", " ", "\xb2"):
        assert post(url, b"x" * 100, token=t1, length=bad)[0] == 400, bad
    assert post(url, b"", token=t1, length=20 << 20)[0] == 413
    # Bodies that used to leave a temporary file or kill the handler.
    deep = b"[" * 200_000 + b"]" * 200_000
    unhashable = json.dumps({**ratings_doc(key, "r1"), "ratings": [{"item": ["x"]}]}).encode()
    for body in (deep, unhashable, b"\xff\xfe", b"{" * 10):
        assert post(url, body, token=t1)[0] == 400
    assert sorted(p.name for p in (root / "ratings").iterdir()) == ["r1.json"]
    assert json.loads((root / "ratings" / "r1.json").read_text())["ratings"] == \
        json.loads(good)["ratings"]  # the refused posts changed nothing


def test_serve_bad_options_are_one_line(panel, tmp_path):
    for argv, message in (([str(panel), "--port", "99999"], "--port 99999: must be an integer in 0-65535"),
                          ([str(tmp_path)], "key.json: panel key not found")):
        done = subprocess.run([sys.executable, "-m", "ttt", "panel", "serve", *argv],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr


@pytest.mark.browser
def test_served_page_posts_ratings(browser, served):
    root, url = served
    browser.get(f"{url}/?rater=r2&token={key_of(root)['tokens']['r2']}")
    by_id(browser, "start").click()
    rate_all(browser, skip={2})
    by_id(browser, "save").click()
    wait_for(lambda: (root / "ratings" / "r2.json").exists())
    assert "Sent to the server: saved as ratings/r2.json (1 item(s) unrated)" in \
        wait_for(lambda: by_id(browser, "status").text)
    assert not list(browser.downloads.iterdir())
    done = collect_ratings([root / "ratings"], root / "mos.csv", keys=[root / "key.json"])
    assert sum(r["missing"] for r in done["mos"]) + sum(
        r["missing"] for r in done["preference"] if r["offset_s"] != "all") == 1


# ---------------------------------------------------------------------------------------------
# The workflow: the page from the short_form family's generate cells, then the ratings tables.

def snakemake(workdir, *args):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "NO_TORCH_COMPILE": "1"}
    done = subprocess.run([str(BIN / "snakemake"), "--snakefile", str(REPO / "workflow" / "Snakefile"),
                           "--directory", str(workdir), "--profile", str(REPO / "profiles/local"),
                           *args], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_workflow_builds_panel_and_tables_returned_ratings(cache, tmp_path):
    wd = tmp_path / "wf"
    shutil.copytree(REPO / "config", wd / "config")
    base = yaml.safe_load((REPO / "config/config.yaml").read_text())
    base.update(cache_dir=str(cache), launcher=str(REPO / "profiles/local/submitit.yaml"),
                families=["short_form"], short_form={**base["short_form"], "duration_s": 4},
                panel={**base["panel"], "offsets_s": [0, 1.5], "clip_s": 2})
    (wd / "config/config.yaml").write_text(yaml.safe_dump(base))
    snakemake(wd)
    panel = wd / "results/listening/short_form"
    key = key_of(panel)
    assert list(key["systems"]) == ["ttt_on", "ttt_off"]
    assert key["systems"]["ttt_on"]["source"] == "results/cells/short_form/duration~4/ttt~on/cell/out.wav"
    assert key["raters"] == ["r1", "r2", "r3"] and len(list((panel / "clips").glob("*.wav"))) == 4
    assert "ttt" not in (panel / "index.html").read_text().lower()
    assert (panel / "QA-notes.md").is_file() and not (wd / "results/tables/mos.csv").exists()
    # The ASR stage ran on both cells before the panel (what was heard, per clip, results side);
    # on the random codec the quality verdicts cannot judge.
    assert set(key["heard"]) == set(key["clips"]) and None not in key["heard"].values()
    cells = {r["cell"]: r for r in read_csv(wd / "results/tables/cells.csv")}
    on = cells["short_form/duration~4/ttt~on"]
    assert (on["asr_status"], on["codec_untrained"]) == ("ok", "True") and on["consistency_wer_off"]
    verdicts = {r["signal"]: r for r in read_csv(wd / "results/tables/verdicts.csv")}
    assert verdicts["quality.consistency_wer"]["verdict"] == "n/a"
    assert "codec is untrained" in verdicts["quality.consistency_wer"]["explanation"]
    assert (wd / "results/plots/consistency.png").is_file()
    (panel / "ratings").mkdir()
    for d in [ratings_doc(key, "r1", {("ttt_on", 0.0): 4, ("ttt_off", 0.0): 2}, {0.0: "ttt_on"}),
              ratings_doc(key, "r2", {("ttt_on", 0.0): 5, ("ttt_off", 0.0): 3}, {0.0: "tie"})]:
        write(panel / "ratings" / f"{d['rater']}.json", d)
    snakemake(wd)  # ratings present: the tables join the default target
    mos = {(r["system"], r["offset_s"]): r for r in read_csv(wd / "results/tables/mos.csv")}
    assert float(mos[("ttt_on", "0.0")]["mos"]) == 4.5 and mos[("ttt_on", "1.5")]["n"] == "0"
    assert (wd / "results/plots/mos.png").is_file()
    pref = read_csv(wd / "results/tables/preference.csv")
    assert (pref[0]["system_a"], pref[0]["a_wins"], pref[0]["ties"]) == ("ttt_on", "1", "1")


# ---------------------------------------------------------------------------------------------
# Issue 25 item 17: the panel name, stalled clients, disconnects (real sockets).

def test_posted_ratings_must_name_this_panel(served):
    root, url = served
    key = key_of(root)
    token = key["tokens"]["r1"]
    for name in ("other", "../outside"):
        doc = {**ratings_doc(key, "r1", {(ON, 0.0): 4}), "panel": name}
        status, body = post(url, json.dumps(doc).encode(), token=token)
        assert status == 400, body
        assert f"ratings of panel {name!r}, but the key is panel 'demo'" in json.loads(body)["message"]
    assert not (root / "ratings").exists() or not list((root / "ratings").iterdir())
    assert post(url, json.dumps(ratings_doc(key, "r1")).encode(), token=token)[0] == 200


def test_collect_never_reads_a_key_outside_the_listening_folder(panel, tmp_path):
    """A ``../`` panel name used to load ``LISTENING/../x/key.json``: any key.json on disk."""
    listening = tmp_path / "listening"
    listening.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    key = {**key_of(panel), "panel": "../outside"}
    (outside / "key.json").write_text(json.dumps(key))  # a key that would unblind the file
    doc = write(tmp_path / "r1.json", {**ratings_doc(key_of(panel), "r1"), "panel": "../outside"})
    with pytest.raises(PanelError, match=r"r1\.json: panel '\.\./outside' is not a panel name"):
        collect_ratings([doc], tmp_path / "mos.csv", listening=listening)
    assert not (tmp_path / "mos.csv").exists()


def _raw_client(port):
    import socket
    return socket.create_connection(("127.0.0.1", port), timeout=60)


def _closed_by_server(sock) -> bool:
    """True once the server has closed its end (a read returns EOF or a reset)."""
    import select
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionError:
        return True


def test_stalled_client_is_dropped_at_the_deadline(panel, tmp_path):
    """One byte per 0.5 s keeps a plain socket timeout from ever firing; the request deadline
    (2 s here, 30 s by default) drops the client anyway, and the server serves others."""
    root = tmp_path / "served"
    shutil.copytree(panel, root)
    server = make_server(root, port=0, deadline_s=2.0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sock = _raw_client(server.server_address[1])
        start, request = time.monotonic(), b"GET /index.html HTTP/1.1\r\nHost: x\r\n"
        for n in range(20):
            if _closed_by_server(sock):
                break
            sock.sendall(request[n:n + 1])
            time.sleep(0.5)
        dropped = time.monotonic() - start
        assert 2.0 <= dropped <= 4.0, dropped
        sock.close()
        assert http(f"http://127.0.0.1:{server.server_address[1]}/")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_served_panel_stops_on_sigint_when_started_with_sigint_ignored(panel, tmp_path):
    """A script that starts `panel serve` in the background (`&`, nohup, a CI runner) hands it an
    ignored SIGINT, and Python then never raises KeyboardInterrupt: it must still stop on SIGINT
    (it ran on after SIGINT for 60 s in a background CI run), and on SIGTERM, with exit 0."""
    import signal
    for sent in (signal.SIGINT, signal.SIGTERM):
        root = tmp_path / f"served-{sent.name}"
        shutil.copytree(panel, root)
        server = subprocess.Popen(
            [sys.executable, "-m", "ttt", "panel", "serve", str(root), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            assert "http://127.0.0.1:" in server.stdout.readline()
            server.send_signal(sent)
            _, err = server.communicate(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
        assert server.returncode == 0 and "Traceback" not in err, (sent.name, err)


def test_served_panel_drops_a_stalled_client_after_30_s_and_never_prints_a_traceback(panel, tmp_path):
    """The documented figures end to end, on `ttt panel serve`: a client sending one byte every
    20 s is dropped after 30 s (was still connected after 61 s), and a client that resets its
    connection mid-body costs one line on stderr, not a traceback."""
    import signal
    import socket
    import struct
    root = tmp_path / "served"
    shutil.copytree(panel, root)
    server = subprocess.Popen([sys.executable, "-m", "ttt", "panel", "serve", str(root), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stalled = None
    try:
        port = int(server.stdout.readline().split("http://127.0.0.1:")[1].split("/")[0])
        # A rater's browser gone mid-upload: the body never arrives, the connection is reset.
        gone = _raw_client(port)
        gone.sendall(b"POST /ratings HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nX-Rater-Token: "
                     + key_of(root)["tokens"]["r1"].encode() + b"\r\n\r\n{\"format\"")
        time.sleep(0.5)
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # RST
        stalled, start = _raw_client(port), time.monotonic()
        dropped = None
        for byte in b"GET /index.html HTTP/1.1\r\n":
            stalled.sendall(bytes([byte]))
            while time.monotonic() - start < 45:
                if _closed_by_server(stalled):
                    dropped = time.monotonic() - start
                    break
                time.sleep(0.25)
                if (time.monotonic() - start) % 20 < 0.25:
                    break  # time for the next byte
            if dropped is not None or time.monotonic() - start >= 45:
                break
        assert dropped is not None and 29.0 <= dropped <= 33.0, dropped
    finally:
        if stalled is not None:
            stalled.close()  # the server's shutdown must not wait on a client the test still holds
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
            raise AssertionError(f"panel serve still running 60 s after SIGINT; stderr: {err}")
    assert "Traceback" not in err, err
    assert all(line.startswith("panel serve: client 127.0.0.1 disconnected")
               for line in err.splitlines()), err
