//! Contacts, profiles and who follows whom: the state behind presence,
//! typing and profiles (see `presence` for how it travels).
//!
//! Durable, on the account's home shard like the rest of the account: the
//! contact list (`Contacts` records), the profile with the privacy setting
//! (`Profile`) and the last-seen time (`LastSeen`).
//!
//! Ephemeral: who follows whose presence ([`Follows`]). The followed
//! account's shard keeps `watchers` (target → followers anywhere), the
//! follower's shard keeps `watching` for its session (follower →
//! targets), and both forget on disconnect or lazily.
//!
//! Contact lookups say who is registered, so they are bounded two ways
//! per account: syncs per hour, and numbers never looked up before (a
//! budget that starts at `contacts_max` and refills slowly), so one account
//! cannot walk the number space ([`Social::sync`],
//! [`Social::charge_strangers`]).

use std::collections::{BTreeMap, VecDeque};

use ahash::AHashMap;
use storage::Record;
use wire::{Phone, Profile};

use super::{ConnId, PeerMessage};
use crate::allowance::{Rate, TokenBucket};

/// Going away (still connected) writes the last-seen time only when the
/// journal's copy is older than this: a phone switching presence in a loop
/// then costs one record a minute, not one per switch. The time itself is
/// exact in memory and written exactly when the connection ends; only a
/// crash while away can show it up to this much early.
pub(super) const LAST_SEEN_SLACK_MS: u64 = 60_000;

/// Numbers outside its contacts an account is remembered to have sent to
/// since the shard started: a conversation with one costs one lookup, not
/// one per message.
const STRANGERS_REMEMBERED_MAX: usize = 32;

/// An account's contacts and profile. Boxed in the account and absent
/// until first used: most accounts on a shard at any moment never touch it.
#[derive(Debug, Default)]
pub(super) struct Social {
    /// Ascending, without duplicates, never the owner.
    contacts: Vec<Phone>,
    pub(super) profile: Profile,
    pub(super) hide_last_seen: bool,
    /// Contact syncs (`ShardConfig::contact_sync_rate`) and numbers never
    /// listed before that may be looked up (`contact_lookup_rate`).
    syncs: TokenBucket,
    lookups: TokenBucket,
    /// The journal holds a `Contacts` record of this account: it has
    /// looked numbers up, so a restart restores both allowances as spent
    /// (it cannot know how much was) rather than full.
    looked_up: bool,
    /// Numbers outside the contact list this account sent to lately, each
    /// of which cost a lookup (see `charge_strangers`); newest last.
    strangers: Vec<Phone>,
}

/// The limits a contact sync is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct SyncLimits {
    pub(super) contacts_max: usize,
    pub(super) sync_rate: Rate,
    pub(super) lookup_rate: Rate,
}

/// Why a contact sync was refused; the message is the phone's detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum SyncRefused {
    #[error("{count} contacts; the server keeps at most {max}")]
    TooManyContacts { count: usize, max: usize },
    #[error("at most {per_hour} contact syncs an hour")]
    Syncs { per_hour: u64 },
    #[error("{fresh} new numbers; {left} may be looked up now")]
    Lookups { fresh: u64, left: u64 },
}

/// A send (or group addition) to numbers outside the sender's contacts
/// over its lookup allowance; the message is the phone's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many numbers outside your contacts ({count}); {}", retry_hint(*.retry_after_ms))]
pub(super) struct StrangersRefused {
    pub(super) count: usize,
    /// `u64::MAX`: never, unless they are listed first.
    pub(super) retry_after_ms: u64,
}

fn retry_hint(retry_after_ms: u64) -> String {
    match retry_after_ms {
        u64::MAX => "list them as contacts first".to_owned(),
        ms => format!("retry in {} s", ms.div_ceil(1000)),
    }
}

impl Social {
    pub(super) fn has_contact(&self, phone: Phone) -> bool {
        self.contacts.binary_search(&phone).is_ok()
    }

    /// Applies a contact sync of `owner` (lists already normalized) if the
    /// list stays within `contacts_max` and both allowances fit, spending
    /// them; nothing changes otherwise.
    pub(super) fn sync(
        &mut self,
        (full, add, remove): (bool, &[Phone], &[Phone]),
        limits: SyncLimits,
        now_ms: u64,
    ) -> Result<(), SyncRefused> {
        let contacts = if full {
            add.to_vec()
        } else {
            let mut merged: Vec<Phone> = self
                .contacts
                .iter()
                .chain(add)
                .copied()
                .filter(|p| remove.binary_search(p).is_err())
                .collect();
            merged.sort_unstable();
            merged.dedup();
            merged
        };
        if contacts.len() > limits.contacts_max {
            let (count, max) = (contacts.len(), limits.contacts_max);
            return Err(SyncRefused::TooManyContacts { count, max });
        }
        // Both allowances must fit before either is spent.
        let fresh = add.iter().filter(|&&p| !self.has_contact(p)).count() as u64;
        let syncs_left = self.syncs.available(limits.sync_rate, now_ms);
        let lookups_left = self.lookups.available(limits.lookup_rate, now_ms);
        if syncs_left == 0 {
            let per_hour = limits.sync_rate.tokens;
            return Err(SyncRefused::Syncs { per_hour });
        }
        if fresh > lookups_left {
            let left = lookups_left;
            return Err(SyncRefused::Lookups { fresh, left });
        }
        let spent = self.syncs.take(1, limits.sync_rate, now_ms).is_ok()
            && self.lookups.take(fresh, limits.lookup_rate, now_ms).is_ok();
        debug_assert!(spent, "both allowances were checked");
        self.looked_up = true;
        self.contacts = contacts;
        Ok(())
    }

    /// Charges one lookup for each of `phones` neither in the contacts nor
    /// among the strangers written to lately, all or nothing. Ok(true):
    /// this is the account's first lookup, which the caller records (a
    /// `Contacts` record) so that a restart restores the allowance as
    /// spent.
    pub(super) fn charge_strangers(
        &mut self,
        (owner, phones): (Phone, &[Phone]),
        rate: Rate,
        now_ms: u64,
    ) -> Result<bool, StrangersRefused> {
        let strangers: Vec<Phone> = phones
            .iter()
            .copied()
            .filter(|&p| p != owner && !self.has_contact(p) && !self.strangers.contains(&p))
            .collect();
        if strangers.is_empty() {
            return Ok(false);
        }
        if let Err(exhausted) = self.lookups.take(strangers.len() as u64, rate, now_ms) {
            return Err(StrangersRefused {
                count: strangers.len(),
                retry_after_ms: exhausted.retry_after_ms,
            });
        }
        for phone in strangers {
            if self.strangers.len() >= STRANGERS_REMEMBERED_MAX {
                self.strangers.remove(0);
            }
            self.strangers.push(phone);
        }
        let first = !self.looked_up;
        self.looked_up = true;
        Ok(first)
    }

    /// A replayed `Contacts` record. What was spent before the restart is
    /// unknown: both allowances are taken as spent, so a crash never hands
    /// out a new burst.
    pub(super) fn restore_contacts(
        &mut self,
        (owner, full, add, remove): (Phone, bool, Vec<Phone>, Vec<Phone>),
        (sync_rate, lookup_rate): (Rate, Rate),
        now_ms: u64,
    ) {
        self.syncs = TokenBucket::spent(sync_rate, now_ms);
        self.lookups = TokenBucket::spent(lookup_rate, now_ms);
        self.looked_up = true;
        let add = normalize(add, owner);
        if full {
            self.contacts = add;
        } else {
            let remove = normalize(remove, owner);
            self.contacts.extend(add);
            self.contacts.sort_unstable();
            self.contacts.dedup();
            self.contacts.retain(|p| remove.binary_search(p).is_err());
        }
    }

    /// The account's contacts and profile records for a checkpoint.
    pub(super) fn checkpoint(&self, owner: Phone, records: &mut Vec<Record>) {
        if !self.contacts.is_empty() || self.looked_up {
            records.push(Record::Contacts {
                owner,
                full: true,
                add: self.contacts.clone(),
                remove: Vec::new(),
            });
        }
        if self.profile != Profile::default() || self.hide_last_seen {
            records.push(self.profile_record(owner));
        }
    }

    /// The record that makes the profile and privacy setting durable.
    pub(super) fn profile_record(&self, owner: Phone) -> Record {
        Record::Profile {
            owner,
            profile: self.profile.clone(),
            hide_last_seen: self.hide_last_seen,
        }
    }
}

/// Follows to send again to nodes that came back as a new incarnation:
/// their lists of followers were in memory and went with the old process.
/// Drained a few at a time by the tick, so that a node's return does not
/// flood its links; at most one entry per follow (a node's entries are
/// replaced when it comes back again).
#[derive(Default)]
pub(super) struct Rewatches {
    /// (node of the target, watcher, target).
    pending: VecDeque<(u16, Phone, Phone)>,
}

impl Rewatches {
    /// `node` came back: `follows` (watcher, target) of its accounts are
    /// to be sent again, instead of any still pending for it.
    pub(super) fn node_returned(&mut self, node: u16, follows: Vec<(Phone, Phone)>) {
        self.pending.retain(|&(n, _, _)| n != node);
        self.pending
            .extend(follows.into_iter().map(|(w, t)| (node, w, t)));
    }

    /// Up to `max` follows to send now.
    pub(super) fn take(&mut self, max: usize) -> Vec<(Phone, Phone)> {
        let n = max.min(self.pending.len());
        self.pending.drain(..n).map(|(_, w, t)| (w, t)).collect()
    }
}

/// Who follows whose presence on this shard.
#[derive(Debug, Default)]
pub(super) struct Follows {
    /// Accounts of this shard → who follows them (on any shard).
    watchers: AHashMap<Phone, Vec<Phone>>,
    /// Logged-in accounts of this shard → whom they follow.
    watching: AHashMap<Phone, Vec<Phone>>,
}

impl Follows {
    /// `owner` follows `target` (again, or at most `max` targets). Err:
    /// it follows `max` others already.
    pub(super) fn follow(&mut self, owner: Phone, target: Phone, max: usize) -> Result<(), ()> {
        let list = self.watching.entry(owner).or_default();
        if !list.contains(&target) {
            if list.len() >= max {
                return Err(());
            }
            list.push(target);
        }
        Ok(())
    }

    /// `owner` stops following `target`: true when it did follow.
    pub(super) fn unfollow(&mut self, owner: Phone, target: Phone) -> bool {
        let Some(list) = self.watching.get_mut(&owner) else {
            return false;
        };
        let Some(at) = list.iter().position(|&t| t == target) else {
            return false;
        };
        list.swap_remove(at);
        true
    }

    pub(super) fn is_following(&self, owner: Phone, target: Phone) -> bool {
        self.watching
            .get(&owner)
            .is_some_and(|list| list.contains(&target))
    }

    /// Every (watcher, target) that `pick` approves of `target`.
    pub(super) fn following(&self, pick: impl Fn(Phone) -> bool) -> Vec<(Phone, Phone)> {
        let mut found = Vec::new();
        for (&watcher, targets) in &self.watching {
            let picked = targets.iter().filter(|&&t| pick(t));
            found.extend(picked.map(|&target| (watcher, target)));
        }
        found
    }

    /// Forgets that `owner` follows `target` (it is hidden now).
    pub(super) fn forget(&mut self, owner: Phone, target: Phone) {
        if let Some(list) = self.watching.get_mut(&owner) {
            list.retain(|&t| t != target);
        }
    }

    /// `owner`'s session ended: everything it followed.
    pub(super) fn session_ended(&mut self, owner: Phone) -> Vec<Phone> {
        self.watching.remove(&owner).unwrap_or_default()
    }

    /// Keeps the follows of `owner` that `keep` approves; the others.
    pub(super) fn retain(&mut self, owner: Phone, keep: impl Fn(Phone) -> bool) -> Vec<Phone> {
        let Some(list) = self.watching.get_mut(&owner) else {
            return Vec::new();
        };
        let (kept, dropped) = list.drain(..).partition(|&t| keep(t));
        *list = kept;
        dropped
    }

    /// `watcher` (on any shard) follows `target`, of this shard.
    pub(super) fn add_watcher(&mut self, target: Phone, watcher: Phone) {
        let list = self.watchers.entry(target).or_default();
        if !list.contains(&watcher) {
            list.push(watcher);
        }
    }

    pub(super) fn remove_watcher(&mut self, target: Phone, watcher: Phone) {
        if let Some(list) = self.watchers.get_mut(&target) {
            list.retain(|&w| w != watcher);
            if list.is_empty() {
                self.watchers.remove(&target);
            }
        }
    }

    /// `target`'s account is gone: its followers, forgotten.
    pub(super) fn drop_target(&mut self, target: Phone) -> Vec<Phone> {
        self.watchers.remove(&target).unwrap_or_default()
    }

    /// The followers of `owner` that `visible` approves; forgets the
    /// others.
    pub(super) fn visible_watchers(
        &mut self,
        owner: Phone,
        visible: impl Fn(Phone) -> bool,
    ) -> Vec<Phone> {
        let Some(mut watchers) = self.watchers.remove(&owner) else {
            return Vec::new();
        };
        watchers.retain(|&w| visible(w));
        if !watchers.is_empty() {
            self.watchers.insert(owner, watchers.clone());
        }
        watchers
    }
}

/// A lookup waiting for every shard to say which numbers it has.
#[derive(Debug)]
pub(super) struct Lookup {
    pub(super) owner: Phone,
    pub(super) conn: ConnId,
    pub(super) client_id: u64,
    pub(super) shards_left: u16,
    /// Numbers asked about, and those found.
    pub(super) asked: usize,
    pub(super) registered: Vec<Phone>,
    pub(super) purpose: LookupFor,
    /// When it was asked (shard ms): see `Lookups::expired`.
    pub(super) asked_ms: u64,
}

/// What a lookup's answer is for.
#[derive(Debug)]
pub(super) enum LookupFor {
    /// A contact sync, answered with `Contacts` (the registered ones).
    Contacts,
    /// New members of a group: `request` (a `PeerMessage::GroupRequest`)
    /// goes on to the group's `owner` shard only when every one has an
    /// account; otherwise it is answered `UnknownRecipient`. A member
    /// without an account would receive a group's later posts once it
    /// signed up without ever having been told it was in the group.
    Group {
        owner: crate::Home,
        request: Box<PeerMessage>,
    },
}

/// Lookups in flight, by query number: numbers grow with time, so the
/// oldest come first.
#[derive(Debug, Default)]
pub(super) struct Lookups {
    pending: BTreeMap<u64, Lookup>,
    next_query: u64,
}

impl Lookups {
    /// A number for a new lookup.
    pub(super) fn next_query(&mut self) -> u64 {
        let query = self.next_query;
        self.next_query += 1;
        query
    }

    /// `lookup` waits for answers from other shards.
    pub(super) fn wait(&mut self, query: u64, lookup: Lookup) {
        debug_assert!(lookup.shards_left > 0);
        self.pending.insert(query, lookup);
    }

    /// Lookups asked at or before `before_ms` and still unanswered: taken
    /// out (a late answer then finds nothing). An answer lost with a
    /// link's session, or a node gone meanwhile, must not leave the phone
    /// waiting without end.
    pub(super) fn expired(&mut self, before_ms: u64) -> Vec<Lookup> {
        let mut expired = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().asked_ms > before_ms {
                break;
            }
            expired.push(entry.remove());
        }
        expired
    }

    /// A shard answered `query`: the lookup, once the last one has.
    pub(super) fn answered(&mut self, query: u64, registered: Vec<Phone>) -> Option<Lookup> {
        let lookup = self.pending.get_mut(&query)?;
        lookup.registered.extend(registered);
        lookup.shards_left -= 1;
        if lookup.shards_left > 0 {
            return None;
        }
        self.pending.remove(&query)
    }
}

impl LookupFor {
    /// The conversation a refusal of the lookup's request keeps in order.
    pub(super) fn chat(&self) -> Option<wire::Chat> {
        match self {
            LookupFor::Group { request, .. } => match **request {
                PeerMessage::GroupRequest { group, .. } => Some(wire::Chat::Group(group)),
                _ => None,
            },
            LookupFor::Contacts => None,
        }
    }
}

/// Sorts and removes duplicates and `owner`.
pub(super) fn normalize(mut phones: Vec<Phone>, owner: Phone) -> Vec<Phone> {
    phones.retain(|&p| p != owner);
    phones.sort_unstable();
    phones.dedup();
    phones
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(n: u64) -> Phone {
        Phone::from_u64(15550000000 + n).unwrap()
    }

    const LIMITS: SyncLimits = SyncLimits {
        contacts_max: 4,
        sync_rate: Rate::new(2, 3_600_000, 2),
        lookup_rate: Rate::new(1, 3_600_000, 3),
    };

    #[test]
    fn a_sync_spends_nothing_unless_it_all_fits() {
        let mut social = Social::default();
        let four = [phone(1), phone(2), phone(3), phone(4)];
        let five = [phone(1), phone(2), phone(3), phone(4), phone(5)];
        let refused = social.sync((true, &five, &[]), LIMITS, 0).unwrap_err();
        assert_eq!(refused, SyncRefused::TooManyContacts { count: 5, max: 4 });
        social.sync((true, &four[..2], &[]), LIMITS, 0).unwrap();
        // Two looked up of three: two more new numbers do not fit.
        let refused = social.sync((false, &four[2..], &[]), LIMITS, 0);
        assert_eq!(refused, Err(SyncRefused::Lookups { fresh: 2, left: 1 }));
        assert!(social.has_contact(phone(2)) && !social.has_contact(phone(3)));
    }

    #[test]
    fn a_stranger_costs_one_lookup_per_conversation() {
        let mut social = Social::default();
        let rate = Rate::new(0, 1_000, 1);
        assert_eq!(
            social.charge_strangers((phone(0), &[phone(9)]), rate, 0),
            Ok(true)
        );
        assert_eq!(
            social.charge_strangers((phone(0), &[phone(9)]), rate, 0),
            Ok(false)
        );
        let refused = social.charge_strangers((phone(0), &[phone(8)]), rate, 0);
        let refused = refused.unwrap_err();
        assert_eq!(refused.retry_after_ms, u64::MAX);
        assert!(refused.to_string().contains("list them as contacts first"));
    }

    #[test]
    fn followers_that_may_no_longer_see_are_forgotten() {
        let mut follows = Follows::default();
        follows.add_watcher(phone(1), phone(2));
        follows.add_watcher(phone(1), phone(3));
        assert_eq!(
            follows.visible_watchers(phone(1), |w| w == phone(3)),
            vec![phone(3)]
        );
        assert_eq!(follows.visible_watchers(phone(1), |_| true), vec![phone(3)]);
        assert_eq!(follows.follow(phone(2), phone(1), 1), Ok(()));
        assert_eq!(follows.follow(phone(2), phone(3), 1), Err(()));
        assert!(follows.is_following(phone(2), phone(1)));
        assert_eq!(follows.session_ended(phone(2)), vec![phone(1)]);
    }
}
