"""Enhanced acknowledgment mode (HL7 v2.5 2.9.3) on the MLLP listener: MSH-15 says when the
sender wants the accept ACK (CA kept, CR refused, CE not stored), MSH-16 when it wants the
application ACK (AA, AE). Both go on the sender's own connection, the accept ACK first.

The connector runs in process as in test_connector_mllp (real sockets, spool and mapper). What a
message is answered is read up to the answer to an original-mode message sent after it on the
same connection: answers come in order, so nothing more came for the first.
"""

from __future__ import annotations

import hl7
from connectors.mllp_client import MLLPClient, ack_code, ack_segment
from connectors.testing import adt_message, region_patients

from tests.test_connector_mllp import connector, messages  # noqa: F401 - fixtures

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
PATIENTS = list(region_patients(4, seed=31))


def message(control: str, accept: str, application: str) -> bytes:
    return adt_message(PATIENTS[len(control) % 4], "A04", control, "202402010930+0800",
                       ack_types=(accept, application))


def unsupported(control: str, accept: str, application: str) -> bytes:
    return message(control, accept, application).replace(b"ADT^A04^ADT_A01", b"ZZZ^Z99")


def without_pid(control: str, accept: str, application: str) -> bytes:
    return b"\r".join(s for s in message(control, accept, application).split(b"\r")
                      if not s.startswith(b"PID"))


def answers(connector, payload: bytes, framed: bool = True) -> list[bytes]:  # noqa: F811
    """Every frame the listener writes for ``payload``, in order."""
    follow = adt_message(PATIENTS[0], "A08", "FOLLOW1", "202402011015+0800")
    with MLLPClient("127.0.0.1", connector.sources[0].port, timeout=10) as c:
        c.send_raw(VT + payload + (FS + CR if framed else b""))
        c.send_raw(VT + follow + FS + CR)
        out = []
        while True:
            ack = c.read_ack()
            if ack_segment(ack, "MSA")[2] == "FOLLOW1":
                return out
            out.append(ack)


def codes(acks: list[bytes]) -> list[str]:
    return [ack_code(a) for a in acks]


def msh(ack: bytes):
    return hl7.parse(ack.decode()).segment("MSH")


def spooled(connector, control: str) -> bool:  # noqa: F811
    """Converted and waiting in the spool (the sink is down) for delivery."""
    return any(control in u.unit_id for u in connector.spool.pending(100_000))


def test_accept_always_application_never_gets_the_commit_ack_alone(connector):  # noqa: F811
    [ca] = answers(connector, message("ALNE1", "AL", "NE"))
    assert ack_code(ca) == "CA" and ack_segment(ca, "MSA")[2] == "ALNE1"
    assert str(msh(ca)(9)) == "ACK^A04^ACK" and str(msh(ca)(10)) == "ACCALNE1"
    # an acknowledgment asks for none of its own
    assert (str(msh(ca)(15)), str(msh(ca)(16))) == ("NE", "NE")
    assert spooled(connector, "ALNE1")  # CA: kept, nothing to resend
    # a message kept as a dead letter (its content cannot be mapped) is committed too: CA, and
    # the sender asked for no application ACK that would say AE
    assert codes(answers(connector, without_pid("ALNE2", "AL", "NE"))) == ["CA"]
    # refused for its header: CR with the error
    [cr] = answers(connector, unsupported("ALNE3", "AL", "NE"))
    assert ack_code(cr) == "CR" and ack_segment(cr, "ERR")[3].startswith("200^")
    assert any(d["unit_id"] == "ALNE3" for d in connector.spool.deadletters())  # kept to replay


def test_accept_never_application_always_gets_the_application_ack_alone(connector):  # noqa: F811
    [aa] = answers(connector, message("NEAL1", "NE", "AL"))
    assert ack_code(aa) == "AA" and str(msh(aa)(10)) == "ACKNEAL1"
    assert (str(msh(aa)(15)), str(msh(aa)(16))) == ("NE", "NE")
    [ae] = answers(connector, without_pid("NEAL2", "NE", "AL"))
    assert ack_code(ae) == "AE" and ack_segment(ae, "ERR")[2].startswith("PID^1")
    # refused: no accept ACK was asked for, but the sender waits for the application's word
    [ar] = answers(connector, unsupported("NEAL3", "NE", "AL"))
    assert ack_code(ar) == "AR" and ack_segment(ar, "ERR")[3].startswith("200^")


def test_error_only_answers_a_bad_message_and_not_a_good_one(connector):  # noqa: F811
    assert answers(connector, message("ERER1", "ER", "ER")) == []
    assert spooled(connector, "ERER1")
    [cr] = answers(connector, unsupported("ERER2", "ER", "ER"))
    assert ack_code(cr) == "CR" and "not supported" in ack_segment(cr, "ERR")[8]
    # committed (no accept ACK under ER), its content an application error: AE
    [ae] = answers(connector, without_pid("ERER3", "ER", "ER"))
    assert ack_code(ae) == "AE" and ack_segment(ae, "ERR")[2].startswith("PID^1")


def test_success_only_answers_a_good_message_and_not_a_bad_one(connector):  # noqa: F811
    ca, aa = answers(connector, message("SUSU1", "SU", "SU"))
    assert (ack_code(ca), ack_code(aa)) == ("CA", "AA")
    assert str(msh(ca)(10)) != str(msh(aa)(10))  # two messages, two control ids
    assert answers(connector, unsupported("SUSU2", "SU", "SU")) == []
    assert codes(answers(connector, without_pid("SUSU3", "SU", "SU"))) == ["CA"]


def test_always_always_gets_the_commit_then_the_application_ack(connector):  # noqa: F811
    assert codes(answers(connector, message("ALAL1", "AL", "AL"))) == ["CA", "AA"]
    ca, ae = answers(connector, without_pid("ALAL2", "AL", "AL"))
    assert (ack_code(ca), ack_code(ae)) == ("CA", "AE")
    assert ack_segment(ca, "ERR") is None and ack_segment(ae, "ERR") is not None
    # beside a valued field an empty one counts as AL: the sender is never left waiting
    assert codes(answers(connector, message("ALAL3", "", "ER"))) == ["CA"]
    assert codes(answers(connector, message("ALAL4", "AL", ""))) == ["CA", "AA"]


def test_never_never_gets_nothing_as_it_asked(connector):  # noqa: F811
    assert answers(connector, message("NENE1", "NE", "NE")) == []
    assert spooled(connector, "NENE1")


def test_a_message_refused_for_its_framing_is_a_commit_reject(connector):  # noqa: F811
    msg = message("FRAME1", "AL", "NE")
    [cr] = answers(connector, msg, framed=False)  # no end block before the next start block
    assert ack_code(cr) == "CR" and "end block" in ack_segment(cr, "MSA")[3]
    assert any(connector.spool.deadletter(d["id"])["payload"] == msg
               for d in connector.spool.deadletters() if d["stage"] == "receive")


def test_a_message_the_spool_cannot_store_is_a_commit_error(connector):  # noqa: F811
    db = connector.spool._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    pad = b"NTE|1||" + b"x" * 60_000 + b"\rPID|"
    try:
        [ce] = answers(connector, message("FULL1", "AL", "AL").replace(b"PID|", pad, 1))
        assert ack_code(ce) == "CE" and "resend" in ack_segment(ce, "MSA")[3]
        [ar] = answers(connector, message("FULL2", "NE", "AL").replace(b"PID|", pad, 1))
        assert ack_code(ar) == "AR" and "resend" in ack_segment(ar, "MSA")[3]
    finally:
        db.execute("PRAGMA max_page_count = 1073741823")
    assert codes(answers(connector, message("FULL3", "AL", "AL"))) == ["CA", "AA"]


def test_original_mode_is_one_application_ack(connector, messages):  # noqa: F811
    """MSH-15 and MSH-16 empty: one ACK, AA/AE/AR, as before enhanced mode was read."""
    [aa] = answers(connector, message("ORIG1", "", ""))
    assert ack_code(aa) == "AA" and str(msh(aa)(10)) == "ACKORIG1"
    assert (str(msh(aa)(15)), str(msh(aa)(16))) == ("", "")  # none written
    assert codes(answers(connector, without_pid("ORIG2", "", ""))) == ["AE"]
    assert codes(answers(connector, unsupported("ORIG3", "", ""))) == ["AR"]


def test_a_listener_set_to_original_answers_one_ack_whatever_msh15_16_say(tmp_path):
    """A HIS whose template fills MSH-15/16 (AL/NE) but whose engine awaits the one AA: a
    listener set to ``acknowledgment: original`` answers it in original mode; a setting it does
    not know is refused when the connector starts, not at the first sender."""
    import pytest

    from connectors.config import ConnectorConfig
    from connectors.daemon import Connector
    from tests.conftest import free_port

    def config(ack: str) -> ConnectorConfig:
        return ConnectorConfig.from_dict({
            "name": "adt", "institution": {"code": "H0001", "oid": "2.16.156.10011.99.1.1"},
            "state_dir": str(tmp_path / ack), "durable": False,
            "retry": {"initial_s": 5, "max_s": 5},
            "sources": [{"type": "mllp", "name": "adt", "host": "127.0.0.1", "port": 0,
                         "kind": "hl7v2", "acknowledgment": ack}],
            "sink": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/fhir"}})
    conn = Connector(config("original"))
    conn.start()
    try:
        assert conn.sources[0].ready.wait(10)
        assert codes(answers(conn, message("ORIG1", "AL", "NE"))) == ["AA"]
        assert codes(answers(conn, unsupported("ORIG2", "NE", "NE"))) == ["AR"]
    finally:
        conn.stop()
        conn.join()
    with pytest.raises(Exception, match="acknowledgment"):
        Connector(config("sometimes"))
