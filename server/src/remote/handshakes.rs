//! [`HandshakePlaces`]: the incoming connections of one shard that have
//! not yet said hello, bounded in number and per source address.
//!
//! A connection to the peer port costs nothing to open and may never say
//! anything, while a real node's dialer sends its hello right after
//! connecting. So a new connection is never refused for want of a place:
//! it takes the place of the oldest connection still waiting for its
//! hello, from its own source address when that address holds
//! `per_source_max` places, else from anyone once `total_max` are taken.
//! Connections held open from one address then only push each other out;
//! to push out a real node's connection an attacker must open
//! `total_max` connections in the moment between that connection's
//! accept and its hello. Every place also ends at the handshake deadline
//! (`LinkConfig::handshake_timeout_ms`, enforced by the caller).

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    net::IpAddr,
    rc::Rc,
};

use ahash::AHashMap;

use super::io::Killer;

/// The places of one shard (see the module doc).
pub struct HandshakePlaces {
    total_max: usize,
    per_source_max: usize,
    inner: RefCell<Inner>,
    evicted: Cell<u64>,
}

struct Inner {
    next_id: u64,
    /// Oldest first.
    waiting: VecDeque<Waiting>,
    by_source: AHashMap<IpAddr, usize>,
}

struct Waiting {
    id: u64,
    source: IpAddr,
    killer: Killer,
}

/// A connection's place while it has not said hello. Dropped, it frees
/// the place; [`Place::finish`] frees it and gives back the kill switch.
pub struct Place {
    places: Rc<HandshakePlaces>,
    id: u64,
}

impl HandshakePlaces {
    /// At least one place in all and per source.
    pub fn new(total_max: usize, per_source_max: usize) -> Rc<HandshakePlaces> {
        Rc::new(HandshakePlaces {
            total_max: total_max.max(1),
            per_source_max: per_source_max.max(1),
            inner: RefCell::new(Inner {
                next_id: 0,
                waiting: VecDeque::new(),
                by_source: AHashMap::new(),
            }),
            evicted: Cell::new(0),
        })
    }

    /// A place for a connection from `source`, whose socket `killer`
    /// shuts down if the place is taken from it. The oldest connection of
    /// the same source, or the oldest of all, is shut down when the
    /// bounds are reached.
    pub fn enter(self: &Rc<Self>, source: IpAddr, killer: Killer) -> Place {
        let mut inner = self.inner.borrow_mut();
        let from_source = inner.by_source.get(&source).copied().unwrap_or(0);
        let victim = if from_source >= self.per_source_max {
            inner.waiting.iter().position(|w| w.source == source)
        } else if inner.waiting.len() >= self.total_max {
            Some(0)
        } else {
            None
        };
        if let Some(at) = victim {
            let waiting = inner.remove_at(at);
            waiting.killer.kill();
            self.evicted.set(self.evicted.get() + 1);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        *inner.by_source.entry(source).or_insert(0) += 1;
        inner.waiting.push_back(Waiting { id, source, killer });
        Place {
            places: self.clone(),
            id,
        }
    }

    /// Connections waiting for their hello now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.borrow().waiting.len()
    }

    /// Connections shut down to make room for newer ones.
    pub fn evicted(&self) -> u64 {
        self.evicted.get()
    }

    fn leave(&self, id: u64) -> Option<Killer> {
        let mut inner = self.inner.borrow_mut();
        let at = inner.waiting.iter().position(|w| w.id == id)?;
        Some(inner.remove_at(at).killer)
    }
}

impl Inner {
    fn remove_at(&mut self, at: usize) -> Waiting {
        let waiting = self.waiting.remove(at).expect("a place that is there");
        if let Some(count) = self.by_source.get_mut(&waiting.source) {
            *count -= 1;
            if *count == 0 {
                self.by_source.remove(&waiting.source);
            }
        }
        waiting
    }
}

impl Place {
    /// The hello arrived: the place is freed and the connection's kill
    /// switch handed back. `None`: the place was taken by a newer
    /// connection meanwhile, and this one is shut down.
    pub fn finish(self) -> Option<Killer> {
        // Dropping `self` afterwards finds nothing left to free.
        self.places.leave(self.id)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::*;

    /// A connected socket's kill switch, and the far end to see it by.
    fn connection(listener: &TcpListener) -> (Killer, TcpStream) {
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        (Killer::of(&near).unwrap(), far)
    }

    fn is_shut(far: &TcpStream) -> bool {
        use std::io::Read;
        far.set_nonblocking(true).unwrap();
        let mut byte = [0u8];
        matches!((&*far).read(&mut byte), Ok(0))
    }

    #[test]
    fn a_full_source_pushes_out_its_own_oldest_and_no_one_else() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let places = HandshakePlaces::new(4, 2);
        let (flood, real) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let (real_killer, real_far) = connection(&listener);
        let real_place = places.enter(real, real_killer);
        let mut flooded = Vec::new();
        for _ in 0..5 {
            let (killer, far) = connection(&listener);
            flooded.push((places.enter(flood, killer), far));
        }
        assert_eq!(places.len(), 3, "the real one and two of the flood");
        assert_eq!(places.evicted(), 3);
        assert!(!is_shut(&real_far));
        let shut: Vec<bool> = flooded.iter().map(|(_, far)| is_shut(far)).collect();
        assert_eq!(shut, [true, true, true, false, false]);
        assert!(real_place.finish().is_some());
        assert_eq!(places.len(), 2);
        // A place taken from its connection hands back nothing.
        let (oldest, _) = flooded.remove(0);
        assert!(oldest.finish().is_none());
    }

    #[test]
    fn past_the_total_the_oldest_of_all_goes() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let places = HandshakePlaces::new(2, 2);
        let mut held = Vec::new();
        for source in 1..=3u8 {
            let (killer, far) = connection(&listener);
            held.push((places.enter(IpAddr::from([10, 0, 0, source]), killer), far));
        }
        let shut: Vec<bool> = held.iter().map(|(_, far)| is_shut(far)).collect();
        assert_eq!(shut, [true, false, false]);
        drop(held);
        assert_eq!(places.len(), 0, "dropped places are freed");
    }
}
