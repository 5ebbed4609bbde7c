//! Which shard owns which account.
//!
//! `partition = xxh3_64(phone) % partitions`, then `shard = partition % shards`.
//! xxh3 has a published specification, so the mapping is the same on every
//! build and platform; `ahash` is deliberately not used here because its output
//! may change between versions and processes.

use wire::{GroupId, Phone};

/// Partitions a data directory is split into. Fixed for the life of the data:
/// it is what makes changing the shard count a matter of moving partitions.
pub const PARTITIONS_DEFAULT: u16 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMap {
    partitions: u16,
    shards: u16,
}

impl PartitionMap {
    pub fn new(partitions: u16, shards: u16) -> PartitionMap {
        assert!(
            shards >= 1 && partitions >= shards,
            "{partitions} partitions for {shards} shards"
        );
        PartitionMap { partitions, shards }
    }

    pub fn shards(&self) -> u16 {
        self.shards
    }

    pub fn partition_of(&self, phone: Phone) -> u16 {
        (stable_hash(phone) % u64::from(self.partitions)) as u16
    }

    pub fn shard_of(&self, phone: Phone) -> u16 {
        self.partition_of(phone) % self.shards
    }

    /// A group lives on the shard its id hashes to, by the same rule as an
    /// account (ids and numbers never coincide: see `GroupId`).
    pub fn shard_of_group(&self, group: GroupId) -> u16 {
        self.partition_of_group(group) % self.shards
    }

    pub fn partition_of_group(&self, group: GroupId) -> u16 {
        (stable_hash_u64(group.as_u64()) % u64::from(self.partitions)) as u16
    }

    /// `phones` split by home shard: entry `i` holds those of shard `i`.
    pub fn split_by_shard(&self, phones: impl IntoIterator<Item = Phone>) -> Vec<Vec<Phone>> {
        let mut by_shard = vec![Vec::new(); usize::from(self.shards)];
        for phone in phones {
            by_shard[usize::from(self.shard_of(phone))].push(phone);
        }
        by_shard
    }
}

/// The hash behind partitioning: stable across builds, platforms and runs.
pub fn stable_hash(phone: Phone) -> u64 {
    stable_hash_u64(phone.as_u64())
}

fn stable_hash_u64(value: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&value.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // These values are the contract with data already on disk: if this
        // test fails, partitions moved and existing data dirs would be misread.
        let phone = Phone::parse("+15551234567").unwrap();
        assert_eq!(
            stable_hash(phone),
            0xee96_79c5_95b1_0d16,
            "pinned value changed"
        );
        // 0x...0d16 % 1024 = 0x116: the partition follows from the hash alone.
        assert_eq!(
            PartitionMap::new(PARTITIONS_DEFAULT, 2).partition_of(phone),
            278
        );
        assert_eq!(PartitionMap::new(PARTITIONS_DEFAULT, 4).shard_of(phone), 2);
    }

    #[test]
    fn spreads_over_shards() {
        let map = PartitionMap::new(PARTITIONS_DEFAULT, 4);
        let mut counts = [0u32; 4];
        for n in 0..40_000u64 {
            counts[map.shard_of(Phone::from_u64(15_550_000_000 + n).unwrap()) as usize] += 1;
        }
        for count in counts {
            assert!((8_000..12_000).contains(&count), "{counts:?}");
        }
    }
}
