//! Where a peer message goes: to a shard of this node, or to a shard of
//! another node of the cluster (see `placement`). Every message a shard
//! sends to an account or a group goes through one of three doors, by
//! what it is:
//!
//! - **requests** (a message to store, a group request, a presence or
//!   profile query, a lookup) go only to a live node: to one that is not,
//!   the caller refuses with `Unavailable` and nothing was stored;
//! - **obligations** (receipts, answers, group copies and their
//!   confirmations, an account's deletion) go whether or not the node is
//!   live: they wait on the link until it is back;
//! - **signals** (presence, typing, profile changes) go only to a live
//!   node, and are dropped otherwise, as on a backed-up queue.
//!
//! A single node has no placement: every home is `Here`, in island 0.
//! Every destination names its tablet, (island, shard), since a node
//! hosts the tablets of every island it is primary of.

use std::sync::Arc;

use wire::{GroupId, Phone};

use super::{connections::Session, in_flight, PeerMessage, Shard};
use crate::{island::IslandId, Home, Placement};

/// Where a peer message goes: a tablet, here or on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dest {
    /// Tablet `shard` of island `island`, on this node.
    Shard { island: IslandId, shard: u16 },
    /// Tablet `shard` of island `island`, on node `node`.
    Node {
        node: u16,
        island: IslandId,
        shard: u16,
    },
}

/// A request could not go: its home's node is not live, or unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unreachable;

impl Shard {
    /// The cluster's placement now (`None`: a single node).
    pub fn set_placement(&mut self, placement: Option<Arc<Placement>>) {
        let led = self.leads_own_island();
        let old = std::mem::replace(&mut self.placement, placement);
        let island = self.config.island;
        let elsewhere = self
            .placement
            .as_ref()
            .filter(|p| p.has_map())
            .is_some_and(|p| p.primary_of(island) != p.node);
        self.superseded |= elsewhere;
        self.refuse_moved_requests();
        if led && !self.leads_own_island() {
            // Its island is served by another node now: its phones log
            // in again, there.
            self.close_all();
        }
        if let (Some(old), Some(new)) = (old, self.placement.clone()) {
            for node in returned_nodes(&old, &new) {
                self.node_returned(node);
            }
        }
    }

    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_deref()
    }

    /// Where `phone`'s account lives, as this shard's placement says.
    pub fn home_of(&self, phone: Phone) -> Home {
        let map = self.config.map;
        match &self.placement {
            None => Home::Here {
                island: self.config.island,
                shard: map.shard_of(phone),
            },
            Some(placement) => placement.home(map.partition_of(phone), map.shards()),
        }
    }

    /// Where `group` lives.
    pub(super) fn home_of_group(&self, group: GroupId) -> Home {
        let map = self.config.map;
        match &self.placement {
            None => Home::Here {
                island: self.config.island,
                shard: map.shard_of_group(group),
            },
            Some(placement) => placement.home(map.partition_of_group(group), map.shards()),
        }
    }

    /// A request to `home`. Err: its node is not live (or unknown); the
    /// caller refuses with `Unavailable`.
    pub(super) fn ask(&mut self, home: Home, message: PeerMessage) -> Result<(), Unreachable> {
        let dest = live_dest(home).ok_or(Unreachable)?;
        self.track_request(dest, &message);
        self.route(dest, message);
        Ok(())
    }

    /// Notes a phone's request going to `dest` (see `in_flight`): tracked
    /// when it goes to another node.
    fn track_request(&mut self, dest: Dest, message: &PeerMessage) {
        let (key, conn, chat) = match message {
            PeerMessage::Deliver {
                from,
                to,
                client_id,
                reply,
                ..
            } => ((*from, *client_id), *reply, Some(wire::Chat::Direct(*to))),
            PeerMessage::GroupRequest {
                group,
                from,
                client_id,
                reply,
                action,
                ..
            } => {
                let chat = action
                    .in_conversation()
                    .then_some(wire::Chat::Group(*group));
                ((*from, *client_id), *reply, chat)
            }
            _ => return,
        };
        let Dest::Node { node, island, .. } = dest else {
            self.in_flight.sent_here(key);
            return;
        };
        let request = in_flight::Request {
            island,
            node,
            conn,
            chat,
        };
        self.in_flight.sent(key, request);
    }

    /// Refuses, `Unavailable`, the requests still out to a node that no
    /// longer serves their island: the phone sends them again, in order,
    /// to the new primary (see `in_flight`).
    fn refuse_moved_requests(&mut self) {
        let Some(placement) = self.placement.clone() else {
            return;
        };
        let mut moved = self
            .in_flight
            .moved(|island, node| !placement.has_map() || placement.primary_of(island) == node);
        // Each phone is told in the order it sent them.
        moved.sort_unstable_by_key(|((phone, client_id), _)| (phone.as_u64(), *client_id));
        for ((phone, client_id), request) in moved {
            if self.conns.is_session_of(request.conn, phone) {
                self.counters.refused_island_moved += 1;
                let session = Session {
                    id: request.conn,
                    phone,
                };
                self.refuse_unavailable(session, request.chat, client_id);
            }
        }
    }

    /// What is owed to `home`: sent even to a node that is not live.
    pub(super) fn owe(&mut self, home: Home, message: PeerMessage) {
        match self.dest(home) {
            Some(dest) => self.route(dest, message),
            None => self.counters.peer_messages_unroutable += 1,
        }
    }

    /// What is owed to `home` once the next batch is durable (see
    /// `durability::Held`).
    pub(super) fn owe_after_commit(&mut self, home: Home, message: PeerMessage) {
        match self.dest(home) {
            Some(dest) => self.durability.hold_peer(dest, message),
            None => self.counters.peer_messages_unroutable += 1,
        }
    }

    /// A signal to `home`: dropped unless its node is live.
    pub(super) fn signal_to(&mut self, home: Home, message: PeerMessage) {
        debug_assert!(message.is_signal());
        match live_dest(home) {
            Some(dest) => self.route(dest, message),
            None => self.counters.signals_dropped_unreachable += 1,
        }
    }

    /// Where a message to `home` goes, live or not; `None`: unknown.
    pub(super) fn dest(&self, home: Home) -> Option<Dest> {
        match home {
            Home::Here { island, shard } => Some(Dest::Shard { island, shard }),
            Home::Away {
                node,
                island,
                shard,
                ..
            } => Some(Dest::Node {
                node,
                island,
                shard,
            }),
            Home::Unknown => None,
        }
    }

    /// Where tablet (`island`, `shard`) is served now; `None`: on a node
    /// never seen.
    pub(super) fn tablet_dest(&self, island: IslandId, shard: u16) -> Option<Dest> {
        let Some(placement) = &self.placement else {
            return Some(Dest::Shard { island, shard });
        };
        let node = placement.primary_of(island);
        if node == placement.node {
            Some(Dest::Shard { island, shard })
        } else {
            placement.node(node).map(|_| Dest::Node {
                node,
                island,
                shard,
            })
        }
    }

    /// This shard's own tablet as a destination.
    pub(super) fn own_dest(&self) -> Dest {
        Dest::Shard {
            island: self.config.island,
            shard: self.config.shard_id,
        }
    }

    /// Whether requests may go to `dest` now.
    pub(super) fn is_live(&self, dest: Dest) -> bool {
        match dest {
            Dest::Shard { .. } => true,
            Dest::Node { node, .. } => self
                .placement
                .as_ref()
                .and_then(|p| p.node(node))
                .is_some_and(|n| n.live),
        }
    }

    /// `phones` grouped by where their accounts live, in no order;
    /// `None`: those whose home is unknown.
    pub(super) fn split_by_dest(
        &self,
        phones: impl IntoIterator<Item = Phone>,
    ) -> Vec<(Option<Dest>, Vec<Phone>)> {
        let mut split: ahash::AHashMap<Option<Dest>, Vec<Phone>> = ahash::AHashMap::new();
        for phone in phones {
            let dest = self.dest(self.home_of(phone));
            split.entry(dest).or_default().push(phone);
        }
        split.into_iter().collect()
    }

    /// Every tablet of every island (this one included), where it is
    /// served now: for what all of them must hear.
    pub(super) fn every_shard(&self) -> Vec<Dest> {
        let local = self.config.map.shards();
        let Some(placement) = self.placement.as_ref().filter(|p| p.has_map()) else {
            let island = self.config.island;
            return (0..local)
                .map(|shard| Dest::Shard { island, shard })
                .collect();
        };
        let mut all = Vec::new();
        for (island, node) in placement.mapped_islands() {
            if node == placement.node {
                all.extend((0..local).map(|shard| Dest::Shard { island, shard }));
            } else if let Some(placed) = placement.node(node) {
                all.extend((0..placed.shards).map(|shard| Dest::Node {
                    node,
                    island,
                    shard,
                }));
            }
        }
        all
    }
}

/// Where a request or signal to `home` goes: nowhere unless its node is
/// live.
fn live_dest(home: Home) -> Option<Dest> {
    match home {
        Home::Here { island, shard } => Some(Dest::Shard { island, shard }),
        Home::Away {
            node,
            island,
            shard,
            live: true,
        } => Some(Dest::Node {
            node,
            island,
            shard,
        }),
        Home::Away { live: false, .. } | Home::Unknown => None,
    }
}

/// Nodes live in `new` under another incarnation than in `old`: they came
/// back (a restart, or a pause past their lease) and hold nothing of the
/// memory-only state others gave their old incarnation.
fn returned_nodes(old: &Placement, new: &Placement) -> Vec<u16> {
    new.nodes()
        .filter(|&(id, node)| id != new.node && node.live && node.incarnation != 0)
        .filter(|&(id, node)| old.node(id).map(|n| n.incarnation) != Some(node.incarnation))
        .map(|(id, _)| id)
        .collect()
}

/// What a peer message is for, by what it names: where it goes when it
/// reached a tablet that does not serve it.
enum Target {
    Phone(Phone),
    Group(GroupId),
    /// Every tablet hears it (an account's deletion): the same tablet,
    /// wherever it is served.
    SameTablet,
    /// An answer to a connection or a lookup of the tablet it was sent
    /// to: only that process knows what it answers.
    Answer,
}

impl PeerMessage {
    fn target(&self) -> Target {
        use PeerMessage as M;
        match self {
            M::Deliver { to, .. } | M::Receipt { to, .. } => Target::Phone(*to),
            M::Stored { .. } | M::AccountsFound { .. } => Target::Answer,
            M::PresenceOf { conn: Some(_), .. } | M::ProfileOf { conn: Some(_), .. } => {
                Target::Answer
            }
            M::PresenceOf { to, .. } | M::ProfileOf { to, .. } => Target::Phone(*to),
            M::GroupRequest { group, .. }
            | M::GroupStored { group, .. }
            | M::GroupTyping { group, .. } => Target::Group(*group),
            M::GroupFanout { members, .. } => first(members),
            M::Watch { target, .. }
            | M::Unwatch { target, .. }
            | M::ProfileQuery { target, .. } => Target::Phone(*target),
            M::TypingTo { to, .. } => first(to),
            M::LookupAccounts { phones, .. } => first(phones),
            M::AccountGone { .. } => Target::SameTablet,
            M::GroupsLeft { phone, .. } => Target::Phone(*phone),
            M::ReceiptsOwed { receipts } => receipts
                .first()
                .map_or(Target::Answer, |r| Target::Phone(r.to)),
            M::OwedStored { stored } => stored
                .first()
                .map_or(Target::Answer, |key| Target::Phone(key.1)),
        }
    }
}

/// A message for phones of one tablet goes where the first of them lives.
fn first(phones: &[Phone]) -> Target {
    phones.first().map_or(Target::Answer, |&p| Target::Phone(p))
}

impl Shard {
    /// A peer message that reached tablet `tablet` (island, shard) of this
    /// node, which does not serve it: its sender's view of where the
    /// island is served was behind or ahead of this node's. It goes on to
    /// where what it names lives now, as an obligation (it waits on the
    /// link for a node that is down). An answer to a connection or lookup
    /// is dropped: the process that asked is not this one, and the phone
    /// asks again. False: it had nowhere to go (counted as unroutable).
    pub fn forward_peer(&mut self, message: PeerMessage, tablet: (IslandId, u16)) -> bool {
        let unserved = Dest::Shard {
            island: tablet.0,
            shard: tablet.1,
        };
        self.send_on(message, tablet, Some(unserved))
    }

    /// A peer message this node had queued for tablet `tablet` of a node
    /// that left the cluster: it goes where what it names lives now, this
    /// node included, as [`Shard::forward_peer`] sends it on. False: it
    /// had nowhere to go (counted as unroutable).
    pub fn reroute_peer(&mut self, message: PeerMessage, tablet: (IslandId, u16)) -> bool {
        self.send_on(message, tablet, None)
    }

    /// Routes `message`, meant for `tablet`, to where its target lives
    /// now, unless that is `not_to`.
    fn send_on(
        &mut self,
        message: PeerMessage,
        tablet: (IslandId, u16),
        not_to: Option<Dest>,
    ) -> bool {
        let dest = match message.target() {
            Target::Phone(phone) => self.dest(self.home_of(phone)),
            Target::Group(group) => self.dest(self.home_of_group(group)),
            Target::SameTablet => self.tablet_dest(tablet.0, tablet.1),
            Target::Answer => {
                self.counters.peer_messages_forwarded_dropped += 1;
                return true;
            }
        };
        match dest {
            Some(dest) if Some(dest) != not_to => {
                self.counters.peer_messages_forwarded += 1;
                self.route(dest, message);
                self.run_local();
                true
            }
            _ => {
                self.counters.peer_messages_unroutable += 1;
                false
            }
        }
    }

    /// Whether this shard serves its island: a single node's always does;
    /// a cluster node's once its placement has a map that names it the
    /// island's primary, and no other node has served the island since
    /// the shard was made (a node whose island was taken over while it
    /// was away holds a stale copy, which serves nothing from then on).
    pub fn leads_own_island(&self) -> bool {
        match &self.placement {
            None => true,
            Some(_) if self.superseded => false,
            Some(p) => p.has_map() && p.primary_of(self.config.island) == p.node,
        }
    }
}
