//! Where connections come from, as the limits on anonymous work see it,
//! and bounded tables of allowances keyed by source or by number range.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ahash::AHashMap;
use wire::Phone;

use crate::allowance::{Exhausted, Rate, TokenBucket};

/// A connection's source host: an IPv4 address, or the /64 an IPv6
/// address is in (one subscriber is routinely handed a whole /64, so
/// counting its addresses apart would let it count as billions of hosts).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn new(addr: IpAddr) -> Source {
        match addr {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => Source(IpAddr::V6(mask_v6(v6, 64))),
            },
        }
    }

    /// A source for tests and for connections whose peer address is
    /// unknown: `0.0.0.0`.
    pub const UNKNOWN: Source = Source(IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    pub fn addr(&self) -> IpAddr {
        self.0
    }

    /// The network the host is in, for limits one operator of many
    /// addresses must not multiply: the IPv4 /24, or the IPv6 /48.
    pub fn prefix(&self) -> Source {
        match self.0 {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & 0xffff_ff00;
                Source(IpAddr::V4(Ipv4Addr::from(bits)))
            }
            IpAddr::V6(v6) => Source(IpAddr::V6(mask_v6(v6, 48))),
        }
    }
}

fn mask_v6(addr: Ipv6Addr, bits: u32) -> Ipv6Addr {
    let mask = u128::MAX << (128 - bits);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// The block of 10,000 consecutive numbers `phone` is in (its number with
/// the last four digits dropped): SMS pumping walks ranges of numbers an
/// operator shares revenue on, so they are limited as a whole.
pub fn number_range(phone: Phone) -> u64 {
    phone.as_u64() / 10_000
}

/// Token buckets by key, at most `entries_max` of them. A bucket that
/// refilled to full is forgotten at the next `prune` (a new one would be
/// the same). When the table is at its bound, keys not in it share one
/// overflow bucket: a flood of new keys can neither grow memory nor
/// evict the spent buckets of the keys that flooded before.
#[derive(Debug)]
pub struct Buckets<K> {
    map: AHashMap<K, TokenBucket>,
    overflow: TokenBucket,
    entries_max: usize,
}

impl<K: Copy + Eq + Hash> Buckets<K> {
    pub fn new(entries_max: usize) -> Buckets<K> {
        Buckets {
            map: AHashMap::new(),
            overflow: TokenBucket::full(),
            entries_max,
        }
    }

    /// Takes `tokens` from `key`'s bucket (or the overflow bucket).
    pub fn take(&mut self, key: K, tokens: u64, rate: Rate, now_ms: u64) -> Result<(), Exhausted> {
        let bucket = if self.map.contains_key(&key) || self.map.len() < self.entries_max {
            self.map.entry(key).or_default()
        } else {
            &mut self.overflow
        };
        bucket.take(tokens, rate, now_ms)
    }

    /// True when `key`'s bucket (or the overflow bucket) holds `tokens`.
    pub fn has(&mut self, key: K, tokens: u64, rate: Rate, now_ms: u64) -> bool {
        let room = self.map.len() < self.entries_max;
        let bucket = match self.map.get_mut(&key) {
            Some(bucket) => bucket,
            None if room => return rate.burst >= tokens,
            None => &mut self.overflow,
        };
        bucket.available(rate, now_ms) >= tokens
    }

    /// Forgets buckets that are full again.
    pub fn prune(&mut self, rate: Rate, now_ms: u64) {
        self.map.retain(|_, bucket| !bucket.is_full(rate, now_ms));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_their_slash_64_and_mapped_ipv4_is_ipv4() {
        let a = Source::new("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Source::new("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = Source::new("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.prefix(), c.prefix());
        let mapped = Source::new("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(mapped, Source::new("10.1.2.3".parse().unwrap()));
        assert_eq!(
            mapped.prefix(),
            Source::new("10.1.2.200".parse().unwrap()).prefix()
        );
    }

    #[test]
    fn a_full_table_sends_new_keys_to_one_shared_bucket() {
        let rate = Rate::per_second(0, 2);
        let mut buckets: Buckets<u32> = Buckets::new(2);
        assert!(buckets.take(1, 2, rate, 0).is_ok());
        assert!(buckets.take(2, 1, rate, 0).is_ok());
        // Keys 3 and 4 share the overflow bucket's two tokens.
        assert!(buckets.take(3, 1, rate, 0).is_ok());
        assert!(buckets.take(4, 1, rate, 0).is_ok());
        assert!(buckets.take(5, 1, rate, 0).is_err());
        assert!(buckets.take(1, 1, rate, 0).is_err(), "spent stays spent");
        assert_eq!(buckets.len(), 2);
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let rate = Rate::per_second(1, 1);
        let mut buckets: Buckets<u32> = Buckets::new(10);
        for key in 0..5 {
            buckets.take(key, 1, rate, 0).unwrap();
        }
        buckets.prune(rate, 500);
        assert_eq!(buckets.len(), 5);
        buckets.prune(rate, 1_000);
        assert!(buckets.is_empty());
    }
}
