"""A bounded property-based run of schemathesis against a live server: no operation of the
schema answers with a server error, whatever input it gets (valid by the schema, or not)."""

from __future__ import annotations

import time
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

# Examples per operation and generation mode (valid inputs, then invalid ones), and a budget
# for the whole run: enough to reach every parameter's validation, small enough for a 2-core
# CI runner.
MAX_EXAMPLES = 5
BUDGET_S = 120.0
# Mutating operations run last, deletions at the very end, so reads meet the objects.
METHOD_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}


def test_no_server_errors(live_world: Any, live_server: Any) -> None:
    import requests
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import not_a_server_error

    raw = requests.get(f"{live_server.url}/api/schema/?format=json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    world = live_world
    headers = {"Authorization": f"Token {world.tokens['owner']}"}
    # Real objects for path parameters, so that operations get past the lookup and their
    # input handling is what is exercised.
    objects = {
        "cohort_id": world.alpha.pk, "slide_id": world.objects["cmu"].pk,
        "run_id": world.objects["run"].pk, "sweep_id": world.objects["sweep"].pk,
        "heatmap_id": world.objects["heatmap"].pk, "upload_id": world.objects["upload"].pk,
        "annotation_id": world.objects["annotation"].pk, "user_id": world.users["viewer"].pk,
    }  # fmt: skip
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: (METHOD_ORDER.get(op.method.upper(), 5), op.path))
    assert len(operations) > 40
    failures: list[str] = []
    calls = 0
    started = time.monotonic()

    from schemathesis import GenerationMode

    for operation, mode in [(op, m) for op in operations for m in GenerationMode]:
        names = {p.name for p in operation.path_parameters}
        fixed = {k: v for k, v in objects.items() if k in names}

        @hypothesis_settings(
            max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=operation.as_strategy(mode, path_parameters=fixed))
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=live_server.url, headers=headers, timeout=30)
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except Exception as exc:  # collected, so that one run reports every failure
                failures.append(f"{case.method} {case.formatted_path}: {exc}"[:500])

        try:
            check()
        except hypothesis.errors.Unsatisfiable:
            # Negative mode: an operation without inputs has nothing that can be made invalid.
            assert mode == GenerationMode.NEGATIVE, operation.path
        assert time.monotonic() - started < BUDGET_S, f"over budget after {operation.path}"
    assert calls >= len(operations) * MAX_EXAMPLES
    assert not failures, "\n".join(failures)
