"""Control characters a peer sends reach ``cxr-node serve``'s log escaped, pynetdicom's lines included."""

from __future__ import annotations

from pathlib import Path

from tests.support.hostile_peer import EXPLICIT_VR_LE, associate_rq, connect, read_pdu
from tests.support.node_process import NodeProcess
from tests.support.polling import wait_for

FORGED_AET = "EV\nFORGED\x1b[2J"  # a line feed to forge a log line, an escape to clear a terminal
FORGED_SYNTAX = "1.2.840.10008.5.1.4.1.1.1.1\x1b[31m\r\n2026 INFO forged"


def test_control_characters_from_the_network_are_escaped_in_the_log(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "var") as node:
        for request in (
            associate_rq([("1.2.840.10008.1.1", [EXPLICIT_VR_LE])], calling_aet=FORGED_AET),
            associate_rq([(FORGED_SYNTAX, [EXPLICIT_VR_LE])], calling_aet="SENDER"),
        ):
            sock = connect(node.port)
            sock.sendall(request)
            read_pdu(sock)  # A-ABORT, A-ASSOCIATE-RJ or -AC: whatever the node answers
            sock.close()
        wait_for(lambda: node.log_text().count("x1b") >= 2, "both requests logged", timeout=10)
        log = node.log_text()
    assert "\x1b" not in log and "\r" not in log
    assert not [line for line in log.splitlines() if line.startswith(("FORGED", "2026 INFO forged"))]
    assert "EV\\x0aFORGED\\x1b[2J" in log  # pynetdicom's own record of the bad AE title
    assert "\\x1b[31m\\x0d\\x0a2026 INFO forged" in log
