"""Property-based tests of the REST API against its own OpenAPI document (schemathesis).

The schema is loaded over real HTTP from a running daemon's ``/openapi.json`` and every
operation gets a small, derandomized batch of generated requests (valid and invalid).
Checks: never a 5xx, status codes documented, content types and bodies as documented.
Multipart uploads also get random bytes as "audio": a documented 4xx ``{"error": ...}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import MODEL_CACHE
from tests.http import Running, multipart, request, running_daemon

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A fresh daemon per test (open sessions, profiles), rate limit out of the way."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOICEID_HOME", str(MODEL_CACHE))
        db = tmp_path_factory.mktemp("st") / "profiles.db"
        with running_daemon(db, security={"http_rate_per_min": 1_000_000}) as running:
            yield running


@pytest.fixture
def api_schema(live: Running) -> Any:
    return schemathesis.openapi.from_url(live.http + "/openapi.json")


def test_every_operation_conforms(live: Running, api_schema: Any) -> None:
    """Positive and negative cases for every operation; failures gathered, then reported.

    (``schemathesis.pytest.from_fixture`` breaks under pytest 9 - ``Function._nodeid`` -
    so the operations are driven through hypothesis directly, one ``@given`` each.)
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    failures: list[str] = []
    calls = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case[Any]) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(base_url=live.http, checks=CHECKS, timeout=30)

            try:
                run()
            except Unsatisfiable:
                continue  # no negative case exists (an operation without inputs)
            except (Exception, BaseExceptionGroup) as exc:  # gathered, reported below
                failures.append(f"{operation.label} [{mode.value}]: {exc}")

    print(f"schemathesis: {len(operations)} operations, {calls} calls")
    assert not failures, "\n\n".join(failures)


def _is_file(prop: dict[str, Any]) -> bool:
    item = prop.get("items", prop)
    return item.get("format") == "binary" or "contentMediaType" in item


def upload_operations(doc: dict[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    """(method, path, file field, other required fields) of each multipart operation."""
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            content = (op.get("requestBody") or {}).get("content", {})
            form = content.get("multipart/form-data")
            if form is None:
                continue
            body = form["schema"]
            if "$ref" in body:
                body = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
            props = body.get("properties", {})
            files = [k for k, v in props.items() if _is_file(v)]
            assert len(files) == 1, (path, props)
            others = [k for k in body.get("required", []) if k not in files]
            out.append((method.upper(), path, files[0], others))
    return out


def test_uploads_of_random_bytes_are_4xx_errors(live: Running) -> None:
    doc = request(live.http + "/openapi.json").json()
    uploads = upload_operations(doc)
    assert len(uploads) >= 4, uploads  # enroll, utterances, verify, identify
    # A real enrollment session, so random bytes reach the decoder, not a 404.
    started = request(
        live.http + "/api/v1/enrollments", "POST", json_body={"name": "st-random-bytes"}
    )
    assert started.status == 201, started.body
    eid = started.json()["id"]
    seen: dict[str, set[int]] = {}

    @given(
        op=st.sampled_from(uploads),
        data=st.binary(max_size=4096),
        filename=st.sampled_from(["x.wav", "x.flac", "x.ogg", "x.mp3", "x", "x.bin"]),
    )
    @settings(
        max_examples=MAX_EXAMPLES * len(uploads),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(op: tuple[str, str, str, list[str]], data: bytes, filename: str) -> None:
        method, path, file_field, others = op
        url = live.http + path.replace("{eid}", eid)
        form = {field: "st-random-bytes" for field in others}
        reply = request(url, method, form=multipart(form, [(file_field, filename, data)]))
        seen.setdefault(path, set()).add(reply.status)
        where = (method, path, len(data), reply.status, reply.body[:300])
        assert 400 <= reply.status < 500, where
        assert str(reply.status) in doc["paths"][path][method.lower()]["responses"], where
        assert reply.headers["content-type"].startswith("application/json"), where
        error = reply.json()["error"]
        assert isinstance(error, dict) and isinstance(error.get("code"), str), where
        assert isinstance(error.get("message"), str), where

    check()
    print(f"random-bytes uploads: statuses {seen}")
    assert set(seen) == {path for _, path, _, _ in uploads}, seen
