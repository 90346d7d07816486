"""Folder drop source: each file once, partial files left alone, done/ and failed/, restart."""

from __future__ import annotations

import os
import time

import orjson
from connectors.sources.folder import FolderSource, split_hl7
from connectors.spool import Spool
from connectors.testing import adt_stream, running, wait_until
from fhir_mapping.base import SourceInfo


INFO = SourceInfo(institution="H0001", oid="2.16.156.10011.99.1.1", feed="drop")



def test_folder_drop(tmp_path):
    msgs = [m for _, ms in adt_stream(3, seed=41) for m in ms]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), kind="hl7v2", settle_ms=300, poll_s=0.05, split="hl7")
    # a batch file of two messages (LF line ends, as editors write them), one bad file
    (inbox / "a.hl7").write_bytes(msgs[0].replace(b"\r", b"\n") + b"\n" + msgs[1] + b"\r\n")
    (inbox / "bad.hl7").write_bytes(b"this is not HL7")
    partial = inbox / "c.hl7.part"
    partial.write_bytes(msgs[2][:50])  # being written under a temporary name
    with running(src, spool, join_s=5):
        wait_until(lambda: src.stats["files"] == 2, 10, what="two files")
        assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.hl7"]
        assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["bad.hl7"]
        assert partial.exists()
        # the writer finishes and renames; a fresh file is left alone until it settled
        partial.write_bytes(msgs[2])
        os.replace(partial, inbox / "c.hl7")
        time.sleep(0.1)
        assert (inbox / "c.hl7").exists()
        wait_until(lambda: src.stats["files"] == 3, 10, what="third file")
        time.sleep(0.3)
        assert src.stats["files"] == 3  # each file once
    counters = spool.counters()["drop"]
    assert (counters["received"], counters["converted"], counters["failed"]) == (4, 3, 1)
    assert [u.unit_id for u in spool.pending()] == ["M0000000A", "M0000000B", "M0000001A"]
    [dl] = spool.deadletters()
    assert dl["stage"] == "convert" and spool.deadletter(dl["id"])["payload"] == b"this is not HL7"
    assert orjson.loads(spool.checkpoint("folder:drop"))["file"] == "c.hl7"
    spool.close()


def test_restart_after_spooling_before_moving(tmp_path):
    """The process died after the spool commit and before the move: the file is not read again."""
    [(_, [m, _])] = adt_stream(1, seed=42)[:1]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "x.hl7"
    f.write_bytes(m)
    old = time.time() - 5
    os.utime(f, (old, old))
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), settle_ms=100, poll_s=0.05)
    st = f.stat()
    from connectors.base import Envelope

    spool.accept([Envelope(m, "hl7v2", "drop", {"file": "x.hl7"})],
                 ("folder:drop", orjson.dumps({"file": "x.hl7", "size": st.st_size,
                                               "mtime_ns": st.st_mtime_ns}).decode()))
    with running(src, spool, join_s=5):
        wait_until(lambda: (inbox / "done" / "x.hl7").exists(), 10, what="moved")
        time.sleep(0.2)
    assert spool.counters()["drop"]["received"] == 1 and src.stats["files"] == 0
    spool.close()


def test_split_hl7():
    assert split_hl7(b"\xef\xbb\xbfMSH|a\r\nPID|1\r\nMSH|b\nPID|2\n\n") == [
        b"MSH|a\rPID|1", b"MSH|b\rPID|2"]


def test_odd_files_are_set_aside_and_the_source_goes_on(tmp_path):
    """A name that is no UTF-8 (copied from Windows in GBK), a symbolic link (a loop, or to a file
    outside the inbox) and a 25-digit number (once a payload no JSON writer took: a dead letter;
    now kept as written) never stop the source: each is taken or set aside, and a good file
    after them is taken."""
    msgs = [m for _, ms in adt_stream(2, seed=43) for m in ms]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not for the daemon")
    gbk = os.fsdecode("检验报告-001.hl7".encode("gbk"))
    (inbox / gbk).write_bytes(msgs[0])
    os.symlink(inbox / "loop", inbox / "loop")
    os.symlink(outside, inbox / "link.hl7")
    big = msgs[1].replace(b"\rPV1|", b"\rOBX|1|NM|GLU^Glu^L||1234567890123456789012345|mmol/L"
                          b"|||||F\rPV1|", 1)
    assert big != msgs[1]
    (inbox / "big.hl7").write_bytes(big)
    old = time.time() - 5
    for p in inbox.iterdir():
        if not p.is_symlink():
            os.utime(p, (old, old))
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), kind="hl7v2", settle_ms=100, poll_s=0.05)
    with running(src, spool, join_s=5) as t:
        # the readable files and the two links set aside, which count as failed files (the
        # status showed no failure)
        wait_until(lambda: src.stats["files"] == 4, 10, what="the files and links")
        (inbox / "good.hl7").write_bytes(msgs[0])
        os.utime(inbox / "good.hl7", (old, old))
        wait_until(lambda: src.stats["files"] == 5, 10, what="a good file after them")
        assert t.is_alive() and src.stats["failed"] == 2
    done = {p.name for p in (inbox / "done").iterdir()}
    failed = {p.name for p in (inbox / "failed").iterdir()}
    assert gbk in done and "good.hl7" in done and "big.hl7" in done
    assert {"loop", "link.hl7"} <= failed and outside.read_bytes() == b"not for the daemon"
    assert spool.deadletters() == []
    # the number as the sender wrote it, on its way to the hub: not rounded, not refused
    import orjson
    assert any(b"1234567890123456789012345" in orjson.dumps(u.resources)
               for u in spool.pending(limit=1000))
    spool.close()


def test_a_batch_file_in_its_envelope_gives_its_messages_alone(tmp_path):
    """FHS/BHS ... BTS/FTS: the header went to failed/ as a message "not starting with MSH"
    (a dead letter replayed in vain for ever) and the trailer rode on the last message."""
    msgs = [m for _, ms in adt_stream(2, seed=44) for m in ms]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    body = (b"FHS|^~\\&|HIS|H0001|||20240101\rBHS|^~\\&|HIS|H0001\r" + b"\r".join(msgs)
            + b"\rBTS|4\rFTS|1\r")
    (inbox / "batch.hl7").write_bytes(body)
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), settle_ms=100, poll_s=0.05, split="hl7")
    with running(src, spool, join_s=5):
        wait_until(lambda: src.stats["files"] == 1, 10, what="the file")
    assert (inbox / "done" / "batch.hl7").exists() and spool.deadletters() == []
    counters = spool.counters()["drop"]
    assert (counters["received"], counters["converted"]) == (len(msgs), len(msgs))
    spool.close()


def test_a_big_batch_file_is_spooled_a_chunk_at_a_time_and_resumes_after_a_restart(
        tmp_path, monkeypatch):
    """The whole file was converted in one transaction (60,000 messages held 1.4 GB). Chunks
    now, each with a checkpoint naming the next message: a restart after the first chunk goes
    on from the second, nothing spooled twice. A file over max_file_bytes is not read."""
    from connectors.sources import folder

    monkeypatch.setattr(folder, "CHUNK", 3)
    msgs = [m for _, ms in adt_stream(4, seed=45) for m in ms][:8]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    f = inbox / "big.hl7"
    f.write_bytes(b"\r".join(msgs))
    old = time.time() - 5
    os.utime(f, (old, old))
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), settle_ms=100, poll_s=0.05, split="hl7",
                       max_file_bytes=10**6)
    st = f.stat()
    from connectors.base import Envelope

    # the first chunk was spooled, then the process died
    cp = {"file": "big.hl7", "raw": os.fsencode("big.hl7").hex(), "size": st.st_size,
          "mtime_ns": st.st_mtime_ns, "parts": 8, "next": 3}
    spool.accept([Envelope(m, "hl7v2", "drop", {"file": "big.hl7", "part": i})
                  for i, m in enumerate(msgs[:3])], ("folder:drop", orjson.dumps(cp).decode()))
    huge = inbox / "huge.hl7"
    huge.write_bytes(msgs[0] * (10**6 // len(msgs[0]) + 1))
    os.utime(huge, (old, old))
    with running(src, spool, join_s=5):
        wait_until(lambda: src.stats["files"] == 2, 10, what="both files")
    assert (inbox / "done" / "big.hl7").exists() and (inbox / "failed" / "huge.hl7").exists()
    counters = spool.counters()["drop"]
    assert (counters["received"], counters["converted"]) == (8, 8)
    assert len(spool.pending(100)) == 8
    assert orjson.loads(spool.checkpoint("folder:drop"))["next"] == 8
    spool.close()


def test_a_file_dated_in_the_future_or_named_in_capitals_is_taken(tmp_path):
    """A sender whose clock is an hour ahead: its file waited unseen until the clock caught up.
    *.hl7 did not match UPPER.HL7 (Windows senders), and nothing said so."""
    msgs = [m for _, ms in adt_stream(2, seed=48) for m in ms]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ahead = inbox / "future.hl7"
    ahead.write_bytes(msgs[0])
    later = time.time() + 3600
    os.utime(ahead, (later, later))
    (inbox / "UPPER.HL7").write_bytes(msgs[1])
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), pattern="*.hl7", settle_ms=300, poll_s=0.05)
    with running(src, spool, join_s=5):
        wait_until(lambda: src.stats["files"] == 2, 10, what="both files")
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["UPPER.HL7", "future.hl7"]
    spool.close()


def test_a_second_file_of_the_same_name_size_and_time_is_read(tmp_path):
    """A sender that keeps a file's time (rsync -t, cp -p) dropped a second lab.hl7 of the same
    size: it was taken for the file spooled before, moved to done/ and never read."""
    [(_, [m, _])] = adt_stream(1, seed=43)[:1]
    other = m.replace(b"M0000000A", b"M0000009Z")
    assert other != m and len(other) == len(m)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    spool = Spool(tmp_path / "spool.sqlite", INFO, durable=False)
    src = FolderSource("drop", str(inbox), kind="hl7v2", settle_ms=100, poll_s=0.05)
    with running(src, spool, join_s=5):
        for n, body in enumerate((m, other), 1):
            f = inbox / "lab.hl7"
            f.write_bytes(body)
            os.utime(f, ns=(1711929600_000000000,) * 2)
            wait_until(lambda n=n: src.stats["files"] == n, 10, what=f"file {n}")
    assert sorted(u.unit_id for u in spool.pending()) == ["M0000000A", "M0000009Z"]
    spool.close()
