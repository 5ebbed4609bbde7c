//! What an operator may ask of a shard (through the admin listener): what
//! it holds of an account, revoking its device key, deleting the account,
//! and where a message is.

use serde::Serialize;
use storage::Record;
use wire::{ByeReason, Phone, Presence, ReceiptKind};

use super::{owed::OwedReceipt, PeerMessage, Shard};
use crate::island::IslandId;

/// An account as an operator sees it: no secrets, no message contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountInfo {
    /// Written as text (`+15550000001`), not as the wire's integer.
    #[serde(serialize_with = "phone_as_text")]
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

/// A phone number in JSON for people: `+` and its digits.
fn phone_as_text<S: serde::Serializer>(phone: &Phone, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(phone)
}

/// What deleting an account removed on its home shard. Its group
/// memberships go too, on the shards that own its groups, once the
/// deletion is durable (`PeerMessage::AccountGone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deleted {
    /// Mailbox entries dropped; each message's sender is sent an
    /// `Undeliverable` receipt.
    pub mailbox_entries: u64,
    /// A session was open; it was closed with `Bye { AccountDeleted }`.
    pub was_online: bool,
}

/// Why an operator's change to an account (a revocation, a deletion) was
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccountRefused {
    #[error("no such account")]
    NoAccount,
    #[error("the journal cannot take records now (failed, disk full or unavailable)")]
    Storage,
    /// `deletions::DELETIONS_PENDING_MAX` deletions wait for shards that
    /// do not answer (a node away): retry once they have.
    #[error("too many deletions wait for unreachable shards; retry later")]
    Busy,
}

/// Where a message (a sender's `client_id`) is, as one shard knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceHit {
    /// The recipient (a phone, or a group for a post its owner took);
    /// `None` for a refusal.
    pub to: Option<String>,
    /// Its mailbox seq, or for a group post its position in the group;
    /// `None` for a refusal.
    pub id: Option<u64>,
    /// `queued` (in the mailbox, not yet written to the phone),
    /// `delivered` (written, not acknowledged), `acknowledged` (gone from
    /// the mailbox, the sender told `Delivered`), `read` (its read receipt
    /// passed, or it expired unread), `posted` (a group post its owner
    /// numbered), or `refused` (answered with an `Error`, see `refusal`).
    pub state: &'static str,
    /// Why it was refused, for a `refused` hit.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<TraceRefusal>,
}

/// A refusal as a trace shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRefusal {
    /// The `ErrorKind` the phone was sent (`RateLimited`, `MailboxFull`,
    /// ...).
    pub reason: String,
    /// The `Error` frame's detail, as the phone got it.
    pub detail: String,
    /// How long ago, in ms of the shard's clock.
    pub age_ms: u64,
}

impl TraceHit {
    /// A stored message or post: where it is and in what state.
    pub(super) fn stored(to: String, id: u64, state: &'static str) -> TraceHit {
        TraceHit {
            to: Some(to),
            id: Some(id),
            state,
            refusal: None,
        }
    }
}

impl Shard {
    /// Where `sender`'s message `client_id` is on this shard: every
    /// mailbox it was stored in and every group that took it, while the
    /// resend tables remember it (`dedup_ttl_ms`, `dedup_entries_max`),
    /// and every time this shard refused it, while it remembers
    /// (`refusals::REFUSALS_REMEMBERED_MAX` refusals, since the start).
    /// Empty when this shard never stored nor refused it (or forgot).
    pub fn trace(&mut self, sender: Phone, client_id: u64) -> Vec<TraceHit> {
        let found: Vec<(Phone, u64)> = self
            .dedup
            .iter()
            .filter(|listed| listed.from == sender && listed.client_id == client_id)
            .map(|listed| (listed.to, listed.id))
            .collect();
        let mut hits: Vec<TraceHit> = found
            .into_iter()
            .map(|(to, seq)| self.trace_in_mailbox(to, seq))
            .collect();
        hits.extend(self.groups.trace(sender, client_id));
        let now_ms = self.now_ms;
        hits.extend(self.refusals.of(sender, client_id).map(|refusal| TraceHit {
            to: None,
            id: None,
            state: "refused",
            refusal: Some(TraceRefusal {
                reason: format!("{:?}", refusal.kind),
                detail: refusal.detail.clone(),
                age_ms: now_ms.saturating_sub(refusal.at_ms),
            }),
        }));
        hits
    }

    /// The state of entry `seq` (the read bit included) in `to`'s mailbox.
    fn trace_in_mailbox(&self, to: Phone, seq: u64) -> TraceHit {
        let read = seq & storage::DEDUP_READ_BIT != 0;
        let seq = seq & !storage::DEDUP_READ_BIT;
        let state = match self.accounts.get(&to) {
            _ if read => "read",
            Some(account) if seq <= account.mailbox.acked_up_to() => "acknowledged",
            Some(account) => {
                let written = account
                    .session
                    .and_then(|id| self.conns.get(id))
                    .is_some_and(|conn| conn.delivered_up_to() >= seq);
                if written {
                    "delivered"
                } else {
                    "queued"
                }
            }
            None => "acknowledged",
        };
        TraceHit::stored(to.to_string(), seq, state)
    }

    /// The connection `phone` is logged in on, if it is (a session lives
    /// on its account's home shard, so on this one).
    pub fn session_of(&self, phone: Phone) -> Option<super::ConnId> {
        self.accounts.get(&phone)?.session
    }

    /// The account logged in on connection `id`, if one is.
    pub fn logged_in(&self, id: super::ConnId) -> Option<Phone> {
        self.conns.account(id)
    }

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
    /// `Revoked`. The phone signs up again with an SMS code. Err: there
    /// is no such account, or the journal cannot take the record.
    pub fn revoke(&mut self, phone: Phone, now_ms: u64) -> Result<(), AccountRefused> {
        self.now_ms = now_ms;
        if !self.accounts.contains_key(&phone) {
            return Err(AccountRefused::NoAccount);
        }
        if self.durability.admit().is_err() {
            return Err(AccountRefused::Storage);
        }
        let mut key_hash = [0u8; storage::KEY_HASH_BYTES];
        self.env.random(&mut key_hash);
        let account = self.accounts.get_mut(&phone).expect("checked above");
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
        Ok(())
    }

    /// Deletes `phone`'s account at `now_ms`: its session is closed with
    /// `Bye { AccountDeleted }`, its mailbox emptied (senders get
    /// `Undeliverable`), its key, contacts, profile, push token and
    /// resend-table entries dropped, and its followers told it is
    /// `Unavailable`. Every shard is told, once the deletion is durable,
    /// to take it out of the groups it owns. The number may sign up
    /// again, as a new account.
    ///
    /// The journal gets a `MailboxAck` of everything, then
    /// `AccountDeleted`; the write-back cache is written out before, so
    /// no record of the account follows its deletion.
    pub fn delete_account(&mut self, phone: Phone, now_ms: u64) -> Result<Deleted, AccountRefused> {
        self.now_ms = now_ms;
        if self.durability.admit().is_err() {
            return Err(AccountRefused::Storage);
        }
        let account = self
            .accounts
            .get_mut(&phone)
            .ok_or(AccountRefused::NoAccount)?;
        if self.deletions.is_full() || !self.owed.has_room(account.mailbox.len()) {
            return Err(AccountRefused::Busy);
        }
        let session = account.session.take();
        if let Some(session) = session {
            self.counters.sessions -= 1;
            self.close_with(session, ByeReason::AccountDeleted);
            self.session_ended(phone);
        }
        let mailbox = &self.accounts[&phone].mailbox;
        let (mailbox_entries, last_seq) = (mailbox.len() as u64, mailbox.last_seq());
        let owed = match mailbox_entries {
            0 => Vec::new(),
            _ => self.take_entries(phone, last_seq, ReceiptKind::Undeliverable),
        };
        self.write_due(u64::MAX);
        for watcher in self.follows.drop_target(phone) {
            let message = PeerMessage::PresenceOf {
                to: watcher,
                about: phone,
                presence: Presence::Unavailable,
                conn: None,
            };
            self.signal_to(self.home_of(watcher), message);
        }
        self.remove_account(phone);
        self.durability.record(Record::AccountDeleted { phone });
        self.deletions.begin(phone, Some(self.now_ms));
        self.update_deletion_counters();
        for dest in self.every_shard() {
            self.durability
                .hold_peer(dest, PeerMessage::AccountGone { phone });
        }
        let owed = owed.into_iter().map(|author| OwedReceipt {
            to: author.from,
            by: phone,
            client_id: author.client_id,
            kind: ReceiptKind::Undeliverable,
            sent_at_ms: author.sent_at_ms,
        });
        self.keep_receipts(owed.collect());
        self.counters.accounts_deleted += 1;
        self.run_local();
        Ok(Deleted {
            mailbox_entries,
            was_online: session.is_some(),
        })
    }

    /// Forgets `phone`'s account and what other parts keep of it. Its
    /// mailbox is empty (the caller released it).
    pub(super) fn remove_account(&mut self, phone: Phone) {
        let Some(account) = self.accounts.remove(&phone) else {
            return;
        };
        debug_assert!(account.session.is_none(), "the session was closed first");
        self.mailbox_totals.moved(account.mailbox.size(), (0, 0));
        self.counters.accounts -= 1;
        self.dedup.forget_recipient(phone);
        self.groups.forget_member(phone);
    }
}

// ---- deletions on every shard --------------------------------------------

impl Shard {
    /// `phone`'s account was deleted on its home shard: take it out of
    /// the groups this shard owns, and answer `GroupsLeft` once that is
    /// durable. A shard whose journal failed cannot record the removals,
    /// so it does not answer: the home tells it again (after its restart).
    pub(super) fn account_gone(&mut self, phone: Phone) {
        if self.durability.is_failed() {
            return;
        }
        self.leave_groups(phone);
        let answer = PeerMessage::GroupsLeft {
            phone,
            island: self.config.island,
            shard: self.config.shard_id,
        };
        self.owe_after_commit(self.home_of(phone), answer);
    }

    pub(super) fn update_deletion_counters(&mut self) {
        self.counters.account_deletions_pending = self.deletions.len() as u64;
    }

    /// Tablet (`island`, `shard`) answered that `phone` left its groups.
    /// It counts for the tablet wherever it is served now: an island that
    /// moved holds the same groups on its new primary.
    pub(super) fn groups_left(&mut self, phone: Phone, island: IslandId, shard: u16) {
        let everyone = self.every_shard();
        let Some(by) = self.tablet_dest(island, shard) else {
            return;
        };
        if !everyone.contains(&by) {
            // Not a shard this node knows (a node it has no view of yet, or
            // a peer naming what does not exist): nothing to count, so no
            // peer can grow a deletion's set of answers; it is told again.
            return;
        }
        let known = self.knows_every_shard().then_some(&everyone[..]);
        self.deletions.confirm(phone, by, known);
        self.update_deletion_counters();
    }

    /// Tells pending deletions again to the shards that did not answer;
    /// one whose every shard answered (or left the cluster) is finished.
    pub(super) fn deletions_tick(&mut self) {
        // A shard whose journal failed tells nothing: a deletion it took
        // may not be durable (the account is back after its restart).
        if self.deletions.len() == 0 || self.durability.is_failed() {
            return;
        }
        let everyone = self.every_shard();
        let known = self.knows_every_shard();
        for (phone, missing) in self.deletions.due(self.now_ms, &everyone) {
            if missing.is_empty() && known {
                self.deletions.forget(phone);
            }
            for dest in missing {
                self.route(dest, PeerMessage::AccountGone { phone });
            }
        }
        self.update_deletion_counters();
        self.run_local();
    }

    /// Whether `every_shard` names every shard of the cluster: always on a
    /// single node; in a cluster once the coordinator's first view came.
    fn knows_every_shard(&self) -> bool {
        self.placement.as_ref().is_none_or(|p| p.revision > 0)
    }
}
