"""The web page of a daemon with tokens, in a real headless Chromium: it asks for the
token once, keeps it for the tab (sessionStorage, survives a reload), sends it to the
REST API and the WebSocket, and asks again when it is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.http import running_daemon
from tests.http.test_browser import CHROMEDRIVER, CHROMIUM, chromium, wait_for
from tests.security.test_auth_integration import STREAM, TOKENS
from voiceid.security.tokens import hash_token, new_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None, reason="chromium + chromium-driver needed"
    ),
]
BOTH = new_token()


def test_page_asks_for_the_token_once(model_home: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    tokens = [*TOKENS, {"name": "page", "sha256": hash_token(BOTH), "scopes": ["stream", "enroll"]}]
    with (
        running_daemon(tmp_path / "profiles.db", auth={"tokens": tokens}) as live,
        chromium(tmp_path, wav) as driver,
    ):
        by_id = driver.find_element
        driver.get(live.http + "/")
        form = wait_for(lambda: by_id(By.ID, "auth-card").is_displayed(), 20, "the token form")
        assert form
        assert "needs an API token" in by_id(By.ID, "auth-msg").text
        assert "Ready" not in by_id(By.ID, "status").text

        by_id(By.ID, "auth-token").send_keys("vid_not-a-real-token")
        by_id(By.ID, "auth-form").submit()
        wait_for(lambda: "refused" in by_id(By.ID, "auth-msg").text, 10, "the refusal")
        assert by_id(By.ID, "auth-card").is_displayed()

        by_id(By.ID, "auth-token").send_keys(BOTH)
        by_id(By.ID, "auth-form").submit()
        wait_for(lambda: "Ready" in by_id(By.ID, "status").text, 20, "the page to be ready")
        wait_for(lambda: by_id(By.ID, "events-state").text == "live", 10, "/events connected")
        assert not by_id(By.ID, "auth-card").is_displayed()
        assert by_id(By.ID, "forget-token").is_displayed()
        stored = driver.execute_script("return sessionStorage.getItem('voiceid.token')")
        assert stored == BOTH

        driver.refresh()  # the tab keeps its token: no form
        wait_for(lambda: "Ready" in by_id(By.ID, "status").text, 20, "ready after a reload")
        assert not by_id(By.ID, "auth-card").is_displayed()
        assert by_id(By.ID, "no-profiles").is_displayed()  # the profiles were listed

        # a token without the enroll scope: the profiles cannot be listed, says so
        driver.execute_script(f"sessionStorage.setItem('voiceid.token', '{STREAM}')")
        driver.refresh()
        wait_for(lambda: "Ready" in by_id(By.ID, "status").text, 20, "ready, stream token")
        wait_for(lambda: "lacks the scope" in by_id(By.ID, "profiles-msg").text, 10, "403 shown")

        by_id(By.ID, "forget-token").click()
        wait_for(lambda: by_id(By.ID, "auth-card").is_displayed(), 20, "asked again")
        assert driver.execute_script("return sessionStorage.getItem('voiceid.token')") is None
