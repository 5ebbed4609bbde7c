//! An account as its home shard keeps it: the device key, the mailbox,
//! the session, and the small per-account state of the other parts.

use storage::KEY_HASH_BYTES;

use super::{durability::WriteBack, push, social, ConnId};
use crate::{allowance::TokenBucket, mailbox::Mailbox};

#[derive(Debug)]
pub(super) struct Account {
    pub(super) key_hash: [u8; KEY_HASH_BYTES],
    pub(super) generation: u64,
    pub(super) mailbox: Mailbox,
    pub(super) session: Option<ConnId>,
    /// What the journal holds of the mailbox (see `durability`).
    pub(super) write_back: WriteBack,
    /// Shown as online while a session is and this is set (`SetPresence`).
    pub(super) available: bool,
    /// Unix ms when last online; 0 for never seen since it was recorded.
    pub(super) last_seen_ms: u64,
    /// The last-seen time the journal holds (see `social::LAST_SEEN_SLACK_MS`).
    pub(super) last_seen_written_ms: u64,
    pub(super) social: Option<Box<social::Social>>,
    pub(super) push: Option<Box<push::PushState>>,
    /// Messages, receipts, group requests and signals this account may
    /// send (`ShardConfig::send_rate`). It lives with the account, not the
    /// connection, so hanging up and logging in again gives nothing back.
    pub(super) send: TokenBucket,
    /// Logins (`ShardConfig::login_rate`), and groups created
    /// (`group_create_rate`).
    pub(super) logins: TokenBucket,
    pub(super) groups_created: TokenBucket,
}

impl Account {
    /// A new account with an empty mailbox and no session.
    pub(super) fn new(key_hash: [u8; KEY_HASH_BYTES], generation: u64) -> Account {
        Account {
            key_hash,
            generation,
            mailbox: Mailbox::new(),
            session: None,
            write_back: WriteBack::default(),
            available: false,
            last_seen_ms: 0,
            last_seen_written_ms: 0,
            social: None,
            push: None,
            send: TokenBucket::full(),
            logins: TokenBucket::full(),
            groups_created: TokenBucket::full(),
        }
    }
}
