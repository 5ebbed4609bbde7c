//! `isle ctl account delete` promises that everything of the account goes,
//! durably, its group memberships included, once it answers. These tests
//! check the group memberships across a `kill -9` right after the answer,
//! and when the shard that owns the groups cannot write: the deletion is
//! kept (and the number may not sign up again) until every shard took it
//! out of its groups.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::Server;
use loadgen::client::{Client, Event, Polled};
use wire::{ClientFrame, DeviceKey, GroupChange, GroupId, Phone, ReceiptKind};

const DOOMED: &str = "+15550000004";

fn delete(server: &Server, phone: &str) -> (u16, String) {
    let url = format!("http://{}/account/{phone}", server.admin);
    match ureq::delete(&url).call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(error) => panic!("DELETE {phone}: {error}"),
    }
}

/// `creator` makes `count` groups with `members`; their ids.
fn create_groups(creator: &mut Client, members: &[Phone], count: u64) -> Vec<GroupId> {
    for client_id in 1..=count {
        creator
            .send(&ClientFrame::CreateGroup {
                client_id,
                subject: "g",
                members: members.to_vec(),
            })
            .unwrap();
    }
    (0..count)
        .map(|_| {
            let id = creator
                .recv_until(|e| match e {
                    Event::Sent { id, .. } => Some(*id),
                    _ => None,
                })
                .unwrap();
            GroupId::from_u64(id).unwrap()
        })
        .collect()
}

/// `creator` (logged in anew) posts once in each of `groups`.
fn post_in_each(server: &Server, creator: (Phone, DeviceKey), groups: &[GroupId]) {
    let mut client = server.connect();
    client.login(creator.0, creator.1).unwrap();
    for (i, &group) in groups.iter().enumerate() {
        client
            .send(&ClientFrame::GroupSend {
                client_id: 10_000 + i as u64,
                group,
                body: b"for the members only",
            })
            .unwrap();
    }
    for _ in groups {
        client
            .recv_until(|e| matches!(e, Event::Sent { .. }).then_some(()))
            .unwrap();
    }
}

/// Group posts that reach `phone` within a quiet second.
fn group_posts_received(client: &mut Client) -> usize {
    let mut posts = 0;
    loop {
        match client.poll(Duration::from_secs(2)).unwrap() {
            Polled::Frame(Event::GroupMessage { .. }) => posts += 1,
            Polled::Frame(_) => {}
            Polled::Quiet | Polled::Closed => return posts,
        }
    }
}

/// Signs `number` up and logs it in, as a phone would: a refusal that
/// says to retry (`Unavailable`: the number's previous account is still
/// leaving its groups) is retried for a while.
fn heir(server: &Server, number: &str) -> Client {
    let phone = Phone::parse(number).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = server.connect();
        match client.sign_up(phone, || Ok(common::TEST_CODE)) {
            Ok(key) => {
                client.login(phone, key).unwrap();
                return client;
            }
            Err(error) if Instant::now() < deadline => {
                assert!(format!("{error}").contains("Unavailable"), "{error}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => panic!("{number} could not sign up again: {error}"),
        }
    }
}

/// The deletion is answered once the account's own shard wrote it; the
/// shards that own its groups take it out of them a moment later. A
/// `kill -9` in between must not leave it a member after the restart,
/// where the number's next owner (numbers are recycled) would get those
/// groups' posts.
#[test]
fn a_deleted_account_stays_out_of_its_groups_across_a_kill() {
    for round in 0..2 {
        let server = Server::start(&["--shards", "2"]);
        let (_doomed_client, doomed, _) = server.phone(DOOMED);
        let mut creators = Vec::new();
        let mut groups = Vec::new();
        for k in 0..4 {
            let (mut client, phone, key) = server.phone(&format!("+155500001{k:02}"));
            groups.push(create_groups(&mut client, &[doomed], 100));
            creators.push((phone, key));
        }
        let (code, answer) = delete(&server, DOOMED);
        assert_eq!(code, 200, "{answer}");
        // kill -9 the moment the operator was told the deletion is durable.
        let dir = server.into_data_dir();
        let server = Server::start_in(dir, &["--shards", "2"]);
        let mut heir = heir(&server, DOOMED);
        for (creator, groups) in creators.iter().zip(&groups) {
            post_in_each(&server, *creator, groups);
        }
        let leaked = group_posts_received(&mut heir);
        assert_eq!(
            leaked, 0,
            "round {round}: after `account delete` answered 200 and a kill -9, the number's \
             new account received {leaked} posts of the deleted account's groups"
        );
    }
}

/// A loop-mounted ext4 file system under a shard's log directory,
/// unmounted on drop.
struct ShardDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl ShardDisk {
    fn new(image: PathBuf, mount: &Path) -> ShardDisk {
        std::fs::File::create(&image)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        std::fs::create_dir_all(mount).unwrap();
        let disk = ShardDisk {
            image,
            mount: mount.to_owned(),
        };
        disk.mount("loop");
        disk
    }

    fn mount(&self, options: &str) {
        let image = self.image.to_str().unwrap();
        run(
            "mount",
            &["-o", options, image, self.mount.to_str().unwrap()],
        );
    }

    /// Every later write fails (ext4's `abort`: as an I/O error would).
    fn fail(&self) {
        run(
            "mount",
            &["-o", "remount,abort", self.mount.to_str().unwrap()],
        );
    }

    /// Unmounts, repairs and mounts the file system again.
    fn repair(&self) {
        run("umount", &[self.mount.to_str().unwrap()]);
        let _ = Command::new("e2fsck")
            .args(["-fy", self.image.to_str().unwrap()])
            .output();
        self.mount("loop");
    }
}

impl Drop for ShardDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Shard 1's journal fails while shard 0's works. Accounts of shard 0
/// are deleted (200: the deletion is durable), but the groups shard 1
/// owns cannot record the members leaving: shard 1 does not answer, the
/// deletion stays pending, and after the restart (the disk repaired) it
/// is finished before the number can sign up again.
#[test]
fn a_deletion_a_group_shard_could_not_record_is_finished_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("log/shard-0")).unwrap();
    let disk = ShardDisk::new(
        scratch.path().join("shard-1.img"),
        &data.path().join("log/shard-1"),
    );
    let server = Server::start_in(data, &["--shards", "2"]);
    let (mut creator, creator_phone, creator_key) = server.phone("+15550000001");
    let numbers: Vec<String> = (10..30).map(|n| format!("+155500000{n}")).collect();
    let members: Vec<Phone> = numbers
        .iter()
        .map(|number| {
            let (client, phone, _) = server.phone(number);
            std::mem::forget(client);
            phone
        })
        .collect();
    let groups = create_groups(&mut creator, &members, 8);
    disk.fail();
    // Shard 1 finds out at its next write: signups land on both shards.
    for n in 0..20 {
        let mut client = server.connect();
        let _ = client.sign_up(Phone::parse(&format!("+155500010{n:02}")).unwrap(), || {
            Ok(common::TEST_CODE)
        });
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let deleted: Vec<&String> = numbers
        .iter()
        .filter(|number| delete(&server, number).0 == 200)
        .collect();
    assert!(
        !deleted.is_empty(),
        "no account of shard 0 among {numbers:?}"
    );
    let (_, data) = server.stop_keeping_data();
    disk.repair();
    let server = Server::start_in(data, &["--shards", "2"]);
    let mut heir = heir(&server, deleted[0]);
    post_in_each(&server, (creator_phone, creator_key), &groups);
    let leaked = group_posts_received(&mut heir);
    assert_eq!(
        leaked, 0,
        "`account delete {}` answered 200, yet after a restart the number's new account \
         received {leaked} posts of its predecessor's groups",
        deleted[0]
    );
}

/// Receipts for the deleted account's messages (its recipients
/// acknowledge or read them later) must not be stored for whoever holds
/// the number next: the new account would learn whom the old one wrote
/// to and when they read it.
#[test]
fn receipts_of_a_deleted_account_do_not_reach_the_numbers_next_owner() {
    let server = Server::start(&["--shards", "2"]);
    let (bob_client, bob, bob_key) = server.phone("+15550000002");
    drop(bob_client);
    let (mut old, _, _) = server.phone(DOOMED);
    for client_id in 1..=3 {
        old.send(&ClientFrame::Send {
            client_id,
            to: bob,
            body: b"from the old owner",
        })
        .unwrap();
    }
    for _ in 1..=3 {
        old.recv_until(|e| matches!(e, Event::Sent { .. }).then_some(()))
            .unwrap();
    }
    let (code, answer) = delete(&server, DOOMED);
    assert_eq!(code, 200, "{answer}");
    let mut heir = heir(&server, DOOMED);
    let mut bob_client = server.connect();
    bob_client.login(bob, bob_key).unwrap();
    let mut last = 0;
    for _ in 1..=3 {
        last = bob_client
            .recv_until(|e| match e {
                Event::Message { seq, .. } => Some(*seq),
                _ => None,
            })
            .unwrap();
    }
    bob_client.send(&ClientFrame::Ack { up_to: last }).unwrap();
    let mut receipts = Vec::new();
    loop {
        match heir.poll(Duration::from_secs(2)).unwrap() {
            Polled::Frame(event @ Event::Receipt { .. }) => receipts.push(event),
            Polled::Frame(_) => {}
            Polled::Quiet | Polled::Closed => break,
        }
    }
    assert!(
        receipts.is_empty(),
        "the number's new account got receipts for its predecessor's messages: {receipts:?}"
    );
}

/// `account revoke` of an account that exists, on a shard whose journal
/// failed, answers 503 and says why, as `account delete` does: never 404
/// for an account `account show` finds (an operator revoking a stolen key
/// must not read that the account is not there).
#[test]
fn revoke_on_a_failed_journal_does_not_answer_no_such_account() {
    let data = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let disk = ShardDisk::new(
        scratch.path().join("shard-0.img"),
        &data.path().join("log/shard-0"),
    );
    let server = Server::start_in(data, &["--shards", "1"]);
    let (_client, _, _) = server.phone("+15550000001");
    disk.fail();
    // The shard finds out at its next write.
    let mut client = server.connect();
    let _ = client.sign_up(Phone::parse("+15550000009").unwrap(), || {
        Ok(common::TEST_CODE)
    });
    std::thread::sleep(Duration::from_millis(1_500));
    let show = ureq::get(&format!("http://{}/account/+15550000001", server.admin)).call();
    assert!(show.is_ok(), "the account is there: {show:?}");
    let url = format!("http://{}/account/+15550000001/revoke", server.admin);
    let (code, text) = match ureq::post(&url).call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        Err(error) => panic!("POST revoke: {error}"),
    };
    assert_ne!(
        code, 404,
        "revoke of an existing account on a failed journal: {code} {text}"
    );
}

/// With the write-back cache on (`--sync-delay-ms`), a deletion's
/// `Undeliverable` receipts (to senders on both shards) and its `Left`
/// notices are written through: a `kill -9` right after `account delete`
/// answered loses none of them, although the mailbox that held the
/// messages is gone for good.
#[test]
fn with_the_write_back_cache_a_deletion_still_tells_senders_and_members_across_a_kill() {
    let flags = ["--shards", "2", "--sync-delay-ms", "60000"];
    let server = Server::start(&flags);
    let (doomed_client, doomed, _) = server.phone(DOOMED);
    drop(doomed_client);
    let mut senders = Vec::new();
    for k in 0..6u64 {
        let (mut client, phone, key) = server.phone(&format!("+155500002{k:02}"));
        client
            .send(&ClientFrame::Send {
                client_id: 100 + k,
                to: doomed,
                body: b"never read",
            })
            .unwrap();
        client
            .recv_until(|e| matches!(e, Event::Sent { .. }).then_some(()))
            .unwrap();
        senders.push((phone, key, 100 + k));
    }
    let (mut member_client, member, member_key) = server.phone("+15550000301");
    drop(member_client);
    let (mut creator, _, _) = server.phone("+15550000302");
    let group = create_groups(&mut creator, &[doomed, member], 1)[0];
    drop(creator);
    let (code, answer) = delete(&server, DOOMED);
    assert_eq!(code, 200, "{answer}");
    let dir = server.into_data_dir();
    let server = Server::start_in(dir, &flags);
    let quiet = Duration::from_secs(3);
    for (phone, key, client_id) in senders {
        let mut client = server.connect();
        client.login(phone, key).unwrap();
        let told = frame_within(&mut client, quiet, |e| match e {
            Event::Receipt {
                kind: ReceiptKind::Undeliverable,
                by,
                client_id: c,
                ..
            } => (*by == doomed && *c == client_id).then_some(()),
            _ => None,
        })
        .is_some();
        assert!(
            told,
            "{phone} was not told {client_id} will never reach {doomed}"
        );
    }
    member_client = server.connect();
    member_client.login(member, member_key).unwrap();
    let left = frame_within(&mut member_client, quiet, |e| match e {
        Event::GroupNotice {
            group: g,
            by,
            change: GroupChange::Left,
            ..
        } => (*g == group && *by == doomed).then_some(()),
        _ => None,
    });
    assert!(
        left.is_some(),
        "{member} was not told {doomed} left {group}"
    );
}

/// The first frame `pick` accepts before `client` is quiet for `quiet`.
fn frame_within<T>(
    client: &mut Client,
    quiet: Duration,
    pick: impl Fn(&Event) -> Option<T>,
) -> Option<T> {
    loop {
        match client.poll(quiet).unwrap() {
            Polled::Frame(event) => {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
            }
            Polled::Quiet | Polled::Closed => return None,
        }
    }
}
