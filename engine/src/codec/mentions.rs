//! Whom a message mentions (`docs/im.md`, "Mentions"): the conversation's
//! row `E conv seq`, and the bound on a send's mentions.

use super::*;

/// Version byte of encoded [`Mentions`].
pub const MENTIONS_VERSION: u8 = 1;

/// Most users one send may mention by name.
pub const MAX_MENTIONS: usize = 100;

/// Whom one message mentions.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mentions {
    /// Every member ("@everyone").
    pub everyone: bool,
    /// These users, ascending, each once.
    pub users: Vec<u64>,
}

impl Mentions {
    /// Mentions `user`: by name, or as everyone.
    pub fn names(&self, user: u64) -> bool {
        self.everyone || self.users.binary_search(&user).is_ok()
    }

    /// Encodes: version, flags u8 (1 everyone), then each user u64 BE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 8 * self.users.len());
        out.push(MENTIONS_VERSION);
        out.push(u8::from(self.everyone));
        for user in &self.users {
            out.extend_from_slice(&user.to_be_bytes());
        }
        out
    }

    /// Decodes a value written by [`Mentions::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::versioned(bytes, MENTIONS_VERSION, "mentions")?;
        let everyone = match r.u8()? {
            0 => false,
            1 => true,
            found => return Err(CodecError::UnknownVersion { found }),
        };
        let rest = r.rest();
        if rest.len() % 8 != 0 {
            return Err(CodecError::BadLength {
                what: "mentioned users".into(),
                len: rest.len(),
            });
        }
        let users = rest.chunks_exact(8).map(|c| read_u64(c, 0)).collect();
        Ok(Mentions { everyone, users })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_round_trip() {
        let m = Mentions {
            everyone: true,
            users: vec![3, 9],
        };
        assert_eq!(Mentions::decode(&m.encode()), Ok(m.clone()));
        assert!(m.names(4));
        let some = Mentions {
            everyone: false,
            users: vec![3, 9],
        };
        assert!(some.names(9) && !some.names(4));
        assert!(Mentions::decode(&[1, 2]).is_err());
        assert!(Mentions::decode(&[1, 0, 1]).is_err());
        assert!(Mentions::decode(&[]).is_err());
    }
}
