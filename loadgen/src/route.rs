//! Which server of a cluster a phone connects to, as the rule of
//! docs/protocol.md ("Redirects and try-later") has it: start at a node
//! of `--target` picked at random, follow a `Redirect` and cache the
//! owner it names (replaced only by an answer of a higher revision), and
//! fall back to a node of the list, drawn again, when the cached owner
//! (or the node picked) does not answer.
//!
//! No I/O and no clock: [`Route`] is a value the dialer asks where to go
//! and tells what happened, so the rule is tested without sockets. The
//! random draws come from the run's seed and the phone's number, so a run
//! with the same seed sends every phone to the same nodes.

use std::{cell::Cell, net::SocketAddr, sync::Arc};

use wire::{DeviceKey, Phone};

/// What a phone keeps between its connections: the device key sign-up
/// gave it, and where its account was last found.
#[derive(Debug, Default)]
pub struct Account {
    pub key: Cell<Option<DeviceKey>>,
    pub route: Cell<Route>,
}

/// The servers a run was given (`--target`, never empty) and the run's
/// seed: what a phone's [`Route`] draws from.
#[derive(Debug, Clone)]
pub struct Nodes {
    addrs: Arc<[SocketAddr]>,
    seed: u64,
}

impl Nodes {
    /// `addrs` must not be empty (`--target` parsing makes sure).
    pub fn new(addrs: Vec<SocketAddr>, seed: u64) -> Nodes {
        assert!(!addrs.is_empty(), "a run has at least one target");
        Nodes {
            addrs: addrs.into(),
            seed,
        }
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The `draw`th random node for `phone`: the same for the same seed.
    fn pick(&self, phone: Phone, draw: u64) -> usize {
        let mixed = mix(self.seed ^ mix(phone.as_u64() ^ mix(draw)));
        (mixed % self.addrs.len() as u64) as usize
    }
}

/// An owner a `Redirect` named: its phone-facing address and the revision
/// of the partition map the redirecting server went by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub addr: SocketAddr,
    pub revision: u64,
}

/// Where one phone connects next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Route {
    /// The node of the list to start at when no owner is known (an index
    /// into [`Nodes`]): drawn at the first login, and again after a
    /// server did not answer.
    node: Option<usize>,
    /// The owner the redirects named, the one of the highest revision.
    owner: Option<Owner>,
    /// Draws made so far, so that each draws a new number.
    draws: u64,
}

impl Route {
    /// Where the next login starts: the cached owner, or the node drawn.
    pub fn start(&mut self, nodes: &Nodes, phone: Phone) -> SocketAddr {
        if let Some(owner) = self.owner {
            return owner.addr;
        }
        let node = match self.node {
            Some(node) => node,
            None => self.draw(nodes, phone),
        };
        nodes.addrs[node]
    }

    /// A server said the account lives at `addr` (by map `revision`): it
    /// becomes the cached owner unless the one cached has a revision as
    /// high. Two servers that disagree for a moment cannot make the
    /// phone's cache flip between them.
    pub fn redirected(&mut self, addr: SocketAddr, revision: u64) {
        if self.owner.is_none_or(|owner| revision > owner.revision) {
            self.owner = Some(Owner { addr, revision });
        }
    }

    /// `addr` did not answer (refused, silent, closed early, or one end
    /// of a redirect loop): it is forgotten as the owner if it was
    /// cached, and the next login starts at a node of the list drawn
    /// again.
    pub fn failed(&mut self, nodes: &Nodes, phone: Phone, addr: SocketAddr) {
        if self.owner.is_some_and(|owner| owner.addr == addr) {
            self.owner = None;
        }
        self.draw(nodes, phone);
    }

    /// The servers sent the phone round in circles: whichever owner is
    /// cached is forgotten too, and the next login starts at a node of
    /// the list drawn again.
    pub fn loop_cut(&mut self, nodes: &Nodes, phone: Phone) {
        self.owner = None;
        self.draw(nodes, phone);
    }

    /// The cached owner, if a redirect named one.
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    fn draw(&mut self, nodes: &Nodes, phone: Phone) -> usize {
        let node = nodes.pick(phone, self.draws);
        self.draws += 1;
        self.node = Some(node);
        node
    }
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 77, 0, 2], port))
    }

    fn phone(i: u64) -> Phone {
        Phone::from_u64(15_550_000_000 + i).unwrap()
    }

    #[test]
    fn one_target_is_always_where_a_phone_starts() {
        let nodes = Nodes::new(vec![addr(1)], 7);
        let mut route = Route::default();
        assert_eq!(route.start(&nodes, phone(1)), addr(1));
        route.failed(&nodes, phone(1), addr(1));
        assert_eq!(route.start(&nodes, phone(1)), addr(1));
    }

    #[test]
    fn phones_spread_over_the_targets_the_same_way_for_the_same_seed() {
        let nodes = Nodes::new(vec![addr(1), addr(2), addr(3)], 7);
        let starts = |nodes: &Nodes| -> Vec<SocketAddr> {
            (0..300)
                .map(|i| Route::default().start(nodes, phone(i)))
                .collect()
        };
        let first = starts(&nodes);
        assert_eq!(first, starts(&nodes), "a seed replays");
        for node in nodes.addrs() {
            let share = first.iter().filter(|a| *a == node).count();
            assert!((60..=140).contains(&share), "{node}: {share} of 300");
        }
        let other = starts(&Nodes::new(vec![addr(1), addr(2), addr(3)], 8));
        assert_ne!(first, other, "another seed, another spread");
    }

    #[test]
    fn a_redirect_is_cached_until_one_of_a_higher_revision() {
        let nodes = Nodes::new(vec![addr(1), addr(2)], 7);
        let mut route = Route::default();
        route.start(&nodes, phone(1));
        route.redirected(addr(5), 10);
        assert_eq!(route.start(&nodes, phone(1)), addr(5));
        // An older map's answer, or the same revision's, changes nothing.
        route.redirected(addr(6), 9);
        route.redirected(addr(6), 10);
        assert_eq!(route.start(&nodes, phone(1)), addr(5));
        route.redirected(addr(7), 11);
        assert_eq!(route.start(&nodes, phone(1)), addr(7));
        assert_eq!(
            route.owner(),
            Some(Owner {
                addr: addr(7),
                revision: 11
            })
        );
    }

    #[test]
    fn an_owner_that_does_not_answer_is_forgotten_for_a_node_of_the_list() {
        let nodes = Nodes::new(vec![addr(1), addr(2)], 7);
        let mut route = Route::default();
        route.redirected(addr(5), 10);
        // Another server failing leaves the owner cached.
        route.failed(&nodes, phone(1), addr(1));
        assert_eq!(route.start(&nodes, phone(1)), addr(5));
        route.failed(&nodes, phone(1), addr(5));
        assert_eq!(route.owner(), None);
        assert!(nodes.addrs().contains(&route.start(&nodes, phone(1))));
        // Forgotten means forgotten: any revision is cached again.
        route.redirected(addr(5), 3);
        assert_eq!(route.start(&nodes, phone(1)), addr(5));
        route.loop_cut(&nodes, phone(1));
        assert_eq!(route.owner(), None);
    }

    #[test]
    fn a_node_that_does_not_answer_is_drawn_again() {
        let nodes = Nodes::new(vec![addr(1), addr(2)], 7);
        let mut route = Route::default();
        let mut seen = Vec::new();
        for _ in 0..20 {
            let start = route.start(&nodes, phone(1));
            seen.push(start);
            route.failed(&nodes, phone(1), start);
        }
        assert!(
            seen.contains(&addr(1)) && seen.contains(&addr(2)),
            "{seen:?}"
        );
    }
}
