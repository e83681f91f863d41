//! `imstore settings`: a user's settings of one conversation (pin, mute,
//! archive, an opaque value), printed as the server keeps them after the
//! change.

use clap::Args;
use imstore_proto::v1 as pb;
use serde_json::{json, Value};

use super::{Client, Failure};

/// What `imstore settings` changes; what is left out stays as it was.
#[derive(Args)]
pub struct SettingsArgs {
    #[arg(long)]
    user: u64,
    #[arg(long)]
    conversation: u64,
    /// Pin (true) or unpin (false).
    #[arg(long)]
    pin: Option<bool>,
    /// Mute (true) or unmute (false).
    #[arg(long)]
    mute: Option<bool>,
    /// Archive (true) or unarchive (false).
    #[arg(long)]
    archive: Option<bool>,
    /// Replace the opaque value (a draft, client flags; "" clears it).
    #[arg(long)]
    value: Option<String>,
}

pub(super) async fn settings(
    client: &mut Client,
    args: SettingsArgs,
) -> Result<(Value, String), Failure> {
    let s = client
        .set_conversation_settings(pb::SetConversationSettingsRequest {
            user: args.user,
            conversation: args.conversation,
            pinned: args.pin,
            muted: args.mute,
            archived: args.archive,
            value: args.value.map(String::into_bytes),
        })
        .await?
        .into_inner();
    let value = String::from_utf8_lossy(&s.value).into_owned();
    Ok((
        json!({
            "conversation": s.conversation, "pinned": s.pinned, "muted": s.muted,
            "archived": s.archived, "value": value,
        }),
        format!(
            "user {} in {}: {}",
            args.user,
            s.conversation,
            flags(s.pinned, s.muted, s.archived, &value)
        ),
    ))
}

/// "pinned, muted" and so on, or "default settings".
fn flags(pinned: bool, muted: bool, archived: bool, value: &str) -> String {
    let mut out: Vec<String> = [(pinned, "pinned"), (muted, "muted"), (archived, "archived")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    if !value.is_empty() {
        out.push(format!("value {value:?}"));
    }
    if out.is_empty() {
        "default settings".into()
    } else {
        out.join(", ")
    }
}
