"""``voiceid eval`` and ``voiceid cohort build`` on the shared LibriSpeech speech with the
real GE2E model: JSON fields and sane values, the DET PNG, the embedding cache, trial
lists, streaming, AS-norm with a disjoint cohort, one-line errors.

The full-set runs share one embedding cache (module scope), so only the first embeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceid.cli import main
from voiceid.models.embedder import Embedder
from voiceid.profiles.asnorm import Cohort, save_cohort

EMBED = ("--model", "resemblyzer-ge2e", "--device", "cpu", "--threads", "2")
COHORT_SPK = "1688,1998,2033,2414,2609"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert err == ""  # no progress bar off a TTY, no warnings
    assert out.count("\n") == 1
    return json.loads(out)


def one_line_error(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("voiceid: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_eval_shared_audio_json_and_plot(
    capsys: pytest.CaptureFixture[str],
    model_home: Path,
    audio_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    png = tmp_path / "det.png"
    r = run_json(
        capsys,
        "eval",
        str(audio_dir),
        *EMBED,
        "--cache-dir",
        str(cache_dir),
        "--plot",
        str(png),
        "--bootstrap",
        "200",
    )
    assert r["model"] == "resemblyzer-ge2e" and r["kind"] == "directory"
    assert r["enroll_utts"] == 3 and r["speakers"] == 10
    assert r["trials"] == {"target": 70, "nontarget": 630}
    e = r["eer"]
    assert 0.0 <= e["value"] < 0.05
    lo, hi = e["ci95"]
    assert lo <= e["value"] <= hi < 0.1
    for p in ("0.01", "0.05"):
        assert 0.0 <= r["min_dcf"][p]["value"] <= 1.0
    th = r["threshold"]
    assert th["value"] == 0.75 and th["source"] == "model default"
    assert th["far"] < 0.01 and th["frr"] < 0.1
    tf = r["target_far"]
    assert tf["far"] == 0.01 and tf["far_measured"] <= 0.01 and tf["resolvable"]
    assert 0.5 < tf["threshold"] < 0.9
    assert r["identification"]["top1"] >= 0.95 and r["identification"]["top5"] == 1.0
    assert r["scores"]["target_mean"] > r["scores"]["nontarget_mean"] + 0.2
    assert r["embeddings"]["files"] == 100 and r["embeddings"]["failed"] == 0
    assert r["streaming"] is None and r["norm"] == "none"
    assert r["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_eval_one_utterance_enrollment_text(
    capsys: pytest.CaptureFixture[str], model_home: Path, audio_dir: Path, cache_dir: Path
) -> None:
    code, out, err = run(
        capsys,
        "eval",
        str(audio_dir),
        *EMBED,
        "--cache-dir",
        str(cache_dir),
        "--enroll-utts",
        "1",
        "--bootstrap",
        "100",
    )
    assert code == 0, err
    assert "trials: 90 target, 810 non-target" in out
    for word in ("EER", "95 % CI", "minDCF p_target=0.01", "model default", "FAR 1.00 %"):
        assert word in out
    r = run_json(
        capsys,
        "eval",
        str(audio_dir),
        *EMBED,
        "--cache-dir",
        str(cache_dir),
        "--enroll-utts",
        "1",
        "--bootstrap",
        "0",
    )
    assert r["eer"]["value"] < 0.05 and r["eer"]["ci95"] is None
    assert r["embeddings"]["computed"] == 0  # all from the cache by now


def test_cache_hit_does_not_embed_again(
    capsys: pytest.CaptureFixture[str],
    model_home: Path,
    audio_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real = Embedder.embed

    def counting(self: Embedder, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Embedder, "embed", counting)
    argv = (
        "eval",
        str(audio_dir),
        *EMBED,
        "--speakers",
        "1688,1998",
        "--enroll-utts",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--bootstrap",
        "0",
    )
    first = run_json(capsys, *argv)
    assert calls == 20 and first["embeddings"]["computed"] == 20
    second = run_json(capsys, *argv)
    assert calls == 20  # no new embedding
    assert second["embeddings"] == {
        **first["embeddings"],
        "cached": 20,
        "computed": 0,
        "seconds": second["embeddings"]["seconds"],
    }
    assert second["eer"] == first["eer"] and second["trials"] == {"target": 18, "nontarget": 18}
    run_json(capsys, *argv, "--no-cache")
    assert calls == 40


def test_trial_list_matches_the_folder(
    capsys: pytest.CaptureFixture[str],
    model_home: Path,
    audio_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    spk = ["2033", "3005", "533"]
    lines = ["# label enroll test"]
    for s in spk:
        first = sorted((audio_dir / s).glob("*.flac"))[0]
        for t in spk:
            for f in sorted((audio_dir / t).glob("*.flac"))[1:]:
                lines.append(f"{int(s == t)} {s}/{first.name} {t}/{f.name}")
    trials = tmp_path / "trials.txt"
    trials.write_text("\n".join(lines) + "\n")
    common = (*EMBED, "--cache-dir", str(cache_dir), "--bootstrap", "50")
    listed = run_json(capsys, "eval", str(trials), "--audio-root", str(audio_dir), *common)
    folder = run_json(
        capsys, "eval", str(audio_dir), "--speakers", ",".join(spk), "--enroll-utts", "1", *common
    )
    assert listed["kind"] == "trial-list" and listed["identification"] is None
    assert listed["trials"] == folder["trials"] == {"target": 27, "nontarget": 54}
    assert listed["eer"] == folder["eer"]
    assert listed["min_dcf"] == folder["min_dcf"]
    assert listed["target_far"] == folder["target_far"]
    assert listed["embeddings"]["computed"] == 0

    bad = tmp_path / "bad.txt"
    bad.write_text("1 a.flac\n")
    code, _, err = run(capsys, "eval", str(bad), *common)
    assert code == 2
    one_line_error(err, "bad.txt:1", "LABEL ENROLL TEST")


def test_streaming(
    capsys: pytest.CaptureFixture[str], model_home: Path, audio_dir: Path, cache_dir: Path
) -> None:
    r = run_json(
        capsys,
        "eval",
        str(audio_dir),
        *EMBED,
        "--cache-dir",
        str(cache_dir),
        "--streaming",
        "--bootstrap",
        "0",
    )
    s = r["streaming"]
    assert len(s["enrolled_speakers"]) == 8 and s["unenrolled_speakers"] == ["367", "533"]
    assert s["enrolled_files"] == 56 and s["unenrolled_files"] == 14
    assert s["hops"] > 500
    assert s["hop_accuracy"] > 0.7 and s["settled_hop_accuracy"] > 0.85
    assert s["wrong_identity_hop_rate"] < 0.05
    assert s["false_identity_rate"] <= 0.15
    fc = s["first_correct_s"]
    assert fc["median"] is not None and 0.5 <= fc["median"] <= 4.0
    assert fc["never"] <= 5


def test_asnorm_with_a_disjoint_cohort(
    capsys: pytest.CaptureFixture[str],
    model_home: Path,
    audio_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    cohort = tmp_path / "cohort.npz"
    c = run_json(
        capsys,
        "cohort",
        "build",
        str(audio_dir),
        *EMBED,
        "--speakers",
        COHORT_SPK,
        "-o",
        str(cohort),
        "--cache-dir",
        str(cache_dir),
    )
    assert c["size"] == 5 and c["kind"] == "speaker-means" and c["files"] == 50
    assert c["speakers"] == COHORT_SPK.split(",") and cohort.is_file()
    common = (*EMBED, "--cache-dir", str(cache_dir), "--bootstrap", "0")
    r = run_json(
        capsys,
        "eval",
        str(audio_dir),
        "--exclude-speakers",
        COHORT_SPK,
        "--norm",
        "asnorm",
        "--cohort",
        str(cohort),
        *common,
    )
    assert r["norm"] == "asnorm" and r["cohort"]["size"] == 5 and r["speakers"] == 5
    assert r["trials"] == {"target": 35, "nontarget": 140}
    assert r["eer"]["value"] < 0.15
    assert r["threshold"]["value"] is None  # AS-norm scores are not cosines
    assert r["scores"]["target_mean"] > r["scores"]["nontarget_mean"] + 2

    # the cohort's speakers are evaluated too: refused
    code, _, err = run(
        capsys, "eval", str(audio_dir), "--norm", "asnorm", "--cohort", str(cohort), *common
    )
    assert code == 2
    one_line_error(err, "disjoint", "1688")
    # a cohort of another model: refused
    other = save_cohort(
        tmp_path / "other.npz", Cohort(np.eye(2, 256, dtype=np.float32), "0123456789abcdef")
    )
    code, _, err = run(
        capsys,
        "eval",
        str(audio_dir),
        "--exclude-speakers",
        COHORT_SPK,
        "--norm",
        "asnorm",
        "--cohort",
        str(other),
        *common,
    )
    assert code == 5
    one_line_error(err, "0123456789abcdef", "rebuild")


def test_usage_errors(
    capsys: pytest.CaptureFixture[str], model_home: Path, audio_dir: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "eval", str(audio_dir), *EMBED, "--norm", "asnorm")
    assert code == 2
    one_line_error(err, "--cohort")
    code, _, err = run(capsys, "eval", str(tmp_path / "nowhere"), *EMBED)
    assert code == 3
    one_line_error(err, "does not exist")
    code, _, err = run(capsys, "eval", str(audio_dir), *EMBED, "--speakers", "nobody")
    assert code == 2
    one_line_error(err, "nobody")
    code, _, err = run(capsys, "eval", str(audio_dir), *EMBED, "--target-far", "5")
    assert code == 2
    one_line_error(err, "--target-far")
