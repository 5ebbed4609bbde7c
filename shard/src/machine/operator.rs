//! What an operator may ask of a shard about one account (through the
//! admin listener): what it holds, and revoking its device key.

use serde::Serialize;
use storage::Record;
use wire::{ByeReason, Phone};

use super::Shard;

/// An account as an operator sees it: no secrets, no message contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountInfo {
    pub phone: Phone,
    /// Bumped by every signup (and revocation) of the number.
    pub generation: u64,
    /// A session is open on this shard.
    pub online: bool,
    /// Unix ms when last seen online (0: not since it was recorded).
    pub last_seen_ms: u64,
    /// Entries waiting in the mailbox, their body bytes, and the highest
    /// seq acknowledged.
    pub mailbox_entries: u64,
    pub mailbox_bytes: u64,
    pub acked_up_to: u64,
    pub push_token: bool,
}

impl Shard {
    /// What this shard holds of `phone`'s account; `None` when it has none.
    pub fn account_info(&self, phone: Phone) -> Option<AccountInfo> {
        let account = self.accounts.get(&phone)?;
        Some(AccountInfo {
            phone,
            generation: account.generation,
            online: account.session.is_some(),
            last_seen_ms: account.last_seen_ms,
            mailbox_entries: account.mailbox.len() as u64,
            mailbox_bytes: account.mailbox.bytes() as u64,
            acked_up_to: account.mailbox.acked_up_to(),
            push_token: account.push.is_some(),
        })
    }

    /// Revokes `phone`'s device key at `now_ms`: the account keeps its
    /// mailbox, but the key stops working (a new one, which nobody holds,
    /// is recorded under a new generation) and its session is closed with
    /// `Revoked`. The phone signs up again with an SMS code. False when
    /// there is no such account, or the journal cannot take the record.
    pub fn revoke(&mut self, phone: Phone, now_ms: u64) -> bool {
        self.now_ms = now_ms;
        if self.durability.admit().is_err() {
            return false;
        }
        let mut key_hash = [0u8; storage::KEY_HASH_BYTES];
        self.env.random(&mut key_hash);
        let Some(account) = self.accounts.get_mut(&phone) else {
            return false;
        };
        account.key_hash = key_hash;
        account.generation += 1;
        let generation = account.generation;
        if let Some(session) = account.session.take() {
            self.counters.sessions -= 1;
            self.close_with(session, ByeReason::Revoked);
            self.session_ended(phone);
        }
        self.durability.record(Record::AccountKey {
            phone,
            key_hash,
            generation,
        });
        self.run_local();
        true
    }
}
