"""An independent client over TLS with bearer tokens: Python grpcio stubs
generated from proto/, run against a spawned `imstore serve --tls-cert …
--tls-key … --tokens-file …`.
Usage: secure.py HOST:PORT STUBS_DIR CA OTHER_CA TOKENS_FILE

The tokens file names (by SHA-256) svc-token (service), ro-token
(readonly) and old-token (expired). Does a small chat, then checks that a
plaintext channel and a channel trusting another CA fail, that a missing,
bad, expired or rotated-out token gets UNAUTHENTICATED, that a readonly
token's send gets PERMISSION_DENIED, and that none of these moved a write
counter. Prints PASS at the end.
"""
import hashlib
import sys
import time

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from imstore.v1 import imstore_pb2 as pb  # noqa: E402
from imstore.v1 import imstore_pb2_grpc as rpc  # noqa: E402

address, _, ca_path, other_ca_path, tokens_path = sys.argv[1:6]
# The certificate names localhost and 127.0.0.1.
target = address


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAIL: {what}")


def secure(ca_file):
    with open(ca_file, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(target, credentials)


def auth(token):
    return [("authorization", f"Bearer {token}")]


channel = secure(ca_path)
grpc.channel_ready_future(channel).result(timeout=30)
api = rpc.ImstoreStub(channel)
svc, ro = auth("svc-token"), auth("ro-token")

# --- a small chat over TLS with the service token
api.CreateGroup(pb.CreateGroupRequest(conversation=42, owner=1, members=[1, 2, 3]), metadata=svc)
sent = api.Send(pb.SendRequest(conversation=42, sender=1, client_msg_id=b"s-1", payload=b"over TLS"), metadata=svc)
check(sent.seq == 1 and not sent.duplicate, "first send")
page = api.ReadAs(pb.ReadAsRequest(viewer=2, conversation=42, **{"from": 1}, limit=10), metadata=ro)
check([m.payload for m in page.messages] == [b"over TLS"], "history read with the readonly token")


def counters():
    s = api.Status(pb.StatusRequest(), metadata=ro)
    return (s.commit_groups, s.commit_commands, s.messages)


def refused(call, code, what):
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: {e.code()} instead of {code}")
        return
    raise SystemExit(f"FAIL: {what} was answered")


before = counters()
send = pb.SendRequest(conversation=42, sender=1, client_msg_id=b"s-2", payload=b"nope")
refused(lambda: api.Send(send), grpc.StatusCode.UNAUTHENTICATED, "no token")
refused(lambda: api.Send(send, metadata=auth("guess")), grpc.StatusCode.UNAUTHENTICATED, "a bad token")
refused(lambda: api.Send(send, metadata=auth("old-token")), grpc.StatusCode.UNAUTHENTICATED, "an expired token")
refused(lambda: api.Send(send, metadata=ro), grpc.StatusCode.PERMISSION_DENIED, "a readonly token's send")

# --- a plaintext channel and a channel trusting another CA get nothing
for what, bad_channel in [("plaintext", grpc.insecure_channel(target)), ("another CA", secure(other_ca_path))]:
    stub = rpc.ImstoreStub(bad_channel)
    refused(lambda: stub.Send(send, metadata=svc, timeout=5), grpc.StatusCode.UNAVAILABLE, what)
    bad_channel.close()
check(counters() == before, f"a refused call moved a write counter: {before} -> {counters()}")

# --- rotation: the service token replaced in the file, no restart
def entry(name, token, role):
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f'[[tokens]]\nname = "{name}"\nsha256 = "{digest}"\nrole = "{role}"\n'


with open(tokens_path + ".new", "w") as f:
    f.write(entry("gateway", "svc-token-2", "service") + entry("dashboard", "ro-token", "readonly"))
import os  # noqa: E402

os.replace(tokens_path + ".new", tokens_path)
deadline = time.monotonic() + 60
while True:
    try:
        api.Send(pb.SendRequest(conversation=42, sender=1, client_msg_id=b"s-3", payload=b"rotated"),
                 metadata=auth("svc-token-2"))
        break
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"the new token: {e.code()}")
        check(time.monotonic() < deadline, "the rotated token file never took effect")
        time.sleep(0.1)
refused(lambda: api.Send(send, metadata=svc), grpc.StatusCode.UNAUTHENTICATED, "a rotated-out token")
check(counters()[2] == before[2] + 1, "only the send with the new token was written")
print("PASS")
