"""Key isolation on a real router app: key B can neither read nor score key A's decisions; unknown ids are 404.

The app is the one of test_bad_input.py (h2_apps.guard_app, registered in conftest.py): real Serve, HTTP,
MiniLM, parquet log.
"""

from __future__ import annotations

import pytest
from h2_apps import KEY_A, KEY_B
from serve_helpers import wait_until


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_key_b_cannot_read_or_score_key_a_decisions(guard_app):
    import httpx

    from barp_ray.serving.decision_log import key_id, read_decision_log, read_feedback

    a = httpx.Client(base_url=guard_app.base_url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60)
    b = httpx.Client(base_url=guard_app.base_url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60)
    with a, b:
        routed = a.post("/v1/route", json={"prompt": guard_app.prompts[0]})
        chat = a.post(
            "/v1/chat/completions",
            json={"model": "barp", "messages": [{"role": "user", "content": guard_app.prompts[1]}]},
        )
        assert routed.status_code == 200 and chat.status_code == 200, (routed.text, chat.text)
        ids = [routed.json()["decision_id"], chat.json()["barp"]["decision_id"]]
        for decision_id in ids:
            # B: neither read nor score; the answer is the same as for an id that does not exist
            for response in (
                b.get(f"/v1/decisions/{decision_id}"),
                b.post("/v1/feedback", json={"decision_id": decision_id, "score": 0.0}),
            ):
                assert response.status_code == 404, response.text
                assert response.json()["error"]["param"] == "decision_id"
            # A: reads it (with the prompt) and scores it
            got = a.get(f"/v1/decisions/{decision_id}")
            assert got.status_code == 200 and got.json()["decision_id"] == decision_id, got.text
            assert got.json()["key_hash"] == key_id(KEY_A)
            scored = a.post("/v1/feedback", json={"decision_id": decision_id, "score": 0.75})
            assert scored.status_code == 200 and scored.json()["durable"], scored.text
            assert a.get(f"/v1/decisions/{decision_id}").json()["feedback_score"] == 0.75
            assert b.get(f"/v1/decisions/{decision_id}").status_code == 404
        # B's own decision is B's; A cannot see it either
        mine = b.post("/v1/route", json={"prompt": guard_app.prompts[2]}).json()["decision_id"]
        assert a.get(f"/v1/decisions/{mine}").status_code == 404
        assert b.get(f"/v1/decisions/{mine}").status_code == 200
        # an id nobody made (time-ordered, recent): 404, not accepted
        from barp_ray.serving.decision_log import new_decision_id

        ghost = new_decision_id()
        assert a.post("/v1/feedback", json={"decision_id": ghost, "score": 1.0}).status_code == 404

    feedback = read_feedback(guard_app.log_dir).to_pandas()
    assert set(feedback["decision_id"]) >= set(ids) and ghost not in set(feedback["decision_id"])
    assert set(feedback[feedback["decision_id"].isin(ids)]["key_hash"]) == {key_id(KEY_A)}

    def logged():
        frame = read_decision_log(guard_app.log_dir)
        frame = frame[frame["decision_id"].isin([*ids, mine])]
        return frame if len(frame) == 3 else None

    rows = wait_until(logged, 30, what="the three decisions in the log").set_index("decision_id")
    assert rows.loc[ids[0], "key_hash"] == key_id(KEY_A) and rows.loc[mine, "key_hash"] == key_id(KEY_B)
