"""Property tests (hypothesis) over everything that reads untrusted input: the WebSocket
protocol state machine, the stream core, the PCM decoder, audio files, config files.

The rule everywhere: bad input ends in the module's own error (``ProtocolError``,
``AudioError``, ``ConfigError``), never in another exception, a hang or unbounded state.
Examples are derandomized (the same in every run); ``bench/fuzz_protocol.py`` is the
long-running, randomized counterpart for the protocol.

A few known bugs in modules outside this test's scope are detected at import time
(``*_FIXED``): while one is not fixed, its exception is tolerated in the properties and
its regression test is an expected failure; once fixed, both check it strictly.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from voiceid.audio.convert import MAX_CHANNELS, PcmDecoder
from voiceid.audio.io import load_audio
from voiceid.config import load_settings
from voiceid.errors import AudioError, ConfigError, ProtocolError
from voiceid.frontend import make_frontend
from voiceid.frontend.base import FrontEndSpec
from voiceid.sources.protocol import (
    START_FIELDS,
    STREAM_NAME_RE,
    Audio,
    Phase,
    StartMessage,
    Stop,
    StreamSession,
    parse_control,
    parse_events_query,
    parse_start,
)
from voiceid.stream.pipeline import StreamConfig, StreamCore
from voiceid.stream.scheduler import SchedulerConfig, SilentHop, WindowRequest

PROPS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW_PROPS = settings(PROPS, max_examples=40)


# --------------------------------------------------------------- known-bug probes


def _receive_checks_types() -> bool:
    try:
        StreamSession().receive(0)  # type: ignore[arg-type]
    except ProtocolError:
        return True
    except TypeError:
        return False
    return False


def _scheduler_rejects_huge_samples() -> bool:
    cfg = StreamConfig(scheduler=SchedulerConfig(min_voiced_s=0.0))
    core = StreamCore("probe", make_frontend(FrontEndSpec(kind="kaldi_fbank", num_bins=80)), cfg)
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * np.float32(1e20)
    try:
        hops = core.feed(x)
    except ProtocolError:
        return True
    windows = [h for h in hops if isinstance(h, WindowRequest)]
    assert windows, "the probe made no window"
    return all(np.isfinite(h.feats).all() for h in windows)


def _config_probe(tmp: Path, text: str | bytes) -> bool:
    path = tmp / "probe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        load_settings(path)
    except ConfigError:
        return True
    except Exception:
        return False
    return True


def lying_mp3(path: Path) -> Path:
    """A valid little MP3 whose Xing header claims 2^31 - 1 frames (~1.2e12 samples)."""
    x = (np.random.default_rng(0).standard_normal(8000) * 0.1).astype(np.float32)
    sf.write(path, x, 16000, format="MP3")
    data = bytearray(path.read_bytes())
    at = data.find(b"Xing")
    if at < 0:
        at = data.find(b"Info")
    if at < 0:
        pytest.skip("this libsndfile writes MP3 without a Xing/Info header")
    data[at + 8 : at + 12] = struct.pack(">I", 0x7FFFFFFF)
    path.write_bytes(bytes(data))
    return path


def _audio_bounded(tmp: Path) -> bool:
    try:
        load_audio(lying_mp3(tmp / "lie.mp3"))
    except AudioError:
        return True
    except MemoryError:
        return False
    return True


def _probe_dir() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="voiceid-probe-"))


_TMP = _probe_dir()
RECEIVE_TYPES_FIXED = _receive_checks_types()
HUGE_SAMPLES_FIXED = _scheduler_rejects_huge_samples()
CONFIG_KEYS_FIXED = _config_probe(_TMP, "1: 2\n")
CONFIG_DEPTH_FIXED = _config_probe(_TMP, "[" * 5000)
CONFIG_UTF8_FIXED = _config_probe(_TMP, b"model:\n  name: \xff\n")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        AUDIO_BOUNDED_FIXED = _audio_bounded(_TMP)
    except pytest.skip.Exception:
        AUDIO_BOUNDED_FIXED = True


# ------------------------------------------------------------------- strategies

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from([16000, 8000, 192000, 7999, 192001, 0, -1, 2**63, 1.5, "16000"]),
    st.sampled_from(["pcm_s16le", "f32le", "s16le", "", "room1", "x" * 65, "a b", "é"]),
    st.integers(min_value=-3, max_value=MAX_CHANNELS + 3),
)


@st.composite
def start_like(draw: st.DrawFn) -> dict[str, Any]:
    """Near-valid start objects: each field present or not, valid or hostile, plus
    sometimes unknown fields."""
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        obj["type"] = draw(st.sampled_from(["start", "start", "stop", "START", 1, None]))
    valid = {"stream": "room1", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 2}
    for key, good in valid.items():
        choice = draw(st.integers(0, 3))
        if choice in (1, 2):
            obj[key] = good
        elif choice == 3:
            obj[key] = draw(field_values)
    if draw(st.integers(0, 4)) == 0:
        obj.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return obj


def _dump(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


text_frames = st.one_of(
    start_like().map(_dump),
    st.just(json.dumps({"type": "stop"})),
    json_values.map(_dump),
    st.text(max_size=200),
    st.sampled_from(["", "{", "[" * 100_000, "1" * 5000, '{"type": "start"' * 3, "null"]),
)
binary_frames = st.one_of(
    st.binary(max_size=2048),
    st.just(b""),
    st.integers(0, 4).map(lambda k: b"\x00" * (k << 19)),  # up to 2 MiB
    text_frames.map(lambda t: t.encode("utf-8", "surrogatepass")),
)
wrong_types = st.one_of(
    st.integers(), st.none(), st.floats(), st.lists(st.integers(), max_size=3), st.just(object())
)
frames = st.one_of(
    text_frames,
    binary_frames,
    wrong_types if RECEIVE_TYPES_FIXED else st.nothing(),
)


# --------------------------------------------------------------------- protocol


@PROPS
@given(st.lists(frames, min_size=1, max_size=8))
def test_session_state_machine(messages: list[Any]) -> None:
    """Any message sequence: each message is a command or a ProtocolError (then the
    server closes: the conversation ends), and the phase follows the diagram."""
    session = StreamSession()
    audio_bytes = 0
    for msg in messages:
        before = session.phase
        try:
            cmd = session.receive(msg)
        except ProtocolError as exc:
            assert exc.message and len(exc.message) < 2000
            assert session.phase is before  # a refused message changes nothing
            return
        if isinstance(cmd, StartMessage):
            assert before is Phase.AWAIT_START and session.phase is Phase.STREAMING
            assert STREAM_NAME_RE.fullmatch(cmd.stream)
            assert parse_start(cmd.to_json()) == cmd
        elif isinstance(cmd, Audio):
            assert before is Phase.STREAMING and session.phase is Phase.STREAMING
            assert isinstance(cmd.data, bytes)
            audio_bytes += len(cmd.data)
        else:
            assert isinstance(cmd, Stop)
            assert before is Phase.STREAMING and session.phase is Phase.STOPPED
    assert session.bytes == audio_bytes


@PROPS
@given(st.one_of(text_frames, binary_frames))
def test_parsers_raise_only_protocol_error(message: str | bytes) -> None:
    for parse in (parse_start, parse_control):
        try:
            result = parse(message)
        except ProtocolError:
            continue
        if isinstance(result, StartMessage):
            assert 8000 <= result.sample_rate <= 192000 and 1 <= result.channels <= 8


@PROPS
@given(start_like(), st.text(min_size=1, max_size=12), json_values)
def test_unknown_start_fields_are_refused(obj: dict[str, Any], key: str, value: Any) -> None:
    assume(key not in START_FIELDS)
    obj = {"type": "start", "stream": "s", "sample_rate": 16000, **obj, key: value}
    obj["type"] = "start"
    with pytest.raises(ProtocolError):
        parse_start(_dump(obj))


@PROPS
@given(st.text(max_size=80))
def test_events_query(query: str) -> None:
    try:
        name = parse_events_query(query)
    except ProtocolError:
        return
    assert name is None or STREAM_NAME_RE.fullmatch(name)


@pytest.mark.xfail(
    not RECEIVE_TYPES_FIXED,
    strict=True,
    reason="bug: StreamSession.receive(int/None) raises TypeError, receive(5) in STREAMING "
    "returns Audio(b'\\0' * 5); fix in sources/protocol.py (see docs/reliability.md)",
)
@pytest.mark.parametrize("phase", ["await_start", "streaming"])
@pytest.mark.parametrize("message", [0, 5, None, 1.5])
def test_receive_refuses_non_frames(phase: str, message: Any) -> None:
    session = StreamSession()
    if phase == "streaming":
        session.receive(StartMessage("s", 16000).to_json())
    with pytest.raises(ProtocolError):
        session.receive(message)


# ------------------------------------------------------------------ stream core

SPECS = {
    "kaldi_fbank": FrontEndSpec(kind="kaldi_fbank", num_bins=80),
    "mel_power": FrontEndSpec(kind="mel_power", num_bins=40, cmn=False, target_dbfs=-30.0),
}


@st.composite
def chunks(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.sampled_from([0, 1, 7, 160, 799, 1600, 4000, 8000, 12345]))
    level = draw(st.sampled_from([0.0, 1e-6, 0.01, 0.3, 1.0, 4.0]))
    seed = draw(st.integers(0, 2**16))
    x = (np.random.default_rng(seed).standard_normal(n) * level).astype(np.float32)
    poison = draw(st.integers(0, 12))
    if n and poison == 0:
        x[draw(st.integers(0, n - 1))] = np.nan
    elif n and poison == 1:
        x[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.inf, -np.inf]))
    elif n and poison == 2 and HUGE_SAMPLES_FIXED:
        x[: n // 2 + 1] = draw(st.sampled_from([1e20, -3e38, 1e6]))
    return x


@SLOW_PROPS
@given(
    st.sampled_from(sorted(SPECS)),
    st.sampled_from(["webrtc", "energy"]),
    st.lists(chunks(), min_size=1, max_size=14),
    st.integers(0, 2**16),
)
def test_stream_core_feed(kind: str, vad: str, pieces: list[np.ndarray], seed: int) -> None:
    """Random chunk sizes, silence, noise, NaN/Inf, empty arrays: each feed is a
    ProtocolError (that consumes nothing) or valid hops; the state stays bounded even
    when no result ever comes back."""
    from voiceid.stream.vad import VadConfig

    cfg = StreamConfig(
        scheduler=SchedulerConfig(min_voiced_s=0.0 if seed % 2 else 1.0, vad=VadConfig(kind=vad)),
        max_unresolved=4,
    )
    core = StreamCore("s", make_frontend(SPECS[kind]), cfg)
    bucket_frames = set(cfg.scheduler.bucket_frames(SPECS[kind]))
    rng = np.random.default_rng(seed)
    last_seq = 0
    for x in pieces:
        before = core.scheduler.samples_in
        try:
            hops = core.feed(x)
        except ProtocolError:
            assert core.scheduler.samples_in == before
            continue
        assert core.scheduler.samples_in == before + x.size
        for hop in hops:
            assert hop.seq > last_seq
            last_seq = hop.seq
            if isinstance(hop, WindowRequest):
                assert hop.feats.dtype == np.float32 and hop.feats.ndim == 2
                assert hop.feats.shape[0] in bucket_frames
                assert hop.feats.shape[1] == SPECS[kind].num_bins
                assert np.isfinite(hop.feats).all(), "non-finite features reach the model"
                if rng.random() < 0.5:  # some results come back, most never do
                    names = ["a", "b"]
                    core.on_scores(hop, rng.uniform(-1, 1, 2), names)
            else:
                assert isinstance(hop, SilentHop)
                core.on_silent(hop)
        assert core.unresolved <= cfg.max_unresolved
        assert len(core._outcome) <= cfg.max_unresolved
    for bad in (np.zeros((2, 2), np.float32), np.array([[1.0]])):
        with pytest.raises(ProtocolError):
            core.feed(bad)
    events = core.close()
    assert all(math.isfinite(e.stream_time_s) for e in events)


@pytest.mark.xfail(
    not HUGE_SAMPLES_FIXED,
    strict=True,
    reason="bug: finite but huge float samples (|x| >= ~1e19) give NaN features sent to the "
    "model; fix in stream/scheduler.py _checked (see docs/reliability.md)",
)
def test_huge_samples_are_refused() -> None:
    core = StreamCore("s", make_frontend(SPECS["kaldi_fbank"]))
    with pytest.raises(ProtocolError):
        core.feed(np.full(32000, 1e20, dtype=np.float32))
    core.feed(np.full(32000, 0.5, dtype=np.float32))  # loud but sane is fine


# ------------------------------------------------------------------ PCM decoder


@PROPS
@given(
    st.sampled_from(["pcm_s16le", "f32le"]),
    st.sampled_from([8000, 16000, 22050, 44100, 48000, 11025, 192000]),
    st.integers(1, MAX_CHANNELS),
    st.binary(max_size=6000),
    st.lists(st.integers(0, 6000), max_size=6),
)
def test_pcm_decoder_any_split(
    encoding: str, rate: int, channels: int, data: bytes, cuts: list[int]
) -> None:
    """Any bytes, split anywhere: ProtocolError (f32le NaN/Inf) or the same finite
    samples as in one piece."""
    whole = PcmDecoder(rate, encoding, channels)  # type: ignore[arg-type]
    try:
        expected = np.concatenate([whole.decode(data), whole.flush()])
    except ProtocolError:
        assert encoding == "f32le"
        return
    assert np.isfinite(expected).all() and np.abs(expected).max(initial=0) <= 2.0
    split = PcmDecoder(rate, encoding, channels)  # type: ignore[arg-type]
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    out = [split.decode(data[a:b]) for a, b in itertools.pairwise(bounds)]
    got = np.concatenate([*out, split.flush()])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert split.pending_bytes == 0  # flush resets


@PROPS
@given(
    st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats(), st.booleans()),
    st.one_of(st.text(max_size=10), st.integers(), st.none()),
    st.one_of(st.integers(), st.booleans(), st.floats(), st.none()),
    st.one_of(st.text(max_size=3), st.integers(), st.none(), st.binary(max_size=3)),
)
def test_pcm_decoder_bad_arguments(rate: Any, encoding: Any, channels: Any, data: Any) -> None:
    try:
        dec = PcmDecoder(rate, encoding, channels)
    except ProtocolError:
        return
    try:
        dec.decode(data)
    except ProtocolError:
        assert not isinstance(data, bytes) or encoding == "f32le"


# ------------------------------------------------------------------ audio files

FORMATS = {
    "wav": {"format": "WAV", "subtype": "PCM_16"},
    "flac": {"format": "FLAC", "subtype": "PCM_16"},
    "ogg": {"format": "OGG", "subtype": "VORBIS"},
    "mp3": {"format": "MP3", "subtype": "MPEG_LAYER_III"},
}


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("audio")
    x = (np.random.default_rng(3).standard_normal(12000) * 0.1).astype(np.float32)
    out = {}
    for ext, kw in FORMATS.items():
        path = d / f"a.{ext}"
        try:
            sf.write(path, x, 16000, **kw)
        except (sf.LibsndfileError, TypeError, ValueError) as exc:  # pragma: no cover
            pytest.skip(f"libsndfile cannot write {ext}: {exc}")
        out[ext] = path.read_bytes()
    return out


@SLOW_PROPS
@given(
    st.sampled_from(sorted(FORMATS)),
    st.floats(0.0, 1.0),
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=12),
    st.booleans(),
)
def test_corrupt_audio_files(
    audio_files: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    ext: str,
    cut: float,
    flips: list[tuple[float, int]],
    truncate: bool,
) -> None:
    """Truncated at any point and/or bytes overwritten: AudioError or finite mono float32."""
    data = bytearray(audio_files[ext])
    if truncate:
        data = data[: int(cut * len(data))]
    for where, value in flips:
        if data:
            data[min(len(data) - 1, int(where * len(data)))] = value
    path = tmp_path_factory.mktemp("corrupt") / f"c.{ext}"
    path.write_bytes(bytes(data))
    try:
        y = load_audio(path)
    except AudioError:
        return
    except MemoryError:
        if AUDIO_BOUNDED_FIXED:
            raise
        return  # the known unbounded-read bug (test_lying_mp3_header)
    assert y.dtype == np.float32 and y.ndim == 1 and y.size > 0
    assert np.isfinite(y).all()


@pytest.mark.xfail(
    not AUDIO_BOUNDED_FIXED,
    strict=True,
    reason="bug: load_audio allocates what the header claims (4.5 TiB here) -> MemoryError; "
    "fix in audio/io.py: read in blocks (see docs/reliability.md)",
)
def test_lying_mp3_header(tmp_path: Path) -> None:
    try:
        y = load_audio(lying_mp3(tmp_path / "lie.mp3"))
    except AudioError:
        return
    assert y.size < 16000 * 10  # the file holds 0.5 s


# ------------------------------------------------------------------ config files

CONFIG_KEYS = ["model", "stream", "decision", "websocket", "mics", "db", "security", "x", "log"]
SUB_KEYS = ["name", "device", "port", "hop_s", "threshold", "profile_key_file", "level", "y"]
yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["auto", "cuda", "127.0.0.1", "INFO", ".nan", "~", "0x10"]),
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.one_of(st.sampled_from(SUB_KEYS), st.text(max_size=6)), inner)
    ),
    max_leaves=10,
)
config_docs = st.one_of(
    st.dictionaries(st.sampled_from(CONFIG_KEYS), yaml_values, max_size=4).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)
    ),
    yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True)),
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            "---\n...\n",
            "a: &x [*x]\n",
            "model: !!python/object/apply:os.system [true]\n",
            "model:\n\tname: x\n",
            "websocket: {port: 1e400}\n",
            "? [1, 2]\n: 3\n",
            "model: {name: &a x, device: *a}\n",
            "%YAML 9.9\n---\na: 1\n",
        ]
    ),
    st.dictionaries(json_scalars, yaml_values, max_size=3).map(yaml.safe_dump)
    if CONFIG_KEYS_FIXED
    else st.nothing(),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n) if CONFIG_DEPTH_FIXED else st.nothing(),
    st.binary(max_size=64) if CONFIG_UTF8_FIXED else st.nothing(),
)


@PROPS
@given(config_docs)
def test_config_files_raise_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, doc: str | bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass"))
    try:
        load_settings(path)
    except ConfigError as exc:
        assert str(exc)
    except (UnicodeDecodeError, TypeError, RecursionError):
        if CONFIG_KEYS_FIXED and CONFIG_DEPTH_FIXED and CONFIG_UTF8_FIXED:
            raise
        # known: invalid UTF-8 / surrogates, non-string keys, deep nesting (see xfails)


@pytest.mark.xfail(
    not (CONFIG_KEYS_FIXED and CONFIG_DEPTH_FIXED and CONFIG_UTF8_FIXED),
    strict=True,
    reason="bug: load_settings lets TypeError (non-string top-level keys), RecursionError "
    "(deep nesting) and UnicodeDecodeError (invalid UTF-8) out; fix in config.py "
    "(see docs/reliability.md)",
)
@pytest.mark.parametrize(
    "doc",
    [b"1: 2\n", b"null: x\n", b"[" * 5000, b"model:\n  name: \xff\n"],
    ids=["int-key", "null-key", "deep", "not-utf8"],
)
def test_config_regressions(tmp_path: Path, doc: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(doc)
    with pytest.raises(ConfigError):
        load_settings(path)
