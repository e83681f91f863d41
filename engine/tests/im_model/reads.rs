//! Every read checked against the model after a run: timelines as each
//! member sees them, unread counts, read positions, receipts, totals, the
//! conversation list and friends.

use super::*;

/// seq, payload, recalled, edited, deleted for me.
type View = (u64, Vec<u8>, bool, bool, bool);

fn views(v: &[MessageView]) -> Vec<View> {
    v.iter()
        .map(|v| {
            (
                v.message.seq,
                v.message.payload.to_vec(),
                v.recalled,
                v.edited,
                v.deleted_for_me,
            )
        })
        .collect()
}

pub(super) fn check_reads(engine: &Engine, model: &mut Model) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: Error| TestCaseError::fail(format!("{what}: {e}"));
    let ids: Vec<u64> = model.convs.keys().copied().collect();
    for &id in &ids {
        let conv = model.convs[&id].clone();
        prop_assert_eq!(
            engine.last_seq(id).map_err(|e| fail("last", e))?,
            conv.last()
        );
        let members: Vec<u64> = engine
            .members(id, 0, 100)
            .map_err(|e| fail("members", e))?
            .iter()
            .map(|m| m.user)
            .collect();
        let want: Vec<u64> = conv
            .members
            .iter()
            .filter(|(_, m)| m.current())
            .map(|(u, _)| *u)
            .collect();
        prop_assert_eq!(members, want);
        prop_assert_eq!(
            engine.member_count(id).map_err(|e| fail("count", e))? as usize,
            conv.count()
        );
        for (&u, m) in &conv.members {
            let got = engine.read_as(u, id, 1, 10_000, Direction::Forward);
            let got = views(&got.map_err(|e| fail("read_as", e))?);
            let want: Vec<_> = model
                .visible(u, id)
                .into_iter()
                .map(|s| {
                    let (p, r, e, d) = model.view(u, id, s);
                    (s, p, r, e, d)
                })
                .collect();
            prop_assert_eq!(&got, &want, "read_as user {} conversation {}", u, id);
            // Each message's reactions, as the model counts them.
            let got_reactions: Vec<(u64, Vec<(String, u64)>)> = engine
                .read_as(u, id, 1, 10_000, Direction::Forward)
                .map_err(|e| fail("read_as", e))?
                .iter()
                .filter(|v| !v.reactions.is_empty())
                .map(|v| {
                    let counts = v.reactions.iter().map(|r| (r.reaction.clone(), r.count));
                    (v.message.seq, counts.collect())
                })
                .collect();
            let want_reactions: Vec<(u64, Vec<(String, u64)>)> = model
                .visible(u, id)
                .into_iter()
                .filter_map(|s| {
                    let counts = model.reactions.get(&(id, s))?;
                    let counts = counts.iter().map(|(r, who)| (r.clone(), who.len() as u64));
                    Some((s, counts.collect()))
                })
                .collect();
            prop_assert_eq!(
                &got_reactions,
                &want_reactions,
                "reactions user {} conversation {}",
                u,
                id
            );
            // Backward pages of 2 from the end agree too.
            let back = engine.read_as(u, id, u64::MAX, 2, Direction::Backward);
            let back = views(&back.map_err(|e| fail("read_as back", e))?);
            prop_assert_eq!(&back[..], &want[want.len().saturating_sub(2)..]);
            prop_assert_eq!(
                engine.unread(u, id).map_err(|e| fail("unread", e))?,
                model.unread(u, id)
            );
            prop_assert_eq!(
                engine.read_seq(u, id).map_err(|e| fail("read seq", e))?,
                m.read_seq
            );
        }
        for seq in conv.first_retained..=conv.last() {
            let r = engine.receipts(id, seq).map_err(|e| fail("receipts", e))?;
            let msg = &conv.msgs[seq as usize - 1];
            let at_send: Vec<(u64, &MMember)> = conv
                .members
                .iter()
                .filter(|(u, m)| **u != msg.sender && m.sees(seq))
                .map(|(u, m)| (*u, m))
                .collect();
            let read: Vec<u64> = at_send
                .iter()
                .filter(|(_, m)| m.read_seq >= seq)
                .map(|(u, _)| *u)
                .collect();
            let unread: Vec<u64> = at_send
                .iter()
                .filter(|(_, m)| m.read_seq < seq)
                .map(|(u, _)| *u)
                .collect();
            prop_assert_eq!(&r.read, &read, "read list of {}:{}", id, seq);
            prop_assert_eq!(&r.unread, &unread, "unread list of {}:{}", id, seq);
            prop_assert_eq!(r.stored, msg.tracked);
        }
        check_receipt_pages(engine, id, conv.first_retained..=conv.last())?;
        // A cleared message's reactions went with it.
        for seq in 1..conv.first_retained {
            for reaction in super::REACTIONS {
                let left = engine
                    .reactors(id, seq, reaction, 0, 100)
                    .map_err(|e| fail("reactors", e))?;
                prop_assert!(left.is_empty(), "{}:{} cleared, {:?} left", id, seq, left);
            }
        }
        for ((_, seq), per_reaction) in model.reactions.range((id, 0)..=(id, u64::MAX)) {
            for (reaction, users) in per_reaction {
                let got = engine
                    .reactors(id, *seq, reaction, 0, 100)
                    .map_err(|e| fail("reactors", e))?;
                let want: Vec<u64> = users.iter().copied().collect();
                prop_assert_eq!(got, want, "who gave {} to {}:{}", reaction, id, seq);
            }
        }
        check_viewer_pages(engine, id, USERS, conv.last())?;
    }
    for user in 1..=USERS {
        // Muted conversations keep their own count, out of the total.
        let total: u64 = ids
            .iter()
            .filter(|id| model.convs[id].members.contains_key(&user))
            .filter(|&&id| !model.settings_of(user, id).muted)
            .map(|&id| model.unread(user, id))
            .sum();
        prop_assert_eq!(
            engine.unread_total(user).map_err(|e| fail("total", e))?,
            total
        );
        // The conversation list: pinned ones first (latest pin first),
        // then by newest activity, archived ones left out until a newer
        // message.
        type Row = (
            u64,
            u64,
            u64,
            u64,
            bool,
            ConversationKind,
            Option<View>,
            u64,
        );
        let mut want: Vec<(u64, Row)> = Vec::new();
        for &id in &ids {
            let conv = &model.convs[&id];
            let Some(m) = conv.members.get(&user) else {
                continue;
            };
            let last = m.visible_last(conv.last());
            let activity = if m.current() {
                conv.last_ts()
            } else {
                (conv.first_retained..=last)
                    .next_back()
                    .map_or(0, |s| conv.msgs[s as usize - 1].ts)
            };
            let last_message = model.visible(user, id).last().map(|&s| {
                let (p, r, e, d) = model.view(user, id, s);
                (s, p, r, e, d)
            });
            let settings = model.settings_of(user, id);
            if settings.hides(last) {
                continue;
            }
            want.push((
                settings.pin_rank,
                (
                    activity,
                    id,
                    last,
                    model.unread(user, id),
                    m.current(),
                    conv.kind,
                    last_message,
                    model.unread_mentions(user, id),
                ),
            ));
        }
        want.sort_by_key(|(rank, w)| std::cmp::Reverse((*rank, w.0, w.1)));
        let want: Vec<Row> = want.into_iter().map(|(_, w)| w).collect();
        let list = engine
            .conversation_list(user, None, 100)
            .map_err(|e| fail("list", e))?;
        // Paged two at a time from each page's last entry, the same list.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = engine
                .conversation_list(user, after, 2)
                .map_err(|e| fail("list page", e))?;
            let Some(last) = page.last() else { break };
            after = Some(imstore_engine::ListCursor {
                last_activity_ms: last.last_activity_ms,
                conversation: last.conversation,
            });
            paged.extend(page);
            prop_assert!(paged.len() <= list.len(), "paging {} does not end", user);
        }
        prop_assert_eq!(&paged, &list, "list of {} paged by two", user);
        let got: Vec<_> = list
            .iter()
            .map(|s| {
                (
                    s.last_activity_ms,
                    s.conversation,
                    s.last_seq,
                    s.unread,
                    s.member,
                    s.kind,
                    s.last_message
                        .as_ref()
                        .map(|v| views(std::slice::from_ref(v))[0].clone()),
                    s.mentions,
                )
            })
            .collect();
        prop_assert_eq!(got, want, "conversation list of {}", user);
        // The settings, as the model keeps them.
        let got = engine
            .conversation_settings(user, &ids)
            .map_err(|e| fail("settings", e))?;
        let want: Vec<_> = model
            .settings
            .iter()
            .filter(|((u, _), _)| *u == user)
            .map(|((_, c), s)| (*c, s.clone()))
            .collect();
        prop_assert_eq!(got, want, "settings of {}", user);
        // Friends, each status.
        for status in [
            FriendStatus::Friends,
            FriendStatus::Outgoing,
            FriendStatus::Incoming,
        ] {
            let got: Vec<u64> = engine
                .friends(user, status, 0, 100)
                .map_err(|e| fail("friends", e))?
                .iter()
                .map(|f| f.user)
                .collect();
            let want: Vec<u64> = model
                .friends
                .iter()
                .filter(|((a, _), s)| *a == user && **s == status)
                .map(|((_, b), _)| *b)
                .collect();
            prop_assert_eq!(got, want);
        }
        // Whom the user blocks, since when.
        let got: Vec<(u64, u64)> = engine
            .blocked(user, 0, 100)
            .map_err(|e| fail("blocked", e))?
            .iter()
            .map(|b| (b.user, b.since_ms))
            .collect();
        let want: Vec<(u64, u64)> = model
            .blocks
            .iter()
            .filter(|((a, _), _)| *a == user)
            .map(|((_, b), since)| (*b, *since))
            .collect();
        prop_assert_eq!(got, want, "block list of {}", user);
    }
    Ok(())
}
