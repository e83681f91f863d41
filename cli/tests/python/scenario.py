"""An independent client: Python grpcio stubs generated from proto/, run
against a spawned `imstore serve`. Usage: scenario.py HOST:PORT STUBS_DIR.

Covers a direct chat, a group above the fan-out threshold, sync from two
devices, mark-read and receipts, a retried send that must not duplicate,
a block, reactions, pin and mute, a mention in the big group, and a Watch
stream that sees the notifications. Prints PASS at
the end.
"""
import sys
import threading
import time

sys.path.insert(0, sys.argv[2])

import grpc  # noqa: E402
from imstore.v1 import imstore_pb2 as pb  # noqa: E402
from imstore.v1 import imstore_pb2_grpc as rpc  # noqa: E402

channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=30)
api = rpc.ImstoreStub(channel)


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAIL: {what}")


# --- a direct chat between two friends
api.RequestFriend(pb.FriendPairRequest(user=1, other=2))
friends = api.AcceptFriend(pb.FriendPairRequest(user=2, other=1))
check(friends.outcome == pb.FRIEND_OUTCOME_BECAME_FRIENDS, "friends")
direct = friends.conversation
hello = api.Send(pb.SendRequest(conversation=direct, sender=1, client_msg_id=b"py-1", payload=b"hello from python"))
check(hello.seq == 1 and not hello.duplicate, "first send")
# --- a retried send must not duplicate
retry = api.Send(pb.SendRequest(conversation=direct, sender=1, client_msg_id=b"py-1", payload=b"hello from python"))
check(retry.seq == 1 and retry.duplicate, "retry deduplicated")
api.Send(pb.SendRequest(conversation=direct, sender=2, client_msg_id=b"py-2", payload=b"hi back"))
page = api.ReadAs(pb.ReadAsRequest(viewer=1, conversation=direct, **{"from": 1}, limit=10))
check([m.payload for m in page.messages] == [b"hello from python", b"hi back"], "direct history")

# --- a Watch stream for user 2, consumed on a thread
seen = []
watch = api.Watch(pb.WatchRequest(users=[pb.UserPosition(user=2, inbox_seq=2)], change=0))


def consume():
    try:
        for note in watch:
            seen.append(note)
    except grpc.RpcError:
        pass  # cancelled at the end


thread = threading.Thread(target=consume, daemon=True)
thread.start()

# --- a group above the fan-out threshold (500 by default): 600 members
big = 7000
api.CreateGroup(pb.CreateGroupRequest(conversation=big, owner=1, members=list(range(2, 601))))
members = api.ListMembers(pb.ListMembersRequest(conversation=big, limit=10))
check(members.member_count == 600, "600 members")
sent = api.Send(pb.SendRequest(conversation=big, sender=3, client_msg_id=b"py-big", payload=b"to everyone"))
api.Send(pb.SendRequest(conversation=direct, sender=1, client_msg_id=b"py-3", payload=b"one more"))

# --- sync from two devices of user 2
phone = api.Sync(pb.SyncRequest(user=2, device=b"phone", limit=100))
laptop = api.Sync(pb.SyncRequest(user=2, device=b"laptop", limit=1))
check(len(phone.entries) == 3, f"phone got {len(phone.entries)} inbox entries")
check([a.conversation for a in phone.advanced] == [big], "big group reported, not fanned out")
check(len(laptop.entries) == 1 and laptop.more, "laptop pages on its own")
# Not acknowledged (the answer could have been lost): the same again.
lost = api.Sync(pb.SyncRequest(user=2, device=b"phone", limit=100))
check(len(lost.entries) == 3 and [a.conversation for a in lost.advanced] == [big],
      "an answer not acknowledged comes again, big group included")
again = api.Sync(pb.SyncRequest(user=2, device=b"phone", limit=100, ack=phone.cursor))
check(len(again.entries) == 0 and len(again.advanced) == 0, "phone acknowledged everything")
pulled = api.ReadAs(pb.ReadAsRequest(viewer=2, conversation=big, **{"from": 1}, limit=10))
check([m.payload for m in pulled.messages] == [b"to everyone"], "pulled the big group")

# --- mark-read and receipts
api.MarkRead(pb.MarkReadRequest(user=2, conversation=big, up_to=sent.seq))
receipts = api.GetReceipts(pb.GetReceiptsRequest(conversation=big, seq=sent.seq))
check(list(receipts.read) == [2] and receipts.unread_count == 598, "receipts in the big group")
unread = api.GetUnread(pb.GetUnreadRequest(user=4, conversation=big))
check(unread.unread == 1, "user 4 has one unread")

# --- typed errors
try:
    api.Send(pb.SendRequest(conversation=big, sender=9999, client_msg_id=b"x", payload=b"x"))
    check(False, "a non-member could send")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"non-member: {e.code()}")

try:
    api.Sync(pb.SyncRequest(user=2, limit=10))
    check(False, "a sync without a cursor or a device was answered")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"sync without a start: {e.code()}")

# --- a block: user 2 blocks user 1, whose direct sends are then refused
api.Block(pb.BlockRequest(user=2, other=1))
try:
    api.Send(pb.SendRequest(conversation=direct, sender=1, client_msg_id=b"py-blocked", payload=b"x"))
    check(False, "a blocked user's send was accepted")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"blocked send: {e.code()}")
    check("blocks" in e.details(), f"blocked send: {e.details()}")
after = api.ReadAs(pb.ReadAsRequest(viewer=2, conversation=direct, **{"from": 1}, limit=10))
check(len(after.messages) == 3, "nothing written by the blocked send")
blocked = api.ListBlocked(pb.ListBlockedRequest(user=2, limit=10))
check([b.user for b in blocked.blocked] == [1], f"block list: {blocked}")
api.Unblock(pb.BlockRequest(user=2, other=1))
unblocked = api.Send(pb.SendRequest(conversation=direct, sender=1, client_msg_id=b"py-4", payload=b"after unblock"))
check(unblocked.seq == 4, "a send after the unblock")

# --- reactions on the big group's message
api.React(pb.ReactRequest(conversation=big, seq=sent.seq, user=5, reaction="👍"))
api.React(pb.ReactRequest(conversation=big, seq=sent.seq, user=5, reaction="👍"))  # idempotent
api.React(pb.ReactRequest(conversation=big, seq=sent.seq, user=6, reaction="👍"))
read = api.ReadAs(pb.ReadAsRequest(viewer=5, conversation=big, **{"from": 1}, limit=10))
check([(r.reaction, r.count) for r in read.messages[0].reactions] == [("👍", 2)], f"reactions: {read.messages[0].reactions}")
who = api.ListReactors(pb.ListReactorsRequest(conversation=big, seq=sent.seq, reaction="👍", limit=10))
check(list(who.users) == [5, 6], f"reactors: {who.users}")
try:
    api.React(pb.ReactRequest(conversation=big, seq=sent.seq, user=5, reaction="x" * 33))
    check(False, "a reaction too long was accepted")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"long reaction: {e.code()}")

# --- settings: user 2 pins the direct chat and mutes the big group
before = api.ListConversations(pb.ListConversationsRequest(user=2, limit=10))
check([c.conversation for c in before.conversations][:1] == [direct], "direct chat newest")
api.SetConversationSettings(pb.SetConversationSettingsRequest(user=2, conversation=big, pinned=True))
muted = api.SetConversationSettings(pb.SetConversationSettingsRequest(user=2, conversation=direct, muted=True))
check(muted.muted and not muted.pinned, f"settings answer: {muted}")
listed = api.ListConversations(pb.ListConversationsRequest(user=2, limit=10))
check([c.conversation for c in listed.conversations][:2] == [big, direct], f"pinned first: {listed}")
check(listed.conversations[0].pinned and listed.conversations[1].muted, "pin and mute shown")
direct_unread = api.GetUnread(pb.GetUnreadRequest(user=2, conversation=direct)).unread
total = api.GetUnread(pb.GetUnreadRequest(user=2)).unread
check(direct_unread > 0 and total == sum(
    c.unread for c in listed.conversations if not c.muted), f"muted left out of the total {total}")
try:
    api.SetConversationSettings(pb.SetConversationSettingsRequest(user=2, conversation=big))
    check(False, "a settings change of nothing was accepted")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"empty settings change: {e.code()}")

# --- a mention in the 600-member group: counted for user 4, not for user 5
api.Send(pb.SendRequest(conversation=big, sender=3, client_msg_id=b"py-mention", payload=b"@4 look",
                        mentions=[4]))
def big_mentions(user):
    listed = api.ListConversations(pb.ListConversationsRequest(user=user, limit=10))
    return [c.mentions for c in listed.conversations if c.conversation == big]
check(big_mentions(4) == [1], f"user 4 mentioned: {big_mentions(4)}")
check(big_mentions(5) == [0], f"user 5 not mentioned: {big_mentions(5)}")
try:
    api.Send(pb.SendRequest(conversation=big, sender=3, client_msg_id=b"py-all", payload=b"x",
                            mention_everyone=True))
    check(False, "a member who is not the owner mentioned everyone")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"everyone by a member: {e.code()}")

# --- the watch saw user 2's inbox advance and the big group advance
deadline = time.time() + 20
while time.time() < deadline:
    kinds = {n.WhichOneof("event") for n in seen}
    if {"inbox", "conversation"} <= kinds:
        break
    time.sleep(0.05)
kinds = {n.WhichOneof("event") for n in seen}
check({"inbox", "conversation"} <= kinds, f"watch notifications: {seen}")
watch.cancel()
print("PASS")
