//! An account as its home shard keeps it: the device key, the mailbox,
//! the session, and the small per-account state of the other parts.

use storage::{EntryRecord, KEY_HASH_BYTES};
use wire::GroupId;

use super::{durability::WriteBack, push, social, ConnId};
use crate::{allowance::TokenBucket, mailbox::Mailbox};

#[derive(Debug)]
pub(super) struct Account {
    pub(super) key_hash: [u8; KEY_HASH_BYTES],
    pub(super) generation: u64,
    /// Unix ms when this account was created (`Record::AccountSince`); 0
    /// for one made before that was recorded. Receipts for messages sent
    /// before it are a deleted predecessor's.
    pub(super) since_ms: u64,
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
            since_ms: 0,
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

    /// A replayed `MailboxPut` of `entry` at `seq`. Err: the seq the
    /// mailbox would have given it instead (the journal was not written
    /// by these rules).
    pub(super) fn restore_put(&mut self, seq: u64, entry: EntryRecord) -> Result<(), u64> {
        if self.mailbox.is_empty() && seq > self.mailbox.last_seq() + 1 {
            // Entries before it were acknowledged while still in the
            // write-back cache, so they were never written.
            self.mailbox.start_at(seq);
        }
        self.write_back.restored_put(seq);
        let assigned = self.mailbox.push(entry);
        if assigned == seq {
            Ok(())
        } else {
            Err(assigned)
        }
    }

    /// A replayed `MailboxAck` up to `up_to`: the group posts whose
    /// entries it took away.
    pub(super) fn restore_ack(&mut self, up_to: u64) -> Vec<(GroupId, u64)> {
        let mut groups_acked = Vec::new();
        self.mailbox.ack(up_to, |entry| {
            if let EntryRecord::Group { group, gseq } = entry.record {
                groups_acked.push((group, gseq));
            }
        });
        if up_to > self.mailbox.last_seq() {
            // Entries up to `up_to` were acknowledged before they were
            // written: the mailbox goes on after them.
            let emptied = self.mailbox.start_at(up_to + 1);
            debug_assert!(emptied, "an ack past the last entry empties the mailbox");
        }
        self.write_back.restored_ack(up_to);
        groups_acked
    }

    /// A replayed `MailboxStart`: false when the mailbox cannot start there
    /// (at seq 0, or after entries).
    pub(super) fn restore_start(&mut self, next_seq: u64) -> bool {
        if !self.mailbox.start_at(next_seq) {
            return false;
        }
        self.write_back.restored_start(next_seq);
        true
    }
}
