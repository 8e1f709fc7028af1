"""The web page in a real headless Chromium (Selenium + Debian's chromium-driver).

The fake microphone plays one LibriSpeech speaker (a WAV built from the shared audio):
the page enrolls that person from the microphone (AudioWorklet capture, 16 kHz WAV
uploads to the session API, feedback and progress), then streams the microphone over
the WebSocket ``/stream`` protocol and must name the speaker in its live view (fed by
``/events``). A screenshot is saved under ``artifacts/`` (its path is printed).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import soundfile as sf

from tests.http import running_daemon
from voiceid.audio.io import load_audio

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
RECORD_S = 5.0  # one enrollment recording
T = TypeVar("T")

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="Debian chromium + chromium-driver are not installed "
        "(apt-get install chromium chromium-driver)",
    ),
]


def fake_mic_wav(files: list[Path], out: Path) -> Path:
    """The speaker's utterances back to back, 16 kHz 16-bit mono: what the mic 'hears'.

    Chromium plays the file from its start whenever a capture opens: the page keeps one
    capture open while enrolling and streaming, so the stream hears later utterances.
    """
    gap = np.zeros(3200, np.float32)  # 0.2 s between utterances
    parts = [x for f in files for x in (load_audio(f), gap)]
    sf.write(out, np.concatenate(parts), 16000, subtype="PCM_16")
    return out


@contextlib.contextmanager
def chromium(tmp: Path, wav: Path) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={tmp / 'profile'}",
        "--window-size=1280,1000",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, name: str) -> Path:
    """The whole page (not just the window) as artifacts/NAME; prints the path."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    print(f"screenshot: {path}")
    return path


def wait_for(check: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_enroll_and_identify_from_the_browser_microphone(
    model_home: Path, tmp_path: Path, speakers: dict[str, list[Path]]
) -> None:
    from selenium.webdriver.common.by import By

    name = sorted(speakers)[1]
    wav = fake_mic_wav(speakers[name][:8], tmp_path / "mic.wav")
    with running_daemon(tmp_path / "profiles.db") as live, chromium(tmp_path, wav) as driver:
        driver.get(live.http + "/")
        by_id = driver.find_element
        wait_for(lambda: "Ready" in by_id(By.ID, "status").text, 20, "the page to be ready")
        wait_for(lambda: by_id(By.ID, "events-state").text == "live", 10, "/events connected")
        unnamed = driver.execute_script(
            "return [...document.querySelectorAll('input, button, a, progress')]"
            ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
            " && !e.textContent.trim()).map(e => e.outerHTML)"
        )
        assert unnamed == [], f"controls without an accessible name: {unnamed}"

        # -- enroll from the microphone --------------------------------------------------
        by_id(By.ID, "enroll-name").send_keys("Reader")
        by_id(By.ID, "enroll-start").click()
        record = wait_for(
            lambda: by_id(By.ID, "record").is_displayed() and by_id(By.ID, "record"),
            10,
            "the Record button",
        )
        progress = by_id(By.ID, "progress")
        for n in range(1, 7):
            record.click()  # start
            time.sleep(RECORD_S)
            record.click()  # stop: upload, feedback
            wait_for(
                lambda n=n: len(driver.find_elements(By.CSS_SELECTOR, "#feedback li")) == n,
                20,
                f"feedback on recording {n}",
            )
            wait_for(lambda: record.is_enabled(), 10, "the Record button again")
            if int(progress.get_attribute("value")) == 100:
                break
        items = driver.find_elements(By.CSS_SELECTOR, "#feedback li")
        codes = [li.get_attribute("data-feedback") for li in items]
        print("enrollment feedback:", codes, by_id(By.ID, "progress-text").text)
        assert int(progress.get_attribute("value")) == 100, codes
        assert codes.count("ok") >= 3
        assert "accepted" in items[0].text
        screenshot(driver, "web-enroll.png")

        # -- stream the microphone: the same capture goes on (the fake microphone plays
        # the utterances after the enrolled ones), then save: the live view names her
        stream_input = by_id(By.ID, "mic-stream")
        stream_input.clear()
        stream_input.send_keys("browser-mic")
        by_id(By.ID, "stream-mic").click()
        wait_for(
            lambda: "Streaming your microphone" in by_id(By.ID, "mic-msg").text,
            10,
            "the stream to start",
        )
        save = by_id(By.ID, "enroll-save")
        assert save.is_enabled()
        save.click()
        wait_for(lambda: "Reader" in by_id(By.ID, "profiles").text, 10, "the profile in the table")
        assert "Saved Reader" in by_id(By.ID, "enroll-msg").text
        assert live.scorer_names() == ["Reader"]  # the live stream scores her from now on
        card = '.stream[data-stream="browser-mic"]'
        speaker = wait_for(
            lambda: next(
                (
                    e
                    for e in driver.find_elements(By.CSS_SELECTOR, f"{card} .speaker")
                    if e.text == "Reader"
                ),
                None,
            ),
            25,
            "the live view to name Reader",
        )
        assert speaker.get_attribute("data-state") == "known"
        wait_for(
            lambda: (
                driver.find_elements(By.CSS_SELECTOR, f'{card} li[data-name="Reader"] .num')
                and driver.find_element(By.CSS_SELECTOR, f'{card} li[data-name="Reader"] .num').text
                not in ("", "–")
            ),
            10,
            "a score bar for Reader",
        )
        with contextlib.suppress(AssertionError):  # a few points of score history
            wait_for(
                lambda: driver.execute_script(
                    "const p = document.querySelector(arguments[0]);"
                    "return p && p.getAttribute('points').split(' ').length >= 4;",
                    f"{card} polyline",
                ),
                6,
                "score history",
            )
        screenshot(driver, "web-page.png")
        assert by_id(By.ID, "stream-mic").get_attribute("aria-pressed") == "true"
        by_id(By.ID, "stream-mic").click()  # stop
        wait_for(
            lambda: "Stream ended" in driver.find_element(By.CSS_SELECTOR, f"{card} .speaker").text,
            15,
            "the stream to end",
        )
        logs = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not logs, logs
