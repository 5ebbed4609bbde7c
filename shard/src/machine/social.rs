//! Presence, typing, contacts and profiles.
//!
//! Durable, on the account's home shard like the rest of the account: the
//! contact list (`Contacts` records), the profile with the privacy setting
//! (`Profile`) and the last-seen time (`LastSeen`).
//!
//! Ephemeral: who follows whose presence. The followed account's shard
//! keeps `watchers` (target → followers anywhere), the follower's shard
//! keeps `watching` for its session (follower → targets), and both forget
//! on disconnect or lazily: a change pushed to a follower that no longer
//! follows is answered with `Unwatch`. Pushed changes and typing are
//! signals (see [`PeerMessage::is_signal`]): the I/O layer drops them when
//! the destination queue is backed up, and they reach a phone only while
//! its outbox is under `outbox_feed_bytes_max`. Every drop is counted;
//! nothing of them is stored for a phone that is away.
//!
//! Visibility: `W` sees `T`'s presence and profile only when each has the
//! other in its contacts. `W`'s shard checks `W`'s list before it asks;
//! `T`'s shard checks `T`'s list before it answers and again before every
//! change it pushes, so removing a contact ends what they see.
//!
//! Contact lookups say who is registered, so they are bounded two ways
//! per account: syncs per hour, and numbers never looked up before (a
//! budget that starts at `contacts_max` and refills slowly), so one account
//! cannot walk the number space.

use ahash::AHashMap;
use storage::Record;
use wire::{Chat, ErrorKind, GroupId, Phone, Presence, Profile, ServerFrame, TypingState};

use super::{ConnId, PeerMessage, Shard};
use crate::allowance::TokenBucket;

/// Going away (still connected) writes the last-seen time only when the
/// journal's copy is older than this: a phone switching presence in a loop
/// then costs one record a minute, not one per switch. The time itself is
/// exact in memory and written exactly when the connection ends; only a
/// crash while away can show it up to this much early.
pub(super) const LAST_SEEN_SLACK_MS: u64 = 60_000;

/// An account's contacts and profile. Boxed in the account and absent
/// until first used: most accounts on a shard at any moment never touch it.
#[derive(Debug, Default)]
pub(super) struct Social {
    /// Ascending, without duplicates, never the owner.
    contacts: Vec<Phone>,
    profile: Profile,
    hide_last_seen: bool,
    /// Contact syncs (`ShardConfig::contact_sync_rate`) and numbers never
    /// listed before that may be looked up (`contact_lookup_rate`).
    syncs: TokenBucket,
    lookups: TokenBucket,
    /// The journal holds a `Contacts` record of this account: it has
    /// looked numbers up, so a restart restores both allowances as spent
    /// (it cannot know how much was) rather than full.
    looked_up: bool,
    /// Numbers outside the contact list this account sent to lately, each
    /// of which cost a lookup (see `charge_stranger`); newest last.
    strangers: Vec<Phone>,
}

/// Numbers outside its contacts an account is remembered to have sent to
/// since the shard started: a conversation with one costs one lookup, not
/// one per message.
const STRANGERS_REMEMBERED_MAX: usize = 32;

impl Social {
    fn has_contact(&self, phone: Phone) -> bool {
        self.contacts.binary_search(&phone).is_ok()
    }
}

/// The follow tables and lookups in flight on one shard.
#[derive(Debug, Default)]
pub(super) struct SocialState {
    /// Accounts of this shard → who follows them (on any shard).
    watchers: AHashMap<Phone, Vec<Phone>>,
    /// Logged-in accounts of this shard → whom they follow.
    watching: AHashMap<Phone, Vec<Phone>>,
    lookups: AHashMap<u64, Lookup>,
    next_lookup: u64,
}

/// A lookup waiting for every shard to say which numbers it has.
#[derive(Debug)]
struct Lookup {
    owner: Phone,
    conn: ConnId,
    client_id: u64,
    shards_left: u16,
    /// Numbers asked about, and those found.
    asked: usize,
    registered: Vec<Phone>,
    purpose: LookupFor,
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
        owner: u16,
        request: Box<PeerMessage>,
    },
}

/// Sorts and removes duplicates and `owner`.
fn normalize(mut phones: Vec<Phone>, owner: Phone) -> Vec<Phone> {
    phones.retain(|&p| p != owner);
    phones.sort_unstable();
    phones.dedup();
    phones
}

impl Shard {
    fn wall_ms(&self) -> u64 {
        self.clock.wall_ms(self.now_ms)
    }

    fn social(&self, phone: Phone) -> Option<&Social> {
        self.accounts.get(&phone)?.social.as_deref()
    }

    /// True when `owner` (an account of this shard) lists `other`.
    fn lists(&self, owner: Phone, other: Phone) -> bool {
        self.social(owner).is_some_and(|s| s.has_contact(other))
    }

    /// `phone`'s presence as its contacts see it.
    fn presence_of(&self, phone: Phone) -> Presence {
        let Some(account) = self.accounts.get(&phone) else {
            return Presence::Unavailable;
        };
        if account.session.is_some() && account.available {
            return Presence::Online;
        }
        let hidden = account.social.as_ref().is_some_and(|s| s.hide_last_seen);
        Presence::Offline {
            last_seen_ms: (!hidden && account.last_seen_ms > 0).then_some(account.last_seen_ms),
        }
    }

    /// Sends a signal: like `route`, but the I/O layer may drop it.
    fn signal(&mut self, shard: u16, message: PeerMessage) {
        debug_assert!(message.is_signal());
        self.route(shard, message);
    }

    /// Writes a signal to a connection if its outbox has room.
    fn push_signal(&mut self, id: ConnId, frame: &ServerFrame<'_>) {
        let room = self.config.outbox_feed_bytes_max;
        match self.conns.get(id) {
            Some(conn) if conn.outbox_len() < room && !conn.is_closing() => {
                self.counters.signals_delivered += 1;
                self.reply(id, frame);
            }
            Some(_) => self.counters.signals_dropped_outbox_full += 1,
            None => {}
        }
    }

    /// Records a durable change to an account's social state, unless the
    /// journal cannot take it; then answers `client_id` and returns false.
    pub(super) fn social_writable(&mut self, id: ConnId, client_id: u64) -> bool {
        match self.durability.admit() {
            Ok(()) => true,
            Err(refusal) => {
                self.reply_error(id, refusal.kind(), Some(client_id), refusal.detail());
                false
            }
        }
    }

    // ---- frames ---------------------------------------------------------

    pub(super) fn subscribe(&mut self, id: ConnId, owner: Phone, target: Phone) {
        if target == owner || !self.lists(owner, target) {
            let presence = Presence::Unavailable;
            self.reply(
                id,
                &ServerFrame::Presence {
                    phone: target,
                    presence,
                },
            );
            return;
        }
        let max = self.config.presence_subscriptions_max;
        let list = self.social_state.watching.entry(owner).or_default();
        if !list.contains(&target) {
            if list.len() >= max {
                let detail = format!("a connection follows at most {max} phones");
                self.reply_error(id, ErrorKind::TooManySubscriptions, None, &detail);
                return;
            }
            list.push(target);
        }
        let watch = PeerMessage::Watch {
            watcher: owner,
            target,
            conn: id,
        };
        self.route(self.config.map.shard_of(target), watch);
    }

    pub(super) fn unsubscribe(&mut self, owner: Phone, target: Phone) {
        if let Some(list) = self.social_state.watching.get_mut(&owner) {
            if let Some(at) = list.iter().position(|&t| t == target) {
                list.swap_remove(at);
                self.unwatch(owner, target);
            }
        }
    }

    /// A change fans out to every follower, so it spends a send token like
    /// a typing indicator. Without one the account still changes (a later
    /// `Subscribe` sees the truth) but followers are not told, and
    /// going away is not written down: what a phone toggling faster than
    /// its allowance costs is bounded by that allowance.
    pub(super) fn set_presence(&mut self, id: ConnId, owner: Phone, available: bool) {
        let account = self.accounts.get(&owner).expect("logged in");
        if account.available == available {
            return;
        }
        let (told, at_ms) = (self.take_quiet_token(id), self.wall_ms());
        let account = self.accounts.get_mut(&owner).expect("logged in");
        account.available = available;
        if !available {
            account.last_seen_ms = at_ms;
            let written = account.last_seen_written_ms;
            if told && (written == 0 || at_ms >= written + LAST_SEEN_SLACK_MS) {
                self.write_last_seen(owner);
            }
        }
        if !told {
            self.counters.signals_dropped_rate += 1;
            return;
        }
        self.presence_changed(owner);
    }

    /// Typing goes out on the send allowance without spending it when
    /// there is none: an indicator is not worth an error.
    pub(super) fn typing(&mut self, id: ConnId, from: Phone, chat: Chat, state: TypingState) {
        if !self.take_quiet_token(id) {
            self.counters.signals_dropped_rate += 1;
            return;
        }
        match chat {
            Chat::Direct(to) if to != from => {
                let message = PeerMessage::TypingTo {
                    to: vec![to],
                    from,
                    group: None,
                    state,
                };
                self.signal(self.config.map.shard_of(to), message);
            }
            Chat::Direct(_) => {}
            Chat::Group(group) => {
                let message = PeerMessage::GroupTyping { group, from, state };
                self.signal(self.config.map.shard_of_group(group), message);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn sync_contacts(
        &mut self,
        id: ConnId,
        owner: Phone,
        client_id: u64,
        full: bool,
        add: Vec<Phone>,
        remove: Vec<Phone>,
    ) {
        if full && !remove.is_empty() {
            let detail = "a full sync replaces the list; it removes nothing";
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), detail);
            return;
        }
        if !self.social_writable(id, client_id) {
            return;
        }
        let add = normalize(add, owner);
        let remove = normalize(remove, owner);
        let (contacts_max, now_ms) = (self.config.contacts_max, self.now_ms);
        let (sync_rate, lookup_rate) = (
            self.config.contact_sync_rate(),
            self.config.contact_lookup_rate(),
        );
        let account = self.accounts.get_mut(&owner).expect("logged in");
        let social = account.social.get_or_insert_default();
        let contacts = if full {
            add.clone()
        } else {
            let mut merged: Vec<Phone> = social
                .contacts
                .iter()
                .chain(&add)
                .copied()
                .filter(|p| remove.binary_search(p).is_err())
                .collect();
            merged.sort_unstable();
            merged.dedup();
            merged
        };
        if contacts.len() > contacts_max {
            let detail = format!(
                "{} contacts; the server keeps at most {contacts_max}",
                contacts.len()
            );
            let kind = ErrorKind::TooManyContacts;
            self.reply_error(id, kind, Some(client_id), &detail);
            return;
        }
        // Both allowances must fit before either is spent.
        let fresh = add.iter().filter(|&&p| !social.has_contact(p)).count() as u64;
        let syncs_left = social.syncs.available(sync_rate, now_ms);
        let lookups_left = social.lookups.available(lookup_rate, now_ms);
        if syncs_left == 0 || fresh > lookups_left {
            self.counters.contact_syncs_refused += 1;
            let detail = if syncs_left == 0 {
                format!("at most {} contact syncs an hour", sync_rate.tokens)
            } else {
                format!("{fresh} new numbers; {lookups_left} may be looked up now")
            };
            self.reply_error(id, ErrorKind::RateLimited, Some(client_id), &detail);
            return;
        }
        let spent = social.syncs.take(1, sync_rate, now_ms).is_ok()
            && social.lookups.take(fresh, lookup_rate, now_ms).is_ok();
        debug_assert!(spent, "both checked above");
        social.looked_up = true;
        social.contacts = contacts;
        self.durability.record(Record::Contacts {
            owner,
            full,
            add: add.clone(),
            remove,
        });
        self.counters.contact_syncs += 1;
        self.contacts_changed(owner);
        self.start_lookup(id, owner, client_id, add, LookupFor::Contacts);
    }

    /// Charges a send from `owner` to `to` against `owner`'s lookup
    /// allowance when `to` is neither in its contacts nor among the
    /// strangers it wrote to lately: the answer to a send (`Sent` or
    /// `UnknownRecipient`) says whether `to` is registered, so probing by
    /// sending must cost what a contact lookup costs. Err is the detail of
    /// the `RateLimited` answer.
    pub(super) fn charge_stranger(&mut self, owner: Phone, to: Phone) -> Result<(), String> {
        self.charge_strangers(owner, &[to])
    }

    /// Charges `owner`'s lookup allowance one lookup for each of `phones`
    /// neither in its contacts nor among the strangers it wrote to lately,
    /// all or nothing. Senders in the test-number range are not charged.
    pub(super) fn charge_strangers(
        &mut self,
        owner: Phone,
        phones: &[Phone],
    ) -> Result<(), String> {
        if self.is_test_phone(owner) {
            // Load generators send to numbers they never list.
            return Ok(());
        }
        let (rate, now_ms) = (self.config.contact_lookup_rate(), self.now_ms);
        let account = self.accounts.get_mut(&owner).expect("logged in");
        let social = account.social.get_or_insert_default();
        let strangers: Vec<Phone> = phones
            .iter()
            .copied()
            .filter(|&p| p != owner && !social.has_contact(p) && !social.strangers.contains(&p))
            .collect();
        if strangers.is_empty() {
            return Ok(());
        }
        if let Err(exhausted) = social.lookups.take(strangers.len() as u64, rate, now_ms) {
            self.counters.stranger_sends_refused += 1;
            let retry = match exhausted.retry_after_ms {
                u64::MAX => "list them as contacts first".to_owned(),
                ms => format!("retry in {} s", ms.div_ceil(1000)),
            };
            return Err(format!(
                "too many numbers outside your contacts ({}); {retry}",
                strangers.len()
            ));
        }
        for phone in strangers {
            if social.strangers.len() >= STRANGERS_REMEMBERED_MAX {
                social.strangers.remove(0);
            }
            social.strangers.push(phone);
        }
        if !social.looked_up {
            // Marks the account in the journal as one that has looked
            // numbers up, so a restart restores its allowance as spent.
            social.looked_up = true;
            self.durability.record(Record::Contacts {
                owner,
                full: false,
                add: Vec::new(),
                remove: Vec::new(),
            });
        }
        Ok(())
    }

    pub(super) fn set_profile(
        &mut self,
        id: ConnId,
        owner: Phone,
        client_id: u64,
        profile: Profile,
    ) {
        if let Err(detail) = profile.check() {
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), &detail);
            return;
        }
        if !self.social_writable(id, client_id) {
            return;
        }
        let account = self.accounts.get_mut(&owner).expect("logged in");
        let social = account.social.get_or_insert_default();
        social.profile = profile;
        self.record_profile(owner);
        self.hold_reply(id, &ServerFrame::Done { client_id });
        let profile = Box::new(self.social(owner).expect("set above").profile.clone());
        for watcher in self.visible_watchers(owner) {
            let message = PeerMessage::ProfileOf {
                to: watcher,
                about: owner,
                profile: Some(profile.clone()),
                conn: None,
            };
            self.signal(self.config.map.shard_of(watcher), message);
        }
    }

    pub(super) fn set_privacy(&mut self, id: ConnId, owner: Phone, client_id: u64, hide: bool) {
        if !self.social_writable(id, client_id) {
            return;
        }
        let account = self.accounts.get_mut(&owner).expect("logged in");
        account.social.get_or_insert_default().hide_last_seen = hide;
        self.record_profile(owner);
        self.hold_reply(id, &ServerFrame::Done { client_id });
        // Only an offline presence carries the time.
        if self.presence_of(owner) != Presence::Online {
            self.presence_changed(owner);
        }
    }

    pub(super) fn get_profile(&mut self, id: ConnId, owner: Phone, target: Phone) {
        if target == owner {
            let profile = self.social(owner).map(|s| s.profile.clone());
            let profile = Some(profile.unwrap_or_default());
            self.reply(
                id,
                &ServerFrame::Profile {
                    phone: owner,
                    profile,
                },
            );
            return;
        }
        if !self.lists(owner, target) {
            self.reply(
                id,
                &ServerFrame::Profile {
                    phone: target,
                    profile: None,
                },
            );
            return;
        }
        let query = PeerMessage::ProfileQuery {
            viewer: owner,
            target,
            conn: id,
        };
        self.route(self.config.map.shard_of(target), query);
    }

    // ---- presence changes -------------------------------------------------

    /// A session of `owner` began.
    pub(super) fn session_began(&mut self, owner: Phone) {
        let account = self.accounts.get_mut(&owner).expect("logged in");
        account.available = true;
        self.presence_changed(owner);
    }

    /// `owner`'s session ended: it goes offline and stops following.
    pub(super) fn session_ended(&mut self, owner: Phone) {
        if let Some(targets) = self.social_state.watching.remove(&owner) {
            for target in targets {
                self.unwatch(owner, target);
            }
        }
        let at_ms = self.wall_ms();
        let account = self
            .accounts
            .get_mut(&owner)
            .expect("the session's account");
        if account.available {
            account.last_seen_ms = at_ms;
        }
        if account.last_seen_ms != account.last_seen_written_ms {
            self.write_last_seen(owner);
        }
        self.presence_changed(owner);
    }

    /// Writes `owner`'s last-seen time, unless the journal cannot take it
    /// (it is worth less than the room kept for acknowledgements).
    fn write_last_seen(&mut self, owner: Phone) {
        if self.durability.admit().is_err() {
            return;
        }
        let account = self.accounts.get_mut(&owner).expect("caller checked");
        let at_ms = account.last_seen_ms;
        account.last_seen_written_ms = at_ms;
        self.durability.record(Record::LastSeen { owner, at_ms });
    }

    /// Followers of `owner` it still lists; forgets the others.
    fn visible_watchers(&mut self, owner: Phone) -> Vec<Phone> {
        let Some(mut watchers) = self.social_state.watchers.remove(&owner) else {
            return Vec::new();
        };
        watchers.retain(|&w| self.lists(owner, w));
        if !watchers.is_empty() {
            self.social_state.watchers.insert(owner, watchers.clone());
        }
        watchers
    }

    fn presence_changed(&mut self, owner: Phone) {
        let presence = self.presence_of(owner);
        for watcher in self.visible_watchers(owner) {
            let message = PeerMessage::PresenceOf {
                to: watcher,
                about: owner,
                presence,
                conn: None,
            };
            self.signal(self.config.map.shard_of(watcher), message);
        }
    }

    /// `owner`'s list changed: follows either way across a removed number end.
    fn contacts_changed(&mut self, owner: Phone) {
        if let Some(mut targets) = self.social_state.watching.remove(&owner) {
            let (kept, dropped): (Vec<Phone>, Vec<Phone>) =
                targets.drain(..).partition(|&t| self.lists(owner, t));
            for target in dropped {
                self.unwatch(owner, target);
            }
            self.social_state.watching.insert(owner, kept);
        }
        self.visible_watchers(owner);
    }

    fn record_profile(&mut self, owner: Phone) {
        let social = self.social(owner).expect("caller set it");
        let record = Record::Profile {
            owner,
            profile: social.profile.clone(),
            hide_last_seen: social.hide_last_seen,
        };
        self.durability.record(record);
    }

    // ---- lookups ----------------------------------------------------------

    pub(super) fn start_lookup(
        &mut self,
        id: ConnId,
        owner: Phone,
        client_id: u64,
        phones: Vec<Phone>,
        purpose: LookupFor,
    ) {
        self.counters.contact_lookups += phones.len() as u64;
        let asked = phones.len();
        let by_shard = self.config.map.split_by_shard(phones);
        let query = self.social_state.next_lookup;
        self.social_state.next_lookup += 1;
        let mut lookup = Lookup {
            owner,
            conn: id,
            client_id,
            shards_left: 0,
            asked,
            registered: Vec::new(),
            purpose,
        };
        for (shard, phones) in by_shard.into_iter().enumerate() {
            if phones.is_empty() {
                continue;
            }
            if shard == usize::from(self.config.shard_id) {
                let known = phones.into_iter().filter(|p| self.accounts.contains_key(p));
                lookup.registered.extend(known);
            } else {
                lookup.shards_left += 1;
                let message = PeerMessage::LookupAccounts {
                    query,
                    reply_shard: self.config.shard_id,
                    phones,
                };
                self.route(shard as u16, message);
            }
        }
        if lookup.shards_left == 0 {
            self.finish_lookup(lookup);
        } else {
            self.social_state.lookups.insert(query, lookup);
        }
    }

    /// Every shard answered: answers the sync (once the `Contacts` record
    /// it made is durable), or passes the group request on.
    fn finish_lookup(&mut self, mut lookup: Lookup) {
        let connected = self.conns.is_session_of(lookup.conn, lookup.owner);
        lookup.registered.sort_unstable();
        match lookup.purpose {
            LookupFor::Contacts if connected => {
                let frame = ServerFrame::Contacts {
                    client_id: lookup.client_id,
                    registered: lookup.registered,
                };
                self.hold_reply(lookup.conn, &frame);
            }
            LookupFor::Contacts => {}
            LookupFor::Group { owner, request } if lookup.registered.len() == lookup.asked => {
                self.route(owner, *request);
            }
            LookupFor::Group { .. } => {
                let missing = lookup.asked - lookup.registered.len();
                let detail = format!("{missing} of the numbers named have no account");
                let kind = ErrorKind::UnknownRecipient;
                self.reply_error(lookup.conn, kind, Some(lookup.client_id), &detail);
            }
        }
    }

    // ---- peer messages ------------------------------------------------------

    pub(super) fn apply_social(&mut self, message: PeerMessage) {
        match message {
            PeerMessage::Watch {
                watcher,
                target,
                conn,
            } => self.watch(watcher, target, conn),
            PeerMessage::Unwatch { watcher, target } => {
                if let Some(list) = self.social_state.watchers.get_mut(&target) {
                    list.retain(|&w| w != watcher);
                    if list.is_empty() {
                        self.social_state.watchers.remove(&target);
                    }
                }
            }
            PeerMessage::PresenceOf {
                to,
                about,
                presence,
                conn,
            } => {
                // Hidden now: the follow this answers does not stand.
                let answers_to = conn.and_then(|c| self.conns.account(c));
                if presence == Presence::Unavailable && answers_to == Some(to) {
                    self.forget_target(to, about);
                }
                let frame = ServerFrame::Presence {
                    phone: about,
                    presence,
                };
                self.show_follower(to, about, conn, &frame);
            }
            PeerMessage::ProfileQuery {
                viewer,
                target,
                conn,
            } => self.profile_query(viewer, target, conn),
            PeerMessage::ProfileOf {
                to,
                about,
                profile,
                conn,
            } => {
                let frame = ServerFrame::Profile {
                    phone: about,
                    profile: profile.map(|p| *p),
                };
                self.show_follower(to, about, conn, &frame);
            }
            PeerMessage::GroupTyping { group, from, state } => {
                self.group_typing(group, from, state);
            }
            PeerMessage::TypingTo {
                to,
                from,
                group,
                state,
            } => {
                let frame = ServerFrame::Typing { from, group, state };
                for phone in to {
                    if let Some(session) = self.accounts.get(&phone).and_then(|a| a.session) {
                        self.push_signal(session, &frame);
                    }
                }
            }
            PeerMessage::LookupAccounts {
                query,
                reply_shard,
                phones,
            } => {
                let registered = phones
                    .into_iter()
                    .filter(|p| self.accounts.contains_key(p))
                    .collect();
                let answer = PeerMessage::AccountsFound { query, registered };
                self.route(reply_shard, answer);
            }
            PeerMessage::AccountsFound { query, registered } => {
                self.accounts_found(query, registered);
            }
            _ => unreachable!("apply_peer passes only social messages"),
        }
    }

    /// `watcher` (on any shard) follows `target`, an account of this
    /// shard: it is told `target`'s presence if `target` lists it.
    fn watch(&mut self, watcher: Phone, target: Phone, conn: ConnId) {
        let presence = if self.lists(target, watcher) {
            let list = self.social_state.watchers.entry(target).or_default();
            if !list.contains(&watcher) {
                list.push(watcher);
            }
            self.presence_of(target)
        } else {
            Presence::Unavailable
        };
        let answer = PeerMessage::PresenceOf {
            to: watcher,
            about: target,
            presence,
            conn: Some(conn),
        };
        self.route(self.config.map.shard_of(watcher), answer);
    }

    /// `viewer` asks for `target`'s profile: shown if `target` lists it.
    fn profile_query(&mut self, viewer: Phone, target: Phone, conn: ConnId) {
        let profile = self
            .social(target)
            .filter(|s| s.has_contact(viewer))
            .map(|s| Box::new(s.profile.clone()));
        let answer = PeerMessage::ProfileOf {
            to: viewer,
            about: target,
            profile,
            conn: Some(conn),
        };
        self.route(self.config.map.shard_of(viewer), answer);
    }

    /// A shard answered lookup `query`; the last answer finishes it.
    fn accounts_found(&mut self, query: u64, registered: Vec<Phone>) {
        let Some(lookup) = self.social_state.lookups.get_mut(&query) else {
            return;
        };
        lookup.registered.extend(registered);
        lookup.shards_left -= 1;
        if lookup.shards_left == 0 {
            let lookup = self.social_state.lookups.remove(&query).expect("found");
            self.finish_lookup(lookup);
        }
    }

    /// Tells `target`'s shard that `watcher` follows it no more.
    fn unwatch(&mut self, watcher: Phone, target: Phone) {
        let message = PeerMessage::Unwatch { watcher, target };
        self.signal(self.config.map.shard_of(target), message);
    }

    /// A frame about `about` for its follower `to`: the answer to `to`'s
    /// request on `conn`, or a pushed change, shown only while `to` still
    /// follows (otherwise `about`'s shard is told to stop pushing).
    fn show_follower(
        &mut self,
        to: Phone,
        about: Phone,
        conn: Option<ConnId>,
        frame: &ServerFrame<'_>,
    ) {
        match conn {
            Some(conn) => {
                if self.conns.is_session_of(conn, to) {
                    self.reply(conn, frame);
                }
            }
            None => {
                let following = self
                    .social_state
                    .watching
                    .get(&to)
                    .is_some_and(|list| list.contains(&about));
                match self.accounts.get(&to).and_then(|a| a.session) {
                    Some(session) if following => self.push_signal(session, frame),
                    _ => self.unwatch(to, about),
                }
            }
        }
    }

    fn forget_target(&mut self, owner: Phone, target: Phone) {
        if let Some(list) = self.social_state.watching.get_mut(&owner) {
            list.retain(|&t| t != target);
        }
    }

    fn group_typing(&mut self, group: GroupId, from: Phone, state: TypingState) {
        let Some(members) = self.groups.members_except(group, from) else {
            self.counters.signals_dropped_not_member += 1;
            return;
        };
        let by_shard = self.config.map.split_by_shard(members);
        for (shard, to) in by_shard.into_iter().enumerate() {
            if !to.is_empty() {
                let message = PeerMessage::TypingTo {
                    to,
                    from,
                    group: Some(group),
                    state,
                };
                self.signal(shard as u16, message);
            }
        }
    }

    // ---- recovery ------------------------------------------------------------

    /// Applies a social record to an account that exists.
    pub(super) fn restore_social(&mut self, record: Record) {
        let owner = match &record {
            Record::Contacts { owner, .. }
            | Record::Profile { owner, .. }
            | Record::LastSeen { owner, .. } => *owner,
            _ => unreachable!("restore passes only social records"),
        };
        let account = self.accounts.get_mut(&owner).expect("restore checked");
        match record {
            Record::Contacts {
                full, add, remove, ..
            } => {
                let social = account.social.get_or_insert_default();
                // What was spent before the restart is unknown: take it
                // all as spent, so a crash never hands out a new burst.
                social.syncs = TokenBucket::spent(self.config.contact_sync_rate(), self.now_ms);
                social.lookups = TokenBucket::spent(self.config.contact_lookup_rate(), self.now_ms);
                social.looked_up = true;
                let add = normalize(add, owner);
                if full {
                    social.contacts = add;
                } else {
                    let remove = normalize(remove, owner);
                    social.contacts.extend(add);
                    social.contacts.sort_unstable();
                    social.contacts.dedup();
                    social.contacts.retain(|p| remove.binary_search(p).is_err());
                }
            }
            Record::Profile {
                profile,
                hide_last_seen,
                ..
            } => {
                let social = account.social.get_or_insert_default();
                social.profile = profile;
                social.hide_last_seen = hide_last_seen;
            }
            Record::LastSeen { at_ms, .. } => {
                account.last_seen_ms = at_ms;
                account.last_seen_written_ms = at_ms;
            }
            _ => unreachable!(),
        }
    }

    /// An account's social records for a checkpoint.
    pub(super) fn checkpoint_social(&self, owner: Phone, records: &mut Vec<Record>) {
        let account = &self.accounts[&owner];
        if let Some(social) = &account.social {
            if !social.contacts.is_empty() || social.looked_up {
                records.push(Record::Contacts {
                    owner,
                    full: true,
                    add: social.contacts.clone(),
                    remove: Vec::new(),
                });
            }
            if social.profile != Profile::default() || social.hide_last_seen {
                records.push(Record::Profile {
                    owner,
                    profile: social.profile.clone(),
                    hide_last_seen: social.hide_last_seen,
                });
            }
        }
        if account.last_seen_ms > 0 {
            records.push(Record::LastSeen {
                owner,
                at_ms: account.last_seen_ms,
            });
        }
    }
}
