"""Issue 12 [A]: an alert is text in Slack too. Whatever lands in an alert's message (today our
own words; tomorrow perhaps an entity, a code, a note) is posted with Slack's mrkdwn escapes
and no bidirectional control, over real HTTP to a loopback server."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pytest_httpserver import HTTPServer
from sqlalchemy import Engine

from core.console import alerts
from core.db import make_engine, session_scope
from core.models import Alert

HOSTILE = "<!channel> <https://evil.example|pay here> & \u202etxet desrever\u202c *bold*"


def test_posted_alert_text_escapes_slack_markup(sqlite_url: str, httpserver: HTTPServer) -> None:
    engine: Engine = make_engine(sqlite_url)
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        session.add(
            Alert(condition="test:hostile", window_start=now, raised_at=now, message=HOSTILE)
        )
    httpserver.expect_request("/hooks/alerts", method="POST").respond_with_data("ok")
    report = alerts.deliver(engine, httpserver.url_for("/hooks/alerts"), now=now)
    engine.dispose()
    assert report.delivered == ["test:hostile"]
    ((request, _),) = httpserver.log
    text = json.loads(request.get_data())["text"]
    assert text == (
        "&lt;!channel&gt; &lt;https://evil.example|pay here&gt; &amp; "
        "[U+202E]txet desrever[U+202C] *bold*"
    )
    assert "<" not in text and ">" not in text and "\u202e" not in text
