"""KV handoff between two real KV caches over loopback, by each transport (tcp, nixl): only
missing blocks travel, layouts are checked at the handshake, a dead peer frees the reservation."""

import contextlib
import socket
import threading
import time

import pytest
import torch

from pdserve.runtime.checkpoints.identity import ModelIdentity
from pdserve.runtime.disagg.kv_transfer import (
    DecodeFullError,
    KVReceiverServer,
    KVSender,
    KVTransferError,
    LayoutMismatchError,
    ModelMismatchError,
    Offer,
)
from pdserve.runtime.disagg.kv_transfer.protocol import (
    ACCEPT,
    HELLO,
    OFFER,
    PROTOCOL_VERSION,
    FramedSocket,
    layout_dict,
)
from pdserve.runtime.engine.kv_cache import KVCache, KVLayout

IDENTITY = ModelIdentity("weights-a", "tokenizer-a", "float32", 4)
LAYOUT = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=4, dtype="float32")


def make_cache(layout=LAYOUT, num_blocks=32, seed=0):
    cache = KVCache(layout, num_blocks, torch.device("cpu"))
    cache.kv.copy_(torch.randn(cache.kv.shape, generator=torch.Generator().manual_seed(seed)))
    return cache


class RecordingHooks:
    """Reserves the next free ids of the decode pool; a given number of leading blocks count as
    already cached (what the engine's block manager answers on a prefix hit)."""

    def __init__(self, num_cached=0):
        self.num_cached = num_cached
        self.completed = {}
        self.failed = {}
        self.causes = {}
        self.reserved = {}
        self.done = threading.Event()

    def reserve(self, offer):
        num_kv = offer.num_kv_tokens or len(offer.prompt_token_ids)
        self.offers = {**getattr(self, "offers", {}), offer.transfer_id: offer}
        num_blocks = -(-num_kv // LAYOUT.block_size)
        if num_blocks > 30:
            raise DecodeFullError("no free KV blocks for this prompt")
        ids = list(range(10, 10 + num_blocks - self.num_cached))
        self.reserved[offer.transfer_id] = ids
        return self.num_cached, ids

    def complete(self, transfer_id, nbytes, seconds):
        self.completed[transfer_id] = nbytes
        self.done.set()

    def fail(self, transfer_id, reason, cause="transfer_error"):
        self.failed[transfer_id] = reason
        self.causes[transfer_id] = cause
        self.done.set()


@pytest.fixture(params=["tcp", "nixl"])
def transport(request):
    return request.param


@pytest.fixture
def receiver():
    def start(hooks, cache=None, features=None, secret=None):
        server = KVReceiverServer(cache or make_cache(seed=1), hooks, "127.0.0.1", 0,
                                  identity=IDENTITY, timeout=5, features=features,
                                  secret=secret)
        server.start()
        started.append(server)
        return server

    started = []
    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("num_cached", [0, 2, 5])
def test_missing_blocks_arrive_intact(receiver, transport, num_cached):
    hooks = RecordingHooks(num_cached)
    server = receiver(hooks)
    source = make_cache(seed=2)
    sender = KVSender(source, transport, identity=IDENTITY, timeout=5)
    src_ids = [3, 7, 1, 20, 5]  # 5 blocks for an 18-token prompt
    result = sender.push(f"127.0.0.1:{server.port}", Offer("t1", list(range(18)), 42), src_ids)
    assert result.num_blocks == 5 and result.num_cached_blocks == num_cached
    dst = hooks.reserved["t1"]
    assert result.bytes == len(dst) * LAYOUT.bytes_per_block == hooks.completed["t1"]
    assert torch.equal(server.pool.read_blocks(dst), source.read_blocks(src_ids[num_cached:]))
    # The connection is kept and reused for the next transfer.
    sender.push(f"127.0.0.1:{server.port}", Offer("t2", list(range(8)), 1), [0, 1])
    assert "t2" in hooks.completed and not hooks.failed
    sender.close()


def test_a_compressed_prompt_travels_as_its_kept_slots(receiver, transport):
    hooks = RecordingHooks()
    server = receiver(hooks)
    source = make_cache(seed=2)
    sender = KVSender(source, transport, identity=IDENTITY, timeout=5)
    offer = Offer("c", list(range(40)), 7, num_kv_tokens=10)  # 40 tokens kept as 10 slots
    result = sender.push(f"127.0.0.1:{server.port}", offer, [4, 9, 2])
    assert hooks.offers["c"].num_kv_tokens == 10
    assert result.bytes == 3 * LAYOUT.bytes_per_block  # 3 blocks, not the prompt's 10
    assert torch.equal(server.pool.read_blocks(hooks.reserved["c"]), source.read_blocks([4, 9, 2]))
    sender.close()


def test_a_peer_that_cannot_read_compressed_kv_is_refused_it(receiver):
    hooks = RecordingHooks()
    server = receiver(hooks, features=[])  # an older decode worker, or an XLA one
    sender = KVSender(make_cache(), "tcp", identity=IDENTITY, timeout=5)
    with pytest.raises(KVTransferError, match="cannot read compressed KV"):
        sender.push(f"127.0.0.1:{server.port}", Offer("c", list(range(40)), 7,
                                                      num_kv_tokens=10), [0, 1, 2])
    assert not hooks.reserved  # refused before the offer was sent
    sender.push(f"127.0.0.1:{server.port}", Offer("u", list(range(8)), 1), [0, 1])
    assert "u" in hooks.completed
    sender.close()


def test_an_offer_claiming_more_slots_than_tokens_is_malformed():
    with pytest.raises(KVTransferError, match="malformed OFFER"):
        Offer.from_json({"transfer_id": "x", "prompt_token_ids": [1, 2], "first_token": 3,
                         "num_kv_tokens": 5})


def test_an_offer_says_whether_it_waits_for_room_and_an_older_one_does_not():
    offer = Offer("w", [1, 2], 3, wait_for_room=True)
    assert Offer.from_json(offer.to_json()) == offer
    older = {"transfer_id": "x", "prompt_token_ids": [1, 2], "first_token": 3}
    assert Offer.from_json(older).wait_for_room is False


def test_layout_mismatch_is_a_clear_error(receiver):
    server = receiver(RecordingHooks())
    other = KVLayout(num_layers=2, num_kv_heads=2, head_dim=8, block_size=8, dtype="bfloat16")
    sender = KVSender(make_cache(other), "tcp", identity=IDENTITY, timeout=5)
    with pytest.raises(LayoutMismatchError, match=r"block_size: .*dtype"):
        sender.push(f"127.0.0.1:{server.port}", Offer("t", [1, 2, 3], 4), [0])


def test_a_peer_of_another_model_is_refused_naming_what_differs(receiver):
    hooks = RecordingHooks()
    server = receiver(hooks)
    other = ModelIdentity("weights-b", "tokenizer-a", "float32", 4)
    sender = KVSender(make_cache(), "tcp", identity=other, timeout=5)
    expected = r"weights: decode 'weights-a', prefill 'weights-b'"
    with pytest.raises(ModelMismatchError, match=expected):
        sender.push(f"127.0.0.1:{server.port}", Offer("t", [1, 2, 3], 4), [0])
    assert not hooks.reserved and not hooks.completed  # refused before any block was written


def test_a_refusal_for_lack_of_blocks_is_distinct_and_keeps_the_connection(receiver):
    hooks = RecordingHooks()
    server = receiver(hooks)
    sender = KVSender(make_cache(), "tcp", identity=IDENTITY, timeout=5)
    target = f"127.0.0.1:{server.port}"
    with pytest.raises(DecodeFullError, match="no free KV blocks"):
        sender.push(target, Offer("big", list(range(200)), 4), [0] * 50)
    kept = sender._idle[target][0]
    sender.push(target, Offer("small", list(range(8)), 4), [0, 1])  # on the same connection
    assert sender._idle[target] == [kept] and "small" in hooks.completed


def test_peer_dying_mid_transfer_frees_the_reservation(receiver):
    hooks = RecordingHooks()
    server = receiver(hooks)
    sock = socket.create_connection(("127.0.0.1", server.port))
    framed = FramedSocket(sock)
    framed.send_json(HELLO, {"version": PROTOCOL_VERSION, "transport": "tcp",
                             "layout": layout_dict(LAYOUT),
                             "model": IDENTITY.to_json()})
    framed.recv_header()  # ACCEPT
    framed.send_json(OFFER, Offer("dead", list(range(16)), 3).to_json())
    sock.sendall(b"\x06\x00\x00\x00\x00\x00\x00\x10\x00" + b"x" * 100)  # half a DATA frame
    sock.close()
    assert hooks.done.wait(5)
    assert "dead" in hooks.failed and "dead" not in hooks.completed
    assert hooks.causes["dead"] == "transfer_error"


def test_a_transfer_the_decode_side_gives_up_on_is_cut_off_at_once(receiver):
    hooks = RecordingHooks()
    server = receiver(hooks)  # its socket timeout (5 s) would end the stall only later
    sock = socket.create_connection(("127.0.0.1", server.port))
    framed = FramedSocket(sock)
    framed.send_json(HELLO, {"version": PROTOCOL_VERSION, "transport": "tcp",
                             "layout": layout_dict(LAYOUT), "model": IDENTITY.to_json()})
    framed.recv_payload(framed.recv_header()[1])  # ACCEPT
    assert not server.cancel("stalled")  # nothing of that id is landing yet
    framed.send_json(OFFER, Offer("stalled", list(range(16)), 3).to_json())
    framed.recv_payload(framed.recv_header()[1])  # NEED: blocks reserved, the receiver waits
    sock.sendall(b"\x06\x00\x00\x00\x00\x00\x00\x10\x00" + b"x" * 100)  # half a DATA frame
    started = time.monotonic()
    assert server.cancel("stalled")
    assert hooks.done.wait(2) and time.monotonic() - started < 2
    assert "stalled" in hooks.failed and hooks.causes["stalled"] == "transfer_error"
    assert sock.recv(1) == b""  # the decode side closed this connection
    assert not server.cancel("stalled")  # its thread has called the hooks: nothing to cut
    sock.close()


def test_unreachable_decode_worker():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = KVSender(make_cache(), "tcp", identity=IDENTITY, timeout=2)
    with pytest.raises(KVTransferError, match="cannot connect"):
        sender.push(f"127.0.0.1:{port}", Offer("t", [1], 2), [0])


def test_unknown_transport_fails_at_startup():
    with pytest.raises(ValueError, match="unknown KV transport"):
        KVSender(make_cache(), "rdma", identity=IDENTITY)


@pytest.mark.parametrize("staged", ["sender", "receiver"])
def test_staged_and_zero_copy_paths_share_one_wire_order(receiver, monkeypatch, staged):
    """A CUDA pool goes through host staging chunks; host pools use scatter/gather I/O. One side
    of each kind (forced on CPU here) must still agree byte for byte."""
    from pdserve.runtime.disagg.kv_transfer import tcp

    monkeypatch.setattr(tcp, "CHUNK_BYTES", 3 * LAYOUT.bytes_per_block)  # several chunks
    hooks = RecordingHooks()
    receiving = make_cache(seed=1)
    server = receiver(hooks, receiving)
    source = make_cache(seed=2)
    staged_pool = source if staged == "sender" else receiving
    monkeypatch.setattr(staged_pool, "memory", lambda: None)
    src_ids = [5, 6, 7, 1, 30, 12, 13, 2]
    KVSender(source, "tcp", identity=IDENTITY, timeout=5).push(f"127.0.0.1:{server.port}",
                                            Offer("t", list(range(30)), 1), src_ids)
    assert torch.equal(receiving.read_blocks(hooks.reserved["t"]), source.read_blocks(src_ids))


def test_cancel_cuts_a_transfer_and_frees_the_reservation(receiver, transport, monkeypatch):
    from pdserve.runtime.disagg.kv_transfer.sender import TEST_DELAY_ENV

    monkeypatch.setenv(TEST_DELAY_ENV, "1")  # stall after the reservation
    hooks = RecordingHooks()
    server = receiver(hooks)
    sender = KVSender(make_cache(), transport, identity=IDENTITY, timeout=5)
    errors = []

    def push():
        try:
            sender.push(f"127.0.0.1:{server.port}", Offer("gone", list(range(12)), 1), [0, 1, 2])
        except KVTransferError as exc:
            errors.append(exc)

    thread = threading.Thread(target=push)
    thread.start()
    while "gone" not in hooks.reserved:
        threading.Event().wait(0.01)
    sender.cancel("gone")
    thread.join(10)
    assert errors and hooks.done.wait(5)
    assert "gone" in hooks.failed and "gone" not in hooks.completed


SECRET = b"0123456789abcdef0123456789abcdef"


def test_peers_sharing_the_secret_transfer(receiver, transport):
    hooks = RecordingHooks()
    server = receiver(hooks, secret=SECRET)
    src = make_cache()
    sender = KVSender(src, transport, identity=IDENTITY, timeout=5, secret=SECRET)
    result = sender.push(f"127.0.0.1:{server.port}", Offer("t", list(range(8)), 4), [0, 1])
    assert result.num_blocks == 2 and "t" in hooks.completed


@pytest.mark.parametrize(("decode_secret", "prefill_secret", "message"), [
    (SECRET, b"another secret of 32 bytes!!!!!!", "did not prove the KV auth secret"),
    (SECRET, None, "did not authenticate"),
    (None, SECRET, "this decode worker has no --kv-auth-secret-file"),
])
def test_a_peer_without_the_secret_is_refused_before_any_block(receiver, decode_secret,
                                                               prefill_secret, message):
    hooks = RecordingHooks()
    server = receiver(hooks, secret=decode_secret)
    sender = KVSender(make_cache(), "tcp", identity=IDENTITY, timeout=5, secret=prefill_secret)
    with pytest.raises(KVTransferError, match=message):
        sender.push(f"127.0.0.1:{server.port}", Offer("t", [1, 2, 3], 4), [0])
    assert not hooks.reserved and not hooks.completed


def test_a_forged_decode_worker_gets_no_kv():
    """A listener that answers ACCEPT without knowing the secret: the prefill side refuses it
    before it offers the prompt."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = []

    def fake_decode():
        sock, _ = listener.accept()
        framed = FramedSocket(sock)
        hello = framed.recv_json(HELLO)
        framed.send_json(ACCEPT, {"layout": hello["layout"], "model": hello["model"],
                                  "features": [], "auth": {"nonce": "ab" * 16,
                                                           "proof": "00" * 32}})
        with contextlib.suppress(KVTransferError):
            seen.append(framed.recv_header()[0])
        framed.close()

    thread = threading.Thread(target=fake_decode, daemon=True)
    thread.start()
    sender = KVSender(make_cache(), "tcp", identity=IDENTITY, timeout=5, secret=SECRET)
    with pytest.raises(KVTransferError, match="decode worker did not prove"):
        sender.push(f"127.0.0.1:{listener.getsockname()[1]}", Offer("t", [1, 2, 3], 4), [0])
    thread.join(5)
    listener.close()
    assert OFFER not in seen


def test_the_worker_refuses_an_unreadable_or_short_secret(tmp_path):
    from pdserve.runtime.cli import WorkerSetupError, parse_settings

    with pytest.raises(WorkerSetupError, match="cannot read the KV auth secret"):
        parse_settings(["--model", "builtin:tiny", "--kv-auth-secret-file",
                        str(tmp_path / "missing")])
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(WorkerSetupError, match="shorter than 16 bytes"):
        parse_settings(["--model", "builtin:tiny", "--kv-auth-secret-file",
                        str(tmp_path / "short")])


def test_nixl_refuses_a_pool_it_cannot_register_at_the_handshake(receiver):
    """A tensor-parallel replica's shards (or an XLA pool) have no one tensor to register."""
    hooks = RecordingHooks()
    sharded = make_cache(seed=1)
    sharded.memory = lambda: None
    server = receiver(hooks, cache=sharded)
    sender = KVSender(make_cache(), "nixl", identity=IDENTITY, timeout=5)
    with pytest.raises(KVTransferError, match="nixl KV transport needs the KV pool in one host"):
        sender.push(f"127.0.0.1:{server.port}", Offer("t", [1, 2, 3], 4), [0])
    assert not hooks.reserved


def test_nixl_descriptors_merge_runs_consecutive_on_both_sides():
    from pdserve.runtime.disagg.kv_transfer.nixl import PoolRegion, common_runs

    assert common_runs([3, 4, 5, 9, 10], [7, 8, 2, 3, 4]) == [(0, 2), (2, 1), (3, 2)]
    region = PoolRegion(base=1000, num_blocks=10, plane_block_bytes=8, num_planes=2,
                        memory="DRAM", device=0)
    rows = region.addresses([4, 5, 9], [(0, 2), (2, 1)]).tolist()
    # plane 0 then plane 1 (10 blocks of 8 bytes further on), each run one row
    assert rows == [[1032, 16, 0], [1072, 8, 0], [1112, 16, 0], [1152, 8, 0]]


def test_an_idle_nixl_agent_burns_no_cpu(receiver):
    """UCX's progress thread busy-polls a core for as long as its agent lives (a whole core per
    worker, and per agent in this test process): the transport runs without it."""
    import os
    import time

    server = receiver(RecordingHooks())
    KVSender(make_cache(), "nixl", identity=IDENTITY, timeout=5).push(
        f"127.0.0.1:{server.port}", Offer("idle", [1, 2, 3, 4], 4), [0])

    def cpu_seconds():
        times = os.times()
        return times.user + times.system

    started_cpu, started = cpu_seconds(), time.monotonic()
    time.sleep(1.0)
    busy = (cpu_seconds() - started_cpu) / (time.monotonic() - started)
    assert busy < 0.3, f"the process used {busy:.0%} of a core while idle"


def test_nixl_refuses_source_blocks_outside_the_prefill_pool(receiver):
    """The decode side reads what the prefill side names: ids past its pool are refused before
    any read, and the reservation is freed untouched."""
    hooks = RecordingHooks()
    server = receiver(hooks)
    before = server.pool.kv.clone()
    sender = KVSender(make_cache(), "nixl", identity=IDENTITY, timeout=5)
    with pytest.raises(KVTransferError):
        sender.push(f"127.0.0.1:{server.port}", Offer("oob", list(range(8)), 4), [0, 32])
    assert hooks.done.wait(5) and "outside the prefill" in hooks.failed["oob"]
    assert torch.equal(server.pool.kv, before)


def test_a_failed_nixl_read_frees_its_blocks_only_once_out_of_flight(receiver, monkeypatch):
    """UCX cannot cancel a READ in flight: when the push dies mid-read, the receiver frees the
    blocks only after the READ has ended, so nothing lands in them once another sequence has
    them."""
    import importlib

    from pdserve.runtime.disagg.kv_transfer.nixl import NIXL_MODULE

    agent_type = importlib.import_module(NIXL_MODULE).nixl_agent
    posted, ended = threading.Event(), threading.Event()
    monkeypatch.setattr(agent_type, "transfer", lambda self, handle: posted.set() or "PROC")
    monkeypatch.setattr(agent_type, "check_xfer_state",
                        lambda self, handle: "ERR" if ended.is_set() else "PROC")
    hooks = RecordingHooks()
    server = receiver(hooks)
    sender = KVSender(make_cache(), "nixl", identity=IDENTITY, timeout=5)

    def push():
        with contextlib.suppress(KVTransferError):
            sender.push(f"127.0.0.1:{server.port}", Offer("cut", list(range(8)), 4), [0, 1])

    pushing = threading.Thread(target=push)
    pushing.start()
    assert posted.wait(5)
    sender.cancel("cut")
    pushing.join(5)
    assert not hooks.done.wait(0.5)  # the READ is still in flight: its blocks stay reserved
    ended.set()
    assert hooks.done.wait(5) and "cut" in hooks.failed


def test_each_transfer_failure_is_counted_under_its_cause():
    from pdserve.runtime.disagg.kv_transfer.auth import KVAuthError
    from pdserve.runtime.disagg.kv_transfer.protocol import (
        DecodeFullError,
        KVTransferError,
        LayoutMismatchError,
        failure_reason,
    )
    from pdserve.runtime.serving.metrics import KV_TRANSFER_FAILURE_REASONS, WorkerMetrics

    errors = [KVTransferError("x"), DecodeFullError("x"), ModelMismatchError("x"),
              LayoutMismatchError("x"), KVAuthError("x"), ConnectionResetError("peer gone")]
    reasons = [failure_reason(exc) for exc in errors]
    assert reasons == ["transfer_error", "decode_full", "model_mismatch", "layout_mismatch",
                       "unauthenticated", "transfer_error"]
    assert set(reasons) <= set(KV_TRANSFER_FAILURE_REASONS)
    metrics = WorkerMetrics("decode", "m", lambda: None)
    metrics.count_transfer_failure("model_mismatch")
    with pytest.raises(ValueError, match="unknown KV transfer failure reason"):
        metrics.count_transfer_failure("bogus")
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    for reason in KV_TRANSFER_FAILURE_REASONS:  # every cause's series exists, at 0 until counted
        count = 1.0 if reason == "model_mismatch" else 0.0
        assert (f'pdserve_kv_transfer_failures_total{{model="m",reason="{reason}",'
                f'role="decode"}} {count}') in text
