//! Cross-shard delivery: the copy of a message in a user's inbox, the
//! effects a conversation's shard sends to a user's shard, and the outbox
//! records that carry them (`docs/format.md`, "Outbox").

use super::im::Reader;
use super::*;

/// Version byte of an [`InboxCopy`] (format 4). Format 3's inbox rows,
/// pointers with version byte 1, are read only by the upgrade.
pub const INBOX_COPY_VERSION: u8 = 2;

/// Version byte of an outbox record.
pub const OUTBOX_RECORD_VERSION: u8 = 1;

/// A message as it sits in one user's inbox: a copy made at delivery,
/// kept current by later effects (recall, edit, delete-for-me, clearing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboxCopy {
    /// The message's conversation.
    pub conversation: u64,
    /// The message's seq.
    pub seq: u64,
    /// The sender.
    pub sender: u64,
    /// Server time of the send.
    pub timestamp_ms: u64,
    /// The sender's client message id (empty once cleared).
    pub client_msg_id: Vec<u8>,
    /// The current content: the edited one after an edit; empty once
    /// recalled, hidden or cleared.
    pub payload: Vec<u8>,
    /// Recalled for everyone.
    pub recalled: bool,
    /// Edited at least once.
    pub edited: bool,
    /// Deleted by this user for themself.
    pub hidden: bool,
    /// Cleared from the conversation's history (retention or a clear):
    /// the row stays, as the inbox seq stays, but sync skips it.
    pub cleared: bool,
    /// The message mentions this user (by name, or everyone).
    pub mentioned: bool,
}

const RECALLED: u8 = 1;
const EDITED: u8 = 2;
const HIDDEN: u8 = 4;
const CLEARED: u8 = 8;
const MENTIONED: u8 = 16;

impl InboxCopy {
    /// Encodes: version 2, flags (1 recalled, 2 edited, 4 hidden, 8
    /// cleared, 16 mentions the user), conversation, seq, sender, timestamp, client id length
    /// u16, client id, then the payload to the end.
    pub fn encode(&self) -> Vec<u8> {
        let id_len = self.client_msg_id.len().min(usize::from(u16::MAX));
        let mut out = Vec::with_capacity(36 + id_len + self.payload.len());
        out.push(INBOX_COPY_VERSION);
        let flags = [
            (self.recalled, RECALLED),
            (self.edited, EDITED),
            (self.hidden, HIDDEN),
            (self.cleared, CLEARED),
            (self.mentioned, MENTIONED),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |acc, (_, bit)| acc | bit);
        out.push(flags);
        for n in [self.conversation, self.seq, self.sender, self.timestamp_ms] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(id_len as u16).to_be_bytes());
        out.extend_from_slice(&self.client_msg_id[..id_len]);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a value written by [`InboxCopy::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::versioned(bytes, INBOX_COPY_VERSION, "inbox copy")?;
        let flags = r.u8()?;
        let conversation = r.u64()?;
        let seq = r.u64()?;
        let sender = r.u64()?;
        let timestamp_ms = r.u64()?;
        let id_len = r.u16()?;
        let client_msg_id = r.take(usize::from(id_len))?.to_vec();
        let payload = r.rest().to_vec();
        Ok(InboxCopy {
            conversation,
            seq,
            sender,
            timestamp_ms,
            client_msg_id,
            payload,
            recalled: flags & RECALLED != 0,
            edited: flags & EDITED != 0,
            hidden: flags & HIDDEN != 0,
            cleared: flags & CLEARED != 0,
            mentioned: flags & MENTIONED != 0,
        })
    }

    /// Applies an overlay written in the conversation's shard.
    pub fn apply_overlay(&mut self, overlay: &OverlayEntry) {
        match overlay {
            // A recall replaces an edit, as the conversation's overlay row
            // does: the message reads as recalled, not edited.
            OverlayEntry::Recalled { .. } => {
                self.recalled = true;
                self.edited = false;
                self.payload.clear();
            }
            OverlayEntry::Edited { payload, .. } => {
                self.edited = true;
                if !(self.recalled || self.hidden || self.cleared) {
                    self.payload.clone_from(payload);
                }
            }
        }
    }

    /// Marks the copy deleted for its user.
    pub fn hide(&mut self) {
        self.hidden = true;
        self.payload.clear();
    }

    /// Marks the copy cleared; its content goes.
    pub fn clear(&mut self) {
        self.cleared = true;
        self.payload.clear();
        self.client_msg_id.clear();
    }
}

/// What a conversation's shard asks a user's shard to do for one user:
/// carried in an outbox record, or applied at once when both are the same
/// shard. Every effect is idempotent given the message it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Put a copy of a message into the user's inbox (a new inbox seq).
    Deliver {
        /// The recipient.
        user: u64,
        /// The message, as sent.
        copy: InboxCopy,
    },
    /// One message's copy for several users of the destination shard: a
    /// send's deliver effects toward one shard, merged when the outbox
    /// record is written, so the copy travels once per shard, not once
    /// per member. Applied as one [`Effect::Deliver`] per user, in order.
    DeliverMany {
        /// The recipients, all of the destination shard.
        users: Vec<u64>,
        /// The message, as sent.
        copy: InboxCopy,
    },
    /// A recall or edit of a message the user has a copy of.
    Overlay {
        /// The recipient.
        user: u64,
        /// The message's conversation.
        conversation: u64,
        /// The message's seq.
        seq: u64,
        /// The overlay as the conversation's shard now holds it.
        overlay: OverlayEntry,
    },
    /// The user deleted a message for themself.
    Hide {
        /// The user.
        user: u64,
        /// The message's conversation.
        conversation: u64,
        /// The message's seq.
        seq: u64,
    },
    /// Every message of the conversation below `before` was cleared.
    Clear {
        /// The recipient.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The first seq kept.
        before: u64,
    },
    /// The user's side of a friendship or request with `other` is now
    /// `entry` (`None`: gone). Sent from the pair's shard, in order.
    Friend {
        /// The user whose list changes.
        user: u64,
        /// The other user.
        other: u64,
        /// The user's side as the pair's shard now holds it.
        entry: Option<FriendEntry>,
    },
    /// The user's view of a conversation is now `view` (a membership,
    /// read position, clear or fan-out mode changed it). Sent from the
    /// conversation's shard, in order; the read position never moves back.
    View {
        /// The user.
        user: u64,
        /// The conversation.
        conversation: u64,
        /// The view as the conversation's shard now computes it.
        view: UserView,
    },
    /// The user blocks `other` since `since_ms` (`None`: no longer). Sent
    /// from the pair's shard, in order.
    Block {
        /// The user whose list changes.
        user: u64,
        /// The other user.
        other: u64,
        /// Since when, as the pair's shard holds it.
        since_ms: Option<u64>,
    },
}

/// The size an outbox record aims to stay under: a command's effects for
/// one destination are split over several records past it (each record
/// holds at least one effect), so that a delivery, a raft entry of
/// bounded size, can always carry a record.
pub const OUTBOX_RECORD_TARGET_BYTES: usize = 1 << 20;

impl Effect {
    /// Bytes it takes in an outbox record.
    pub fn encoded_len(&self) -> usize {
        match self {
            Effect::Deliver { copy, .. } => 9 + 4 + copy_len(copy),
            Effect::DeliverMany { users, copy } => 1 + 4 + 8 * users.len() + 4 + copy_len(copy),
            Effect::Overlay { overlay, .. } => 25 + 4 + overlay.encode().len(),
            Effect::Hide { .. } | Effect::Clear { .. } => 25,
            Effect::Friend { entry, .. } => 17 + 4 + entry.map_or(0, |e| e.encode().len()),
            Effect::View { view, .. } => 17 + 4 + view.encode().len(),
            Effect::Block { since_ms, .. } => 17 + 4 + since_ms.map_or(0, |_| 8),
        }
    }

    /// The users it is for, whose shard applies it (one, except for
    /// [`Effect::DeliverMany`]).
    pub fn users(&self) -> &[u64] {
        match self {
            Effect::Deliver { user, .. }
            | Effect::Overlay { user, .. }
            | Effect::Hide { user, .. }
            | Effect::Clear { user, .. }
            | Effect::Friend { user, .. }
            | Effect::View { user, .. }
            | Effect::Block { user, .. } => std::slice::from_ref(user),
            Effect::DeliverMany { users, .. } => users,
        }
    }
}

/// Bytes of an encoded [`InboxCopy`].
fn copy_len(copy: &InboxCopy) -> usize {
    36 + copy.client_msg_id.len().min(usize::from(u16::MAX)) + copy.payload.len()
}

/// `effects` with each run of deliver effects of the same copy merged
/// into one [`Effect::DeliverMany`] (the order of the users kept).
pub fn merge_deliveries(effects: Vec<Effect>) -> Vec<Effect> {
    let mut out: Vec<Effect> = Vec::with_capacity(effects.len());
    for effect in effects {
        let merged = match (out.last_mut(), &effect) {
            (Some(last), Effect::Deliver { user, copy }) => match last {
                Effect::DeliverMany {
                    users,
                    copy: shared,
                } if shared == copy => {
                    users.push(*user);
                    true
                }
                Effect::Deliver {
                    user: first,
                    copy: shared,
                } if shared == copy => {
                    let users = vec![*first, *user];
                    let copy = std::mem::take(shared);
                    *last = Effect::DeliverMany { users, copy };
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !merged {
            out.push(effect);
        }
    }
    out
}

/// Encodes an outbox record: version 1, effect count u32, then each
/// effect: kind (1 deliver, 2 overlay, 3 hide, 4 clear, 5 friend), user
/// u64, then for deliver a u32 length and the [`InboxCopy`]; for overlay
/// the conversation, seq, a u32 length and the [`OverlayEntry`]; for hide
/// the conversation and seq; for clear the conversation and first kept
/// seq; for friend the other user, a u32 length and the [`FriendEntry`]
/// (length 0: no entry); for view (kind 7) the conversation, a u32
/// length and the [`UserView`]. Kind 6 (deliver to many) has no
/// leading user: a u32 count, that many users, a u32 length and the
/// [`InboxCopy`].
pub fn encode_outbox_record(effects: &[Effect]) -> Vec<u8> {
    let mut out = vec![OUTBOX_RECORD_VERSION];
    out.extend_from_slice(&(effects.len() as u32).to_be_bytes());
    let put_bytes = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for effect in effects {
        if let Effect::DeliverMany { users, copy } = effect {
            out.push(6);
            out.extend_from_slice(&(users.len() as u32).to_be_bytes());
            for user in users {
                out.extend_from_slice(&user.to_be_bytes());
            }
            put_bytes(&mut out, &copy.encode());
            continue;
        }
        let (kind, ids): (u8, &[u64]) = match effect {
            Effect::Deliver { user, .. } => (1, &[*user]),
            Effect::DeliverMany { .. } => continue,
            Effect::Overlay {
                user,
                conversation,
                seq,
                ..
            } => (2, &[*user, *conversation, *seq]),
            Effect::Hide {
                user,
                conversation,
                seq,
            } => (3, &[*user, *conversation, *seq]),
            Effect::Clear {
                user,
                conversation,
                before,
            } => (4, &[*user, *conversation, *before]),
            Effect::Friend { user, other, .. } => (5, &[*user, *other]),
            Effect::View {
                user, conversation, ..
            } => (7, &[*user, *conversation]),
            Effect::Block { user, other, .. } => (8, &[*user, *other]),
        };
        out.push(kind);
        for id in ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
        match effect {
            Effect::Deliver { copy, .. } => put_bytes(&mut out, &copy.encode()),
            Effect::Overlay { overlay, .. } => put_bytes(&mut out, &overlay.encode()),
            Effect::Hide { .. } | Effect::Clear { .. } | Effect::DeliverMany { .. } => {}
            Effect::Friend { entry, .. } => {
                put_bytes(&mut out, &entry.map(|e| e.encode()).unwrap_or_default())
            }
            Effect::View { view, .. } => put_bytes(&mut out, &view.encode()),
            Effect::Block { since_ms, .. } => put_bytes(
                &mut out,
                &since_ms
                    .map(|at| at.to_be_bytes().to_vec())
                    .unwrap_or_default(),
            ),
        }
    }
    out
}

/// Decodes a record written by [`encode_outbox_record`].
pub fn decode_outbox_record(bytes: &[u8]) -> Result<Vec<Effect>, CodecError> {
    let mut r = Reader::versioned(bytes, OUTBOX_RECORD_VERSION, "outbox record")?;
    let count = r.u32()?;
    // Each effect takes at least 9 bytes: a bound before allocating.
    let mut effects = Vec::with_capacity((count as usize).min(bytes.len() / 9));
    for _ in 0..count {
        let kind = r.u8()?;
        if kind == 6 {
            let n = r.u32()? as usize;
            // Each user takes 8 bytes: a bound before allocating.
            let mut users = Vec::with_capacity(n.min(bytes.len() / 8));
            for _ in 0..n {
                users.push(r.u64()?);
            }
            let len = r.u32()? as usize;
            effects.push(Effect::DeliverMany {
                users,
                copy: InboxCopy::decode(r.take(len)?)?,
            });
            continue;
        }
        let user = r.u64()?;
        let effect = match kind {
            1 => {
                let len = r.u32()? as usize;
                Effect::Deliver {
                    user,
                    copy: InboxCopy::decode(r.take(len)?)?,
                }
            }
            2 => {
                let (conversation, seq) = (r.u64()?, r.u64()?);
                let len = r.u32()? as usize;
                Effect::Overlay {
                    user,
                    conversation,
                    seq,
                    overlay: OverlayEntry::decode(r.take(len)?)?,
                }
            }
            3 => Effect::Hide {
                user,
                conversation: r.u64()?,
                seq: r.u64()?,
            },
            4 => Effect::Clear {
                user,
                conversation: r.u64()?,
                before: r.u64()?,
            },
            5 => {
                let other = r.u64()?;
                let len = r.u32()? as usize;
                Effect::Friend {
                    user,
                    other,
                    entry: match len {
                        0 => None,
                        _ => Some(FriendEntry::decode(r.take(len)?)?),
                    },
                }
            }
            7 => {
                let conversation = r.u64()?;
                let len = r.u32()? as usize;
                Effect::View {
                    user,
                    conversation,
                    view: UserView::decode(r.take(len)?)?,
                }
            }
            8 => {
                let other = r.u64()?;
                let since_ms = match r.u32()? {
                    0 => None,
                    8 => Some(r.u64()?),
                    found => {
                        return Err(CodecError::BadLength {
                            what: "block effect".into(),
                            len: found as usize,
                        })
                    }
                };
                Effect::Block {
                    user,
                    other,
                    since_ms,
                }
            }
            found => return Err(CodecError::UnknownVersion { found }),
        };
        effects.push(effect);
    }
    r.end()?;
    Ok(effects)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy() -> InboxCopy {
        InboxCopy {
            conversation: 7,
            seq: 3,
            sender: 1,
            timestamp_ms: 1_000,
            client_msg_id: b"c-1".to_vec(),
            payload: b"hello".to_vec(),
            ..InboxCopy::default()
        }
    }

    #[test]
    fn encoded_lengths_add_up() {
        let effects = [
            Effect::Deliver {
                user: 2,
                copy: copy(),
            },
            Effect::Overlay {
                user: 2,
                conversation: 7,
                seq: 3,
                overlay: OverlayEntry::Recalled { by: 1, at_ms: 2 },
            },
            Effect::Hide {
                user: 2,
                conversation: 7,
                seq: 3,
            },
            Effect::Friend {
                user: 2,
                other: 5,
                entry: Some(FriendEntry {
                    status: FriendStatus::Incoming,
                    since_ms: 9,
                    conversation: 0,
                }),
            },
            Effect::Friend {
                user: 2,
                other: 6,
                entry: None,
            },
            Effect::DeliverMany {
                users: vec![3, 4],
                copy: copy(),
            },
            Effect::View {
                user: 2,
                conversation: 7,
                view: UserView::default(),
            },
            Effect::Block {
                user: 2,
                other: 5,
                since_ms: Some(9),
            },
            Effect::Block {
                user: 2,
                other: 5,
                since_ms: None,
            },
        ];
        let total: usize = effects.iter().map(Effect::encoded_len).sum();
        assert_eq!(encode_outbox_record(&effects).len(), 5 + total);
    }

    #[test]
    fn records_round_trip() {
        let effects = vec![
            Effect::Deliver {
                user: 2,
                copy: copy(),
            },
            Effect::Overlay {
                user: 2,
                conversation: 7,
                seq: 3,
                overlay: OverlayEntry::Edited {
                    at_ms: 5,
                    edits: 1,
                    payload: b"hi".to_vec(),
                },
            },
            Effect::Hide {
                user: 2,
                conversation: 7,
                seq: 3,
            },
            Effect::Block {
                user: 9,
                other: 4,
                since_ms: Some(12),
            },
            Effect::Block {
                user: 9,
                other: 4,
                since_ms: None,
            },
            Effect::Clear {
                user: 9,
                conversation: 7,
                before: 4,
            },
            Effect::Friend {
                user: 9,
                other: 3,
                entry: Some(FriendEntry {
                    status: FriendStatus::Friends,
                    since_ms: 11,
                    conversation: 77,
                }),
            },
            Effect::Friend {
                user: 9,
                other: 4,
                entry: None,
            },
            Effect::DeliverMany {
                users: vec![5, 9, 13],
                copy: copy(),
            },
            Effect::View {
                user: 9,
                conversation: 7,
                view: UserView {
                    kind: ConversationKind::Direct,
                    remote: true,
                    member: false,
                    last_seq: 4,
                    last_activity_ms: 12,
                    first_retained: 2,
                    entry: MemberEntry {
                        read_seq: 3,
                        left_change: 9,
                        intervals: vec![(0, 4)],
                    },
                },
            },
        ];
        let bytes = encode_outbox_record(&effects);
        assert_eq!(decode_outbox_record(&bytes), Ok(effects));
        for cut in 0..bytes.len() {
            assert!(decode_outbox_record(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn runs_of_one_copy_merge_and_nothing_else_moves() {
        let other = InboxCopy { seq: 4, ..copy() };
        let deliver = |user, copy: &InboxCopy| Effect::Deliver {
            user,
            copy: copy.clone(),
        };
        let hide = Effect::Hide {
            user: 2,
            conversation: 7,
            seq: 3,
        };
        let merged = merge_deliveries(vec![
            deliver(1, &copy()),
            deliver(2, &copy()),
            deliver(3, &copy()),
            deliver(4, &other),
            hide.clone(),
            deliver(5, &other),
            deliver(6, &other),
        ]);
        assert_eq!(
            merged,
            vec![
                Effect::DeliverMany {
                    users: vec![1, 2, 3],
                    copy: copy(),
                },
                deliver(4, &other),
                hide,
                Effect::DeliverMany {
                    users: vec![5, 6],
                    copy: other,
                },
            ]
        );
    }

    #[test]
    fn copies_keep_their_flags_and_lose_content_when_gone() {
        let mut c = copy();
        assert_eq!(InboxCopy::decode(&c.encode()), Ok(c.clone()));
        c.apply_overlay(&OverlayEntry::Edited {
            at_ms: 5,
            edits: 1,
            payload: b"edited".to_vec(),
        });
        assert_eq!((c.edited, c.payload.as_slice()), (true, &b"edited"[..]));
        c.hide();
        c.apply_overlay(&OverlayEntry::Edited {
            at_ms: 6,
            edits: 2,
            payload: b"again".to_vec(),
        });
        assert!(c.payload.is_empty());
        c.clear();
        let back = InboxCopy::decode(&c.encode()).expect("decodes");
        assert!(back.hidden && back.cleared && back.edited && !back.recalled);
        assert!(back.client_msg_id.is_empty());
        assert!(InboxCopy::decode(&[1, 0]).is_err());
        let mut edited_then_recalled = copy();
        edited_then_recalled.apply_overlay(&OverlayEntry::Edited {
            at_ms: 5,
            edits: 1,
            payload: b"edited".to_vec(),
        });
        edited_then_recalled.apply_overlay(&OverlayEntry::Recalled { by: 1, at_ms: 6 });
        assert!(edited_then_recalled.recalled && !edited_then_recalled.edited);
    }
}
