//! How presence, typing, contacts and profiles travel (the state is in
//! `social`).
//!
//! A followed account's shard pushes its changes to followers; a change
//! pushed to a follower that no longer follows is answered with
//! `Unwatch`. Pushed changes and typing are signals (see
//! [`PeerMessage::is_signal`]): the I/O layer drops them when the
//! destination queue is backed up, and they reach a phone only while its
//! outbox is under `outbox_feed_bytes_max`. Every drop is counted; nothing
//! of them is stored for a phone that is away.
//!
//! Visibility: `W` sees `T`'s presence and profile only when each has the
//! other in its contacts. `W`'s shard checks `W`'s list before it asks;
//! `T`'s shard checks `T`'s list before it answers and again before every
//! change it pushes, so removing a contact ends what they see.

use storage::Record;
use wire::{Chat, ErrorKind, GroupId, Phone, Presence, Profile, ServerFrame, TypingState};

use super::{
    social::{
        normalize, Lookup, LookupFor, Social, StrangersRefused, SyncLimits, SyncRefused,
        LAST_SEEN_SLACK_MS,
    },
    ConnId, PeerMessage, Session, Shard,
};
use crate::placement::Home;

/// Follows sent again per tick to nodes that came back (1,000 a second
/// at the default 100 ms tick): a node's return costs its links a steady
/// trickle, not a burst.
const REWATCHES_PER_TICK: usize = 100;
/// How long a contact lookup waits for every shard's answer before its
/// phone is told `Unavailable` (ms): well past a link's redial and
/// resend, well within a phone's patience.
const LOOKUP_TIMEOUT_MS: u64 = 15_000;

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
        if self.follows.follow(owner, target, max).is_err() {
            let detail = format!("a connection follows at most {max} phones");
            self.reply_error(id, ErrorKind::TooManySubscriptions, None, &detail);
            return;
        }
        let watch = PeerMessage::Watch {
            watcher: owner,
            target,
            conn: id,
        };
        if self.ask(self.home_of(target), watch).is_err() {
            // Its node is not reachable: shown as hidden, and not followed
            // (the phone subscribes again later).
            self.follows.unfollow(owner, target);
            let frame = ServerFrame::Presence {
                phone: target,
                presence: Presence::Unavailable,
            };
            self.reply(id, &frame);
        }
    }

    pub(super) fn unsubscribe(&mut self, owner: Phone, target: Phone) {
        if self.follows.unfollow(owner, target) {
            self.unwatch(owner, target);
        }
    }

    /// A change fans out to every follower, so it spends a send token like
    /// a typing indicator. Without one the account still changes (a later
    /// `Subscribe` sees the truth) but followers are not told, and
    /// going away is not written down: what a phone toggling faster than
    /// its allowance costs is bounded by that allowance.
    pub(super) fn set_presence(&mut self, id: ConnId, owner: Phone, available: bool) {
        let account = self.account(owner);
        if account.available == available {
            return;
        }
        let (told, at_ms) = (self.take_quiet_token(id), self.wall_ms());
        let account = self.account_mut(owner);
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
                self.signal_to(self.home_of(to), message);
            }
            Chat::Direct(_) => {}
            Chat::Group(group) => {
                let message = PeerMessage::GroupTyping { group, from, state };
                self.signal_to(self.home_of_group(group), message);
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
        let limits = SyncLimits {
            contacts_max: self.config.contacts_max,
            sync_rate: self.config.contact_sync_rate(),
            lookup_rate: self.config.contact_lookup_rate(),
        };
        let now_ms = self.now_ms;
        let account = self.account_mut(owner);
        let social = account.social.get_or_insert_default();
        if let Err(refused) = social.sync((full, &add, &remove), limits, now_ms) {
            let kind = match refused {
                SyncRefused::TooManyContacts { .. } => ErrorKind::TooManyContacts,
                SyncRefused::Syncs { .. } | SyncRefused::Lookups { .. } => {
                    self.counters.contact_syncs_refused += 1;
                    ErrorKind::RateLimited
                }
            };
            self.reply_error(id, kind, Some(client_id), &refused.to_string());
            return;
        }
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
    /// sending must cost what a contact lookup costs.
    pub(super) fn charge_stranger(
        &mut self,
        owner: Phone,
        to: Phone,
    ) -> Result<(), StrangersRefused> {
        self.charge_strangers(owner, &[to])
    }

    /// Charges `owner`'s lookup allowance one lookup for each of `phones`
    /// neither in its contacts nor among the strangers it wrote to lately,
    /// all or nothing (see `Social::charge_strangers`). Senders in the
    /// test-number range are not charged.
    pub(super) fn charge_strangers(
        &mut self,
        owner: Phone,
        phones: &[Phone],
    ) -> Result<(), StrangersRefused> {
        if self.is_test_phone(owner) {
            // Load generators send to numbers they never list.
            return Ok(());
        }
        let (rate, now_ms) = (self.config.contact_lookup_rate(), self.now_ms);
        let account = self.account_mut(owner);
        let social = account.social.get_or_insert_default();
        match social.charge_strangers((owner, phones), rate, now_ms) {
            Ok(first) => {
                if first {
                    // Marks the account in the journal as one that has
                    // looked numbers up, so a restart restores its
                    // allowance as spent.
                    self.durability.record(Record::Contacts {
                        owner,
                        full: false,
                        add: Vec::new(),
                        remove: Vec::new(),
                    });
                }
                Ok(())
            }
            Err(refused) => {
                self.counters.stranger_sends_refused += 1;
                Err(refused)
            }
        }
    }

    pub(super) fn set_profile(
        &mut self,
        id: ConnId,
        owner: Phone,
        client_id: u64,
        profile: Profile,
    ) {
        if let Err(too_large) = profile.check() {
            let detail = too_large.to_string();
            self.reply_error(id, ErrorKind::BadRequest, Some(client_id), &detail);
            return;
        }
        if !self.social_writable(id, client_id) {
            return;
        }
        let account = self.account_mut(owner);
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
            self.signal_to(self.home_of(watcher), message);
        }
    }

    pub(super) fn set_privacy(&mut self, id: ConnId, owner: Phone, client_id: u64, hide: bool) {
        if !self.social_writable(id, client_id) {
            return;
        }
        let account = self.account_mut(owner);
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
        if self.ask(self.home_of(target), query).is_err() {
            let frame = ServerFrame::Profile {
                phone: target,
                profile: None,
            };
            self.reply(id, &frame);
        }
    }

    // ---- presence changes -------------------------------------------------

    /// A session of `owner` began.
    pub(super) fn session_began(&mut self, owner: Phone) {
        let account = self.account_mut(owner);
        account.available = true;
        self.presence_changed(owner);
    }

    /// `owner`'s session ended: it goes offline and stops following.
    pub(super) fn session_ended(&mut self, owner: Phone) {
        for target in self.follows.session_ended(owner) {
            self.unwatch(owner, target);
        }
        let at_ms = self.wall_ms();
        let account = self.account_mut(owner);
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
        let account = self.account_mut(owner);
        let at_ms = account.last_seen_ms;
        account.last_seen_written_ms = at_ms;
        self.durability.record(Record::LastSeen { owner, at_ms });
    }

    /// Followers of `owner` it still lists; forgets the others.
    fn visible_watchers(&mut self, owner: Phone) -> Vec<Phone> {
        let social = self.accounts.get(&owner).and_then(|a| a.social.as_deref());
        let lists = |w: Phone| social.is_some_and(|s| s.has_contact(w));
        self.follows.visible_watchers(owner, lists)
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
            self.signal_to(self.home_of(watcher), message);
        }
    }

    /// `owner`'s list changed: follows either way across a removed number end.
    fn contacts_changed(&mut self, owner: Phone) {
        let social = self.accounts.get(&owner).and_then(|a| a.social.as_deref());
        let lists = |t: Phone| social.is_some_and(|s| s.has_contact(t));
        for target in self.follows.retain(owner, lists) {
            self.unwatch(owner, target);
        }
        self.visible_watchers(owner);
    }

    fn record_profile(&mut self, owner: Phone) {
        let record = self
            .social(owner)
            .expect("caller set it")
            .profile_record(owner);
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
        let split = self.split_by_dest(phones);
        if split
            .iter()
            .any(|(dest, _)| !dest.is_some_and(|d| self.is_live(d)))
        {
            // Some numbers live on a node that is not reachable: no
            // complete answer can be given now.
            let session = Session { id, phone: owner };
            self.refuse_unavailable(session, purpose.chat(), client_id);
            return;
        }
        let query = self.lookups.next_query();
        let mut lookup = Lookup {
            owner,
            conn: id,
            client_id,
            shards_left: 0,
            asked,
            registered: Vec::new(),
            purpose,
            asked_ms: self.now_ms,
        };
        for (dest, phones) in split {
            let dest = dest.expect("checked above");
            if dest == self.own_dest() {
                let known = phones.into_iter().filter(|p| self.accounts.contains_key(p));
                lookup.registered.extend(known);
            } else {
                lookup.shards_left += 1;
                let message = PeerMessage::LookupAccounts {
                    query,
                    asker: owner,
                    phones,
                };
                self.route(dest, message);
            }
        }
        if lookup.shards_left == 0 {
            self.finish_lookup(lookup);
        } else {
            self.lookups.wait(query, lookup);
        }
    }

    /// Lookups unanswered for `LOOKUP_TIMEOUT_MS` are refused
    /// `Unavailable`, as they would have been had a node been known down
    /// when they were asked: the phone asks again.
    pub(super) fn lookups_tick(&mut self) {
        let Some(before_ms) = self.now_ms.checked_sub(LOOKUP_TIMEOUT_MS) else {
            return;
        };
        for lookup in self.lookups.expired(before_ms) {
            self.counters.lookups_expired += 1;
            if self.conns.is_session_of(lookup.conn, lookup.owner) {
                let session = Session {
                    id: lookup.conn,
                    phone: lookup.owner,
                };
                self.refuse_unavailable(session, lookup.purpose.chat(), lookup.client_id);
            }
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
            // Deleted meanwhile: its group requests must not follow the
            // `AccountGone` that took it out of its groups.
            LookupFor::Group { .. } if !self.accounts.contains_key(&lookup.owner) => {}
            LookupFor::Group { owner, request } if lookup.registered.len() == lookup.asked => {
                if self.ask(owner, *request).is_err() {
                    let session = Session {
                        id: lookup.conn,
                        phone: lookup.owner,
                    };
                    self.refuse_unavailable(session, None, lookup.client_id);
                }
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
                self.follows.remove_watcher(target, watcher);
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
                asker,
                phones,
            } => {
                let registered = phones
                    .into_iter()
                    .filter(|p| self.accounts.contains_key(p))
                    .collect();
                let answer = PeerMessage::AccountsFound {
                    query,
                    asker,
                    registered,
                };
                self.owe(self.home_of(asker), answer);
            }
            PeerMessage::AccountsFound {
                query, registered, ..
            } => {
                self.accounts_found(query, registered);
            }
            _ => unreachable!("apply_peer passes only social messages"),
        }
    }

    /// Node `node` came back as a new incarnation: the followers it knew
    /// of its accounts went with its old process, so this shard's follows
    /// of them are sent again (`rewatch_tick`).
    pub(super) fn node_returned(&mut self, node: u16) {
        let on_node =
            |target| matches!(self.home_of(target), Home::Away { node: n, .. } if n == node);
        let follows = self.follows.following(on_node);
        if !follows.is_empty() {
            self.rewatches.node_returned(node, follows);
        }
    }

    /// Sends a few follows again to nodes that came back, each answered
    /// with the target's presence now, as a `Subscribe` is. One whose
    /// watcher left, or whose node is down again, is dropped: the next
    /// return sends it again, or the phone subscribes again.
    pub(super) fn rewatch_tick(&mut self) {
        for (watcher, target) in self.rewatches.take(REWATCHES_PER_TICK) {
            let session = self.accounts.get(&watcher).and_then(|a| a.session);
            let Some(conn) = session.filter(|_| self.follows.is_following(watcher, target)) else {
                continue;
            };
            let watch = PeerMessage::Watch {
                watcher,
                target,
                conn,
            };
            if self.ask(self.home_of(target), watch).is_ok() {
                self.counters.presence_rewatched += 1;
            }
        }
    }

    /// `watcher` (on any shard) follows `target`, an account of this
    /// shard: it is told `target`'s presence if `target` lists it.
    fn watch(&mut self, watcher: Phone, target: Phone, conn: ConnId) {
        let presence = if self.lists(target, watcher) {
            self.follows.add_watcher(target, watcher);
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
        self.owe(self.home_of(watcher), answer);
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
        self.owe(self.home_of(viewer), answer);
    }

    /// A shard answered lookup `query`; the last answer finishes it.
    fn accounts_found(&mut self, query: u64, registered: Vec<Phone>) {
        if let Some(lookup) = self.lookups.answered(query, registered) {
            self.finish_lookup(lookup);
        }
    }

    /// Tells `target`'s shard that `watcher` follows it no more.
    fn unwatch(&mut self, watcher: Phone, target: Phone) {
        let message = PeerMessage::Unwatch { watcher, target };
        self.signal_to(self.home_of(target), message);
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
                let following = self.follows.is_following(to, about);
                match self.accounts.get(&to).and_then(|a| a.session) {
                    Some(session) if following => self.push_signal(session, frame),
                    _ => self.unwatch(to, about),
                }
            }
        }
    }

    fn forget_target(&mut self, owner: Phone, target: Phone) {
        self.follows.forget(owner, target);
    }

    fn group_typing(&mut self, group: GroupId, from: Phone, state: TypingState) {
        let Some(members) = self.groups.members_except(group, from) else {
            self.counters.signals_dropped_not_member += 1;
            return;
        };
        for (dest, to) in self.split_by_dest(members) {
            let message = PeerMessage::TypingTo {
                to,
                from,
                group: Some(group),
                state,
            };
            match dest {
                Some(dest) if self.is_live(dest) => self.route(dest, message),
                _ => self.counters.signals_dropped_unreachable += 1,
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
                let rates = (
                    self.config.contact_sync_rate(),
                    self.config.contact_lookup_rate(),
                );
                let social = account.social.get_or_insert_default();
                social.restore_contacts((owner, full, add, remove), rates, self.now_ms);
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
            social.checkpoint(owner, records);
        }
        if account.last_seen_ms > 0 {
            records.push(Record::LastSeen {
                owner,
                at_ms: account.last_seen_ms,
            });
        }
    }
}
