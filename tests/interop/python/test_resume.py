"""Session resumption with stomp.py: a client whose socket dies without DISCONNECT connects again
with `resume-token` set to the `session-resume-token` of its last CONNECTED, and gets its session
back: its subscription (no SUBSCRIBE), its unacknowledged queue messages redelivered in order."""

import time

from stomp_helpers import uid


def test_a_killed_stomp_py_client_resumes_its_session_and_gets_its_unacked_messages_again(make_client):
    q = f"/queue/resume-{uid()}"
    pub, first = make_client(), make_client(**{"resume-token": ""})
    token = first.rec.connected_frame.headers["session-resume-token"]
    assert len(token) == 32
    first.subscribe(q, id="jobs", ack="client-individual")
    for i in range(1, 6):
        pub.send(q, f"m{i}")
    msgs = first.wait_messages(5)
    first.ack(msgs[0])
    first.close()  # the socket dies: no DISCONNECT
    pub.send(q, "m6")
    time.sleep(0.2)

    second = make_client(connect=False)
    connected = second.connect(**{"resume-token": token})
    assert connected.headers.get("session-resumed") == "true", connected.headers
    assert connected.headers["session-resume-token"] != token
    again = second.wait_messages(5)
    assert [m.body for m in again] == ["m2", "m3", "m4", "m5", "m6"]
    assert all(m.headers.get("subscription") == "jobs" for m in again)
    assert all(m.headers.get("redelivered") == "true" for m in again[:4]), [dict(m.headers) for m in again]
    for m in again:
        second.ack(m)
    pub.send(q, "m7")
    assert second.wait_body("m7").headers.get("redelivered") is None


def test_a_used_resume_token_gives_stomp_py_a_fresh_session(make_client):
    first = make_client(**{"resume-token": ""})
    token = first.rec.connected_frame.headers["session-resume-token"]
    first.close()
    time.sleep(0.2)
    second = make_client(connect=False)
    assert second.connect(**{"resume-token": token}).headers.get("session-resumed") == "true"
    third = make_client(connect=False)
    # The token was used; the session is held by `second`... and a token works once.
    assert third.connect(**{"resume-token": token}).headers.get("session-resumed") == "false"
